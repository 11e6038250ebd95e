"""A sweep's output folder: Parquet shards, optional activation shards, manifest.json.

    DIR/manifest.json                 input digest, options, plan, versions (written first)
    DIR/shards/part-00000.parquet     one row per explained position (schema: ROW_FIELDS)
    DIR/shards/part-00000.safetensors that shard's activations (--save-activations), written
                                      before its Parquet file: the Parquet file is the commit
    DIR/index.sqlite                  the search index (index.py), rebuilt from the shards

Every file is written to a temp name, fsynced and renamed: a kill at any moment leaves
each shard whole or absent. A shard is finished when its file holds the rows the plan
gives it (a --limit run may leave one short; the next run redoes that one shard).
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any, Iterator

from ..errors import InputError
from ..store.session_files import _write_atomic as write_atomic  # the project's one atomic writer

MANIFEST = "manifest.json"
SHARD_DIR = "shards"
INDEX = "index.sqlite"
SHARD_NAME = re.compile(r"part-(\d{5})\.(parquet|safetensors)$")
FORMAT = "nla-tui-sweep/1"
# The row schema's version, part of a sweep's identity: rows of another schema must not
# mix into one output (2: + verdict, caveats).
ROW_SCHEMA = 2

# (name, pyarrow type name): the Parquet schema, in column order. docs/CORPUS.md explains each.
ROW_FIELDS: list[tuple[str, str]] = [
    ("conversation_id", "string"), ("conversation", "int64"), ("message_index", "int64"),
    ("turn", "int64"), ("token_index", "int64"), ("token_id", "int64"), ("token_text", "string"),
    ("role", "string"), ("context_before", "string"), ("context_after", "string"),
    ("surprise", "float64"), ("activation_norm", "float64"),
    ("explanation", "string"), ("closed", "bool"), ("truncated", "bool"), ("warnings", "list<string>"),
    ("cos", "float64"), ("mse_nrm", "float64"), ("fve_nrm", "float64"), ("label", "string"),
    ("verdict", "string"), ("caveats", "list<string>"),
    ("specificity", "float64"), ("fve_others_mean", "float64"), ("others", "int64"),
    ("prior_fve", "float64"), ("prior_cos", "float64"),
    ("subject", "string"), ("av", "string"), ("ar", "string"), ("precision", "string"), ("layer", "int64"),
    ("temperature", "float64"), ("top_p", "float64"), ("max_new_tokens", "int64"), ("seed", "int64"),
    ("av_prompt", "string"), ("shard", "int64"),
]


def pyarrow():
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise InputError("Sweeps write Parquet with pyarrow: pip install 'nla-tui[corpus]'.") from None
    return pa, pq


def schema():
    pa, _ = pyarrow()
    types = {"string": pa.string(), "int64": pa.int64(), "float64": pa.float64(), "bool": pa.bool_(),
             "list<string>": pa.list_(pa.string())}
    return pa.schema([(n, types[t]) for n, t in ROW_FIELDS])


def shard_path(out: Path, k: int, ext: str = "parquet") -> Path:
    return Path(out) / SHARD_DIR / f"part-{k:05d}.{ext}"


def write_shard(out: Path, k: int, rows: list[dict[str, Any]], activations=None) -> Path:
    """Activations first (if any), then the Parquet file, each atomically."""
    pa, pq = pyarrow()
    (Path(out) / SHARD_DIR).mkdir(parents=True, exist_ok=True)
    if activations is not None:
        from safetensors.numpy import save

        write_atomic(shard_path(out, k, "safetensors"), save({"activations": activations},
                                                             metadata={"rows": str(len(rows))}))
    table = pa.Table.from_pylist(rows, schema=schema())
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    path = shard_path(out, k)
    write_atomic(path, buf.getvalue())
    return path


def shard_row_count(path: Path) -> int | None:
    """Rows in a finished shard; None if absent or unreadable (then it is redone)."""
    if not path.is_file():
        return None
    _, pq = pyarrow()
    try:
        return pq.read_metadata(path).num_rows
    except Exception:  # a damaged file of ours: redo it
        return None


def finished_shards(out: Path) -> list[Path]:
    d = Path(out) / SHARD_DIR
    return sorted(p for p in d.glob("part-*.parquet") if SHARD_NAME.match(p.name)) if d.is_dir() else []


def read_rows(out: Path, columns: list[str] | None = None) -> list[dict[str, Any]]:
    """Every row of every shard, in shard order (pandas/polars/DuckDB read the folder too)."""
    return [r for _, rows in iter_shard_rows(out, columns) for r in rows]


def shard_number(path: Path) -> int:
    return int(SHARD_NAME.match(path.name).group(1))


def iter_shard_rows(out: Path, columns: list[str] | None = None, only: set[int] | None = None
                    ) -> Iterator[tuple[int, list[dict[str, Any]]]]:
    """Rows of each finished shard; a column an older sweep did not write reads as None."""
    _, pq = pyarrow()
    for p in finished_shards(out):
        if only is None or shard_number(p) in only:
            if columns is None:
                yield shard_number(p), pq.read_table(p).to_pylist()
                continue
            present = set(pq.read_schema(p).names)
            rows = pq.read_table(p, columns=[c for c in columns if c in present]).to_pylist()
            missing = [c for c in columns if c not in present]
            yield shard_number(p), [dict(r, **dict.fromkeys(missing)) for r in rows] if missing else rows


# ------------------------------------------------------------------ manifest

def read_manifest(out: Path) -> dict | None:
    p = Path(out) / MANIFEST
    if not p.is_file():
        return None
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise InputError(f"{p} is not readable JSON ({e}); it is not a sweep nla-tui finished writing. "
                         f"Use another --out folder.") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise InputError(f"{p} is not an nla-tui sweep manifest (format {FORMAT}).")
    return doc


def write_manifest(out: Path, doc: dict) -> None:
    Path(out).mkdir(parents=True, exist_ok=True)
    write_atomic(Path(out) / MANIFEST, (json.dumps(dict(doc, format=FORMAT), indent=1, ensure_ascii=False)
                                        + "\n").encode())


def require_sweep(out: str | Path) -> Path:
    """An existing sweep folder (for search, report, the corpus screen)."""
    p = Path(out).expanduser()
    if read_manifest(p) is None:
        raise InputError(f"{p} is not a sweep output folder (no {MANIFEST}); run `nla-tui sweep DATASET --out {p}` first.")
    return p


def differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Keys whose values differ between two identity documents, dotted."""
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {a!r} → {b!r}")
    return out


