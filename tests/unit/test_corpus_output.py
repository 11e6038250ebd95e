"""A sweep's output read back without models: the index (search, repair after a crash),
the HTML report (content, escaping, self-contained)."""

from __future__ import annotations

import pytest

from nla_tui.core.corpus import index
from nla_tui.core.corpus.report import frequent_phrases, svg_histogram, to_report_html
from nla_tui.core.errors import InputError
from tests._support_corpus import row, write_sweep

pytest.importorskip("pyarrow")  # the [corpus] extra; [test] installs it

ROWS = [
    [row(conversation_id="a", token_index=3, token_text=" Paris", explanation="The capital city of France",
         fve_nrm=0.9, specificity=0.5, surprise=0.2),
     row(conversation_id="a", token_index=4, token_text=" is", explanation="A verb after the capital city",
         fve_nrm=0.2, specificity=-0.1, role="model", surprise=3.0)],
    [row(conversation_id="b", conversation=1, token_index=7, token_text="<b>\x1b[31m",
         explanation='Deceiving the user: <script>alert("x")</script>', fve_nrm=0.6, specificity=0.9,
         role="user", surprise=1.0)],
]


@pytest.fixture
def sweep(tmp_path):
    return write_sweep(tmp_path / "s", ROWS)


def test_search_finds_exactly_the_matching_rows(sweep):
    key = lambda hits: sorted((h.conversation_id, h.token_index) for h in hits)  # noqa: E731
    assert key(index.search(sweep, "capital")) == [("a", 3), ("a", 4)]
    assert key(index.search(sweep, "decei*")) == [("b", 7)]
    assert key(index.search(sweep, '"capital city" NOT verb')) == [("a", 3)]
    assert key(index.search(sweep, "token_text: Paris")) == [("a", 3)]
    assert key(index.search(sweep, "capital", min_fve=0.5)) == [("a", 3)]
    assert key(index.search(sweep, "capital OR decei*", roles=("user",))) == [("b", 7)]
    assert index.search(sweep, "london") == []
    assert [h.token_index for h in index.search(sweep, "", sort="surprise")] == [4, 7, 3]
    assert [h.token_index for h in index.search(sweep, "", sort="specificity")] == [7, 3, 4]
    with pytest.raises(InputError, match="not a valid search"):
        index.search(sweep, '"unclosed')


def test_a_shard_the_index_missed_is_indexed_on_the_next_run(tmp_path):
    # A kill between a shard's rename and its index transaction: the shard is on disk only.
    out = write_sweep(tmp_path / "s", ROWS, index_it=False)
    assert index.sync(out) == 2
    assert len(index.search(out, "capital OR decei*")) == 3
    assert index.sync(out) == 0  # nothing twice
    assert len(index.search(out, "capital OR decei*")) == 3


def test_the_report_is_self_contained_and_escaped(sweep):
    page = to_report_html(sweep)
    assert "<script>" not in page and "&lt;script&gt;alert" in page  # data never becomes markup
    assert "\x1b" not in page  # control characters are shown, not passed on
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")  # no external reference
    assert page.count("<svg") == 4  # fve and specificity, for each of the two roles
    most = page.index("Most faithful")
    least = page.index("Least faithful")
    assert most < page.index("The capital city of France", most) < page.index("A verb after", most) < least
    assert page.index("A verb after", least) < page.index("The capital city of France", least)
    assert ">a</td><td class=\"n\">2</td>" in page and ">b</td><td class=\"n\">1</td>" in page  # per conversation


def test_histogram_and_phrases():
    svg = svg_histogram([0.0, 0.05, 0.95, 2.0], 0.0, 1.0, bins=10)
    assert svg.count("<rect") == 10 and "0.00…0.10: 2" in svg and "0.90…1.00: 2" in svg  # 2.0 clipped to the end
    assert frequent_phrases(["the capital of France", "The capital of Spain", "no"], n=3)[0] == ("the capital of", 2)


def test_a_word_in_most_rows_is_still_sorted_by_its_column(tmp_path, monkeypatch):
    # Above SMALL matches the column sort walks the column's index; bm25 falls back to corpus order.
    monkeypatch.setattr(index, "SMALL", 2)
    rows = [row(conversation_id=f"c{i}", conversation=i, token_index=i, explanation=f"common words {i}",
                fve_nrm=f, specificity=None if f is None else -f) for i, f in enumerate([0.1, 0.7, 0.4, 0.9, None])]
    out = write_sweep(tmp_path / "s", [rows])
    assert [h.fve_nrm for h in index.search(out, "common", sort="fve")] == [0.9, 0.7, 0.4, 0.1]
    assert [h.fve_nrm for h in index.search(out, "common", sort="-fve", min_fve=0.2)] == [0.4, 0.7, 0.9]
    ranked = index.search(out, "common")
    assert [h.token_index for h in ranked] == [0, 1, 2, 3, 4] and "corpus order" in ranked.note
    assert index.search(out, "words AND 3", sort="specificity")[0].token_index == 3  # few matches: sorted outright


