"""The sweep's search index: SQLite (stdlib) with FTS5 over explanations and token texts.

Built from the Parquet shards, one transaction per shard, so it can always be brought up
to date from them (`sync`): a kill between a shard's rename and its index transaction
costs nothing. Queries use FTS5 syntax: words, "phrases", prefix* , AND / OR / NOT.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from ..errors import InputError
from .shards import INDEX, finished_shards, iter_shard_rows, shard_number

COLUMNS = ("conversation_id", "conversation", "message_index", "token_index", "role", "token_text",
           "context_before", "context_after", "explanation", "fve_nrm", "cos", "specificity", "surprise",
           "prior_fve", "activation_norm", "mse_nrm", "truncated", "others", "temperature", "max_new_tokens",
           "seed")
REALS = {"fve_nrm", "cos", "specificity", "surprise", "prior_fve", "activation_norm", "mse_nrm", "temperature"}
INTEGERS = {"conversation", "message_index", "token_index", "truncated", "others", "max_new_tokens", "seed"}
SORTS = {"rank": "rank", "fve": "r.fve_nrm DESC", "-fve": "r.fve_nrm ASC", "specificity": "r.specificity DESC",
         "surprise": "r.surprise DESC", "norm": "r.activation_norm DESC"}  # rank: FTS5's bm25 (best first)

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS rows (id INTEGER PRIMARY KEY, shard INTEGER NOT NULL,
  {", ".join(c + (" REAL" if c in REALS else " INTEGER" if c in INTEGERS else " TEXT") for c in COLUMNS)});
CREATE INDEX IF NOT EXISTS rows_shard ON rows(shard);
CREATE INDEX IF NOT EXISTS rows_role_fve ON rows(role, fve_nrm);
CREATE VIRTUAL TABLE IF NOT EXISTS fts USING fts5(explanation, token_text, content='rows', content_rowid='id');
CREATE TABLE IF NOT EXISTS shards (shard INTEGER PRIMARY KEY, rows INTEGER NOT NULL, mtime_ns INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS conversations (id TEXT PRIMARY KEY, shard INTEGER NOT NULL, messages TEXT NOT NULL);
"""


@dataclass
class Hit:
    conversation_id: str
    conversation: int
    message_index: int
    token_index: int
    role: str
    token_text: str
    context_before: str
    context_after: str
    explanation: str
    fve_nrm: float | None
    cos: float | None
    specificity: float | None
    surprise: float | None
    prior_fve: float | None
    activation_norm: float | None
    mse_nrm: float | None
    truncated: bool
    others: int
    temperature: float
    max_new_tokens: int
    seed: int

    @property
    def controls(self) -> dict[str, float]:
        out = {"others": float(self.others)} if self.specificity is not None else {}
        if self.specificity is not None:
            out["specificity"] = self.specificity
        if self.prior_fve is not None:
            out["prior_fve"] = self.prior_fve
        return out


def connect(out: Path) -> sqlite3.Connection:
    db = sqlite3.connect(str(Path(out) / INDEX))
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(_SCHEMA)
    return db


def add_shard(db: sqlite3.Connection, shard: int, rows: list[dict[str, Any]], mtime_ns: int,
              conversations: Iterable[tuple[str, list[dict]]] = ()) -> None:
    """Replace one shard's rows (and its conversations' messages) in one transaction."""
    with db:
        old = [r[0] for r in db.execute("SELECT id FROM rows WHERE shard=?", (shard,))]
        if old:
            db.executemany("INSERT INTO fts(fts, rowid, explanation, token_text) "
                           "SELECT 'delete', id, explanation, token_text FROM rows WHERE id=?", [(i,) for i in old])
            db.execute("DELETE FROM rows WHERE shard=?", (shard,))
        db.executemany(f"INSERT INTO rows (shard, {', '.join(COLUMNS)}) VALUES (?{', ?' * len(COLUMNS)})",
                             [(shard, *(r.get(c) for c in COLUMNS)) for r in rows])
        db.execute("INSERT INTO fts(rowid, explanation, token_text) SELECT id, explanation, token_text "
                   "FROM rows WHERE shard=?", (shard,))
        db.executemany("INSERT OR REPLACE INTO conversations (id, shard, messages) VALUES (?, ?, ?)",
                       [(cid, shard, json.dumps(msgs, ensure_ascii=False)) for cid, msgs in conversations])
        db.execute("INSERT OR REPLACE INTO shards (shard, rows, mtime_ns) VALUES (?, ?, ?)",
                   (shard, len(rows), mtime_ns))


def sync(out: Path, db: sqlite3.Connection | None = None) -> int:
    """Index every shard file the index does not hold as it is now (new, or rewritten after the
    index last saw it); returns how many. A sweep calls this when it starts, so a kill between
    a shard's rename and its index transaction is repaired by the next run."""
    own = db or connect(out)
    known = dict(own.execute("SELECT shard, mtime_ns FROM shards"))
    now = {shard_number(p): p.stat().st_mtime_ns for p in finished_shards(out)}
    stale = {k for k, m in now.items() if known.get(k) != m}
    for shard, rows in iter_shard_rows(out, list(COLUMNS), stale) if stale else ():
        add_shard(own, shard, rows, now[shard])
    if db is None:
        own.close()
    return len(stale)


def search(out: Path, query: str, roles: tuple[str, ...] | None = None, min_fve: float | None = None,
           sort: str = "rank", limit: int = 20, db: sqlite3.Connection | None = None) -> list[Hit]:
    if sort not in SORTS:
        raise InputError(f"--sort {sort!r}: use one of {', '.join(SORTS)}.")
    own = db or connect(out)
    browse = not (query or "").strip()  # no query: every row, in the chosen order
    where, args = ([], []) if browse else (["fts MATCH ?"], [query])
    if roles:
        where.append(f"r.role IN ({', '.join('?' * len(roles))})")
        args += list(roles)
    if min_fve is not None:
        where.append("r.fve_nrm >= ?")
        args.append(min_fve)
    order = SORTS["fve" if browse and sort == "rank" else sort]
    source = "rows r" if browse else "fts JOIN rows r ON r.id = fts.rowid"
    sql = (f"SELECT {', '.join('r.' + c for c in COLUMNS)} FROM {source} "
           f"{'WHERE ' + ' AND '.join(where) if where else ''} ORDER BY {order} LIMIT ?")
    try:
        found = own.execute(sql, (*args, int(limit))).fetchall()
    except sqlite3.OperationalError as e:
        raise InputError(f"{query!r} is not a valid search ({e}). FTS5 syntax: words, \"a phrase\", prefix*, "
                         f"AND / OR / NOT; quote a word holding punctuation.") from None
    finally:
        if db is None:
            own.close()
    return [Hit(*row) for row in found]


def conversation_messages(out: Path, conversation_id: str) -> list[dict] | None:
    db = connect(out)
    try:
        row = db.execute("SELECT messages FROM conversations WHERE id=?", (conversation_id,)).fetchone()
    finally:
        db.close()
    return json.loads(row[0]) if row else None
