"""The sweep's search index: SQLite (stdlib) with FTS5 over explanations and token texts.

Built from the Parquet shards, one transaction per shard, so it can always be brought up
to date from them (`sync`): a kill between a shard's rename and its index transaction
costs nothing. Queries use FTS5 syntax: words, "phrases", prefix* , AND / OR / NOT.
"""

from __future__ import annotations

import json
import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from ..errors import InputError
from .shards import INDEX, finished_shards, iter_shard_rows, shard_number

COLUMNS = ("conversation_id", "conversation", "message_index", "token_index", "role", "token_text",
           "context_before", "context_after", "explanation", "fve_nrm", "cos", "specificity", "surprise",
           "prior_fve", "activation_norm", "mse_nrm", "truncated", "others", "temperature", "max_new_tokens",
           "seed", "label", "verdict")
_INDEXES = {"r.fve_nrm": "rows_fve", "r.specificity": "rows_specificity", "r.surprise": "rows_surprise",
            "r.activation_norm": "rows_norm"}
REALS = {"fve_nrm", "cos", "specificity", "surprise", "prior_fve", "activation_norm", "mse_nrm", "temperature"}
INTEGERS = {"conversation", "message_index", "token_index", "truncated", "others", "max_new_tokens", "seed"}


def _sql_type(column: str) -> str:
    return "REAL" if column in REALS else "INTEGER" if column in INTEGERS else "TEXT"


SMALL = 5000  # matches sorted outright; beyond, see search()
# A quoted phrase each of whose words is in more rows than this is not ranked: bm25 (and
# counting its matches) must read every row holding its words (tens of ms at a million rows).
COMMON_ROWS = 100_000
SAMPLE = 1000  # index entries read to estimate how many rows hold a word
# A column sort of one quoted phrase walks the column's index this many rows at most, reading
# each row's text (see _phrase_walk); a phrase too rare to fill the page by then is sorted outright.
WALK_ROWS = 20_000
WALK_PAGE = 512  # rows fetched per step of that walk
WALK_PROBE = 4096  # rows walked before judging, from the hits so far, whether WALK_ROWS will do
_PHRASE = re.compile(r'"([^"]*)"')
_ONE_PHRASE = re.compile(r'\s*"([^"]*)"\s*')  # the whole query is one quoted phrase
_ASCII_TOKEN = re.compile(r"[A-Za-z0-9]+")  # FTS5's unicode61 tokens in ASCII text: runs of letters and digits
SORTS = {"rank": "rank", "corpus": "fts.rowid", "fve": "r.fve_nrm DESC", "-fve": "r.fve_nrm ASC", "specificity": "r.specificity DESC",
         "surprise": "r.surprise DESC", "norm": "r.activation_norm DESC"}  # rank: FTS5's bm25 (best first)

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS rows (id INTEGER PRIMARY KEY, shard INTEGER NOT NULL,
  {", ".join(c + " " + _sql_type(c) for c in COLUMNS)});
CREATE INDEX IF NOT EXISTS rows_shard ON rows(shard);
CREATE INDEX IF NOT EXISTS rows_fve ON rows(fve_nrm);
CREATE INDEX IF NOT EXISTS rows_specificity ON rows(specificity);
CREATE INDEX IF NOT EXISTS rows_surprise ON rows(surprise);
CREATE INDEX IF NOT EXISTS rows_norm ON rows(activation_norm);
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
    label: str | None  # the score's plain label
    verdict: str | None  # core.caveats' verdict, as the TUI's pane shows it (None: a sweep older than it)

    @property
    def shown_verdict(self) -> str:
        """What a listing prints: the verdict, else (an older sweep) the plain label."""
        return self.verdict or self.label or ""

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
    # An index an older nla-tui wrote lacks the newer columns: add them (their rows read None).
    have = {r[1] for r in db.execute("PRAGMA table_info(rows)")}
    added = [c for c in COLUMNS if c not in have]
    for c in added:
        db.execute(f"ALTER TABLE rows ADD COLUMN {c} {_sql_type(c)}")
    if added:  # refill them from the shards on the next sync (what those shards hold of them)
        with db:
            db.execute("DELETE FROM shards")
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


class Hits(list):
    """A list of Hit with `note`: how the order was decided when it is not the one asked for."""

    note: str = ""


def _match_count(db: sqlite3.Connection, query: str, cap: int) -> int:
    """How many rows match, counted up to cap + 1 (streaming: cheap for any query)."""
    return db.execute("SELECT count(*) FROM (SELECT rowid FROM fts WHERE fts MATCH ? LIMIT ?)",
                      (query, cap + 1)).fetchone()[0]


