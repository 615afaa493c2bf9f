"""ConVis end to end: captions → T2I reconstructions (cached) → contrast images for the decoder.

Micro setup: a tiny random LLaVA (tests/tiny_models.py), three 64×64 scenes, and a tiny random
demo T2I pipeline (8×8 pixels) saved with ``save_pretrained``. Expected values come from
independent computations: the T2I pipeline called directly with the documented seed, the
engine's ``generate`` called directly, hand-worked caption clean-ups.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))

from vcdflow.io import read_jsonl  # noqa: E402
from vcdflow.t2i import (
    attach_reconstructions,
    caption_images,
    check_image,
    clean_caption,  # noqa: E402
    convis_images,
    image_key,
    load_t2i,
    read_manifest,
    reconstruct,
    reconstruction_path,
    t2i_hash,
    t2i_seed,
)
from vcdflow.t2i.captions import caption_item_id  # noqa: E402
from vcdflow.t2i.demo_t2i import DemoT2IConfig, build_demo_t2i, build_tokenizer  # noqa: E402

MODEL = "tiny"
N = 2  # captions per image
CAP = {"n_captions": N, "max_new_tokens": 6}
COLOURS = [(220, 30, 30), (250, 220, 0), (30, 90, 230)]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("convis")
    torch.set_num_threads(1)
    from tiny_models import build_tiny_llava

    from vcdflow.models import load_vlm

    vlm = load_vlm(build_tiny_llava(root / "llava"))
    items = []
    for i, col in enumerate(COLOURS):
        p = root / "images" / f"DEMO_val_{500001 + i:012d}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        im = Image.new("RGB", (64, 64), (120, 120, 120))
        im.paste(col, (10, 10, 40, 40))
        im.save(p)
        # two POPE-like items share image 0 (one key, captioned once)
        for q in range(2 if i == 0 else 1):
            items.append(
                {
                    "item_id": f"pope/random/{i}{q}",
                    "image": p.name,
                    "image_path": str(p),
                    "image_id": 500001 + i,
                    "question": "is there a cup in the image ?",
                    "label": "yes",
                }
            )
    tok = build_tokenizer(["a cup and a fork .", "a ball .", "there is a bird in the image ."], max_length=16)
    cfg = DemoT2IConfig(
        resolution=8, block_out_channels=(8, 16), text_hidden=16, text_layers=1, text_heads=2, max_length=16
    )
    pipe = build_demo_t2i(tok, cfg, seed=0)
    pipe.save_pretrained(root / "t2i")
    t2i_cfg = {
        "kind": "demo",
        "path": str(root / "t2i"),
        "num_inference_steps": 2,
        "guidance_scale": 2.0,
        "output_size": "original",
        "batch_size": 2,
    }
    return {"root": root, "vlm": vlm, "items": items, "t2i_cfg": t2i_cfg}


@pytest.fixture(scope="module")
def captioned(world):
    out = world["root"] / "captions" / "0-of-1.jsonl"
    images = convis_images(world["items"])
    caption_images(world["vlm"], images, out, model=MODEL, settings=CAP, batch_size=2, progress=False)
    return out


@pytest.fixture(scope="module")
def rendered(world, captioned):
    root = world["root"]
    res = reconstruct(
        read_jsonl(captioned),
        world["t2i_cfg"],
        root / "manifest.json",
        model=MODEL,
        cache_dir=root / "cache",
        progress=False,
    )
    return res


# --------------------------------------------------------------------------- captions


def test_clean_caption_hand_examples():
    # ConVis: split at ".", drop sentences containing "unk", re-join with "."
    assert clean_caption("A tree. An <unk> dog. A trunk.") == "A tree."
    assert clean_caption("a cup and a fork .") == "a cup and a fork ."
    assert clean_caption("  a cup <unk> here  ") == ""
    assert clean_caption("a trunk .", drop_unk_sentences=False) == "a trunk ."


def test_convis_images_dedupes_by_key(world):
    imgs = convis_images(world["items"])
    assert [im["key"] for im in imgs] == ["500001", "500002", "500003"]
    assert image_key({"image": "x.png", "image_id": None}) == "x.png"
    bad = [dict(world["items"][0]), dict(world["items"][0], image_path="/elsewhere.png")]
    with pytest.raises(ValueError, match="500001"):
        convis_images(bad)


def test_captions_are_seeded_per_model_image_seed(world, captioned):
    from vcdflow.decoding import Request, generate

    recs = read_jsonl(captioned)
    assert [r["item_id"] for r in recs] == [
        f"{k}/s{s}" for k in ("500001", "500002", "500003") for s in range(N)
    ]
    assert all(r["error"] is None for r in recs)
    # independent: the engine called directly, one request at a time, with the documented seeding
    for r in recs:
        out = generate(
            world["vlm"],
            [
                Request(
                    image=r["image_path"],
                    prompt="Please describe this image in detail.",
                    item_id=caption_item_id(MODEL, r["key"]),
                )
            ],
            method="sample",
            do_sample=True,
            temperature=0.7,
            top_p=0.9,
            max_new_tokens=6,
            seed=r["caption_seed"],
        )[0]
        assert r["raw"] == out.text
        assert r["caption"] == clean_caption(out.text)
    # the n seeds of one image give different samples (otherwise the n contrasts collapse to one)
    assert len({r["raw"] for r in recs if r["key"] == "500001"}) == N


def test_captions_resume_after_kill(world, captioned, tmp_path):
    from vcdflow.decoding import generate

    images = convis_images(world["items"])
    out = tmp_path / "caps.jsonl"
    calls = []

    def dying(vlm, reqs, **kw):
        if calls:
            raise KeyboardInterrupt("killed")
        calls.append(len(reqs))
        return generate(vlm, reqs, **kw)

    with pytest.raises(KeyboardInterrupt):
        caption_images(
            world["vlm"],
            images,
            out,
            model=MODEL,
            settings=CAP,
            batch_size=2,
            generate_fn=dying,
            progress=False,
        )
    assert not out.exists() and Path(str(out) + ".partial").exists()
    seen = []

    def counting(vlm, reqs, **kw):
        seen.extend(r.item_id for r in reqs)
        return generate(vlm, reqs, **kw)

    caption_images(
        world["vlm"],
        images,
        out,
        model=MODEL,
        settings=CAP,
        batch_size=2,
        generate_fn=counting,
        progress=False,
    )
    assert len(seen) == 3 * N - 2  # the first batch of two was checkpointed, not redone
    assert read_jsonl(out) == read_jsonl(captioned)
    assert not Path(str(out) + ".partial").exists()
    # complete output + same settings: nothing is decoded again (the VLM is not even needed)
    caption_images(lambda: pytest.fail("VLM loaded"), images, out, model=MODEL, settings=CAP, progress=False)


# --------------------------------------------------------------------------- reconstructions


def test_reconstructions_match_direct_pipeline_call(world, captioned, rendered):
    m = rendered["manifest"]
    assert rendered["stats"] == {"cached": 0, "generated": 3 * N, "regenerated": 0}
    assert sorted(m["images"]) == ["500001", "500002", "500003"] and m["n_captions"] == N
    t2i = load_t2i(world["t2i_cfg"])
    recs = read_jsonl(captioned)
    for r in recs:
        path = Path(m["images"][r["key"]][r["caption_seed"]])
        assert path == reconstruction_path(
            world["root"] / "cache",
            MODEL,
            t2i_hash(world["t2i_cfg"]),
            r["key"],
            r["caption_seed"],
            r["caption"],
        )
        # independent: the pipeline itself, with the documented seed, upsampled 8 -> 64 (bicubic)
        g = torch.Generator().manual_seed(t2i_seed(MODEL, r["key"], r["caption_seed"]))
        direct = t2i.pipe([r["caption"]], num_inference_steps=2, guidance_scale=2.0, generator=[g]).images[0]
        assert direct.size == (8, 8)
        want = np.asarray(direct.resize((64, 64), Image.BICUBIC))
        with Image.open(path) as im:
            assert im.size == (64, 64) and im.text["caption"] == r["caption"]
            got = np.asarray(im.convert("RGB"))
        assert np.array_equal(got, want)


def test_cache_hit_recomputes_nothing(world, captioned, rendered):
    paths = [p for ps in rendered["manifest"]["images"].values() for p in ps]
    mtimes = {p: os.stat(p).st_mtime_ns for p in paths}

    def loader(cfg, device):
        raise AssertionError("pipeline loaded on a full cache")

    root = world["root"]
    again = reconstruct(
        read_jsonl(captioned),
        world["t2i_cfg"],
        root / "manifest2.json",
        model=MODEL,
        cache_dir=root / "cache",
        loader=loader,
        progress=False,
    )
    assert again["stats"] == {"cached": 3 * N, "generated": 0, "regenerated": 0}
    assert again["manifest"]["images"] == rendered["manifest"]["images"]
    assert {p: os.stat(p).st_mtime_ns for p in paths} == mtimes


def test_corrupt_reconstruction_is_regenerated(world, captioned, rendered, tmp_path):
    root = world["root"]
    m = rendered["manifest"]
    victim = Path(m["images"]["500002"][1])
    good = np.asarray(Image.open(victim).convert("RGB"))
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])  # a torn write
    assert check_image(victim).startswith("unreadable")
    t2i = load_t2i(world["t2i_cfg"])
    res = reconstruct(
        read_jsonl(captioned),
        world["t2i_cfg"],
        tmp_path / "m.json",
        model=MODEL,
        cache_dir=root / "cache",
        t2i=t2i,
        progress=False,
    )
    assert res["stats"] == {"cached": 3 * N - 1, "generated": 0, "regenerated": 1}
    assert t2i.calls == 1
    assert check_image(victim, (64, 64)) is None
    assert np.array_equal(np.asarray(Image.open(victim).convert("RGB")), good)  # deterministic re-render
    # a wrong-size file (e.g. written under another output_size) is regenerated too
    Image.new("RGB", (8, 8)).save(victim)
    res = reconstruct(
        read_jsonl(captioned),
        world["t2i_cfg"],
        tmp_path / "m.json",
        model=MODEL,
        cache_dir=root / "cache",
        t2i=t2i,
        progress=False,
    )
    assert res["stats"]["regenerated"] == 1 and t2i.calls == 2


def test_missing_reconstruction_is_named(world, rendered, tmp_path):
    m = read_manifest(world["root"] / "manifest.json")
    items = attach_reconstructions(world["items"], m)
    assert [len(it["contrast_images"]) for it in items] == [N] * 4
    assert items[0]["contrast_images"] == items[1]["contrast_images"] == m["images"]["500001"]
    assert "contrast_images" not in world["items"][0]  # inputs are not mutated
    # an image the manifest does not cover
    stray = dict(world["items"][-1], image="DEMO_val_000000999999.png", image_id=999999, item_id="pope/x/9")
    with pytest.raises(KeyError, match="DEMO_val_000000999999.png"):
        attach_reconstructions([stray], m)
    # a listed file that has gone
    gone = dict(m, images=dict(m["images"], **{"500003": [str(tmp_path / "nope.png")] * N}))
    with pytest.raises(FileNotFoundError, match="nope.png.*DEMO_val_000000500003.png"):
        attach_reconstructions(world["items"], gone)


def test_bad_captions_are_named(world, captioned, tmp_path):
    recs = read_jsonl(captioned)
    with pytest.raises(ValueError, match="DEMO_val_000000500002.png.*seeds 0..1"):
        reconstruct(
            [r for r in recs if r["item_id"] != "500002/s1"],
            world["t2i_cfg"],
            tmp_path / "m.json",
            model=MODEL,
            cache_dir=tmp_path,
            progress=False,
        )
    broken = [dict(r, error="image unreadable") if r["key"] == "500003" else r for r in recs]
    with pytest.raises(ValueError, match="captioning failed.*DEMO_val_000000500003.png"):
        reconstruct(
            broken, world["t2i_cfg"], tmp_path / "m.json", model=MODEL, cache_dir=tmp_path, progress=False
        )


def test_decode_with_reconstructions(world, rendered):
    """runner.decode_batch on attached items == the engine's convis with the PIL images."""
    from vcdflow.decoding import Request, generate
    from vcdflow.runner import decode_batch

    items = attach_reconstructions(world["items"], world["root"] / "manifest.json")
    run = {
        "benchmark": {"name": "pope", "split": "random", "prompt": "{question}", "max_new_tokens": 5},
        "model": {"name": MODEL},
        "seed": 0,
        "method": {"label": "convis", "method": "convis", "do_sample": False, "params": {"alpha": 1.0}},
    }
    recs = decode_batch(world["vlm"], run, items)
    assert all(r["error"] is None for r in recs)
    assert {r["meta"]["convis_n_images"] for r in recs} == {N}
    reqs = [
        Request(
            image=Image.open(it["image_path"]).convert("RGB"),
            prompt=it["question"],
            item_id=it["item_id"],
            contrast_images=[Image.open(p).convert("RGB") for p in it["contrast_images"]],
        )
        for it in items
    ]
    outs = generate(world["vlm"], reqs, method="convis", params={"alpha": 1.0}, max_new_tokens=5, seed=0)
    assert [r["answer"] for r in recs] == [o.text for o in outs]
    # the reconstructions matter: other contrast images give another contrast
    swapped = generate(
        world["vlm"],
        [Request(image=r.image, prompt=r.prompt, item_id=r.item_id, contrast_images=[r.image]) for r in reqs],
        method="convis",
        params={"alpha": 1.0},
        max_new_tokens=5,
        seed=0,
    )
    plain = generate(
        world["vlm"],
        [Request(image=r.image, prompt=r.prompt, item_id=r.item_id) for r in reqs],
        method="greedy",
        max_new_tokens=5,
        seed=0,
    )
    # contrasting an image with itself leaves (1+a)l - a l = l: greedy; real reconstructions differ
    assert [o.text for o in swapped] == [o.text for o in plain]
    assert [o.text for o in outs] != [o.text for o in plain]


def test_t2i_hash_tracks_image_settings_and_weights(world, tmp_path):
    cfg = world["t2i_cfg"]
    h = t2i_hash(cfg)
    assert t2i_hash(dict(cfg, batch_size=7)) == h
    assert t2i_hash(dict(cfg, num_inference_steps=3)) != h
    assert t2i_hash(dict(cfg, output_size=32)) != h
    import shutil

    other = tmp_path / "t2i"
    shutil.copytree(cfg["path"], other)
    assert t2i_hash(dict(cfg, path=str(other))) == h  # same weights elsewhere: same cache
    f = next((other / "unet").glob("*.safetensors"))
    data = f.read_bytes()
    f.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    assert t2i_hash(dict(cfg, path=str(other))) != h  # retrained weights: new cache
    with pytest.raises(ValueError, match="unknown key"):
        t2i_hash(dict(cfg, steps=3))
