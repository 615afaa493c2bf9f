"""The demo T2I model: tokenizer, seeded training, save/load like a hub pipeline, shipped weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from vcdflow.t2i.demo_t2i import PAD, DemoT2IConfig, build_tokenizer, load_training_pairs, train_demo_t2i
from vcdflow.t2i.pipeline import DEMO_T2I, load_t2i

SHIPPED = Path(__file__).resolve().parents[1] / "resources" / "demo_t2i"
TINY = {
    "resolution": 8,
    "block_out_channels": (8, 16),
    "text_hidden": 16,
    "text_layers": 1,
    "text_heads": 2,
    "max_length": 16,
}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from vcdflow.data.demo_world import build_demo_world

    root = tmp_path_factory.mktemp("world")
    build_demo_world(root, n_train=12, n_val=2, image_size=32, seed=0)
    return root


def test_tokenizer_is_word_level_with_bos_eos():
    tok = build_tokenizer(["a cup and a fork .", "there is a bird in the image ."], max_length=8)
    ids = tok(["A cup, a DOG."], padding="max_length", truncation=True, max_length=8).input_ids[0]
    v = tok.get_vocab()
    assert [v[w] for w in ("<pad>", "<bos>", "<eos>", "<unk>")] == [0, 1, 2, 3]
    assert ids == [1, v["a"], v["cup"], 3, v["a"], 3, v["."], 2]  # ',' and 'dog' are unknown
    short = tok(["a cup"], padding="max_length", max_length=8).input_ids[0]
    assert short == [1, v["a"], v["cup"], 2] + [v[PAD]] * 4


def test_training_pairs_downsample_with_box_filter(world):
    from PIL import Image

    from vcdflow.io import read_json

    images, captions, ids = load_training_pairs(world, "train", resolution=8)
    assert images.shape == (12, 3, 8, 8) and len(captions) == 12 and all(len(c) == 3 for c in captions)
    rec = read_json(world / "annotations" / "captions_train.json")["images"][0]
    with Image.open(world / "images" / "train" / rec["file_name"]) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.float64)
    # independent: a 4×4 block mean (box filter 32 → 8), scaled to [−1, 1]
    block = arr.reshape(8, 4, 8, 4, 3).mean(axis=(1, 3))
    want = np.round(block) / 127.5 - 1.0
    assert np.abs(images[0].permute(1, 2, 0).numpy() - want).max() <= 1 / 127.5 + 1e-6


def test_training_is_seeded_and_saves_a_loadable_pipeline(world, tmp_path):
    kw = dict(steps=3, batch_size=4, warmup=1, cfg=TINY, progress=False, threads=1)
    a = train_demo_t2i(world, tmp_path / "a", seed=0, **kw)
    b = train_demo_t2i(world, tmp_path / "b", seed=0, **kw)
    c = train_demo_t2i(world, tmp_path / "c", seed=1, **kw)
    assert a["steps_done"] == b["steps_done"] == c["steps_done"] == 3 and len(a["loss_every_100"]) == 0
    from safetensors.torch import load_file

    def weights(d):
        return load_file(str(d / "unet" / "diffusion_pytorch_model.safetensors"))

    wa, wb, wc = weights(tmp_path / "a"), weights(tmp_path / "b"), weights(tmp_path / "c")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)
    t2i = load_t2i(dict(DEMO_T2I, path=str(tmp_path / "a"), num_inference_steps=2))
    ims = t2i(["a cup .", "a ball ."], [torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)])
    assert [im.size for im in ims] == [(8, 8), (8, 8)]
    info = (tmp_path / "a" / "training.json").read_text()
    assert '"steps_done": 3' in info and '"seed": 0' in info


def test_max_seconds_stops_training(world, tmp_path):
    res = train_demo_t2i(
        world, tmp_path / "t", steps=50, batch_size=2, max_seconds=0.0, cfg=TINY, progress=False, threads=1
    )
    assert res["steps_done"] == 1


def test_missing_world_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="captions_train.json"):
        train_demo_t2i(tmp_path / "nowhere", tmp_path / "out", steps=1, cfg=TINY, progress=False)


@pytest.mark.skipif(not (SHIPPED / "model_index.json").is_file(), reason="shipped demo T2I weights absent")
def test_shipped_weights_render_the_captioned_colours():
    """resources/demo_t2i: a cup is red (220, 30, 30), a ball yellow (250, 220, 0) in the demo world."""
    torch.set_num_threads(1)
    t2i = load_t2i(dict(DEMO_T2I, path=str(SHIPPED)))
    prompts = ["a cup ."] * 3 + ["a ball ."] * 3
    ims = t2i(prompts, [torch.Generator().manual_seed(i) for i in range(6)])
    assert ims[0].size == (16, 16)

    def frac(im, rgb):
        arr = np.asarray(im, dtype=np.float32)
        return float((np.linalg.norm(arr - np.array(rgb, dtype=np.float32), axis=-1) < 50).mean())

    red = [frac(im, (220, 30, 30)) for im in ims]
    yellow = [frac(im, (250, 220, 0)) for im in ims]
    assert min(red[:3]) > 0 and max(red[3:]) < min(red[:3])
    assert min(yellow[3:]) > 0 and max(yellow[:3]) < min(yellow[3:])
    cfg = DemoT2IConfig()
    assert t2i.pipe.unet.config.sample_size == cfg.resolution