def prepare_out(out: Path, identity: dict, force: bool) -> dict | None:
    """Check DIR before any model loads. Returns the old manifest when resuming the same job.
    A different job's output is refused (the options that differ are listed) unless `force`,
    which removes only that sweep's own files (its shards, index and manifest)."""
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file; give a folder (new, or a sweep to resume).")
    old = read_manifest(out) if out.is_dir() else None
    if old is None:
        others = [p.name for p in out.iterdir()] if out.is_dir() else []
        if others and not force:
            raise InputError(f"--out {out} is not empty and holds no sweep ({', '.join(sorted(others)[:5])}); "
                             f"give a new folder, or --force to write beside those files (none is deleted).")
        return None
    diff = differences(old.get("identity", {}), identity)
    if not diff:
        return old
    if not force:
        raise InputError(f"--out {out} holds a sweep made with other inputs or options, so its rows must not mix "
                         f"with these:\n  " + "\n  ".join(diff[:12]) +
                         "\nUse another --out folder, the same options to resume it, or --force to discard it.")
    remove_sweep_files(out)
    return None


def remove_stale_temps(out: Path) -> None:
    """Temp files a killed sweep left mid-write (named by write_atomic: `.part-NNNNN.*.tmp`)."""
    d = Path(out) / SHARD_DIR
    for p in d.glob(".part-*.tmp") if d.is_dir() else ():
        p.unlink(missing_ok=True)


def remove_sweep_files(out: Path) -> None:
    """Only what a sweep writes (named by its patterns): nothing else in DIR is touched."""
    for p in finished_shards(out) + sorted((out / SHARD_DIR).glob("part-*.safetensors")):
        p.unlink(missing_ok=True)
    for name in (INDEX, INDEX + "-wal", INDEX + "-shm", "report.html", MANIFEST):
        (out / name).unlink(missing_ok=True)


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("nla-tui", "torch", "transformers", "pyarrow", "safetensors"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out