def test_the_verdict_travels_to_search_report_and_tools(tmp_path, capsys):
    # A high score in the first tokens: label "good", but core.caveats' verdict "unreliable",
    # as the TUI's pane shows it; every listing shows the verdict, not the plain label.
    from nla_tui.server.mcp_tools import hit_json
    from tests._support_cli import cli_main

    flagged = row(conversation_id="a", token_index=2, token_text=" the", explanation="An early capital token",
                  fve_nrm=0.95, label="good", verdict="unreliable", caveats=["early"])
    plain = row(conversation_id="a", token_index=30, token_text=" Paris", explanation="A later capital token",
                fve_nrm=0.9, label="good", verdict="good")
    out = write_sweep(tmp_path / "s", [[flagged, plain]])
    hits = index.search(out, "capital", sort="corpus")
    assert [(h.label, h.verdict, h.shown_verdict) for h in hits] == [("good", "unreliable", "unreliable"),
                                                                      ("good", "good", "good")]
    assert [hit_json(h)["verdict"] for h in hits] == ["unreliable", "good"]
    code, printed, _ = cli_main(capsys, "search", str(out), "capital", "--sort", "corpus")
    assert code == 0 and "verdict" in printed.splitlines()[0]
    assert " unreliable " in printed.splitlines()[1] and " good " in printed.splitlines()[2]
    page = to_report_html(out)
    assert "<th>verdict</th>" in page and "<td>unreliable</td>" in page
    assert "unreliable (a high score where core.caveats flags the position) <b>1</b>" in page


def test_an_older_sweep_without_verdicts_shows_its_labels(tmp_path):
    # Shards and an index written before rows had `verdict` / `caveats`: both still read;
    # the index gains the columns and refills them from the shards (the label; no verdict).
    import pyarrow.parquet as pq

    from nla_tui.core.corpus.shards import shard_path

    out = write_sweep(tmp_path / "s", ROWS)
    db = index.connect(out)
    for column in ("verdict", "label"):
        db.execute(f"ALTER TABLE rows DROP COLUMN {column}")
    db.close()
    for k in range(len(ROWS)):
        path = shard_path(out, k)
        pq.write_table(pq.read_table(path).drop_columns(["verdict", "caveats"]), path)
    assert index.sync(out) == 2  # the index re-reads every shard to fill the columns it gained
    hits = index.search(out, "capital OR decei*", sort="corpus")
    assert [(h.verdict, h.shown_verdict) for h in hits] == [(None, "mediocre")] * 3
    assert "<td>mediocre</td>" in to_report_html(out)


def test_a_phrase_of_common_words_is_listed_in_corpus_order(tmp_path, monkeypatch):
    # Each word of the phrase in more than COMMON_ROWS rows: no count, no bm25 (both would
    # read every row holding the words); the same hits, in corpus order, saying why.
    monkeypatch.setattr(index, "COMMON_ROWS", 2)
    texts = ["capital city of France", "a city and a capital", "the capital city", "capital", "city", "capital city"]
    rows = [row(conversation_id=f"c{i}", conversation=i, token_index=i, explanation=t) for i, t in enumerate(texts)]
    out = write_sweep(tmp_path / "s", [rows])
    hits = index.search(out, '"capital city"')
    assert [h.token_index for h in hits] == [0, 2, 5] and 'each word of "capital city"' in hits.note
    assert [h.token_index for h in index.search(out, '"capital city"', limit=2)] == [0, 2]
    assert [h.token_index for h in index.search(out, '"capital city" NOT france')] == [2, 5]
    monkeypatch.setattr(index, "SAMPLE", 2)  # estimated from where each word's 2nd row lies: 6 rows / 2 x 2
    assert index.search(out, '"capital city"').note
    monkeypatch.setattr(index, "SAMPLE", 1000)
    monkeypatch.setattr(index, "COMMON_ROWS", 4)  # "capital" and "city" are in 5 rows each: still common
    assert index.search(out, '"capital city"').note
    monkeypatch.setattr(index, "COMMON_ROWS", 5)  # now rare enough to rank: bm25, no note
    ranked = index.search(out, '"capital city"')
    assert sorted(h.token_index for h in ranked) == [0, 2, 5] and not ranked.note
    assert not index.search(out, '"capital city"', sort="fve").note  # column sorts are unchanged


