"""Notes on tokens (issue 26 item 4): checked, saved in the session (schema v3, an older
session opens with none), found by text, and carried into every export, escaped."""

from __future__ import annotations

import json
import re

import pytest

from nla_tui.cli import main
from nla_tui.core.errors import InputError
from nla_tui.core.notes import Note, find_notes, new_note, notes_at
from nla_tui.core.store.export import to_html, to_json, to_markdown
from nla_tui.core.store.session import SCHEMA_VERSION, load_session, save_session
from tests._support_session import make_session

HOSTILE = "<script>alert(1)</script> \x1b]0;pwned\x07 & \x9b2J"


def test_a_note_is_checked_before_it_is_kept():
    with pytest.raises(InputError, match="empty"):
        new_note(15, 3, "   ")
    with pytest.raises(InputError, match=r"out of range.*15 tokens"):
        new_note(15, 15, "x")
    with pytest.raises(InputError, match="ends .* before it starts"):
        new_note(15, 5, "x", end=4)
    with pytest.raises(InputError, match="keep it under"):
        new_note(15, 1, "x" * 10_001)
    n = new_note(15, 4, "a span", end=9)
    assert (n.start, n.end, n.branch) == (4, 9, None) and n.created.endswith("+00:00")


def test_notes_round_trip_and_old_sessions_open_without_them(tmp_path):
    s = make_session()
    s.notes = [new_note(15, 4, "why 'sky'?", end=7), new_note(15, 9, HOSTILE), Note(2, 3, "on a branch", "t", "b1")]
    d = save_session(s, tmp_path / "s")
    doc = json.loads((d / "session.json").read_text())
    assert doc["schema_version"] == SCHEMA_VERSION and len(doc["notes"]) == 3
    assert load_session(d).notes == s.notes
    # A schema-2 document (no notes) migrates in memory and is not rewritten.
    doc["schema_version"] = 2
    del doc["notes"]
    (d / "session.json").write_text(json.dumps(doc))
    assert load_session(d).notes == []
    assert json.loads((d / "session.json").read_text())["schema_version"] == 2


@pytest.mark.parametrize("bad, where", [({"start": "4"}, "notes[0].start"), ({"text": None}, "notes[0].text"),
                                         ({"branch": 1.5}, "notes[0].branch")])
def test_the_one_schema_check_names_a_bad_note_field(tmp_path, bad, where):
    s = make_session()
    s.notes = [new_note(15, 4, "ok")]
    d = save_session(s, tmp_path / "s")
    doc = json.loads((d / "session.json").read_text())
    doc["notes"][0].update(bad)
    (d / "session.json").write_text(json.dumps(doc))
    with pytest.raises(InputError, match=re.escape(where)):
        load_session(d)


def test_a_note_outside_the_conversation_is_refused_on_save_and_load(tmp_path):
    s = make_session()
    s.notes = [Note(3, 40, "too far", "t")]
    with pytest.raises(InputError, match="note 0"):
        save_session(s, tmp_path / "s")
    s.notes = [Note(3, 4, "ok", "t")]
    d = save_session(s, tmp_path / "s")
    doc = json.loads((d / "session.json").read_text())
    doc["notes"][0]["end"] = 99
    (d / "session.json").write_text(json.dumps(doc))
    with pytest.raises(InputError, match="note 0"):
        load_session(d)


def test_find_notes_and_notes_at_a_token():
    notes = [Note(9, 9, "Port is the answer", "t"), Note(2, 5, "harbour vs port", "t"), Note(1, 1, "port", "t", "b")]
    assert [n.start for n in find_notes(notes, re.compile("port", re.I))] == [2, 9]  # token order, this branch
    assert find_notes(notes, re.compile("port", re.I), branch="b") == [notes[2]]
    assert notes_at(notes, 4) == [notes[1]] and notes_at(notes, 6) == []


def test_notes_in_every_export_escaped():
    s = make_session()
    s.notes = [new_note(15, 5, HOSTILE, end=7), new_note(15, 12, "plain note on émoji")]
    md = to_markdown(s)
    section = md.split("## Notes", 1)[1]
    assert "plain note on émoji" in section and "tokens 5–7" in section
    assert "<script>" not in md and "\\<script\\>" in section  # escaped, shown literally
    assert not re.search("[\x00-\x08\x0b-\x1f\x7f-\x9f]", md)  # no control character raw

    doc = json.loads(to_json(s))
    assert [n["text"] for n in doc["notes"]] == [HOSTILE, "plain note on émoji"]  # exact, escaped by JSON itself
    assert "\x1b" not in to_json(s) and "\x9b" not in to_json(s)

    page = to_html(s)
    assert "<script>alert" not in page and page.count("</script>") == 2  # the page's own two scripts only
    assert not re.search("[\x00-\x08\x0b-\x1f\x7f-\x9f]", page)
    # Inline: the marker follows the note's last token, the noted tokens are underlined.
    tok7 = re.search(r'<span class="tok[^"]*" data-i="7"[^>]*>.*?</span>(<span class="note"[^>]*>[^<]*</span>)', page)
    assert tok7 and "&lt;script&gt;alert(1)&lt;/script&gt;" in tok7.group(1) and "␛" in tok7.group(1)
    assert all(re.search(rf'class="tok noted" data-i="{i}"', page) for i in (5, 6, 7))
    assert not re.search(r'class="tok noted" data-i="8"', page)
    assert '<section id="notes">' in page and 'href="#click=12"' in page


def test_note_command_adds_lists_and_finds(tmp_path, capsys):
    d = save_session(make_session(), tmp_path / "s")
    assert main(["note", str(d), "--token", "4", "--end", "6", "--text", "the question starts"]) == 0
    assert main(["note", str(d), "--token", "9", "--text", "Rayleigh?"]) == 0
    assert [n.text for n in load_session(d).notes] == ["the question starts", "Rayleigh?"]
    capsys.readouterr()
    assert main(["note", str(d), "--find", "rayleigh"]) == 0
    out = capsys.readouterr().out
    assert "Rayleigh?" in out and "question" not in out and "(1 of 2 notes)" in out
    # Bad input: one paragraph, exit 2, nothing written.
    before = (d / "session.json").read_bytes()
    assert main(["note", str(d), "--token", "99", "--text", "x"]) == 2
    assert main(["note", str(d), "--token", "3"]) == 2
    assert main(["note", str(d), "--find", "("]) == 2
    assert (d / "session.json").read_bytes() == before