def _estimated_matches(db: sqlite3.Connection, query: str, k: int, total: int) -> float | None:
    """About how many rows match, from where the k-th match lies in the corpus (reads k
    matches, however many there are); None when there are fewer than k."""
    kth = db.execute("SELECT rowid FROM fts WHERE fts MATCH ? ORDER BY rowid LIMIT 1 OFFSET ?",
                     (query, k - 1)).fetchone()
    return None if kth is None else k * total / kth[0]


def _total_rows(db: sqlite3.Connection) -> int:
    return db.execute("SELECT max(id) FROM rows").fetchone()[0] or 0


def _rows_holding(db: sqlite3.Connection, word: str, total: int) -> float:
    """About how many rows hold `word` (exact below SAMPLE rows)."""
    estimate = _estimated_matches(db, f'"{word}"', SAMPLE, total)
    return _match_count(db, f'"{word}"', SAMPLE) if estimate is None else estimate


def _common_phrase(db: sqlite3.Connection, query: str) -> str | None:
    """The first quoted phrase of two or more words that are each in more than about
    COMMON_ROWS rows, if any."""
    phrases = [p for p in _PHRASE.findall(query) if len(re.findall(r"\w+", p)) >= 2]
    if not phrases:
        return None
    total = _total_rows(db)
    for phrase in phrases:
        if all(_rows_holding(db, w, total) > COMMON_ROWS for w in re.findall(r"\w+", phrase)):
            return phrase
    return None


def search(out: Path, query: str, roles: tuple[str, ...] | None = None, min_fve: float | None = None,
           sort: str = "rank", limit: int = 20, db: sqlite3.Connection | None = None) -> Hits:
    """Rows whose explanation or token text match `query` (FTS5), filtered and sorted.

    Milliseconds on a million rows whatever the query (BENCHMARKS.md): corpus order streams
    FTS5's matches; up to SMALL matches are sorted outright; beyond that a column sort walks
    that column's index and probes FTS5 per row (a common word matches early), and a bm25
    rank, which would have to score every match, falls back to corpus order and says so. A
    rank of a phrase of common words (each in over COMMON_ROWS rows) goes to corpus order
    without counting: counting or ranking it reads all those rows however few match. A column
    sort of a query that is one such phrase walks the column's index reading row texts
    (_phrase_walk), else sorts its matches outright, without counting either."""
    if sort not in SORTS:
        raise InputError(f"--sort {sort!r}: use one of {', '.join(SORTS)}.")
    own = db or connect(out)
    browse = not (query or "").strip()  # no query: every row, in the chosen order
    filters, args = [], []
    if roles:
        filters.append(f"r.role IN ({', '.join('?' * len(roles))})")
        args += list(roles)
    if min_fve is not None:
        filters.append("r.fve_nrm >= ?")
        args.append(min_fve)
    cols = ", ".join("r." + c for c in COLUMNS)
    result = Hits()
    try:
        column_sort = not browse and sort in _COLUMN_SORTS
        common = _common_phrase(own, query) if not browse and (sort == "rank" or column_sort) else None
        walk_gave_up = False
        if column_sort and common and _phrase_pattern(query):
            walked = _phrase_walk(own, query, sort, filters, args, int(limit))
            if walked is not None:
                result.extend(walked)
                return result
            walk_gave_up = True  # a rare phrase: sorted outright, without counting its matches first
        if sort != "rank":
            common = None
        many = (not browse and sort != "corpus" and not common and not walk_gave_up
                and _match_count(own, query, SMALL) > SMALL)
        if common:
            result.note = (f'each word of "{common}" is in over {COMMON_ROWS:,} rows: listed in corpus order '
                           f'(ranking the phrase reads all of them; add a rarer word to rank)')
        if browse:
            order = "r.id" if sort == "corpus" else SORTS["fve" if sort == "rank" else sort]
            sql, params = f"SELECT {cols} FROM rows r {_where(filters)} ORDER BY {order} LIMIT ?", args
        elif sort == "corpus" or (sort == "rank" and (many or common)):
            if sort == "rank" and not common:
                result.note = f"more than {SMALL:,} matches: listed in corpus order (narrow the query to rank them)"
            sql = f"SELECT {cols} FROM fts JOIN rows r ON r.id = fts.rowid {_where(['fts MATCH ?'] + filters)} " \
                  f"ORDER BY fts.rowid LIMIT ?"
            params = [query] + args
        elif many:
            column = SORTS[sort].split()[0]
            sql = (f"SELECT {cols} FROM rows r INDEXED BY {_INDEXES[column]} "
                   f"{_where([column + ' IS NOT NULL'] + filters + ['EXISTS (SELECT 1 FROM fts WHERE fts.rowid = r.id AND fts MATCH ?)'])} "
                   f"ORDER BY {SORTS[sort]} LIMIT ?")
            params = args + [query]
        else:
            sql = (f"SELECT {cols} FROM fts JOIN rows r ON r.id = fts.rowid {_where(['fts MATCH ?'] + filters)} "
                   f"ORDER BY {SORTS[sort]} LIMIT ?")
            params = [query] + args
        result.extend(Hit(*row) for row in own.execute(sql, (*params, int(limit))))
    except sqlite3.OperationalError as e:
        raise InputError(f"{query!r} is not a valid search ({e}). FTS5 syntax: words, \"a phrase\", prefix*, "
                         f"AND / OR / NOT; quote a word holding punctuation.") from None
    finally:
        if db is None:
            own.close()
    return result