def test_a_common_phrase_sorted_by_a_column_equals_a_brute_force_filter(tmp_path, monkeypatch):
    # A column sort of a phrase of common words walks the column's index reading each row's
    # text (index._phrase_walk). Whatever the page size, budget or text (case, punctuation,
    # accents, a phrase only in token_text, null scores), it must give exactly the rows FTS5
    # matches, filtered, in the column's order: checked against FTS5 over the whole index.
    import random
    import sqlite3

    rng = random.Random(7)
    words = ["capital", "city", "Capital", "CITY", "of", "capitál", "cities", "capital_city", "capital-city",
             "x", "city.", "(capital", "Ciudad"]
    rows = []
    for i in range(300):
        text = " ".join(rng.choices(words, k=rng.randint(0, 8)))
        rows.append(row(conversation_id=f"c{i}", conversation=i, token_index=i, explanation=text,
                        token_text=rng.choice([" capital city", " Paris", "x", "capital\tcity"]),
                        role=rng.choice(["model", "user"]),
                        fve_nrm=None if i % 37 == 0 else rng.uniform(-0.5, 1.0),
                        specificity=None if i % 41 == 0 else rng.uniform(-1, 1)))
    out = write_sweep(tmp_path / "s", [rows[:150], rows[150:]])
    db = sqlite3.connect(str(out / "index.sqlite"))
    by_key = {(r["conversation_id"], r["token_index"]): r for r in rows}
    monkeypatch.setattr(index, "COMMON_ROWS", 2)  # "capital" and "city" count as common here
    monkeypatch.setattr(index, "WALK_PAGE", 7)

    columns = {"fve": ("fve_nrm", True), "-fve": ("fve_nrm", False), "specificity": ("specificity", True)}

    def brute(query, sort, roles=None, min_fve=None):
        ids = [i for (i,) in db.execute("SELECT rowid FROM fts WHERE fts MATCH ?", (query,))]
        keys = db.execute(f"SELECT conversation_id, token_index FROM rows WHERE id IN ({', '.join(map(str, ids))})")
        found = [by_key[k] for k in keys]
        found = [r for r in found if (not roles or r["role"] in roles)
                 and (min_fve is None or (r["fve_nrm"] is not None and r["fve_nrm"] >= min_fve))]
        column, descending = columns[sort]
        # SQL's order: nulls are the smallest value (last when descending, first when ascending)
        found.sort(key=lambda r: (r[column] is not None, r[column] or 0), reverse=descending)
        return found

    checked = 0
    # enough rows to fill the page; too few, or a rate too low after WALK_PROBE rows (sorted outright then)
    for walk_rows, probe in ((10_000, 10_000), (10_000, 14), (40, 10_000), (3, 10_000)):
        monkeypatch.setattr(index, "WALK_ROWS", walk_rows)
        monkeypatch.setattr(index, "WALK_PROBE", probe)
        for query in ('"capital city"', ' "CAPITAL city" ', '"capital city of"', '"city capital"'):
            for sort in ("fve", "-fve", "specificity"):
                for roles, min_fve, limit in ((None, None, 20), (("user",), None, 5), (None, 0.3, 1000),
                                              (None, None, 1), (None, None, 1000)):
                    got = index.search(out, query, roles, min_fve, sort, limit)
                    want = brute(query, sort, roles, min_fve)
                    keys = [(h.conversation_id, h.token_index) for h in got]
                    column = columns[sort][0]
                    where = (query, sort, walk_rows, roles, min_fve, limit)
                    # the same rows in the same order (rows of equal score, here null ones, in any order)
                    assert len(set(keys)) == len(keys) == min(limit, len(want)), where
                    assert set(keys) <= {(r["conversation_id"], r["token_index"]) for r in want}, where
                    assert [by_key[k][column] for k in keys] == [r[column] for r in want[:limit]], where
                    assert not got.note
                    checked += len(got)
    db.close()
    assert checked > 1000  # the phrases are found, not only absent


def test_the_phrase_walk_skips_only_ascii_text_fts5_cannot_match():
    # _phrase_walk skips a row whose ASCII text its regex does not find the phrase in, without
    # asking FTS5: right only if the regex finds it wherever FTS5's tokenizer does (every one
    # of the 128 ASCII characters between the words, case, digits, edges).
    import re
    import sqlite3

    db = sqlite3.connect(":memory:")
    db.execute("CREATE VIRTUAL TABLE t USING fts5(x)")  # the index's tokenizer (the default)
    texts = [f"capital{chr(c)}city" for c in range(128)] + [f"{chr(c)}Capital CITY{chr(c)}" for c in range(128)] + [
        "Capital  CITY", "capital1 city", "capitals city", "the capital, city", "capital\ncity", "xcapital city",
        "capital cityx", "capital city2", "capital'city", "capital_city", "capital city capital", "city capital"]
    db.executemany("INSERT INTO t(rowid, x) VALUES (?, ?)", list(enumerate(texts)))
    fts = {i for (i,) in db.execute("SELECT rowid FROM t WHERE t MATCH ?", ('"capital city"',))}
    pattern = index._phrase_pattern('"capital city"')
    found = {i for i, t in enumerate(texts) if pattern.search(t)}
    assert fts <= found and len(fts) > 100
    # beyond FTS5's rows it finds only words running into a letter or digit (`xcapital`)
    assert all(re.search("[a-z0-9]capital|city[a-z0-9]", texts[i].lower()) for i in found - fts)
    assert index._phrase_pattern('"capitál city"') is None and index._phrase_pattern('"a b" OR c') is None
