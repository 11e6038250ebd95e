"""Train the demo's mini NLA pair (Gemma 3 270M, layer 12) in one command.

    python -m training --corpus .carry/corpus.jsonl.gz --out runs/demo

Stages, each with a wall-clock budget (so the whole run fits a known time):
1. the untrained demo layout is built (GGUF → HF, NLA sidecars) and loaded through
   `Engine.load()` in bf16 (fp32 on CPU): the hub path;
2. examples: layer-12 activations at random positions of the corpus, warm-start
   targets (data.py); the injection scale and the FVE variance are measured on the
   training split;
3. AR SFT on its own split (LoRA + full value head, identity init);
4. AV SFT on its own split (LoRA);
5. GRPO on the AV with −mse from the AR as reward, the AR trained alongside, KL 0.01
   to the SFT policy; rollouts through the product's fast_decode;
6. held-out eval after each stage (evaluate.py), adapters + JSON report written.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from nla_tui.core.nla.av import parse_explanation
from nla_tui.core.types import Sampling

from . import corpus, data, evaluate, losses, pair

RECIPE = ("mini-NLA v1: context-and-prediction warm-start targets (current token, preceding text, the subject's "
          "top-3 next tokens, kind of text or chat role), LoRA SFT of AV and AR, then GRPO on the AV with -mse "
          "reward from the AR trained alongside")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def load_untrained(work: Path, device: str):
    from nla_tui.core.nla.demo import build_pair
    from nla_tui.core.options import EngineOptions
    from nla_tui.core.runtime.engine import Engine

    root = work / "untrained"
    if not (root / "ar" / "value_head.safetensors").is_file():
        build_pair(root, lambda f, m: log(m), None)
    quant = "bf16" if device.startswith("cuda") else "fp32"
    eng = Engine(EngineOptions(subject=str(root / "base"), av=str(root / "av"), ar=str(root / "ar"),
                               quant=quant, device=device, cache=False))
    eng.load()
    return eng


def _batches(items: list, size: int, rng: random.Random):
    while True:
        idx = list(range(len(items)))
        rng.shuffle(idx)
        for i in range(0, len(idx) - size + 1, size):
            yield [items[j] for j in idx[i:i + size]]


def _schedule(opt, base_lrs, step: int, warmup: int, total: int) -> None:
    f = min(1.0, (step + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(step / max(total, 1), 1.0))))
    for g, lr in zip(opt.param_groups, base_lrs):
        g["lr"] = lr * f


def sft(name: str, loss_fn, params_groups, items: list, batch: int, budget_s: float, max_steps: int,
        rng: random.Random) -> dict:
    opt = torch.optim.AdamW(params_groups, weight_decay=0.0)
    base = [g["lr"] for g in opt.param_groups]
    t0, step, losses_seen = time.perf_counter(), 0, []
    for chunk in _batches(items, batch, rng):
        if step >= max_steps or time.perf_counter() - t0 > budget_s:
            break
        _schedule(opt, base, step, 30, max_steps)
        loss = loss_fn(chunk)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in params_groups for p in g["params"]], 1.0)
        opt.step()
        losses_seen.append(float(loss.detach()))
        if step % 50 == 0:
            log(f"{name} step {step} loss {np.mean(losses_seen[-50:]):.4f}")
        step += 1
    return {"steps": step, "seconds": round(time.perf_counter() - t0, 1), "batch": batch,
            "loss_first": float(np.mean(losses_seen[:10])) if losses_seen else None,
            "loss_last": float(np.mean(losses_seen[-20:])) if losses_seen else None,
            "loss_step0": losses_seen[0] if losses_seen else None,
            "loss_final": losses_seen[-1] if losses_seen else None}


def rollout(vz, rc, vecs: torch.Tensor, group: int, penalty: float, seed: int):
    """Sample explanations (temperature 1, product decode path), score them with the AR
    (reward −mse_nrm; no closing tag: a fixed penalty, never scored), and normalise the
    rewards within each group of samples of one vector (GRPO's advantage)."""
    vz.model.eval()
    with torch.inference_mode():
        embeds = vz.build_embeds(vecs.cpu().numpy())
        rows = vz.decode(embeds, Sampling(temperature=1.0, max_new_tokens=evaluate.MAX_NEW, seed=seed))
    texts = [parse_explanation(vz.tok.decode(r, skip_special_tokens=True)) for r in rows]
    closed = torch.tensor([not tr for _, tr in texts])
    reward = torch.full((len(rows),), -penalty)
    if closed.any():
        idx = closed.nonzero()[:, 0].tolist()
        with torch.inference_mode():
            mse = losses.normalized_mse(rc.predict([texts[i][0] for i in idx]), vecs[idx])
        reward[idx] = -mse.cpu()
    g = reward.view(-1, group)
    adv = ((g - g.mean(1, keepdim=True)) / (g.std(1, keepdim=True) + 1e-4)).view(-1)
    seqs = [r if r else [vz.tok.eos_token_id] for r in rows]
    return seqs, texts, adv, reward, closed


def reference_policy(vz):
    """A frozen copy of the AV as it is now (the SFT policy the KL term holds to)."""
    ref = copy.copy(vz)
    ref.model = copy.deepcopy(vz.model).requires_grad_(False).eval()
    ref.embed = ref.model.get_input_embeddings()
    return ref


def rl(vz, rc, ref, items: list, args, rng: random.Random) -> dict:
    av_params = pair.lora_params(vz.model)
    ar_params = pair.lora_params(rc.model) + list(rc.value_head.parameters())
    opt_av = torch.optim.AdamW([{"params": av_params, "lr": args.rl_lr}], weight_decay=0.0)
    opt_ar = torch.optim.AdamW([{"params": ar_params, "lr": args.rl_lr * 5}], weight_decay=0.0)
    t0, step, hist = time.perf_counter(), 0, []
    for chunk in _batches(items, args.rl_prompts, rng):
        if step >= args.rl_max_steps or time.perf_counter() - t0 > args.rl_seconds:
            break
        vecs = torch.stack([e.vector for e in chunk]).repeat_interleave(args.rl_group, 0)
        seqs, texts, adv, reward, closed = rollout(vz, rc, vecs, args.rl_group, args.truncation_penalty, step)
        idx = closed.nonzero()[:, 0].tolist()
        vz.model.train()
        loss, kl = losses.rl_loss(vz, ref, vecs, seqs, adv, args.kl)
        opt_av.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(av_params, 1.0)
        opt_av.step()
        pair.policy_changed(vz.model)
        if closed.any():  # the AR learns to read what the AV now writes
            ar_l = losses.ar_loss(rc, [texts[i][0] for i in idx], vecs[idx])
            opt_ar.zero_grad(set_to_none=True)
            ar_l.backward()
            torch.nn.utils.clip_grad_norm_(ar_params, 1.0)
            opt_ar.step()
        hist.append({"reward": float(reward.mean()), "closed": float(closed.float().mean()), "kl": kl})
        if step % 10 == 0:
            recent = hist[-10:]
            log(f"rl step {step} reward {np.mean([h['reward'] for h in recent]):.4f} "
                f"closed {np.mean([h['closed'] for h in recent]):.2f} kl {np.mean([h['kl'] for h in recent]):.4f}")
        step += 1
    vz.model.eval()
    return {"steps": step, "seconds": round(time.perf_counter() - t0, 1), "prompts": args.rl_prompts,
            "group": args.rl_group, "kl_coef": args.kl,
            "reward_first": float(np.mean([h["reward"] for h in hist[:10]])) if hist else None,
            "reward_last": float(np.mean([h["reward"] for h in hist[-10:]])) if hist else None}


def run(args) -> dict:
    t_start = time.perf_counter()
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    work = Path(args.work or tempfile.mkdtemp(prefix="nla-train-"))
    eng = load_untrained(work, args.device)
    subject, vz, rc = eng.subject, eng.av, eng.ar
    records = corpus.load(Path(args.corpus))
    if args.max_records:
        records = records[:args.max_records]
    log(f"{len(records)} records; capturing layer-{subject.layer} activations")
    ex = data.build_examples(subject, records, seed=args.seed, max_heldout=args.heldout, progress=log)
    split = {s: [e for e in ex if e.split == s] for s in ("av_sft", "ar_sft", "rl", "heldout")}
    scale, var = data.stats([e for e in ex if e.split != "heldout"])
    log(f"examples {{{', '.join(f'{k}: {len(v)}' for k, v in split.items())}}}; scale {scale:.1f} var {var:.4f}")
    vz.meta = dataclasses.replace(vz.meta, injection_scale=scale)
    rc.variance = var
    held = split["heldout"][:args.heldout]
    hv, ht = torch.stack([e.vector for e in held]).cpu().numpy(), [e.target for e in held]
    ev = {"untrained": evaluate.evaluate(vz, rc, hv, ht, batch=args.eval_batch)}
    log(f"untrained: {ev['untrained']['fve_mean']:.3f}")
    av_peft = pair.add_lora(vz.model, args.r, args.alpha)
    ar_peft = pair.add_lora(rc.model, args.r, args.alpha)
    # Graphs captured for the untrained eval would replay the model without its new
    # LoRA layers (a graph replays kernels, not Python): drop them.
    pair.structure_changed(vz.model)
    pair.freeze_all_but_lora(vz.model)
    pair.freeze_all_but_lora(rc.model)
    rc.value_head.requires_grad_(True)
    stages = {}
    rc.model.train()
    stages["ar_sft"] = sft("ar_sft", lambda c: losses.ar_loss(rc, [e.target for e in c], torch.stack([e.vector for e in c])),
                           [{"params": pair.lora_params(rc.model), "lr": args.lr},
                            {"params": list(rc.value_head.parameters()), "lr": args.lr * 2}],
                           split["ar_sft"], args.batch, args.ar_seconds, args.max_steps, rng)
    rc.model.eval()
    vz.model.train()
    stages["av_sft"] = sft("av_sft", lambda c: losses.av_sft_loss(vz, torch.stack([e.vector for e in c]), [e.target for e in c]),
                           [{"params": pair.lora_params(vz.model), "lr": args.lr}],
                           split["av_sft"], args.batch, args.av_seconds, args.max_steps, rng)
    vz.model.eval()
    pair.policy_changed(vz.model)
    ev["sft"] = evaluate.evaluate(vz, rc, hv, ht, batch=args.eval_batch)
    log(f"after SFT: {json.dumps({k: v for k, v in ev['sft'].items() if k != 'examples'})}")
    if args.rl_seconds > 0:
        ref = reference_policy(vz)
        rc.model.train()
        stages["rl"] = rl(vz, rc, ref, split["rl"], args, rng)
        rc.model.eval()
        del ref
        ev["rl"] = evaluate.evaluate(vz, rc, hv, ht, batch=args.eval_batch)
        log(f"after RL: {json.dumps({k: v for k, v in ev['rl'].items() if k != 'examples'})}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {**pair.export_lora(vz.model, "av."), **pair.export_lora(rc.model, "ar.")}
    tensors["ar.value_head.weight"] = rc.value_head.weight.detach().to(torch.bfloat16).cpu().contiguous()
    from safetensors.torch import save_file
    save_file(tensors, str(out / "adapters.safetensors"))
    final = ev.get("rl") or ev["sft"]
    report = {
        "recipe": RECIPE,
        "data": "Debian packages python3.11-doc (PSF), libpython3.11-stdlib (PSF), fortunes (BSD), wordnet-base "
                "(WordNet 3.0 licence); documents and chat-templated conversations; held-out split by content hash",
        "trained_on": f"{torch.cuda.get_device_name(0) if args.device.startswith('cuda') else 'CPU'}, "
                      f"bf16 weights + fp32 LoRA, torch {torch.__version__}",
        "command": "python -m training " + " ".join(sys.argv[1:]),
        "wall_time_s": round(time.perf_counter() - t_start, 1),
        "steps": {k: v["steps"] for k, v in stages.items()},
        "stages": stages,
        "examples": {k: len(v) for k, v in split.items()},
        "lora": {"av_r": args.r, "av_alpha": args.alpha, "ar_r": args.r, "ar_alpha": args.alpha,
                 "targets": pair.TARGETS},
        "injection_scale": scale, "fve_variance": var,
        "eval": {"heldout_n": len(held), "fve_mean": round(final["fve_mean"], 4),
                 "fve_median": round(final["fve_median"], 4), "cos_mean": round(final["cos_mean"], 4),
                 "closed_share": round(final["closed_share"], 4),
                 "shuffled_fve_mean": round(final["shuffled_fve_mean"], 4)},
        "eval_by_stage": ev,
    }
    tmp = out / "training.json.tmp"
    tmp.write_text(json.dumps(report, indent=1, ensure_ascii=False), encoding="utf-8")
    tmp.replace(out / "training.json")
    log(f"done in {report['wall_time_s']} s: {json.dumps(report['eval'])}")
    return report


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m training", description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", default=".carry/corpus.jsonl.gz")
    ap.add_argument("--out", required=True)
    ap.add_argument("--work", help="where the untrained layout is built (default: a temp dir)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--max-records", type=int, default=0)
    ap.add_argument("--heldout", type=int, default=512)
    ap.add_argument("--r", type=int, default=16)
    ap.add_argument("--alpha", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--max-steps", type=int, default=4000)
    ap.add_argument("--ar-seconds", type=float, default=90)
    ap.add_argument("--av-seconds", type=float, default=180)
    ap.add_argument("--rl-seconds", type=float, default=180)
    ap.add_argument("--rl-max-steps", type=int, default=1000)
    ap.add_argument("--rl-prompts", type=int, default=32)
    ap.add_argument("--rl-group", type=int, default=8)
    ap.add_argument("--rl-lr", type=float, default=2e-4)
    ap.add_argument("--kl", type=float, default=0.01)
    ap.add_argument("--truncation-penalty", type=float, default=3.0)
    ap.add_argument("--eval-batch", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    run(ap.parse_args(argv))
