"""The newer model families (one record each in vcdflow.models.families) on tiny random models
built from their real transformers configs and processors, saved with ``save_pretrained`` and
loaded through ``load_vlm`` like a checkpoint: vcdflow's engine greedy equals transformers' own
``generate`` token for token — batch 1 and batched with images of different sizes (any-res and
dynamic-resolution rows of different lengths under left padding), shared prefix on and off — and
the processors that ship a video processor load image-only with the checkpoint's settings."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from tiny_models import tiny_dir
from vcdflow.decoding import Request, generate
from vcdflow.models import load_vlm
from vcdflow.models.families import FAMILIES

NEW = ("qwen2_vl", "llava_next", "llava_onevision", "gemma3", "internvl")
N = 6


def _img(seed, w, h):
    return Image.fromarray((np.random.RandomState(seed).rand(h, w, 3) * 255).astype("uint8"))


# three image sizes (portrait, square, wide: different any-res grids / dynamic resolutions) + text only
REQS = [
    Request(image=_img(1, 80, 100), prompt="Is there a cup in the image?", item_id="a"),
    Request(image=_img(2, 64, 64), prompt="Describe", item_id="b", system="You are an expert."),
    Request(image=_img(3, 120, 40), prompt="what is this red dog on the table with a cat?", item_id="c"),
    Request(prompt="Describe the table", item_id="t"),
]


@pytest.fixture(scope="module")
def vlms(tmp_path_factory):
    torch.set_num_threads(1)
    return {fam: load_vlm(tiny_dir(fam, tmp_path_factory)) for fam in NEW}


def _hf_greedy(vlm, req, n):
    """transformers' own ``generate`` on the processor's batch-1 inputs."""
    text = vlm.adapter.build_text(req.prompt, req.image is not None, req.system)
    kw = {"text": [text], "return_tensors": "pt"}
    if req.image is not None:
        kw["images"] = [req.image]
    enc = vlm.processor(**kw)
    out = vlm.model.generate(
        **enc,
        max_new_tokens=n,
        min_new_tokens=n,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=vlm.adapter.pad_token_id,
    )
    return out[0, enc["input_ids"].shape[1] :].tolist()


@pytest.mark.parametrize("family", NEW)
def test_engine_greedy_equals_transformers_generate(vlms, family):
    vlm = vlms[family]
    assert vlm.family == family and vlm.adapter.family == family and vlm.adapter.spec is FAMILIES[family]
    refs = [_hf_greedy(vlm, r, N) for r in REQS]
    n_img = [
        sum(t == vlm.adapter.image_token_id for t in vlm.adapter.encode(r).input_ids.tolist())
        for r in REQS[:3]
    ]
    if FAMILIES[family].layout != "grid":  # Gemma 3: a fixed token count per image
        assert len(set(n_img)) > 1, n_img  # the image sizes really give rows of different lengths
    for batch_size in (1, 16):
        for share in (True, False):
            outs = generate(
                vlm,
                REQS,
                method="greedy",
                max_new_tokens=N,
                eos_token_id=[],
                batch_size=batch_size,
                share_prefix=share,
            )
            for r, o, ref in zip(REQS, outs, refs):
                assert o.error is None, o.error
                assert o.token_ids == ref, (family, batch_size, share, r.item_id)
    # the image matters: another picture, another continuation (for at least one prompt)
    other = generate(
        vlm,
        [
            Request(image=_img(9, 100, 80), prompt=r.prompt, system=r.system, item_id=r.item_id)
            for r in REQS[:3]
        ],
        method="greedy",
        max_new_tokens=N,
        eos_token_id=[],
    )
    assert any(o.token_ids != ref for o, ref in zip(other, refs))


@pytest.mark.parametrize("family", NEW)
def test_vcd_batched_equals_batch_one(vlms, family):
    """A contrastive method (VCD: the noised-image branch through the family's pixel layout) gives
    the same tokens batched with mixed image sizes as one request at a time, and differs from greedy."""
    vlm = vlms[family]
    kw = dict(method="vcd", params={"noise_step": 999}, max_new_tokens=N, eos_token_id=[], seed=1)
    big = generate(vlm, REQS[:3], batch_size=16, **kw)
    one = generate(vlm, REQS[:3], batch_size=1, **kw)
    assert [o.error for o in big] == [None] * 3
    assert [o.token_ids for o in big] == [o.token_ids for o in one]


def test_gemma3_image_tokens_attend_both_ways(vlms):
    """Gemma 3's image tokens see each other in both directions: the adapter's prefill forward
    gives the logits of transformers' own forward with ``token_type_ids`` (what its ``generate``
    passes), which differ from the causal-only forward."""
    from vcdflow.decoding import Branch

    vlm = vlms["gemma3"]
    ad, model = vlm.adapter, vlm.model
    enc = ad.encode(Branch(prompt="Is there a cup in the image?", image=_img(1, 80, 100)))
    ids, mask = ad.collate([enc])
    with torch.inference_mode():
        embeds = ad.prefill_embeds(ids, [enc])
        pos, _ = ad.prefill_positions(ids, mask, [enc])
        ours, _ = ad.forward(embeds, mask, pos, None)
        full = dict(input_ids=ids, attention_mask=mask, pixel_values=enc.pixel_values)
        both_ways = model(**full, token_type_ids=enc.extras["token_type_ids"]).logits[:, -1].float()
        causal = model(**full).logits[:, -1].float()
    assert int(enc.extras["token_type_ids"].sum()) == 4
    assert torch.allclose(ours, both_ways, atol=1e-5)
    assert not torch.allclose(both_ways, causal, atol=1e-4)


def test_image_only_processors_keep_the_checkpoint_settings(vlms):
    """Qwen2-VL and LLaVA-OneVision ship a video processor (torchvision here): the processor is the
    family's own class without it, with the folder's chat template and processor settings."""
    for fam in ("qwen2_vl", "llava_onevision", "internvl"):
        proc = vlms[fam].processor
        assert FAMILIES[fam].video_processor
        assert type(proc).__mro__[1].__name__ == FAMILIES[fam].processor_class
        assert getattr(proc, "video_processor", None) is None and proc.chat_template
    ov = vlms["llava_onevision"].processor
    assert (ov.num_image_tokens, ov.vision_aspect_ratio, ov.vision_feature_select_strategy) == (
        4,
        "anyres_max_9",
        "full",
    )


def test_families_reach_the_config_schema_protocols_and_prompt(capsys):
    """The records are the one list: the config schema's family enum, the protocols' families and
    ``vcdflow prompt --family F`` (the family's official format, no model needed) follow them."""
    import yaml

    from vcdflow.cli import main
    from vcdflow.protocols import FAMILIES as PROTOCOL_FAMILIES, get_protocol

    schema = yaml.safe_load(open("workflow/schemas/config.schema.yaml"))
    enums = []

    def walk(node):
        if isinstance(node, dict):
            if "family" in node and isinstance(node["family"], dict) and "enum" in node["family"]:
                enums.append(node["family"]["enum"])
            for v in node.values():
                walk(v)

    walk(schema)
    assert enums == [["auto", *FAMILIES]]
    assert PROTOCOL_FAMILIES == tuple(FAMILIES)
    expected = {
        "qwen2_vl": "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "<|vision_start|><image><|vision_end|>Is there a dog in the image?",
        "llava_next": "A chat between a curious human and an artificial intelligence assistant.",
        "llava_onevision": "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "<image>\nIs there a dog in the image?",
    }
    for fam, start in expected.items():
        res = get_protocol("unified").resolve("vcd", fam, "pope")
        assert res.chat_template in ("model", "llava_v1")
        capsys.readouterr()
        assert main(["prompt", "--family", fam, "--method", "greedy", "--benchmark", "pope"]) in (0, None)
        import json

        text = json.loads(capsys.readouterr().out.splitlines()[0])["text"]
        assert text.startswith(start), (fam, text)
    # a family with no shipped copy of its template: one line asking for the model folder
    assert main(["prompt", "--family", "internvl", "--method", "greedy", "--benchmark", "pope"]) == 2
    assert (
        "--family: internvl: vcdflow ships no copy of its chat template; pass --model"
        in capsys.readouterr().err
    )


@pytest.mark.parametrize("fam", ["llava_onevision", "internvl", "gemma3"])
def test_every_method_runs_or_is_refused(vlms, tmp_path_factory, fam):
    """Every method on an any-res family (LLaVA-OneVision: tiles, Qwen2 decoder, image-only
    processor) and a tiled one (InternVL): it decodes, or it is refused with the one line of its
    declared needs, naming the method, the family and why — the line ``vcdflow methods`` prints."""
    from method_cases import runtime_params
    from vcdflow.decoding import METHODS
    from vcdflow.models.families import refusal

    vlm, d = vlms[fam], tiny_dir(fam, tmp_path_factory)
    req = Request(
        image=_img(4, 72, 60),
        prompt="Is there a cup in the image?",
        item_id="all",
        contrast_image=_img(5, 40, 90),
        contrast_images=[_img(6, 72, 60), _img(7, 50, 50)],
    )
    short = {"selfaug": {"sas_max_new_tokens": 2}, "code": {"description_max_new_tokens": 2}}
    refused = {}
    for method in sorted(METHODS):
        params = runtime_params(method, vlm, d, tmp_path_factory.getbasetemp(), short.get(method))
        out = generate(vlm, [req], method=method, params=params, max_new_tokens=2, eos_token_id=[])[0]
        why = METHODS[method].refusal(fam)
        if why is not None:
            refused[method] = out.error
            assert out.error == why and method in why and fam in why, (method, out.error)
            continue
        assert out.error is None, (method, out.error)
        assert len(out.token_ids) == 2, method
    if fam == "gemma3":  # a grid (CARVE runs); its per-attention-type masks refuse the decoder-hook methods
        assert set(refused) == {"contrastive_search", "only", "opera", "pai", "sid", "vasparse"}, refused
        assert all(e.endswith("which vcdflow's decoder hooks do not read yet") for e in refused.values())
        return
    assert refused == {"carve": refusal("carve", ["image_grid"], fam)}
    assert refused["carve"].startswith(
        f"method 'carve' needs a spatial grid of image tokens, which the {fam} family"
    )


def test_methods_prints_the_matrix_and_the_grid_leaves_refused_pairs_out(capsys):
    from vcdflow.cli import main
    from vcdflow.config import applies

    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    matrix = out.split("method x model family", 1)[1].splitlines()
    header = matrix[1].split()
    assert header == ["method", *FAMILIES]
    rows = {line.split()[0]: line.split()[1:] for line in matrix[2:] if line and not line.startswith("(")}
    carve = dict(zip(FAMILIES, " ".join(rows["carve"]).replace("refused (", "refused(").split()))
    assert carve["llava"] == carve["qwen2_vl"] == carve["qwen2_5_vl"] == "runs"
    assert carve["llava_next"].startswith("refused(") and carve["instructblip"].startswith("refused(")
    assert all(cell == "runs" for cell in rows["vcd"])
    assert "(1) method 'carve' needs a spatial grid of image tokens, which the instructblip family" in out
    config = {
        "models": {
            "next": {"path": "m", "family": "llava_next"},
            "qwen": {"path": "q", "family": "qwen2_vl"},
        },
        "methods": {"carve": {"method": "carve"}, "vcd": {"method": "vcd"}},
    }
    assert not applies(config, "carve", "next")
    assert applies(config, "carve", "qwen") and applies(config, "vcd", "next")


def test_paper_config_plans_every_model():
    """config/paper.yaml's newer-family models get the same grid as the others (the Snakemake dry
    run of test_workflow_config covers the first three families' models only, for time): runs
    under the unified and the paper protocols, and no CARVE run where the family is refused."""
    import collections

    import yaml

    from vcdflow.config import grid

    cfg = yaml.safe_load(open("config/paper.yaml"))
    cfg["seeds"] = cfg["seeds"][:1]
    runs = list(grid(cfg))
    by_model = collections.defaultdict(set)
    for r in runs:
        by_model[r["model"]].add((r["protocol"], r["method"]))
    fams = {name: m["family"] for name, m in cfg["models"].items()}
    assert set(NEW[:3]) <= set(fams.values())
    ref = by_model["llava-1.5-7b"]
    for name, fam in fams.items():
        plans = by_model[name]
        assert {p for p, _ in plans} == {p for p, _ in ref}, name  # unified + the same paper protocols
        carve = {m for _, m in plans if m.startswith("carve")}
        assert bool(carve) == (FAMILIES[fam].lacks(["image_grid", "multi_image"]) == {}), (name, carve)
