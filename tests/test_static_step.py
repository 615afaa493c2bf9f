"""The static decode step (``generate(compile="static")``) and its compiled form (``compile="on"``)
against the default eager step: token for token equal on every family's tiny model and the demo
architecture, batch 1 and batched (requests finishing at different steps), shared prefix on
and off; decodes that need the eager step say so and still decode; one host sync per step."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from test_shared_prefix import _demo_vlm
import tiny_models
from tiny_models import build_tiny_llava
from vcdflow.decoding import Request, generate
from vcdflow.models import load_vlm

N_NEW = 6
FAMILIES = ["llava", "instructblip", "qwen2_5_vl", "qwen2_vl", "llava_next", "llava_onevision", "internvl"]
PROMPTS = [
    "Is there a cup in the image?",
    "what is this red dog doing on the table with a cat?",
    "Is there a dog?",
]


def _img(seed, w=80, h=60):
    return Image.fromarray((np.random.RandomState(seed).rand(h, w, 3) * 255).astype("uint8"))


def _requests():
    # two questions about one image (a shared prefix) and one about another, of different lengths
    return [
        Request(image=_img(s), prompt=p, item_id=f"q{i}") for i, (s, p) in enumerate(zip([0, 0, 1], PROMPTS))
    ]


@pytest.fixture(scope="module", params=FAMILIES + ["demo"])
def vlm(request, tmp_path_factory):
    torch.set_num_threads(1)
    if request.param == "demo":
        return _demo_vlm()
    build = getattr(tiny_models, f"build_tiny_{request.param}")
    return load_vlm(str(build(tmp_path_factory.mktemp(request.param))), device="cpu")


def _tokens(outs):
    assert not [o.error for o in outs if o.error]
    return [o.token_ids for o in outs]


@pytest.mark.parametrize("method", ["greedy", "vcd"])
def test_static_step_matches_eager(vlm, method):
    reqs = _requests()
    free = generate(vlm, reqs, method, max_new_tokens=N_NEW, eos_token_id=[])
    # an EOS that stops request 0 after 3 tokens: the others decode on while its rows stay in place
    eos = [_tokens(free)[0][3]]
    for share in (True, False):
        for batch in (len(reqs), 1):
            eager = generate(
                vlm,
                reqs,
                method,
                max_new_tokens=N_NEW,
                eos_token_id=eos,
                share_prefix=share,
                batch_size=batch,
            )
            static = generate(
                vlm,
                reqs,
                method,
                max_new_tokens=N_NEW,
                eos_token_id=eos,
                share_prefix=share,
                batch_size=batch,
                compile="static",
            )
            assert _tokens(static) == _tokens(eager), (share, batch)
            assert [o.meta["finish_reason"] for o in static] == [o.meta["finish_reason"] for o in eager]
            assert {o.meta["step"] for o in static} == {"static"}
            assert "step" not in eager[0].meta  # the default run records nothing new
    assert eager[0].meta["finish_reason"] == "eos" and len(_tokens(eager)[0]) <= 3


def test_static_sampling_and_eager_fallback(tmp_path_factory):
    torch.set_num_threads(1)
    vlm = load_vlm(str(build_tiny_llava(tmp_path_factory.mktemp("llava"))), device="cpu")
    reqs = _requests()
    kw = dict(max_new_tokens=N_NEW, eos_token_id=[], do_sample=True, temperature=1.0, top_p=0.9, seed=3)
    assert _tokens(generate(vlm, reqs, "sample", compile="static", **kw)) == _tokens(
        generate(vlm, reqs, "sample", **kw)
    )
    assert _tokens(generate(vlm, reqs, "vcd", compile="static", **kw)) == _tokens(
        generate(vlm, reqs, "vcd", **kw)
    )
    # forward hooks (DoLa's early-exit layers) and beams need the eager step: they say so and decode as before
    for method, extra in [("dola", {}), ("greedy", {"num_beams": 2})]:
        eager = generate(vlm, reqs, method, max_new_tokens=3, eos_token_id=[], **extra)
        asked = generate(vlm, reqs, method, max_new_tokens=3, eos_token_id=[], compile="static", **extra)
        assert _tokens(asked) == _tokens(eager)
        assert all(o.meta["step"].startswith("eager: ") for o in asked), asked[0].meta
    with pytest.raises(ValueError, match="compile must be one of"):
        generate(vlm, reqs, "greedy", compile="yes")


class _Syncs:
    """Counts tensor -> host reads (``item``/``tolist``/``cpu``/``__bool__``/``__int__``/``__float__``)
    and host lists -> tensor (``torch.tensor`` of Python data) while active."""

    NAMES = ("item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__")

    def __init__(self, monkeypatch):
        self.n = 0
        for name in self.NAMES:
            orig = getattr(torch.Tensor, name)

            def wrapped(t, *a, _orig=orig, **k):
                self.n += 1
                return _orig(t, *a, **k)

            monkeypatch.setattr(torch.Tensor, name, wrapped)
        orig_tensor = torch.tensor

        def tensor(data, *a, **k):
            if not isinstance(data, torch.Tensor):
                self.n += 1
            return orig_tensor(data, *a, **k)

        monkeypatch.setattr(torch, "tensor", tensor)


def test_one_host_sync_per_step(monkeypatch, tmp_path_factory):
    torch.set_num_threads(1)
    vlm = load_vlm(str(build_tiny_llava(tmp_path_factory.mktemp("llava"))), device="cpu")
    req = [_requests()[1]]
    counter = _Syncs(monkeypatch)

    def per_step(method, compile):
        counts = []
        for n in (3, 7):
            counter.n = 0
            generate(vlm, req, method, max_new_tokens=n, eos_token_id=[], compile=compile)
            counts.append(counter.n)
        return (counts[1] - counts[0]) / 4

    # greedy eager went from 5 per step (ids from a list, the scorer's index tensors, the mask
    # check inside the forward) to the one read of the chosen id; VCD's two branches likewise
    assert per_step("greedy", "off") == 1
    assert per_step("vcd", "off") == 1
    assert per_step("greedy", "static") == 1
    assert per_step("vcd", "static") == 1


@pytest.mark.slow
def test_compiled_step_matches_eager(tmp_path_factory):
    """``torch.compile`` of the step (one compile: VCD, 2 requests = 4 rows, 3 new tokens; ~30 s of
    CPU time, most of it inductor's C++ compile: marked slow)."""
    torch.set_num_threads(1)
    vlm = load_vlm(str(build_tiny_llava(tmp_path_factory.mktemp("llava"))), device="cpu")
    reqs = _requests()[:2]
    eager = generate(vlm, reqs, "vcd", max_new_tokens=3, eos_token_id=[])
    compiled = generate(vlm, reqs, "vcd", max_new_tokens=3, eos_token_id=[], compile="on")
    assert _tokens(compiled) == _tokens(eager)
    assert {o.meta["step"] for o in compiled} == {"compiled"}


def test_sliding_window_decoder_runs_eager(tmp_path_factory):
    """Gemma 3's sliding-window layers build their own masks: the static step refuses, says why,
    and the decode equals the eager one."""
    torch.set_num_threads(1)
    vlm = load_vlm(str(tiny_models.build_tiny_gemma3(tmp_path_factory.mktemp("gemma3"))), device="cpu")
    assert vlm.adapter.mixed_attention
    reqs = _requests()
    eager = generate(vlm, reqs, "vcd", max_new_tokens=4, eos_token_id=[])
    asked = generate(vlm, reqs, "vcd", max_new_tokens=4, eos_token_id=[], compile="on")
    assert _tokens(asked) == _tokens(eager)
    assert {o.meta["step"] for o in asked} == {"eager: the decoder has sliding-window attention layers"}
