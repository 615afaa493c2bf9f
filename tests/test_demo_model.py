"""Demo LLaVA: tokenizer, chat template, save/reload through the Auto classes, image-token
expansion, deterministic training, and the quick POPE evaluator (micro sizes, CPU)."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from vcdflow.data.demo_world import build_demo_world
from vcdflow.data.pope_builder import build_pope
from vcdflow.models import demo as dm

MICRO = dm.DemoModelConfig(
    image_size=16,
    patch_size=8,
    vision_hidden=16,
    vision_layers=1,
    vision_heads=2,
    text_hidden=32,
    text_layers=1,
    text_heads=2,
)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    build_demo_world(root, n_train=24, n_val=24, image_size=32, seed=0)
    return root


@pytest.fixture(scope="module")
def trained(world, tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("models") / "micro"
    summary = dm.train_demo_model(
        world, out, steps=4, batch_size=4, lr=1e-3, seed=0, align_steps=3, progress=False, config=MICRO
    )
    return out, summary


def test_tokenizer_words_punctuation_unk():
    tok = dm.build_tokenizer()
    assert tok.tokenize("Is there an apple in the image?") == [
        "is",
        "there",
        "an",
        "apple",
        "in",
        "the",
        "image",
        "?",
    ]
    ids = tok("USER: <image>\nhello cup")["input_ids"]
    assert ids[0] == tok.bos_token_id
    assert tok.convert_ids_to_tokens(ids[1:]) == ["user", ":", "<image>", "<unk>", "cup"]
    assert tok.convert_tokens_to_ids("<image>") not in (tok.unk_token_id, None)
    # the expanded image string is split token by token
    assert (
        tok("<image><image><image>", add_special_tokens=False)["input_ids"]
        == [tok.convert_tokens_to_ids("<image>")] * 3
    )
    for text in (
        dm.CAPTION_INSTRUCTION,
        dm.POPE_SUFFIX,
        "Is there a racket in the image?",
        "a cup , a fork and an apple .",
        "there is a dog and a tree in the image .",
        "a picture of a kite and a bat .",
    ):
        assert tok.unk_token_id not in tok(text)["input_ids"], text
    assert (
        tok.decode(tok("a cup and a fork .")["input_ids"], skip_special_tokens=True) == "a cup and a fork ."
    )


def test_save_reload_template_and_forward(trained):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    out, summary = trained
    proc = AutoProcessor.from_pretrained(out)
    model = LlavaForConditionalGeneration.from_pretrained(out).eval()
    assert type(proc).__name__ == "LlavaProcessor"
    q = "Is there a cup in the image?"
    user = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}]

    def render(m):
        return proc.apply_chat_template(m, add_generation_prompt=True, tokenize=False)

    assert render(user) == "USER: <image>\nIs there a cup in the image? ASSISTANT:"
    assert (
        render([{"role": "user", "content": [{"type": "text", "text": q}]}])
        == "USER: Is there a cup in the image? ASSISTANT:"
    )
    sys_msg = {"role": "system", "content": [{"type": "text", "text": "You are a careful assistant."}]}
    assert (
        render([sys_msg] + user)
        == "You are a careful assistant. USER: <image>\nIs there a cup in the image? ASSISTANT:"
    )
    assert (
        dm.render_prompt(proc, q, system="S.") == "S. USER: <image>\nIs there a cup in the image? ASSISTANT:"
    )

    img = Image.new("RGB", (32, 32), (200, 30, 30))
    enc = proc(text=render(user), images=img, return_tensors="pt")
    n_img = int((enc["input_ids"] == model.config.image_token_id).sum())
    assert n_img == (16 // 8) ** 2 == MICRO.n_image_tokens
    with torch.no_grad():
        feats = model.model.get_image_features(pixel_values=enc["pixel_values"])
        feats = feats.pooler_output if hasattr(feats, "pooler_output") else feats
        feats = feats[0] if isinstance(feats, (list, tuple)) else feats
        assert feats.reshape(-1, model.config.text_config.hidden_size).shape[0] == n_img
        logits = model(**enc).logits
        assert logits.shape == (1, enc["input_ids"].shape[1], len(proc.tokenizer))
        gen = model.generate(**enc, max_new_tokens=3, do_sample=False)
    assert gen.shape[1] <= enc["input_ids"].shape[1] + 3

    # the saved weights are the trained ones and training.json describes the run
    info = json.loads((out / "training.json").read_text())
    assert info["steps"] == 4 and info["params"] == sum(p.numel() for p in model.parameters())
    assert info["seed"] == 0 and len(info["loss_curve"]) >= 1 and info["seconds"] >= 0
    assert info["final_loss"] == pytest.approx(summary["final_loss"])
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp left


def test_training_is_deterministic_and_learns(world, tmp_path):
    torch.set_num_threads(1)
    kw = dict(steps=6, batch_size=4, lr=3e-3, align_steps=4, progress=False, config=MICRO)
    a = dm.train_demo_model(world, tmp_path / "a", seed=1, **kw)
    b = dm.train_demo_model(world, tmp_path / "b", seed=1, **kw)
    c = dm.train_demo_model(world, tmp_path / "c", seed=2, **kw)
    assert a["losses"] == b["losses"]
    assert a["final_align_loss"] == b["final_align_loss"]
    assert a["losses"] != c["losses"]
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (
        tmp_path / "b" / "model.safetensors"
    ).read_bytes()
    # the loss at the start is close to uniform over the vocabulary, then falls
    v = a["vocab_size"]
    assert a["losses"][0] == pytest.approx(torch.log(torch.tensor(float(v))).item(), rel=0.25)
    assert min(a["losses"][3:]) < a["losses"][0]


def test_train_rejects_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="instances_train.json"):
        dm.train_demo_model(tmp_path, tmp_path / "m", steps=1, progress=False, config=MICRO)
    with pytest.raises(ValueError, match="steps"):
        dm.train_demo_model(tmp_path, tmp_path / "m", steps=0, progress=False, config=MICRO)


def test_evaluate_pope_quick(trained, world, tmp_path):
    out, _ = trained
    build_pope(
        world / "annotations" / "instances_val.json",
        tmp_path,
        n_images=3,
        prefix="demo",
        strategies=("random",),
    )
    pope = tmp_path / "demo_pope_random.json"
    r = dm.evaluate_pope_quick(out, pope, world / "images" / "val", batch_size=5)
    assert r["n"] == 18
    # independent reference: one unbatched greedy generate() per question
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    proc = AutoProcessor.from_pretrained(out)
    model = LlavaForConditionalGeneration.from_pretrained(out).eval()
    no_id = proc.tokenizer.convert_tokens_to_ids("no")
    correct = yes = 0
    for line in pope.read_text().splitlines():
        q = json.loads(line)
        img = Image.open(world / "images" / "val" / q["image"]).convert("RGB")
        prompt = f"USER: <image>\n{q['text']} {dm.POPE_SUFFIX} ASSISTANT:"
        enc = proc(text=prompt, images=img, return_tensors="pt")
        with torch.no_grad():
            tok = model.generate(**enc, max_new_tokens=1, do_sample=False)[0, -1].item()
        pred = "no" if tok == no_id else "yes"
        yes += pred == "yes"
        correct += pred == q["label"]
    assert r["accuracy"] == pytest.approx(correct / 18)
    assert r["yes_ratio"] == pytest.approx(yes / 18)
    r4 = dm.evaluate_pope_quick(out, pope, world / "images" / "val", n=4)
    assert r4["n"] == 4


def test_patch_targets_hand_computed():
    images = [{"id": 1, "width": 64, "height": 64}]
    # 4x4 grid of 16-px patches; min_cover 0.15 of a patch = 38.4 px^2
    boxes = {
        1: [
            (7, [8.0, 8.0, 16.0, 16.0]),  # 8x8 = 25% of each of patches 0, 1, 4, 5
            (9, [12.0, 12.0, 8.0, 8.0]),  # at most 4x4 = 6% of any patch: none
            (3, [48.0, 0.0, 16.0, 64.0]),
        ]
    }  # the whole right column: patches 3, 7, 11, 15
    t = dm._patch_targets(images, boxes, cat_ids=[3, 7, 9], grid=4)
    assert t.shape == (1, 16, 3)
    assert t[0, :, 1].nonzero().flatten().tolist() == [0, 1, 4, 5]
    assert t[0, :, 2].sum() == 0
    assert t[0, :, 0].nonzero().flatten().tolist() == [3, 7, 11, 15]


def test_vocabulary_extends_to_a_custom_world(world, tmp_path):
    import shutil

    custom = tmp_path / "custom"
    shutil.copytree(world, custom)
    for kind in ("instances", "captions"):
        path = custom / "annotations" / f"{kind}_train.json"
        text = path.read_text().replace('"cup"', '"teapot"').replace("a cup ", "a teapot ")
        path.write_text(text)
    out = tmp_path / "m"
    dm.train_demo_model(custom, out, steps=1, batch_size=2, align_steps=1, progress=False, config=MICRO)
    from transformers import AutoProcessor

    tok = AutoProcessor.from_pretrained(out).tokenizer
    assert tok.unk_token_id not in tok("Is there a teapot in the image?")["input_ids"]
    assert len(tok) == len(dm.build_tokenizer()) + 1
