"""Every `nla-tui run` argument checked before a model loads.

At 27B scale loading, chatting and explaining take minutes: a typo found after them
is minutes lost. So everything that can be judged from the arguments alone is judged
here, first; the token indices of --explain are range-checked as soon as the token
count is known (after the capture), still before any AV work.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from pathlib import Path

from ..core.errors import InputError
from ..terminal_text import visible
from .output import say

INJECT = "<INJECT>"


def fix_negative_values(argv: list[str]) -> list[str]:
    """argparse reads `--explain -3,4` as an unknown option and exits with a usage
    dump; joining it to `--explain=-3,4` lets parse_explain_spec say what is wrong."""
    out, i = [], 0
    while i < len(argv):
        a = argv[i]
        if a == "--explain" and i + 1 < len(argv) and argv[i + 1].startswith("-"):
            out.append(f"--explain={argv[i + 1]}")
            i += 2
            continue
        out.append(a)
        i += 1
    return out


def parse_explain_spec(spec: str) -> str | list[int]:
    """'all' | 'none' | a list of non-negative indices (ranges 'A-B' included, both ends);
    syntax only (no token count yet)."""
    s = spec.strip()
    if s in ("all", "none"):
        return s
    if not s:
        raise InputError('--explain "" explains nothing. Pass --explain none to skip explaining, '
                         "all, or token indices like 3,7,12.")
    idx = []
    for part in s.split(","):
        part = part.strip()
        first, dash, last = part.partition("-")
        try:
            lo = int(part) if not first or not dash else int(first)
            hi = int(last) if first and dash else lo
        except ValueError:
            raise InputError(f"--explain {visible(spec)!r} is not all, none or a comma list of token "
                             "indices and ranges like 3,7,12 or 17-37.") from None
        if lo < 0:
            raise InputError(f"--explain index {lo} is negative: token indices count from 0 "
                             "(the table that `run` prints shows them).")
        if hi < lo:
            raise InputError(f"--explain range {visible(part)} runs backwards: write the smaller index first.")
        idx.extend(range(lo, hi + 1))
    return idx


def check_explain_range(spec: str | list[int], n_tokens: int) -> list[int]:
    if spec == "none":
        return []
    if spec == "all":
        return list(range(n_tokens))
    bad = [i for i in spec if i >= n_tokens]
    if bad:
        raise InputError(f"--explain index {bad[0]} is out of range: the conversation has {n_tokens} "
                         f"tokens (0..{n_tokens - 1}). Nothing was explained.")
    return list(spec)


def _positive(value, flag: str, integer: bool = True) -> None:
    if value is None:
        return
    if not math.isfinite(value) or value <= 0:
        kind = "a whole number of at least 1" if integer else "a finite number above 0"
        raise InputError(f"{flag} is {value}; it must be {kind}.")


MAX_TOKENS = 32768  # generated tokens per reply or explanation: 10**12 would ask for petabytes
MAX_SEED = 2 ** 63 - 1
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.01, 10.0  # below, softmax at 1/T overflows to inf/nan
_DEVICE = re.compile(r"^(cpu|cuda(:\d+)?|mps)$")


def check_tokens(value: int | None, flag: str) -> None:
    if value is not None and not 1 <= value <= MAX_TOKENS:
        raise InputError(f"{flag} is {value}; it must be a whole number of at least 1 and at most {MAX_TOKENS}.")


def check_sampling(temperature: float, max_explain_tokens: int, seed: int) -> None:
    """AV sampling flags (run, steer, compare, explain-vectors), before any model loads."""
    if not math.isfinite(temperature) or not (temperature == 0 or MIN_TEMPERATURE <= temperature <= MAX_TEMPERATURE):
        raise InputError(f"--temperature is {temperature}; it must be 0 (greedy) or above, from {MIN_TEMPERATURE:g} "
                         f"to {MAX_TEMPERATURE:g} (below that the sampling probabilities overflow).")
    check_tokens(max_explain_tokens, "--max-explain-tokens")
    if not 0 <= seed <= MAX_SEED:
        raise InputError(f"--seed is {seed}; it must be a whole number from 0 to 2**63 - 1.")


def check_device(device: str | None) -> None:
    """--device names a device this machine has: cuda on a machine without one used to
    run on the CPU while the session recorded `cuda`."""
    if device is None:
        return
    if not _DEVICE.match(device):
        raise InputError(f"--device {device!r} is not a device: use cpu, cuda, cuda:N (a GPU number) or mps.")
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise InputError(f"--device {device}: no CUDA GPU is visible on this machine (torch "
                             f"{torch.__version__}). Use --device cpu, or check the driver and CUDA_VISIBLE_DEVICES.")
        n = torch.cuda.device_count()
        if ":" in device and int(device.split(":")[1]) >= n:
            raise InputError(f"--device {device}: this machine has {n} CUDA GPU(s), cuda:0..cuda:{n - 1}.")


def check_model_args(args: argparse.Namespace) -> None:
    """Arguments shared by the TUI, run and check (checked once per parse)."""
    if getattr(args, "_models_checked", False):
        return
    args._models_checked = True
    if getattr(args, "layer", None) is not None and args.layer < 0:
        raise InputError(f"--layer {args.layer} is negative; layers count from 0.")
    _positive(getattr(args, "fve_variance", None), "--fve-variance", integer=False)
    check_device(getattr(args, "device", None))
    if getattr(args, "devices", None):
        from ..core.models.placement import parse_devices

        wanted = parse_devices(args.devices)  # a syntax error fails here, before any model loads
        import torch

        on_cpu = (args.device or "").startswith("cpu")
        if any(d != "cpu" for d in wanted.values()) and (on_cpu or not torch.cuda.is_available()):
            say("nla-tui: warning: --devices places models on CUDA GPUs, but "
                  f"{'--device is cpu' if on_cpu else 'no CUDA GPU is visible'}"
                  "; it is ignored and everything runs on one device.", file=sys.stderr)


def check_run_args(args: argparse.Namespace) -> str | list[int]:
    """All of `run`'s arguments; returns the parsed --explain spec. --example becomes
    --messages with the shipped example conversation."""
    given = [f for f, v in (("--prompt", args.prompt), ("--messages", args.messages),
                            ("--example", getattr(args, "example", False) or None)) if v is not None]
    if not given:
        raise InputError("Give --prompt TEXT, --messages FILE.json or --example.")
    if len(given) > 1:
        raise InputError(f"Give one of --prompt, --messages and --example, not {' and '.join(given)}.")
    if getattr(args, "example", False):
        from ..core.nla.presets import DEMO_EXAMPLE

        args.messages = str(DEMO_EXAMPLE)
    if args.prompt is not None and not args.prompt.strip():
        raise InputError("The prompt is empty: pass some text with --prompt.")
    check_model_args(args)
    check_tokens(args.max_new_tokens, "--max-new-tokens")
    check_sampling(args.temperature, args.max_explain_tokens, args.seed)
    _positive(args.batch_size, "--batch-size")
    if args.av_prompt is not None and args.av_prompt.count(INJECT) != 1:
        raise InputError(f"--av-prompt must contain {INJECT} exactly once (found "
                         f"{args.av_prompt.count(INJECT)}), where the activation goes, e.g. "
                         f"'What is <concept>{INJECT}</concept>?'")
    spec = parse_explain_spec(args.explain)
    if args.out:
        from ..core.store.session_guard import current_generation
        from ..core.store.session_files import check_out_dir

        check_out_dir(args.out, args.force)
        # What --out holds now (None: no session): the save, under the folder's lock,
        # refuses if another process saved a session there meanwhile (issue 19, item 4).
        args.out_generation = current_generation(Path(args.out).expanduser())
    return spec


def check_out_flags(args: argparse.Namespace) -> None:
    """`--out ""` (an unset shell variable) would silently write nothing: refuse it."""
    out = getattr(args, "out", None)
    if out is not None and not out.strip():
        raise InputError(f"--out {out!r} names no file or folder, so nothing would be written. Give a path, "
                         "or leave --out out.")
