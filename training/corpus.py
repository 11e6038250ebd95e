"""The training text: real English from Debian packages, available offline.

Sources (install with `apt-get install python3.11-doc fortunes wordnet-base`; the
Python standard library comes with Debian's python3.11):
- Python 3.11 documentation sources (`python3.11-doc`, PSF License): prose with code
  examples; its FAQ pages become question/answer conversations.
- Python 3.11 standard library source (`libpython3.11-stdlib`, PSF License): code.
- fortune-mod's fortunes (`fortunes`, BSD licence): quotations, jokes, dialogue; the
  riddles' Q:/A: pairs become conversations.
- WordNet 3.0 glosses (`wordnet-base`, WordNet 3.0 licence, BSD-like): dictionary
  definitions with example sentences; "what does X mean?" conversations.

Every record is a document ({"genre", "text"}) or a conversation ({"genre": "chat
…", "messages": [...]}) so that chat-templated turn markers and both roles are in
distribution. A record's split (train / heldout) is a hash of its content, so the
held-out split is stable and never trained on.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import random
import re
from pathlib import Path

DOCS = Path("/usr/share/doc/python3.11/html/_sources")
STDLIB = Path("/usr/lib/python3.11")
FORTUNES = Path("/usr/share/games/fortunes")
WORDNET = Path("/usr/share/wordnet")
FORTUNE_FILES = ("fortunes", "literature", "riddles", "people", "wisdom", "science", "computers",
                 "education", "food", "humorists", "art", "love", "medicine", "miscellaneous",
                 "platitudes", "politics", "sports", "work", "law", "goedel", "kids", "pets")
HELDOUT_SHARE = 0.04
DOC_CHARS = 1800  # ~450 tokens: long enough for context, short enough to batch


def split_of(text: str) -> str:
    h = int(hashlib.sha256(text.encode("utf-8")).hexdigest()[:8], 16)
    return "heldout" if h / 0xFFFFFFFF < HELDOUT_SHARE else "train"


def _chunks(text: str, size: int = DOC_CHARS) -> list[str]:
    """Paragraph-aligned pieces of about `size` characters."""
    out, cur = [], ""
    for para in re.split(r"\n\s*\n", text):
        if cur and len(cur) + len(para) > size:
            out.append(cur.strip())
            cur = ""
        cur += para + "\n\n"
    if cur.strip():
        out.append(cur.strip())
    return [c[:size * 2] for c in out if len(c) > 80]


def _clean_rst(text: str) -> str:
    text = re.sub(r"^\.\. [a-z-]+::.*$", "", text, flags=re.M)
    text = re.sub(r":[a-z:]+:`~?([^`<]*?)(?: <[^>]*>)?`", r"\1", text)  # :func:`x` -> x
    text = re.sub(r"`([^`<]+?) <[^>]+>`_", r"\1", text)
    return re.sub(r"\n{3,}", "\n\n", text)


def python_docs() -> list[dict]:
    out = []
    for p in sorted(DOCS.rglob("*.rst.txt")):
        if "whatsnew" in p.parts or p.stat().st_size < 2000:
            continue
        out += [{"genre": "Python documentation", "text": c} for c in _chunks(_clean_rst(p.read_text("utf-8", "replace")))]
    return out


def faq_conversations() -> list[dict]:
    out = []
    for p in sorted((DOCS / "faq").glob("*.rst.txt")):
        text = _clean_rst(p.read_text("utf-8", "replace"))
        parts = re.split(r"\n([^\n]+\?)\n-{4,}\n", text)
        for q, a in zip(parts[1::2], parts[2::2]):
            answer = a.strip().split("\n\n")
            reply = "\n\n".join(answer[:3])[:700].strip()
            if reply:
                out.append({"genre": "chat: programming Q&A",
                            "messages": [{"role": "user", "content": q.strip()},
                                         {"role": "assistant", "content": reply}]})
    return out


def stdlib_code(limit_files: int = 160) -> list[dict]:
    files = sorted(p for p in STDLIB.glob("*.py") if 3000 < p.stat().st_size < 120_000)
    out = []
    for p in files[:limit_files]:
        out += [{"genre": "Python code", "text": c} for c in _chunks(p.read_text("utf-8", "replace"))]
    return out


def _fortune_entries(name: str) -> list[str]:
    p = FORTUNES / name
    if not p.is_file():
        return []
    return [e.strip() for e in p.read_text("utf-8", "replace").split("\n%\n") if 20 < len(e.strip()) < 1500]


def fortunes() -> list[dict]:
    docs, convs = [], []
    for name in FORTUNE_FILES:
        entries = _fortune_entries(name)
        for e in entries:
            m = re.search(r"Q:\s*(.+?)\n\s*A:\s*(.+)", e, re.S) or re.search(r"A:\s*(.+?)\n\s*Q:\s*(.+)", e, re.S)
            if m and name == "riddles":
                q, a = (m.group(1), m.group(2)) if e.find("Q:") < e.find("A:") else (m.group(2), m.group(1))
                convs.append({"genre": "chat: riddle", "messages": [
                    {"role": "user", "content": " ".join(q.split())}, {"role": "assistant", "content": " ".join(a.split())}]})
        # Several short entries make one document, as in a collection of quotations.
        random.Random(name).shuffle(entries)
        for i in range(0, len(entries), 6):
            docs.append({"genre": f"quotations ({name})", "text": "\n\n".join(entries[i:i + 6])})
    return docs + convs


def wordnet() -> list[dict]:
    entries = []
    for pos, label in (("noun", "noun"), ("verb", "verb"), ("adj", "adjective"), ("adv", "adverb")):
        for line in (WORDNET / f"data.{pos}").read_text("utf-8", "replace").splitlines():
            if line.startswith("  ") or "|" not in line:
                continue
            head, gloss = line.split("|", 1)
            f = head.split()
            words = [f[4 + 2 * i].replace("_", " ") for i in range(int(f[3], 16))]
            gloss = gloss.strip()
            defin, _, ex = gloss.partition("; \"")
            entries.append((words[0], label, defin.strip(), ex.rstrip('"; ').strip()))
    rng = random.Random(0)
    rng.shuffle(entries)
    docs = []
    for i in range(0, len(entries), 12):
        lines = [f"{w} ({pos}): {d}" + (f'. Example: "{x}"' if x else "") for w, pos, d, x in entries[i:i + 12]]
        docs.append({"genre": "dictionary entries", "text": "\n".join(lines)})
    convs = []
    for w, pos, d, x in entries[: len(entries) // 6]:
        reply = f"As a {pos}, \"{w}\" means {d}." + (f' For example: "{x}".' if x else "")
        convs.append({"genre": "chat: word meaning", "messages": [
            {"role": "user", "content": rng.choice(["What does \"{}\" mean?", "Define {}.", "What is the meaning of the word {}?",
                                                    "Can you explain what {} means?"]).format(w)},
            {"role": "assistant", "content": reply}]})
    return docs + convs


def multi_turn(convs: list[dict], rng: random.Random) -> list[dict]:
    """Join pairs of single-exchange conversations into two-turn chats."""
    out = []
    for split in ("train", "heldout"):  # pair within a split: no held-out text leaks into training
        group = [c for c in convs if c["split"] == split]
        rng.shuffle(group)
        for a, b in zip(group[::2], group[1::2]):
            out.append({"genre": "chat: two questions", "messages": a["messages"] + b["messages"], "split": split})
    return out


def build(out: Path, max_records: int | None = None) -> dict:
    rng = random.Random(0)
    records = python_docs() + stdlib_code() + fortunes() + wordnet() + faq_conversations()
    for r in records:
        r["split"] = split_of(r.get("text") or json.dumps(r["messages"]))
    convs = [r for r in records if "messages" in r]
    records += multi_turn(list(convs), rng)
    rng.shuffle(records)
    if max_records:
        records = records[:max_records]
    counts: dict[str, int] = {}
    chars = 0
    tmp = out.with_suffix(out.suffix + ".tmp")
    with gzip.open(tmp, "wt", encoding="utf-8") as fh:
        for r in records:
            body = r.get("text") or json.dumps(r["messages"])
            chars += len(body)
            key = f"{r['genre'].split(' (')[0]} / {r['split']}"
            counts[key] = counts.get(key, 0) + 1
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")
    tmp.replace(out)
    return {"records": len(records), "chars": chars, "approx_tokens": chars // 4, "by_genre_split": counts}


def load(path: Path) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def main() -> None:
    ap = argparse.ArgumentParser(description="Build the offline training corpus (jsonl.gz).")
    ap.add_argument("--out", type=Path, default=Path(".carry/corpus.jsonl.gz"))
    args = ap.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    print(json.dumps(build(args.out), indent=1))


if __name__ == "__main__":
    main()
