"""Corpus sweeps: explain many conversations, keep the rows in Parquet, search and report.

reader.py (inputs) → selection.py (which positions) → plan.py (validation, shards, cost)
→ sweep.py (the engine over the plan; the only module here that loads models)
→ shards.py (Parquet shards + manifest, atomic, resumable) → index.py (SQLite FTS5)
→ report.py (one HTML page). Everything but sweep.py is model-free: the UI's corpus
screen and `nla-tui search` / `report` read the output without torch.
"""
