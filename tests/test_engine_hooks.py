"""The engine's forward-hook seam (vcdflow.decoding.hooks): a method that reads a decoder layer's
last-position output through ``state.hooks``/``state.rows`` decodes exactly like a plain batch-1,
no-cache loop that takes the same layer from ``output_hidden_states`` — with several requests of
different lengths in one batch (rows retire), a contrast branch, shared-prefix prefill on and off,
on the tiny model of every family and the demo LLaVA."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch

from reference_methods import build_vlms, forward, image, inputs
from vcdflow.decoding import Request, generate
from vcdflow.decoding.hooks import DecodeHooks, LayerCapture, Rows
from vcdflow.decoding.methods.base import Method
from vcdflow.decoding.types import Branch

FAMILIES = ["llava", "qwen2_5_vl", "instructblip", "demo"]
N_NEW = 5


@dataclass(frozen=True)
class PenultimateExit(Method):
    """Test method: score = W_lm · N_f(h_{L-2}) of the original branch minus 0.5 × the same of a
    text-only branch — the early-exit logits at the penultimate layer, contrasted."""

    name: ClassVar[str] = "test_penultimate_exit"
    requires_image: ClassVar[bool] = True

    def branches(self, request, ctx):
        return [
            self.original(request),
            Branch(prompt=request.prompt, image=None, system=request.system, name="text"),
        ]

    def forward_hooks(self, adapter, params):
        return LayerCapture(layers=[-2])

    def combine(self, logits, step, state):
        ad = state.contexts[0].adapter
        h = state.hooks.last[-2][state.rows]  # [n, nb, D]
        early = ad.lm_head()(ad.final_norm()(h)).float()
        return early[:, 0] - 0.5 * early[:, 1]

    def plausibility(self, logits, step, state):
        return None


@pytest.fixture(scope="module")
def vlms(tmp_path_factory):
    torch.set_num_threads(1)
    return build_vlms(tmp_path_factory.mktemp("hooks"))


REQS = [
    Request(image=image(1, 80, 100), prompt="Is there a cup in the image?", item_id="a"),
    Request(image=image(1, 80, 100), prompt="Is there a dog?", item_id="b"),
    Request(
        image=image(3, 120, 70),
        prompt="what is this red dog on the table with a cat?",
        item_id="c",
        system="You are an expert.",
    ),
]


def reference(vlm, req: Request, eos: list[int]) -> list[int]:
    """Batch 1, no cache, full recompute; the penultimate layer from output_hidden_states."""
    ad = vlm.adapter
    fam_inp = [inputs(vlm, req.prompt, req.image, req.system), inputs(vlm, req.prompt, None, req.system)]
    out: list[int] = []
    for _ in range(N_NEW):
        early = []
        for inp in fam_inp:
            o = forward_hidden(vlm, inp, out)
            h = o.hidden_states[-2][0, -1]  # hidden_states[0] = embeddings: [-2] = output of layer L-2
            early.append(ad.lm_head()(ad.final_norm()(h)).float())
        t = int((early[0] - 0.5 * early[1]).argmax())
        if t in eos:
            break
        out.append(t)
    return out


def forward_hidden(vlm, inp, generated):
    return forward(vlm, inp, generated, hidden=True)


@pytest.mark.parametrize("family", FAMILIES)
def test_layer_capture_matches_hidden_states_reference(vlms, family):
    vlm = vlms[family]
    eos = vlm.adapter.eos_token_ids
    with torch.no_grad():
        refs = [reference(vlm, r, eos) for r in REQS]
    for share in (True, False):
        outs = generate(vlm, REQS, PenultimateExit(), max_new_tokens=N_NEW, batch_size=3, share_prefix=share)
        for o, ref, r in zip(outs, refs, REQS):
            assert o.error is None, o.error
            assert o.token_ids == ref, (family, share, r.item_id, o.token_ids, ref)
    # the early exit is not the model's own output: the hook really changed the decode somewhere
    plain = generate(vlm, REQS, "greedy", max_new_tokens=N_NEW, batch_size=3)
    assert any(p.token_ids != ref for p, ref in zip(plain, refs)) or family == "demo"


class Recorder(DecodeHooks):
    def __init__(self):
        self.calls = []
        self.finished = False

    def before_forward(self, phase, rows: Rows):
        self.calls.append((phase, list(rows.request), list(rows.branch), rows.step, rows.source))

    def select(self, index):
        self.calls.append(("select", index.tolist()))

    def finish(self):
        self.finished = True


def test_hook_calls_follow_the_rows(vlms):
    """Shared prefill: a prefix forward over the unique prefixes, their expansion, the suffix
    forward of every row; then one step forward per token; finish() at the end."""
    from vcdflow.decoding.engine import decode_rows, greedy_chooser

    vlm = vlms["llava"]
    ad = vlm.adapter
    encs = [[ad.encode(Branch(prompt=r.prompt, image=r.image, system=r.system))] for r in REQS[:2]]
    rec = Recorder()
    decode_rows(ad, encs, greedy_chooser, 2, [], hooks=rec, share_prefix=True)
    assert rec.calls[0][0] == "prefix" and rec.calls[0][1] == [0] and rec.calls[0][4] == [0]
    assert rec.calls[1] == ("select", [0, 0])
    assert rec.calls[2][:3] == ("suffix", [0, 1], [0, 0])
    assert rec.calls[3][:4] == ("step", [0, 1], [0, 0], 1)
    assert rec.finished


@dataclass(frozen=True)
class HistoryProbe(Method):
    """Test method: greedy, but a token already generated by the request is banned — reads the
    request's history through ``state.requests`` and ``state.hooks.tokens``."""

    name: ClassVar[str] = "test_history_probe"

    def forward_hooks(self, adapter, params):
        return DecodeHooks()

    def combine(self, logits, step, state):
        scores = logits[:, 0].clone()
        for k, r in enumerate(state.requests):
            if state.hooks.tokens[r]:
                scores[k, state.hooks.tokens[r]] = -float("inf")
        return scores


def test_request_history_reaches_combine(vlms):
    vlm = vlms["demo"]
    outs = generate(vlm, REQS, HistoryProbe(), max_new_tokens=6, batch_size=3, eos_token_id=[])
    for o in outs:
        assert len(o.token_ids) == 6 and len(set(o.token_ids)) == 6, o.token_ids
    one = [generate(vlm, [r], HistoryProbe(), max_new_tokens=6, eos_token_id=[])[0] for r in REQS]
    assert [o.token_ids for o in outs] == [o.token_ids for o in one]
