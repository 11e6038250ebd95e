"""Benchmarks for nla-tui (separate from the tests: speed is measured here, never asserted there).

    python -m bench gpu  --out bench/results/gpu.json   # 27B-shaped nf4 on one GPU
    python -m bench cpu  --out bench/results/cpu.json   # demo preset (Gemma 3 270M) on CPU
    python -m bench ui   --out bench/results/ui.json    # keypress-to-render, headless Pilot
    nla-tui bench ...                                     # the same, through the app's CLI
"""
