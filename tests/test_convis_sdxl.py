"""The paper's T2I code path (SDXL base + Hyper-SD 1-step UNet, LCM at t=800, guidance 0) on a
tiny random SDXL-architecture model written offline in the download layout."""

from __future__ import annotations

import pytest
import torch

from vcdflow.t2i.pipeline import (
    PAPER_T2I,
    _chunk_ids,
    build_tiny_sdxl,
    encode_prompts_chunked,
    load_t2i,
    normalize_t2i_config,
    t2i_hash,
)


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory):
    torch.set_num_threads(1)
    root = build_tiny_sdxl(tmp_path_factory.mktemp("sdxl") / "sdxl-hyper")
    cfg = dict(PAPER_T2I, path=str(root), dtype="float32")
    return cfg, load_t2i(cfg)


def test_paper_config_matches_convis_script():
    c = normalize_t2i_config(PAPER_T2I)
    assert (c["base"], c["unet_repo"], c["unet_file"]) == (
        "stabilityai/stable-diffusion-xl-base-1.0",
        "ByteDance/Hyper-SD",
        "Hyper-SDXL-1step-Unet.safetensors",
    )
    assert (c["scheduler"], c["num_inference_steps"], c["timesteps"], c["guidance_scale"]) == (
        "lcm",
        1,
        [800],
        0.0,
    )
    assert (c["dtype"], c["variant"]) == ("float16", "fp16")


def test_hyper_unet_weights_and_lcm_scheduler_are_used(sdxl):
    from safetensors.torch import load_file

    cfg, t2i = sdxl
    pipe = t2i.pipe
    assert type(pipe).__name__ == "StableDiffusionXLPipeline"
    assert type(pipe.scheduler).__name__ == "LCMScheduler"
    hyper = load_file(f"{cfg['path']}/unet/{cfg['unet_file']}")
    state = pipe.unet.state_dict()
    assert set(hyper) == set(state)
    assert all(torch.equal(hyper[k], state[k]) for k in hyper)  # not the base's (different seed) init


def test_one_step_at_t800_without_guidance(sdxl):
    cfg, t2i = sdxl
    seen = []
    orig = t2i.pipe.unet.forward

    def spy(sample, timestep, *a, **kw):
        seen.append((sample.shape[0], int(timestep)))
        return orig(sample, timestep, *a, **kw)

    t2i.pipe.unet.forward = spy
    try:
        ims = t2i(["a cup and a fork", "a dog"], [torch.Generator().manual_seed(i) for i in range(2)])
    finally:
        t2i.pipe.unet.forward = orig
    assert seen == [(2, 800)]  # one UNet call, batch 2 (no classifier-free guidance copy), t = 800
    assert [im.size for im in ims] == [(32, 32)] * 2  # sample_size 16 × VAE factor 2
    # each image depends only on its own generator
    alone = t2i(["a dog"], [torch.Generator().manual_seed(1)])[0]
    assert alone.tobytes() == ims[1].tobytes()


def test_chunked_prompt_embeddings(sdxl):
    _, t2i = sdxl
    pipe = t2i.pipe
    toks, encs = [pipe.tokenizer, pipe.tokenizer_2], [pipe.text_encoder, pipe.text_encoder_2]
    short = "a cup and a fork"
    emb, pooled = encode_prompts_chunked(toks, encs, [short], "cpu")
    # independent: diffusers' own SDXL encode_prompt (77-token, penultimate layer, pooled from encoder 2)
    ref, _, ref_pooled, _ = pipe.encode_prompt(short, device="cpu", do_classifier_free_guidance=False)
    assert emb.shape == ref.shape == (1, 77, 64)
    assert torch.allclose(emb, ref, atol=1e-6) and torch.allclose(pooled, ref_pooled, atol=1e-6)
    # 160 one-letter words are 160 tokens with this tokenizer ("a</w>", ...): 3 chunks of 75
    words = [chr(97 + i % 26) for i in range(160)]
    long = " ".join(words)
    ids = _chunk_ids(pipe.tokenizer, long)
    assert [len(c) for c in ids] == [77, 77, 77]
    body = pipe.tokenizer(long, add_special_tokens=False).input_ids
    bos, eos, pad = pipe.tokenizer.bos_token_id, pipe.tokenizer.eos_token_id, pipe.tokenizer.pad_token_id
    assert len(body) == 160
    assert ids[0] == [bos] + body[:75] + [eos]
    assert ids[2] == [bos] + body[150:] + [eos] + [pad] * 65
    emb2, pooled2 = encode_prompts_chunked(toks, encs, [long, short], "cpu")
    assert emb2.shape == (2, 3 * 77, 64)
    # the short prompt: its own chunk, then the empty prompt's chunk as padding
    empty, _, _, _ = pipe.encode_prompt("", device="cpu", do_classifier_free_guidance=False)
    assert torch.allclose(emb2[1, :77], ref[0], atol=1e-6)
    assert torch.allclose(emb2[1, 77:154], empty[0], atol=1e-6)
    first, _, first_pooled, _ = pipe.encode_prompt(
        " ".join(words[:75]), device="cpu", do_classifier_free_guidance=False
    )
    assert torch.allclose(emb2[0, :77], first[0], atol=1e-6) and torch.allclose(
        pooled2[0], first_pooled[0], atol=1e-6
    )
    # through the pipeline: long_prompt=chunk renders; truncate renders the first 77 tokens
    t2i.cfg["long_prompt"] = "chunk"
    try:
        im = t2i([long], [torch.Generator().manual_seed(0)])[0]
    finally:
        t2i.cfg["long_prompt"] = "truncate"
    assert im.size == (32, 32)


def test_missing_weights_are_named(tmp_path):
    cfg = dict(PAPER_T2I, path=str(tmp_path / "absent"), dtype="float32")
    with pytest.raises(FileNotFoundError, match="convis_t2i_download"):
        load_t2i(cfg)
    with pytest.raises(ValueError, match="long_prompt"):
        normalize_t2i_config(dict(PAPER_T2I, long_prompt="magic"))
    # sdxl_hyper's hash follows the hub coordinates (no GB-sized hashing)
    assert t2i_hash(cfg) != t2i_hash(dict(cfg, unet_file="Hyper-SDXL-2steps-lora.safetensors"))


def test_compel_mode_needs_compel(sdxl):
    pytest.importorskip("compel", reason="compel not installed")
    _, t2i = sdxl
    t2i.cfg["long_prompt"] = "compel"
    try:
        im = t2i(["a cup and a fork"], [torch.Generator().manual_seed(0)])[0]
    finally:
        t2i.cfg["long_prompt"] = "truncate"
    assert im.size == (32, 32)