_COLUMN_SORTS = {k for k, v in SORTS.items() if v.split()[0] in _INDEXES}


def _phrase_pattern(query: str) -> re.Pattern | None:
    """For a query that is one quoted phrase of ASCII words, a regex that finds the phrase in
    any ASCII text FTS5 matches it in (FTS5's unicode61 splits ASCII into runs of letters and
    digits, folding case: the words with separators between them are a substring of it); else
    None. It may also find it where FTS5 does not (`xcapital city`): only a row it misses is
    known not to match."""
    m = _ONE_PHRASE.fullmatch(query or "")
    if not m or not m.group(1).isascii():
        return None
    words = _ASCII_TOKEN.findall(m.group(1))
    if not words:
        return None
    # no lookarounds for the words' edges: they make the search ~3x slower, for the few rows FTS5 then rules out
    return re.compile(r"[^A-Za-z0-9]+".join(map(re.escape, words)), re.IGNORECASE | re.ASCII)


def _phrase_walk(db: sqlite3.Connection, query: str, sort: str, filters: list[str], args: list,
                 limit: int) -> list[Hit] | None:
    """A column sort of one quoted phrase: the first `limit` matches walking the column's index,
    or None when WALK_ROWS rows did not hold that many, or when the first WALK_PROBE rows say
    they will not (the caller then sorts the matches outright).

    Probing FTS5 at every row costs ~45 us at a million rows (each probe seeks both words'
    lists); a phrase in 1.6 % of rows needed ~1,300 probes for 20 hits (60 ms). Here each
    row's own text is read instead (~1 us): ASCII text the phrase is not in, by FTS5's own
    rule for ASCII (_phrase_pattern), is skipped; every other row (a candidate, or non-ASCII
    text) is checked against FTS5, so only rows FTS5 matches are returned, in the column's
    index order (the order `ORDER BY column` gives; nulls where SQL puts them)."""
    pattern = _phrase_pattern(query)
    if pattern is None or limit <= 0:
        return None
    column = SORTS[sort].split()[0]
    # both columns in one string: a phrase found across the newline is a candidate FTS5 rules out
    walk = db.execute(f"SELECT r.id, coalesce(r.explanation, '') || char(10) || coalesce(r.token_text, '') "
                      f"FROM rows r INDEXED BY {_INDEXES[column]} {_where(filters)} ORDER BY {SORTS[sort]} LIMIT ?",
                      (*args, WALK_ROWS))
    search_text = pattern.search
    found: list[int] = []
    walked = 0
    while len(found) < limit:
        page = walk.fetchmany(WALK_PAGE)
        if not page:
            break
        if walked >= WALK_PROBE and len(found) * WALK_ROWS < limit * walked:
            walk.close()  # at this rate WALK_ROWS rows will not hold `limit` hits: stop paying for the walk
            return None
        walked += len(page)
        for rid, text in page:
            if text.isascii() and not search_text(text):
                continue  # FTS5 cannot match it: the phrase is in neither column
            if db.execute("SELECT 1 FROM fts WHERE fts MATCH ? AND rowid = ?", (query, rid)).fetchone():
                found.append(rid)
                if len(found) == limit:
                    break
    walk.close()
    if len(found) < limit and walked >= WALK_ROWS:
        return None  # WALK_ROWS ran out first: the phrase is rare, the caller sorts its matches outright
    cols = ", ".join("r." + c for c in COLUMNS)
    by_id = {row[0]: Hit(*row[1:]) for row in db.execute(
        f"SELECT r.id, {cols} FROM rows r WHERE r.id IN ({', '.join('?' * len(found))})", found)}
    return [by_id[i] for i in found]


def _where(clauses: list[str]) -> str:
    return "WHERE " + " AND ".join(clauses) if clauses else ""


def conversation_messages(out: Path, conversation_id: str) -> list[dict] | None:
    db = connect(out)
    try:
        row = db.execute("SELECT messages FROM conversations WHERE id=?", (conversation_id,)).fetchone()
    finally:
        db.close()
    return json.loads(row[0]) if row else None
