"""Shared-prefix prefill (``generate(share_prefix=True)``, the default) against the unshared
prefill (``share_prefix=False``): token for token equal (greedy, float32) for every method on the
three families' tiny models and on the demo architecture, while the work really is shared (the
number of distinct prefixes and of vision-tower images is counted). Plus VCD/RITUAL's
``draw: per_question | per_image``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from method_cases import runtime_params
from tiny_models import build_tiny_instructblip, build_tiny_llava, build_tiny_qwen2_5_vl
from vcdflow.decoding import METHODS, Request, generate
from vcdflow.decoding import engine
from vcdflow.models import load_vlm

N_NEW = 5
try:  # the engine tests' tiny-model parameters (kept in one place), cheaper prepare stages here
    from test_decoding import PARAMS as _ENGINE_PARAMS
except ImportError:  # pragma: no cover
    _ENGINE_PARAMS = {}
PARAMS = {
    "carve": {"layers": [0, 1]},
    **_ENGINE_PARAMS,
    "code": {"description_max_new_tokens": 4},
    "selfaug": {"sas_max_new_tokens": 4},
}
SYSTEM = "You are an expert data analyst. Please answer this question with one word."
QUESTIONS = [
    "Is there a cup in the image?",
    "Is there a dog in the image?",
    "what is this red dog doing on the table with a cat?",
]


def _img(seed, w=80, h=60):
    return Image.fromarray((np.random.RandomState(seed).rand(h, w, 3) * 255).astype("uint8"))


def _demo_vlm():
    from vcdflow.models.adapters import adapter_for
    from vcdflow.models.demo import build_demo_vlm
    from vcdflow.models.loading import VLM

    model, proc = build_demo_vlm(seed=0)
    with torch.no_grad():  # sharper than the init: varied greedy continuations
        for name, p in model.named_parameters():
            if p.ndim == 2 and "language_model" in name:
                p.mul_(3.0)
    return VLM(
        model=model,
        processor=proc,
        family="llava",
        adapter=adapter_for("llava", model, proc),
        device=torch.device("cpu"),
        dtype=torch.float32,
        source="random:demo",
    )


BUILDERS = {
    "llava": build_tiny_llava,
    "instructblip": build_tiny_instructblip,
    "qwen2_5_vl": build_tiny_qwen2_5_vl,
}


@pytest.fixture(scope="module", params=["llava", "instructblip", "qwen2_5_vl", "demo"])
def family(request, tmp_path_factory):
    torch.set_num_threads(1)
    name = request.param
    if name == "demo":
        vlm = _demo_vlm()
        DIRS[name] = tmp_path_factory.mktemp(name)
        vlm.model.save_pretrained(DIRS[name])
        vlm.processor.save_pretrained(DIRS[name])
    else:
        DIRS[name] = BUILDERS[name](tmp_path_factory.mktemp(name))
        vlm = load_vlm(DIRS[name])
    return name, vlm


#: family -> its model folder (text CD's amateur in the generic tests is the model itself)
DIRS: dict = {}


def pope_like(n_images=2, questions=QUESTIONS, system=SYSTEM, repeat_first=False):
    """``n_images`` images × the questions (POPE-style), contrast inputs fixed per image; with
    ``repeat_first`` the first question comes twice per image (as in POPE's three splits)."""
    ims = [_img(i + 1) for i in range(n_images)]
    qs = list(questions) + ([questions[0]] if repeat_first else [])
    return [
        Request(
            image=ims[i],
            prompt=q,
            item_id=f"img{i}/q{k}",
            system=system,
            contrast_image=ims[(i + 1) % n_images],
            contrast_prompt="what is this?",
            contrast_images=[ims[(i + 1) % n_images]],
        )
        for i in range(n_images)
        for k, q in enumerate(qs)
    ]


class Spy:
    """Records every shared prefill's (distinct prefixes, rows) and the vision tower's images."""

    def __init__(self, monkeypatch, adapter):
        self.plans: list[tuple[int, int]] = []
        self.images = 0
        plan_fn = engine.share_plan

        def plan(ad, rows):
            p = plan_fn(ad, rows)
            if p is not None:
                self.plans.append((len(p.unique), len(rows)))
            return p

        feats = adapter.image_features

        def image_features(rows):
            self.images += sum(r.pixel_values is not None for r in rows)
            return feats(rows)

        monkeypatch.setattr(engine, "share_plan", plan)
        monkeypatch.setattr(adapter, "image_features", image_features)


def _both(vlm, reqs, method, params=None, **kw):
    kw = dict(
        params=params if params is not None else PARAMS.get(method),
        max_new_tokens=N_NEW,
        eos_token_id=[],
        **kw,
    )
    return (
        generate(vlm, reqs, method=method, share_prefix=True, **kw),
        generate(vlm, reqs, method=method, share_prefix=False, **kw),
    )


#: methods whose every decoding branch is built per question (CARVE: the image refined by the
#: question's own attention), so nothing can be shared
PER_QUESTION_INPUTS = {"carve"}


def _close(a, b, what):
    """Equal; floats up to 1e-3 relative: method meta such as DeBias's probabilities, rounded to
    4 significant digits, can differ by one unit in the last digit under float round-off."""
    if isinstance(a, dict) and isinstance(b, dict):
        assert a.keys() == b.keys(), what
        for k in a:
            _close(a[k], b[k], f"{what}.{k}")
    elif isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        assert len(a) == len(b), what
        for k, (x, y) in enumerate(zip(a, b)):
            _close(x, y, f"{what}[{k}]")
    elif isinstance(a, float) or isinstance(b, float):
        assert a == pytest.approx(b, rel=1e-3, abs=1e-7), what
    else:
        assert a == b, what


@pytest.mark.parametrize("method", sorted(METHODS))
def test_shared_equals_unshared_greedy(family, method, monkeypatch, tmp_path_factory):
    name, vlm = family
    # InstructBLIP's Q-Former reads the question, so only repeated questions share the image
    reqs = pope_like(repeat_first=(name == "instructblip"))
    params = runtime_params(method, vlm, DIRS[name], tmp_path_factory.getbasetemp(), PARAMS.get(method))
    spy = Spy(monkeypatch, vlm.adapter)
    shared, unshared = _both(vlm, reqs, method, params)
    for s, u in zip(shared, unshared):
        assert s.error == u.error
        assert s.token_ids == u.token_ids, (name, method, s.item_id)
        _close(s.meta, u.meta, f"{name}/{method}/{s.item_id} meta")
    errors = {s.error for s in shared}
    if errors != {None}:  # a method that does not run on this family fails alike, once per item
        assert len(errors) == 1 and all(s.error for s in shared), errors
        pytest.skip(f"{method} on {name}: {errors.pop()}")
    assert all(len(s.token_ids) == N_NEW for s in shared)
    if not METHODS[method].share_prefix:  # the method turns sharing off (its hooks need full prefills)
        assert not spy.plans, f"{name}/{method}: shared although the method turns sharing off"
    elif method not in PER_QUESTION_INPUTS:
        assert spy.plans, f"{name}/{method}: nothing was shared"
    assert all(u < r for u, r in spy.plans)


def test_work_is_shared(family, monkeypatch):
    """Greedy on 2 images × 3 questions: 2 prefixes prefilled, 2 images through the vision tower
    (InstructBLIP: one per distinct (image, question): 2 × 3)."""
    name, vlm = family
    reqs = pope_like(repeat_first=(name == "instructblip"))
    spy = Spy(monkeypatch, vlm.adapter)
    generate(vlm, reqs, method="greedy", max_new_tokens=2)
    n_distinct = 6 if name == "instructblip" else 2
    assert spy.plans == [(n_distinct, len(reqs))]
    assert spy.images == n_distinct
    spy.plans.clear()
    spy.images = 0
    generate(vlm, reqs, method="greedy", max_new_tokens=2, share_prefix=False)
    assert spy.plans == [] and spy.images == len(reqs)


@pytest.mark.parametrize("method", ["vcd", "ritual", "icd", "sample"])
def test_shared_equals_unshared_sampling(family, method):
    name, vlm = family
    reqs = pope_like(repeat_first=(name == "instructblip"))
    shared, unshared = _both(vlm, reqs, method, do_sample=True, temperature=0.8, top_p=0.9, seed=5)
    assert [o.token_ids for o in shared] == [o.token_ids for o in unshared]


# --- tiny LLaVA only: early stops, mixed batches, draw ---------------------------------------------
@pytest.fixture(scope="module")
def llava(tmp_path_factory):
    torch.set_num_threads(1)
    return load_vlm(build_tiny_llava(tmp_path_factory.mktemp("tiny_llava_sp")))


def test_early_eos_and_mixed_batch(llava):
    """Requests stop at different steps; text-only and long-system rows share the batch."""
    reqs = pope_like(3) + [
        Request(prompt="Describe the picture", item_id="text"),
        Request(image=_img(1), prompt="Is there a cup?", item_id="nosys"),
    ]
    free = generate(llava, reqs, method="greedy", max_new_tokens=8, eos_token_id=[])
    eos = free[0].token_ids[2]
    shared = generate(llava, reqs, method="greedy", max_new_tokens=8, eos_token_id=eos)
    unshared = generate(llava, reqs, method="greedy", max_new_tokens=8, eos_token_id=eos, share_prefix=False)
    assert shared[0].meta["finish_reason"] == "eos"
    assert len({len(o.token_ids) for o in shared}) > 1
    assert [o.token_ids for o in shared] == [o.token_ids for o in unshared]
    assert [o.meta["finish_reason"] for o in shared] == [o.meta["finish_reason"] for o in unshared]
    for bs in (1, 4):
        assert [
            o.token_ids
            for o in generate(llava, reqs, method="greedy", max_new_tokens=8, eos_token_id=eos, batch_size=bs)
        ] == [o.token_ids for o in shared]


@pytest.mark.parametrize("method", ["vcd", "ritual"])
def test_draw_per_image_shares_the_contrast_branch(llava, method, monkeypatch):
    """2 images × 3 questions, 12 rows: the original branch always shares (2 prefixes); the
    contrast branch shares only with ``draw: per_image`` (2 more, instead of 6)."""
    reqs = pope_like(2)
    spy = Spy(monkeypatch, llava.adapter)
    per_q = generate(llava, reqs, method=method, max_new_tokens=3, eos_token_id=[])
    per_q_explicit = generate(
        llava, reqs, method=method, params={"draw": "per_question"}, max_new_tokens=3, eos_token_id=[]
    )
    per_img = generate(
        llava, reqs, method=method, params={"draw": "per_image"}, max_new_tokens=3, eos_token_id=[]
    )
    assert [o.token_ids for o in per_q] == [o.token_ids for o in per_q_explicit]
    if method == "vcd":  # RITUAL may draw the same transform twice; VCD's noise never repeats
        assert spy.plans[0] == (2 + 6, 12)
    assert spy.plans[-1] == (2 + 2, 12)
    if method == "ritual":
        t = [o.meta["ritual_transform"] for o in per_img]
        assert t[:3] == [t[0]] * 3 and t[3:] == [t[3]] * 3
    # per image: the stream belongs to the picture, not to the item id or the question
    renamed = [
        Request(image=r.image.copy(), prompt=r.prompt, system=r.system, item_id=f"other/{k}")
        for k, r in enumerate(reqs)
    ]
    again = generate(
        llava, renamed, method=method, params={"draw": "per_image"}, max_new_tokens=3, eos_token_id=[]
    )
    assert [o.token_ids for o in again] == [o.token_ids for o in per_img]
    unshared = generate(
        llava,
        reqs,
        method=method,
        params={"draw": "per_image"},
        max_new_tokens=3,
        eos_token_id=[],
        share_prefix=False,
    )
    assert [o.token_ids for o in unshared] == [o.token_ids for o in per_img]


def test_bad_draw(llava):
    with pytest.raises(
        ValueError, match="parameter 'draw' of method 'vcd' must be one of per_question, per_image"
    ):
        generate(llava, pope_like(1), method="vcd", params={"draw": "per_item"})
