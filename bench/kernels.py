"""Where the decode step's time goes, and which 4-bit matmul would close the gap.

    python -m bench.kernels --out bench/results/kernels-h100.json     (GPU only)

1. Per-layer matmul candidates at 27B shapes, M = rows in the batch:
   bnb default dispatch, bnb fused gemm_4bit forced, dequantise + F.linear,
   torch's int4 "tinygemm" (_weight_int4pack_mm, group 64), and bf16 F.linear.
   Errors are relative to the matching bf16 weights.
2. A profile of one batch-1 decode step of the 62-layer nf4 model: GPU time by kernel.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

SHAPES = {"mlp_up": (21504, 5376), "mlp_down": (5376, 21504), "q_proj": (4096, 5376)}
MS = (1, 8, 16, 32, 64, 160)


def bench(fn, iters: int = 50) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(iters):
        fn()
    b.record()
    torch.cuda.synchronize()
    return a.elapsed_time(b) / iters * 1000  # microseconds


def pack_int4(w: torch.Tensor, gs: int = 64, inner_k_tiles: int = 8):
    """Asymmetric int4, one scale/zero per `gs` inputs (gpt-fast's layout for tinygemm)."""
    n, k = w.shape
    wg = w.float().reshape(n, k // gs, gs)
    lo, hi = wg.amin(-1, keepdim=True), wg.amax(-1, keepdim=True)
    scale = (hi - lo).clamp(min=1e-6) / 15
    q = ((wg - lo) / scale).round().clamp(0, 15).to(torch.int32).reshape(n, k)
    zero = lo + scale * 8
    packed = torch.ops.aten._convert_weight_to_int4pack((q[:, ::2] << 4 | q[:, 1::2]).to(torch.uint8), inner_k_tiles)
    sz = torch.cat([scale, zero], dim=2).transpose(0, 1).contiguous().to(torch.bfloat16)  # [k/gs, n, 2]
    return packed, sz


def matmuls(out: dict) -> None:
    import bitsandbytes as bnb
    import bitsandbytes.functional as F

    res = out.setdefault("matmul_us", {})
    for name, (n, k) in SHAPES.items():
        w = torch.randn(n, k, dtype=torch.bfloat16, device="cuda") * 0.02
        p = bnb.nn.Params4bit(w.clone(), requires_grad=False, quant_type="nf4").to("cuda")
        qs = p.quant_state
        w_nf4 = F.dequantize_4bit(p.data, qs).to(torch.bfloat16)
        try:
            packed, sz = pack_int4(w)
        except Exception as exc:  # kernel missing on this build: say so, keep going
            packed = f"{type(exc).__name__}: {exc}"
            out.setdefault("errors", {})["int4pack"] = packed
        weight_gb = n * k * 0.5 / 1e9
        for m in MS:
            x = torch.randn(m, k, dtype=torch.bfloat16, device="cuda")
            ref_nf4, ref = x @ w_nf4.t(), x @ w.t()
            row = {"nf4_weight_floor_us": round(weight_gb / 3.0e3 * 1e6, 1)}  # 3.0 TB/s measured copy rate
            cands = {
                "bnb_default": lambda: bnb.matmul_4bit(x, p.t(), quant_state=qs),
                "dequant_linear": lambda: torch.nn.functional.linear(x, F.dequantize_4bit(p.data, qs).to(x.dtype)),
                "bf16_linear": lambda: torch.nn.functional.linear(x, w),
            }
            if m > 1 and qs.nested and hasattr(torch.ops.bitsandbytes, "gemm_4bit"):
                cands["bnb_fused_gemm"] = lambda: torch.ops.bitsandbytes.gemm_4bit.default(
                    x, p.data.view(-1, 1), list(qs.shape), qs.state2.absmax, qs.blocksize, qs.quant_type,
                    absmax_8bit=qs.absmax, absmax_code=qs.state2.code, absmax_offset=qs.offset)
            if m > 1 and qs.nested:
                try:
                    from bitsandbytes.backends.cuda.ops import _gemm_4bit_kernel_impl

                    cands["bnb_fused_forced"] = lambda: _gemm_4bit_kernel_impl(
                        x, p.data.view(-1, 1), list(qs.shape), qs.state2.absmax, qs.blocksize, qs.quant_type,
                        absmax_8bit=qs.absmax, absmax_code=qs.state2.code, absmax_offset=qs.offset)
                except ImportError:
                    pass
            if not isinstance(packed, str):
                cands["int4_tinygemm_g64"] = lambda: torch.ops.aten._weight_int4pack_mm(x, packed, 64, sz)
            for cname, fn in cands.items():
                try:
                    y = fn()
                    r = ref if cname in ("bf16_linear", "int4_tinygemm_g64") else ref_nf4
                    err = float((y.float() - r.float()).norm() / r.float().norm())
                    row[cname] = {"us": round(bench(fn), 1), "rel_err": round(err, 4)}
                except Exception as exc:
                    row[cname] = {"error": f"{type(exc).__name__}: {exc}"[:200]}
            res[f"{name}_{n}x{k}_M{m}"] = row
        del w, p, w_nf4
        torch.cuda.empty_cache()


def profile_step(out: dict) -> None:
    from .shapes import build, gemma3_27b_config

    model = build(gemma3_27b_config(62), "nf4")
    for batch in (1, 160):
        _profile(model, batch, out)


def _profile(model, batch: int, out: dict) -> None:
    from nla_tui.core.models import fast_decode as fd

    r = fd._Runner(model, batch, 256, use_graph=False)
    with torch.inference_mode():
        r.prefill(torch.randn(batch, 48, 5376, dtype=torch.bfloat16, device="cuda"), 0)
        ids = torch.zeros(batch, dtype=torch.long, device="cuda")
        for i in range(3):
            r.step(ids, 48 + i)
        torch.cuda.synchronize()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            r.step(ids, 52)
            torch.cuda.synchronize()
    by = {}
    for ev in prof.events():
        if ev.device_type == torch.autograd.DeviceType.CUDA:
            key = ev.name[:80]
            t, c = by.get(key, (0.0, 0))
            by[key] = (t + ev.device_time, c + 1)
    total = sum(t for t, _ in by.values())
    top = sorted(by.items(), key=lambda kv: -kv[1][0])[:25]
    out[f"step_profile_b{batch}"] = {"gpu_us_total": round(total), "kernels": sum(c for _, c in by.values()),
                              "top": [{"kernel": k, "us": round(t), "n": c} for k, (t, c) in top]}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench/results/kernels.json")
    ap.add_argument("--profile-only", action="store_true")
    args = ap.parse_args()
    out: dict = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__,
                 "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    steps = (("matmuls", matmuls), ("profile", profile_step))
    if args.profile_only:
        steps = steps[1:]
    for name, fn in steps:
        try:
            fn(out)
        except Exception as exc:
            out.setdefault("errors", {})[name] = f"{type(exc).__name__}: {exc}"
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=1))
    for k, row in out.get("matmul_us", {}).items():
        print(k, {c: (v["us"] if isinstance(v, dict) and "us" in v else v) for c, v in row.items()})
    for b in (1, 160):
        prof = out.get(f"step_profile_b{b}", {})
        print(f"b{b}", prof.get("gpu_us_total"), prof.get("kernels"))
        for k in prof.get("top", []):
            print(f"  {k['us']:>8} us {k['n']:>5}  {k['kernel'][:70]}")
    print(out.get("errors"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
