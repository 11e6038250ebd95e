"""Figures, targets, the printed table and the JSON file shared by every benchmark."""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

# Targets from issue 5 (H100, nf4, Gemma 3 27B shape). (kind, bound): "max" = value must be
# <= bound, "min" = value must be >= bound. They apply to GPU runs; CPU runs only report.
TARGETS: dict[str, tuple[str, float]] = {
    # Issue 24 tightened these (H100/H200, 27B shape): b1 <= 15 ms required (10 the aim),
    # a 200-token explanation <= 2.5 s, one 150-row batch on 80 GB >= 3,000 tok/s.
    "av_b1_ms_per_step": ("max", 15.0),
    "av_b1_speedup": ("min", 7.0),
    "av_first_token_s": ("max", 0.5),
    "av_explanation_200_s": ("max", 2.5),
    "explain_all_av_tok_s_one_batch": ("min", 3000.0),
    "int4_b1_ms_per_step": ("max", 15.0),
    "int4_explanation_200_s": ("max", 2.5),
    "warmup_s": ("max", 60.0),
    "explain_all_av_tok_s": ("min", 2000.0),
    "explain_all_150_s": ("max", 20.0),
    "peak_gib_three_models_explain_all": ("max", 44.0),
    "ui_keypress_p95_ms": ("max", 20.0),
    # Issue 14 (H200, 27B shape, 44 GiB budget for explain-all).
    "explain_all_150_parked_s": ("max", 30.0),
    "explain_all_parked_av_tok_s": ("min", 1000.0),
    "peak_gib_explain_all_parked": ("max", 44.0),
    "start_three_models_cached_s": ("max", 35.0),
}


@dataclass
class Figure:
    name: str
    value: float | None
    unit: str
    baseline: float | None = None  # same quantity, eager HF path, same run
    note: str = ""
    target: str | None = None
    met: bool | None = None
    miss: str | None = None  # how far from the target, when missed

    @property
    def ratio(self) -> float | None:
        """How many times better than the baseline (time: baseline/value; rate: value/baseline)."""
        if self.baseline is None or not self.value:
            return None
        rate = self.unit.endswith("/s")
        return self.value / self.baseline if rate else self.baseline / self.value


@dataclass
class Report:
    suite: str
    machine: dict[str, Any]
    command: str
    started: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    figures: list[Figure] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    apply_targets: bool = True

    def add(self, name: str, value: float | None, unit: str, baseline: float | None = None, note: str = "") -> Figure:
        f = Figure(name, None if value is None else round(float(value), 4), unit,
                   None if baseline is None else round(float(baseline), 4), note)
        if self.apply_targets and name in TARGETS and value is not None:
            kind, bound = TARGETS[name]
            f.target = f"{'<=' if kind == 'max' else '>='} {bound:g} {unit}"
            f.met = value <= bound if kind == "max" else value >= bound
            if not f.met:
                f.miss = f"{value / bound:.2f}x the bound" if kind == "max" else f"{bound / value:.2f}x short"
        self.figures = [g for g in self.figures if g.name != name] + [f]
        return f

    def section(self, name: str, fn: Callable[[], None], out: Path | None = None) -> None:
        """Run one group of measurements; an error is recorded, and the rest still run."""
        t = time.perf_counter()
        try:
            fn()
        except Exception as exc:  # a benchmark reports what broke instead of dying
            import traceback

            self.errors[name] = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
        self.details.setdefault("section_s", {})[name] = round(time.perf_counter() - t, 2)
        print(f"[bench] {name}: {time.perf_counter() - t:.1f} s", file=sys.stderr, flush=True)
        if out is not None:
            self.write(out)

    def to_json(self) -> dict[str, Any]:
        figs = []
        for f in self.figures:
            d = asdict(f)
            d["ratio"] = None if f.ratio is None else round(f.ratio, 2)
            figs.append(d)
        return {"suite": self.suite, "machine": self.machine, "command": self.command, "started": self.started,
                "figures": figs, "details": self.details, "errors": self.errors}

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=1))
        os.replace(tmp, path)  # atomic: a killed run leaves the last complete file

    def table(self) -> str:
        rows = [("figure", "value", "unit", "baseline", "x base", "target", "met")]
        for f in self.figures:
            rows.append((f.name, _fmt(f.value), f.unit, _fmt(f.baseline),
                         "" if f.ratio is None else f"{f.ratio:.1f}x", f.target or "",
                         "" if f.met is None else ("yes" if f.met else f"NO ({f.miss})")))
        w = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(c.ljust(w[i]) for i, c in enumerate(r)) for r in rows]
        lines.insert(1, "  ".join("-" * x for x in w))
        head = f"{self.suite} on {self.machine.get('device', '?')} ({self.started})"
        tail = [f"error in {k}: {v}" for k, v in self.errors.items()]
        return "\n".join([head, *lines, *tail])


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"


def machine(device: str = "cpu") -> dict[str, Any]:
    info: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform(),
                            "cpus": os.cpu_count()}
    try:
        import torch
        import transformers

        info.update(torch=torch.__version__, transformers=transformers.__version__)
        if device == "cuda" and torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            info.update(device=p.name, gpu_mem_gib=round(p.total_memory / 2**30, 1), sms=p.multi_processor_count,
                        gpus=torch.cuda.device_count())
        else:
            info["device"] = f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    except ImportError:
        info["device"] = "CPU"
    try:
        import bitsandbytes

        info["bitsandbytes"] = bitsandbytes.__version__
    except Exception:
        pass
    return info


def median_time(fn: Callable[[], Any], repeats: int = 3, sync: Callable[[], None] | None = None) -> float:
    times = []
    for _ in range(repeats):
        if sync:
            sync()
        t = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]
