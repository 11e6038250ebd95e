"""Engine rules that do not need a GPU to check: the CUDA explain batch size, the
ranking of drawn samples, and role tagging under the Qwen and Llama chat templates."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
import transformers

from nla_tui.core.models.subject import Subject
from nla_tui.core.runtime.engine import Engine
from nla_tui.core.types import Message, Sampling

GIB = 1 << 30


def _engine_on_cuda(monkeypatch, free_bytes: int, prompt_tokens: int = 120) -> Engine:
    """An Engine whose AV claims a CUDA card with `free_bytes` free (no GPU needed: the
    rule reads only the device type, the model config and the allocator's figures)."""
    cfg = transformers.Gemma3TextConfig(hidden_size=5376, num_hidden_layers=62, num_attention_heads=32,
                                        num_key_value_heads=16, head_dim=128, vocab_size=262_208)
    engine = Engine.__new__(Engine)
    engine.av = SimpleNamespace(device=torch.device("cuda:1"), model=SimpleNamespace(config=cfg),
                                canonical_ids=list(range(prompt_tokens)))
    asked = []

    def mem_get_info(device):
        asked.append(device)
        return free_bytes, 80 * GIB

    monkeypatch.setattr(torch.cuda, "mem_get_info", mem_get_info)
    # Nothing held by this process's allocator, no per-process cap (placement.capped_free).
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 0)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 0)
    monkeypatch.setattr(torch.cuda, "get_per_process_memory_fraction", lambda device=None: 1.0, raising=False)
    engine._asked = asked
    return engine


def test_cuda_explain_batch_grows_with_free_memory_within_bounds(monkeypatch):
    sizes = {}
    for free in (GIB // 64, 2 * GIB, 8 * GIB, 16 * GIB, 400 * GIB):
        engine = _engine_on_cuda(monkeypatch, free)
        sizes[free] = engine.explain_batch_size(200)
        asked = [torch.device("cuda", d) if isinstance(d, int) else torch.device(d) for d in engine._asked]
        assert asked == [torch.device("cuda:1")]  # the AV's own card is asked
    ordered = [sizes[f] for f in sorted(sizes)]
    assert ordered == sorted(ordered)  # more free memory, never a smaller batch
    assert ordered[0] == 1  # even a nearly full card explains one row at a time
    assert ordered[-1] == 160  # and a huge one stops at the cap
    assert 1 < sizes[8 * GIB] < 160
    # Twice the free memory fits about twice the rows (the KV cache per row is fixed).
    assert sizes[16 * GIB] == pytest.approx(2 * sizes[8 * GIB], abs=1)
    # Longer explanations need more KV per row: fewer rows fit.
    longer = _engine_on_cuda(monkeypatch, 8 * GIB).explain_batch_size(1000)
    assert longer < sizes[8 * GIB]
    assert _engine_on_cuda(monkeypatch, 8 * GIB).explain_batch_size(200, cap=4) == 4


def test_cpu_explain_batch_does_not_ask_cuda(monkeypatch):
    # On CPU the batch does not depend on (and never asks for) CUDA's free memory.
    sizes = []
    for free in (1 * GIB, 80 * GIB):
        engine = _engine_on_cuda(monkeypatch, free)
        engine.av.device = torch.device("cpu")
        sizes.append(engine.explain_batch_size(200))
        assert engine._asked == []
    assert sizes[0] == sizes[1]


@pytest.mark.slow
def test_explain_samples_are_ranked_best_first_and_kept(demo_engine):
    index = len(demo_engine.tokens) - 2
    before = list(demo_engine.explanations.get(index, []))
    drawn = demo_engine.explain_samples(index, 3, Sampling(temperature=0.0, max_new_tokens=6, seed=40))
    assert len(drawn) == 3 and all(e.score is not None for e in drawn)
    fid = [e.score.fidelity for e in drawn]
    assert fid == sorted(fid, reverse=True)  # best AR score first
    # greedy settings are turned into real sampling, one seed per draw
    assert sorted(e.sampling.seed for e in drawn) == [40, 41, 42]
    assert all(e.sampling.temperature > 0 for e in drawn)
    assert demo_engine.explanations[index] == drawn + before  # newest ranked draws first


# Real chat templates (Qwen 2.5, Llama 3.x), reduced to their text-only branches.
QWEN = ("{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + messages[0]['content'] + "
        "'<|im_end|>\\n' }}{%- else %}{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. "
        "You are a helpful assistant.<|im_end|>\\n' }}{%- endif %}{%- for message in messages %}{%- if not "
        "(message.role == 'system' and loop.first) %}{{- '<|im_start|>' + message.role + '\\n' + "
        "message.content + '<|im_end|>' + '\\n' }}{%- endif %}{%- endfor %}{%- if add_generation_prompt %}"
        "{{- '<|im_start|>assistant\\n' }}{%- endif %}")
LLAMA = ("{{- bos_token }}{%- if messages[0]['role'] == 'system' %}{%- set system_message = "
         "messages[0]['content']|trim %}{%- set messages = messages[1:] %}{%- else %}{%- set system_message "
         "= '' %}{%- endif %}{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' }}{{- 'Cutting Knowledge "
         "Date: December 2023\\n' }}{{- 'Today Date: 26 Jul 2024\\n\\n' }}{{- system_message }}"
         "{{- '<|eot_id|>' }}{%- for message in messages %}{{- '<|start_header_id|>' + message['role'] + "
         "'<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}{%- endfor %}{%- if "
         "add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}")
SPECIALS = {"qwen": ["<|im_start|>", "<|im_end|>"],
            "llama": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]}


@pytest.mark.slow
@pytest.mark.parametrize("family", ["qwen", "llama"])
def test_role_tagging_under_qwen_and_llama_templates(demo_engine, family):
    tok = copy.deepcopy(demo_engine.subject.tok)
    tok.add_special_tokens({"additional_special_tokens": SPECIALS[family]})
    tok.chat_template = QWEN if family == "qwen" else LLAMA
    subject = Subject(demo_engine.subject.model, tok, demo_engine.info.layer)
    messages = [Message("system", "Answer in one word."), Message("user", "Where is the Eiffel Tower?"),
                Message("assistant", "Paris.")]
    ids, roles, turns = subject.tokenize(messages, add_generation_prompt=True)
    assert len(ids) == len(roles) == len(turns)
    pieces = [tok.decode([i]) for i in ids]
    for turn, m in enumerate(messages):
        role = {"assistant": "model"}.get(m.role, m.role)
        mine = [k for k in range(len(ids)) if roles[k] == role]
        assert mine and all(turns[k] == turn for k in mine)
        assert "".join(pieces[k] for k in mine).strip() == m.content  # exactly its content
    # template text that no message wrote (Qwen's default system line is not used when a
    # system message is given; Llama's date header is) and the markers stay "special"
    openers = [k for k, p in enumerate(pieces) if p == SPECIALS[family][0]]
    assert openers and all(roles[k] == "special" for k in openers)
    if family == "llama":
        assert roles[0] == "bos"
        date = "".join(p for p, r in zip(pieces, roles) if r == "special")
        assert "Cutting Knowledge Date" in date
    # the generation prompt's opener belongs to the turn about to be written
    assert turns[openers[-1]] == len(messages)
