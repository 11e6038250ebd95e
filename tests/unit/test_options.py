"""EngineOptions: one definition for the CLI, the UI and `check`; L keeps what a session recorded."""

from __future__ import annotations

from dataclasses import fields

from nla_tui.cli import build_parser
from nla_tui.core.options import EngineOptions, PairSpec, from_args, from_model_info
from nla_tui.core.types import ModelInfo


def _info(**kw) -> ModelInfo:
    base = dict(preset=None, subject="org/subject", av="org/av", ar="org/ar", layer=7, quant="nf4",
                device="cuda", d_model=64, fve_variance=0.25)
    return ModelInfo(**{**base, **kw})


def test_every_model_flag_reaches_engine_options():
    args = build_parser().parse_args([
        "run", "--prompt", "x", "--preset", "demo", "--subject", "s", "--av", "a", "--ar", "r",
        "--layer", "3", "--quant", "bf16", "--device", "cpu", "--devices", "subject=0",
        "--cache-dir", "/c", "--no-cache", "--fve-variance", "0.5", "--park", "never", "--subject-quant", "fp32",
        "--extra-pair", "av=/x/av,ar=/x/ar,label=L"])
    opts = from_args(args)
    assert opts == EngineOptions(preset="demo", subject="s", av="a", ar="r", layer=3, quant="bf16",
                                 device="cpu", fve_variance=0.5, devices="subject=0", cache=False,
                                 cache_dir="/c", park="never", subject_quant="fp32",
                                 extra_pair=PairSpec("/x/av", "/x/ar", "L"))
    # and nothing is left at its default by accident: every field was set from a flag, but the
    # one `nla-tui sweep` sets from its plan (the longest conversation: not a user's choice)
    from_plan = {"subject_context_tokens"}
    assert all(getattr(opts, f.name) is not None for f in fields(EngineOptions) if f.name not in from_plan)
    assert {f.name for f in fields(EngineOptions)} >= from_plan


def test_the_tui_parser_and_a_bare_namespace_give_the_same_options():
    from argparse import Namespace

    assert from_args(build_parser().parse_args([])) == from_args(Namespace()) == EngineOptions()


def test_L_keeps_every_recorded_option_and_this_runs_machine_flags():
    base = from_args(build_parser().parse_args(["--devices", "subject=0,av=1,ar=1", "--no-cache",
                                                "--cache-dir", "/c", "--quant", "bf16",
                                                "--layer", "99", "--preset", "gemma3-12b"]))
    opts = from_model_info(_info(), base)
    # what the session recorded about its models wins over this run's flags
    assert (opts.preset, opts.subject, opts.av, opts.ar, opts.layer, opts.fve_variance) == \
        (None, "org/subject", "org/av", "org/ar", 7, 0.25)
    # where they run is this machine's: the flags, not the recorded cuda/nf4
    assert (opts.devices, opts.cache, opts.cache_dir, opts.quant, opts.device) == \
        ("subject=0,av=1,ar=1", False, "/c", "bf16", None)


def test_L_on_a_demo_session_goes_through_the_demo_preset():
    opts = from_model_info(_info(preset="demo", subject="demo:subject", av="demo:av", ar="demo:ar",
                                 layer=12, fve_variance=None))
    assert (opts.preset, opts.subject, opts.layer, opts.quant, opts.device) == ("demo", "demo:subject", 12, None, None)


def test_cli_registers_every_subcommand_by_name():
    """Registered explicitly (no ImportError swallowed): a broken subcommand module fails
    `nla-tui` loudly instead of silently removing the command."""
    import argparse

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert {"run", "check", "open", "export", "bench"} <= set(sub.choices)
