"""load_vlm and the three family adapters (llava, instructblip, qwen2_5_vl) on tiny random models
built from the real transformers configs: engine greedy == transformers' own ``generate``,
batch-size invariance of contrastive methods, pixel layouts, hub download path, bad input."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from tiny_models import build_tiny_instructblip, build_tiny_llava, build_tiny_qwen2_5_vl
from vcdflow.decoding import Branch, Request, generate
from vcdflow.decoding import distortions as D
from vcdflow.models import load_vlm, parse_dtype

BUILDERS = {
    "llava": build_tiny_llava,
    "instructblip": build_tiny_instructblip,
    "qwen2_5_vl": build_tiny_qwen2_5_vl,
}


def _img(seed, w, h):
    return Image.fromarray((np.random.RandomState(seed).rand(h, w, 3) * 255).astype("uint8"))


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    torch.set_num_threads(1)
    return {fam: b(tmp_path_factory.mktemp(fam)) for fam, b in BUILDERS.items()}


@pytest.fixture(scope="module")
def vlms(model_dirs):
    return {fam: load_vlm(d) for fam, d in model_dirs.items()}


REQS = [
    Request(image=_img(1, 80, 100), prompt="Is there a cup in the image?", item_id="a"),
    Request(image=_img(2, 64, 64), prompt="Describe", item_id="b", system="You are an expert."),
    Request(image=_img(3, 120, 70), prompt="what is this red dog on the table with a cat?", item_id="c"),
]


def test_load_local_dir(model_dirs):
    for fam, d in model_dirs.items():
        vlm = load_vlm(d)
        assert vlm.family == fam and vlm.adapter.family == fam
        assert vlm.dtype == torch.float32 and next(vlm.model.parameters()).dtype == torch.float32
        assert vlm.device == torch.device("cpu") and not vlm.model.training
    bf = load_vlm(model_dirs["llava"], dtype="bfloat16")
    assert next(bf.model.parameters()).dtype == torch.bfloat16
    out = generate(bf, REQS[:1], method="vcd", max_new_tokens=3)[0]
    assert out.error is None and len(out.token_ids) == 3


def test_parse_dtype():
    assert parse_dtype("bf16") is torch.bfloat16 and parse_dtype(torch.float16) is torch.float16
    with pytest.raises(ValueError, match="unknown dtype 'float8'"):
        parse_dtype("float8")


def test_bad_model_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_vlm(str(tmp_path / "missing" / "model"))
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(
        ValueError, match=r"unsupported model_type 'bert' .*supported: llava, instructblip, qwen2_5_vl"
    ):
        load_vlm(tmp_path / "bert")


def test_hub_id_goes_through_snapshot_download(model_dirs, monkeypatch, caplog):
    import huggingface_hub

    calls = []

    def fake_snapshot_download(**kw):
        calls.append(kw)
        return str(model_dirs["llava"])

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    monkeypatch.setenv("HF_TOKEN", "hf_secret_token_123")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with caplog.at_level(logging.DEBUG):
        vlm = load_vlm("llava-hf/llava-1.5-7b-hf", revision="abc123")
    assert vlm.family == "llava" and vlm.source == str(model_dirs["llava"])
    assert calls == [
        {
            "repo_id": "llava-hf/llava-1.5-7b-hf",
            "revision": "abc123",
            "token": "hf_secret_token_123",
            "local_files_only": False,
        }
    ]
    assert "hf_secret_token_123" not in caplog.text


def test_hub_failure_is_reported(monkeypatch):
    import huggingface_hub

    def offline(**kw):
        raise OSError("outgoing traffic has been disabled")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    monkeypatch.setenv("HF_TOKEN", "hf_secret_token_123")
    with pytest.raises(FileNotFoundError) as e:
        load_vlm("org/model")
    assert str(e.value) == (
        "'org/model' is not a local directory and could not be fetched from the Hugging Face "
        "hub (OSError: outgoing traffic has been disabled)"
    )


def _hf_greedy(vlm, req, n):
    ad = vlm.adapter
    text = ad.build_text(req.prompt, req.image is not None, req.system)
    kw = {"text": [text], "return_tensors": "pt"}
    if req.image is not None:
        kw["images"] = [req.image]
    enc = vlm.processor(**kw)
    enc = {k: v for k, v in enc.items() if k != "mm_token_type_ids" or vlm.family == "qwen2_5_vl"}
    out = vlm.model.generate(
        **enc,
        max_new_tokens=n,
        do_sample=False,
        eos_token_id=None,
        min_new_tokens=n,
        pad_token_id=ad.pad_token_id,
    )
    return out[0, enc["input_ids"].shape[1] :].tolist()


@pytest.mark.parametrize("family", sorted(BUILDERS))
def test_engine_greedy_equals_transformers_generate(vlms, family):
    vlm = vlms[family]
    reqs = REQS + ([Request(prompt="Describe the table", item_id="t")] if family != "instructblip" else [])
    outs = generate(vlm, reqs, method="greedy", max_new_tokens=6, eos_token_id=[], batch_size=16)
    for r, o in zip(reqs, outs):
        assert o.error is None, o.error
        assert o.token_ids == _hf_greedy(vlm, r, 6), (family, r.item_id)


@pytest.mark.parametrize("family", sorted(BUILDERS))
def test_contrastive_methods_batch_invariant(vlms, family):
    vlm = vlms[family]
    for method in ("vcd", "m3id", "icd", "avisc", "ritual", "selfaug"):
        params = {"sas_max_new_tokens": 3} if method == "selfaug" else None
        for do_sample in (False, True):
            kw = dict(
                method=method, params=params, do_sample=do_sample, max_new_tokens=5, seed=1, eos_token_id=[]
            )
            big = generate(vlm, REQS, batch_size=16, **kw)
            one = generate(vlm, REQS, batch_size=1, **kw)
            for x, y in zip(big, one):
                assert x.error is None, (family, method, x.error)
                assert x.token_ids == y.token_ids and len(x.token_ids) == 5, (family, method, do_sample)
    g = generate(vlm, REQS, method="greedy", max_new_tokens=5, eos_token_id=[])
    v = generate(vlm, REQS, method="vcd", params={"noise_step": 999}, max_new_tokens=5, eos_token_id=[])
    assert any(a.token_ids != b.token_ids for a, b in zip(g, v))  # the contrast does something


@pytest.mark.parametrize("position", ["qformer", "qformer_question"])
def test_icd_qformer_variants_equal_a_plain_reference(vlms, position):
    """ICD on InstructBLIP as the official code runs it: the LLM text is the same in both branches,
    only the contrast branch's Q-Former instruction is the disturbance (alone, or + question).
    Reference: full recompute through the HF model's own forward (no cache, no batching), the
    formula (1+a)l - a l_d with the APC cutoff written out here."""
    vlm = vlms["instructblip"]
    proc, model = vlm.processor, vlm.model
    instr, a, beta, n = "You are a confused objects detector.", 1.0, 0.1, 5
    params = {"instruction": instr, "position": position, "alpha": a, "beta": beta}
    outs = generate(vlm, REQS, method="icd", params=params, max_new_tokens=n, eos_token_id=[], batch_size=16)
    plain = generate(vlm, REQS, method="greedy", max_new_tokens=n, eos_token_id=[])
    assert any(o.token_ids != g.token_ids for o, g in zip(outs, plain))
    for req, out in zip(REQS, outs):
        assert out.error is None, out.error
        text = vlm.adapter.build_text(req.prompt, True, req.system)
        enc = proc(text=[text], images=[req.image], return_tensors="pt")
        qtext = instr if position == "qformer" else f"{instr} {req.prompt}"
        q = proc.qformer_tokenizer(qtext, return_tensors="pt")
        gen = []
        with torch.inference_mode():
            for _ in range(n):
                ids = torch.cat([enc["input_ids"], torch.tensor([gen], dtype=torch.long)], 1)
                common = dict(
                    input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=enc["pixel_values"]
                )
                l0 = (
                    model(
                        **common,
                        qformer_input_ids=enc["qformer_input_ids"],
                        qformer_attention_mask=enc["qformer_attention_mask"],
                    )
                    .logits[0, -1]
                    .float()
                )
                l1 = (
                    model(
                        **common, qformer_input_ids=q["input_ids"], qformer_attention_mask=q["attention_mask"]
                    )
                    .logits[0, -1]
                    .float()
                )
                scores = (1 + a) * l0 - a * l1
                probs = torch.softmax(l0, -1)
                scores[probs < beta * probs.max()] = -float("inf")
                gen.append(int(scores.argmax()))
        assert out.token_ids == gen, (position, req.item_id)


def test_icd_qformer_position_needs_instructblip(vlms):
    out = generate(vlms["llava"], REQS[:1], method="icd", params={"position": "qformer"}, max_new_tokens=2)[0]
    assert (
        out.error == "ValueError: method 'icd' with position='qformer' needs a model with a Q-Former "
        "(family instructblip), not 'llava'"
    )


@pytest.mark.parametrize("family", sorted(BUILDERS))
def test_every_method_runs_on_every_family(vlms, model_dirs, family, tmp_path_factory):
    from method_cases import runtime_params
    from vcdflow.decoding import METHODS

    req = Request(
        image=_img(4, 72, 60),
        prompt="Is there a cup in the image?",
        item_id="all",
        contrast_image=_img(5, 72, 60),
        contrast_images=[_img(6, 72, 60), _img(7, 50, 50)],
    )
    short = {"selfaug": {"sas_max_new_tokens": 3}, "code": {"description_max_new_tokens": 3}}
    for method in sorted(METHODS):
        families = METHODS[method].applies_to()  # None: every family
        params = runtime_params(
            method, vlms[family], model_dirs[family], tmp_path_factory.getbasetemp(), short.get(method)
        )
        out = generate(vlms[family], [req], method=method, params=params, max_new_tokens=2, eos_token_id=[])[
            0
        ]
        if families is not None and family not in families:
            assert out.error and family in out.error.lower(), (
                family,
                method,
                out.error,
            )  # refused, naming it
            continue
        assert out.error is None, (family, method, out.error)
        assert len(out.token_ids) == 2, (family, method)


def test_qwen_pixel_layout_round_trip(vlms):
    vlm = vlms["qwen2_5_vl"]
    ad = vlm.adapter
    img = _img(5, 56, 56)
    enc = ad.encode(Branch(prompt="x", image=img))
    imgs = ad.pixels_to_images(enc.pixel_values, enc.extras)
    assert imgs.shape == (1, 3, 56, 56)
    assert torch.equal(ad.images_to_pixels(imgs, enc.extras), enc.pixel_values)
    # a flip of the normalised image == the processor's output for the mirrored picture
    mirrored = ad.encode(Branch(prompt="x", image=Image.fromarray(np.asarray(img)[:, ::-1].copy())))
    flipped = ad.encode(Branch(prompt="x", image=img, pixel_fn=lambda x, m, s: D.hflip(x)))
    assert torch.allclose(flipped.pixel_values, mirrored.pixel_values, atol=1e-5)


def test_avisc_marks_blind_tokens(vlms):
    for fam, vlm in vlms.items():
        out = generate(vlm, REQS[:2], method="avisc", max_new_tokens=2)
        n_img = out[0].input_ids.count(vlm.adapter.image_token_id)
        for o in out:
            assert o.error is None
            # at most (n-1)/sqrt(n) standard deviations above the mean are possible: with few
            # image tokens (qwen: 2 here) no token may qualify, and all are zeroed
            assert (1 if fam == "llava" else 0) <= o.meta["avisc_blind_tokens"] < n_img
            assert o.meta["avisc_layers"] and all(0 <= i < 2 for i in o.meta["avisc_layers"])


def test_demo_model_through_load_vlm(tmp_path):
    """The demo LLaVA (vcdflow.models.demo) saved with save_pretrained loads and decodes, and the
    engine's prompt is the demo's own rendering of the chat template."""
    from vcdflow.models.demo import build_demo_vlm, render_prompt

    model, processor = build_demo_vlm(seed=0)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    vlm = load_vlm(tmp_path)
    assert vlm.family == "llava"
    req = Request(
        image=_img(1, 40, 40), prompt="Is there a cup in the image?", item_id="q", system="You are helpful."
    )
    for method in ("greedy", "vcd", "icd", "m3id", "avisc"):
        out = generate(vlm, [req], method=method, max_new_tokens=3)[0]
        assert out.error is None, (method, out.error)
        want = vlm.processor(
            text=[render_prompt(vlm.processor, req.prompt, system=req.system)],
            images=[req.image],
            return_tensors="pt",
        )["input_ids"][0].tolist()
        assert out.input_ids == want
