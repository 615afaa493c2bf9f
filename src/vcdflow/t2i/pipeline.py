"""Text-to-image pipelines for ConVis reconstructions: the paper's SDXL + Hyper-SD, the demo model.

ConVis (Park et al., AAAI 2025; ``yejipark-m/ConVis`` ``run_scripts/image_generation.py``)
renders each caption with

* the UNet of ``ByteDance/Hyper-SD`` ``Hyper-SDXL-1step-Unet.safetensors`` loaded into
  ``UNet2DConditionModel.from_config(<stabilityai/stable-diffusion-xl-base-1.0>/unet)``;
* the rest of ``stabilityai/stable-diffusion-xl-base-1.0`` (``variant="fp16"``, fp16);
* ``LCMScheduler.from_config(pipe.scheduler.config)``, ``num_inference_steps=1``,
  ``guidance_scale=0``, ``timesteps=[800]``;
* ``compel`` (``Compel([tok, tok_2], [enc, enc_2], PENULTIMATE_HIDDEN_STATES_NON_NORMALIZED,
  requires_pooled=[False, True])``) for the prompt embeddings whenever the captions may be
  longer than 77 tokens (its ``-m`` > 77; the default is 256). Compel's default
  ``truncate_long_prompts=True`` still cuts prompts at 77 tokens, so the repo's effective
  behaviour is *truncation* plus compel's prompt-weight syntax (``word+``, ``(…)1.2``).

A T2I config (a dict; :func:`normalize_t2i_config` fills defaults per ``kind``):

``kind``
    ``sdxl_hyper`` (the paper), ``demo`` (:class:`vcdflow.t2i.demo_t2i.DemoT2IPipeline`) or
    ``diffusers`` (any ``DiffusionPipeline`` folder, called with ``prompt=``).
``path``
    Local folder. ``sdxl_hyper``: ``<path>/base`` (the SDXL base repo; the base UNet weights are
    not needed) and ``<path>/unet/<unet_file>`` — the layout :func:`download_t2i` writes.
    ``demo``/``diffusers``: a ``save_pretrained`` folder.
``base``, ``base_revision``, ``unet_repo``, ``unet_file``, ``unet_revision``, ``variant``
    Hub coordinates for :func:`download_t2i` (``sdxl_hyper``).
``dtype``, ``scheduler`` (``lcm`` | ``default``), ``num_inference_steps``, ``timesteps``,
``guidance_scale``, ``height``, ``width``
    Sampling settings, passed to the pipeline call.
``long_prompt`` (``sdxl_hyper``)
    ``truncate`` (default: diffusers' own ``encode_prompt``, 77 tokens — the repo's effective
    behaviour), ``chunk`` (every 75-token chunk wrapped in BOS/EOS and encoded separately,
    embeddings concatenated along the sequence, pooled embedding from the first chunk; the
    behaviour of compel's ``truncate_long_prompts=False``; shorter prompts in a batch are
    padded with the empty prompt's chunk) or ``compel`` (the repo's exact call; needs the
    ``compel`` package).
``output_size``, ``resample``, ``batch_size``
    Used by :mod:`vcdflow.t2i.reconstruct` (resize of the outputs, images per call).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import warnings
from pathlib import Path
from typing import Any, Sequence

import torch

from vcdflow.io import config_hash

log = logging.getLogger("vcdflow.t2i")

__all__ = [
    "KINDS",
    "PAPER_T2I",
    "DEMO_T2I",
    "normalize_t2i_config",
    "t2i_hash",
    "download_t2i",
    "load_t2i",
    "Text2Image",
    "encode_prompts_chunked",
    "build_tiny_sdxl",
]

KINDS = ("sdxl_hyper", "demo", "diffusers")

#: The paper's configuration (ConVis ``run_scripts/image_generation.py``).
PAPER_T2I: dict[str, Any] = {
    "kind": "sdxl_hyper",
    "path": "resources/t2i/sdxl-hyper-1step",
    "base": "stabilityai/stable-diffusion-xl-base-1.0",
    "base_revision": "main",
    "unet_repo": "ByteDance/Hyper-SD",
    "unet_file": "Hyper-SDXL-1step-Unet.safetensors",
    "unet_revision": "main",
    "variant": "fp16",
    "dtype": "float16",
    "scheduler": "lcm",
    "num_inference_steps": 1,
    "timesteps": [800],
    "guidance_scale": 0.0,
    "height": None,
    "width": None,
    "long_prompt": "truncate",
    "output_size": None,
    "resample": "bicubic",
    "batch_size": 4,
}

#: The demo world's configuration (weights shipped under resources/demo_t2i).
DEMO_T2I: dict[str, Any] = {
    "kind": "demo",
    "path": "resources/demo_t2i",
    "dtype": "float32",
    "num_inference_steps": 10,
    "timesteps": None,
    "guidance_scale": 2.0,
    "output_size": "original",
    "resample": "bicubic",
    "batch_size": 32,
}

_DIFFUSERS_DEFAULTS: dict[str, Any] = {
    "kind": "diffusers",
    "path": None,
    "variant": None,
    "dtype": "float32",
    "scheduler": "default",
    "num_inference_steps": 25,
    "timesteps": None,
    "guidance_scale": 5.0,
    "height": None,
    "width": None,
    "output_size": None,
    "resample": "bicubic",
    "batch_size": 4,
}

_DEFAULTS = {"sdxl_hyper": PAPER_T2I, "demo": DEMO_T2I, "diffusers": _DIFFUSERS_DEFAULTS}
_LONG_PROMPT = ("truncate", "chunk", "compel")
_SCHEDULERS = ("lcm", "default")
_RESAMPLE = ("nearest", "bilinear", "bicubic", "lanczos", "box")
# keys that do not change the images (left out of t2i_hash)
_NON_IMAGE_KEYS = ("batch_size", "path", "base", "unet_repo")


def normalize_t2i_config(cfg: dict | None) -> dict:
    """``cfg`` with the defaults of its ``kind`` filled in; unknown keys or values → ``ValueError``."""
    cfg = dict(cfg or {})
    kind = cfg.get("kind", "demo")
    if kind not in KINDS:
        raise ValueError(f"t2i.kind must be one of {', '.join(KINDS)}, got {kind!r}")
    out = dict(_DEFAULTS[kind])
    unknown = sorted(set(cfg) - set(out))
    if unknown:
        raise ValueError(
            f"t2i config for kind {kind!r}: unknown key(s) {', '.join(unknown)}; "
            f"valid: {', '.join(sorted(out))}"
        )
    out.update(cfg)
    if not out.get("path"):
        raise ValueError(f"t2i config for kind {kind!r} needs 'path' (a local folder)")
    if out.get("long_prompt", "truncate") not in _LONG_PROMPT:
        raise ValueError(
            f"t2i.long_prompt must be one of {', '.join(_LONG_PROMPT)}, got {out['long_prompt']!r}"
        )
    if out.get("scheduler", "default") not in _SCHEDULERS:
        raise ValueError(f"t2i.scheduler must be one of {', '.join(_SCHEDULERS)}, got {out['scheduler']!r}")
    if out["resample"] not in _RESAMPLE:
        raise ValueError(f"t2i.resample must be one of {', '.join(_RESAMPLE)}, got {out['resample']!r}")
    osz = out["output_size"]
    if not (
        osz is None
        or osz == "original"
        or (isinstance(osz, int) and osz > 0)
        or (
            isinstance(osz, (list, tuple))
            and len(osz) == 2
            and all(isinstance(v, int) and v > 0 for v in osz)
        )
    ):
        raise ValueError(
            f"t2i.output_size must be null, 'original', a positive int or [width, height], got {osz!r}"
        )
    if int(out["num_inference_steps"]) < 1:
        raise ValueError(f"t2i.num_inference_steps must be >= 1, got {out['num_inference_steps']!r}")
    if int(out["batch_size"]) < 1:
        raise ValueError(f"t2i.batch_size must be >= 1, got {out['batch_size']!r}")
    if isinstance(out.get("output_size"), tuple):
        out["output_size"] = list(out["output_size"])
    return out


def _weights_digest(path: Path) -> str:
    """md5 over ``model_index.json`` and the files of the component folders (configs, weights,
    tokenizer) of a local pipeline folder; notes at the top level (README, training.json,
    fidelity.json) do not count."""
    h = hashlib.md5()
    files = sorted(
        p
        for p in path.rglob("*")
        if p.is_file()
        and ".cache" not in p.parts
        and (p.name == "model_index.json" or len(p.relative_to(path).parts) > 1)
    )
    for p in files:
        h.update(p.relative_to(path).as_posix().encode())
        with open(p, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def t2i_hash(cfg: dict) -> str:
    """Hash of everything that determines a reconstruction, besides its caption and seed.

    The normalised config minus ``batch_size``/``path``-like keys, plus the identity of the
    weights: for ``sdxl_hyper`` the hub coordinates and revisions (hashing GBs would be slow;
    pin revisions to commits for a stable cache); for ``demo``/``diffusers`` an md5 of the
    folder's config and weight files, so retrained weights never reuse stale images.
    """
    cfg = normalize_t2i_config(cfg)
    slim = {k: v for k, v in cfg.items() if k not in _NON_IMAGE_KEYS}
    if cfg["kind"] == "sdxl_hyper":
        slim["weights"] = [
            cfg["base"],
            cfg["base_revision"],
            cfg["unet_repo"],
            cfg["unet_file"],
            cfg["unet_revision"],
        ]
    else:
        path = Path(cfg["path"])
        if not path.is_dir():
            raise FileNotFoundError(f"t2i pipeline folder {path} does not exist")
        slim["weights"] = _weights_digest(path)
    return config_hash(slim)


# --------------------------------------------------------------------------- download


def _sdxl_patterns(variant: str | None) -> list[str]:
    suffix = f".{variant}.safetensors" if variant else ".safetensors"
    return [
        "model_index.json",
        "scheduler/*",
        "tokenizer/*",
        "tokenizer_2/*",
        "text_encoder/config.json",
        f"text_encoder/model{suffix}",
        "text_encoder_2/config.json",
        f"text_encoder_2/model{suffix}",
        "unet/config.json",  # the base UNet weights are replaced by Hyper-SD's
        "vae/config.json",
        f"vae/diffusion_pytorch_model{suffix}",
    ]


def download_t2i(
    cfg: dict,
    dest: str | os.PathLike | None = None,
    *,
    offline: bool = False,
    revisions_lock: str | os.PathLike | None = None,
    update_revisions: bool = False,
) -> Path:
    """Fetch the ``sdxl_hyper`` weights into ``dest`` (default ``cfg['path']``) with
    :func:`vcdflow.data.download.hf_snapshot`: ``<dest>/base`` (SDXL base: configs,
    tokenizers, text encoders and VAE of ``variant``, the base UNet's config only) and
    ``<dest>/unet/<unet_file>``. ``offline=True`` only checks that the files are there. A branch
    or tag revision is pinned through ``revisions_lock`` (:func:`vcdflow.data.hub_revisions.pin`).
    Other kinds have nothing to download (their ``path`` must exist)."""
    from vcdflow.data.download import hf_snapshot

    cfg = normalize_t2i_config(cfg)
    dest = Path(dest or cfg["path"])
    if cfg["kind"] != "sdxl_hyper":
        if not dest.is_dir():
            raise FileNotFoundError(
                f"t2i pipeline folder {dest} does not exist (kind {cfg['kind']!r} is not downloaded)"
            )
        return dest
    pins = {"revisions_lock": revisions_lock, "update_revisions": update_revisions}
    hf_snapshot(
        cfg["base"],
        dest / "base",
        revision=cfg["base_revision"],
        allow_patterns=_sdxl_patterns(cfg["variant"]),
        offline=offline,
        **pins,
    )
    hf_snapshot(
        cfg["unet_repo"],
        dest / "unet",
        revision=cfg["unet_revision"],
        allow_patterns=[cfg["unet_file"]],
        offline=offline,
        **pins,
    )
    return dest


# --------------------------------------------------------------------------- loading


@contextlib.contextmanager
def _quiet_dtype_deprecation():
    """diffusers ≥ 0.36 renames ``torch_dtype`` to ``dtype``; we keep ``torch_dtype`` (accepted by
    every supported version) and hide its FutureWarning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
        yield


def _dtype(name: str) -> torch.dtype:
    table = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if name not in table:
        raise ValueError(f"t2i.dtype must be one of {', '.join(table)}, got {name!r}")
    return table[name]


def _load_sdxl_hyper(cfg: dict, device: str):
    from diffusers import DiffusionPipeline, LCMScheduler, UNet2DConditionModel
    from safetensors.torch import load_file

    root = Path(cfg["path"])
    base = root / "base"
    weights = root / "unet" / cfg["unet_file"]
    for p, what in (
        (base / "model_index.json", "SDXL base"),
        (base / "unet" / "config.json", "SDXL base UNet config"),
        (weights, "Hyper-SD UNet weights"),
    ):
        if not p.is_file():
            raise FileNotFoundError(
                f"{what} missing: {p} (run the convis_t2i_download rule, or "
                "vcdflow.t2i.pipeline.download_t2i(cfg))"
            )
    dtype = _dtype(cfg["dtype"])
    unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(base, subfolder="unet"))
    state = load_file(str(weights))
    result = unet.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"{weights} does not fit the UNet of {base}: missing {list(result.missing_keys)[:5]}, "
            f"unexpected {list(result.unexpected_keys)[:5]}"
        )
    unet.to(dtype=dtype)
    kwargs = {"unet": unet, "torch_dtype": dtype}
    if cfg["variant"]:
        kwargs["variant"] = cfg["variant"]
    with _quiet_dtype_deprecation():
        pipe = DiffusionPipeline.from_pretrained(base, **kwargs)
    if type(pipe).__name__ != "StableDiffusionXLPipeline":
        raise ValueError(f"{base} holds a {type(pipe).__name__}, not a StableDiffusionXLPipeline")
    if cfg["scheduler"] == "lcm":
        pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config)
    return pipe.to(device)


def _load_folder(cfg: dict, device: str):
    path = Path(cfg["path"])
    if not (path / "model_index.json").is_file():
        raise FileNotFoundError(f"t2i pipeline folder {path} has no model_index.json")
    dtype = _dtype(cfg["dtype"])
    if cfg["kind"] == "demo":
        from .demo_t2i import DemoT2IPipeline

        with _quiet_dtype_deprecation():
            pipe = DemoT2IPipeline.from_pretrained(path, torch_dtype=dtype)
    else:
        from diffusers import DiffusionPipeline, LCMScheduler

        kwargs = {"torch_dtype": dtype}
        if cfg.get("variant"):
            kwargs["variant"] = cfg["variant"]
        with _quiet_dtype_deprecation():
            pipe = DiffusionPipeline.from_pretrained(path, **kwargs)
        if cfg.get("scheduler") == "lcm":
            pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config)
    return pipe.to(device)


def load_t2i(cfg: dict, device: str = "cpu") -> "Text2Image":
    """Load the pipeline of ``cfg`` (see the module docstring) onto ``device``."""
    cfg = normalize_t2i_config(cfg)
    if cfg["kind"] == "sdxl_hyper":
        pipe = _load_sdxl_hyper(cfg, device)
    else:
        pipe = _load_folder(cfg, device)
    pipe.set_progress_bar_config(disable=True)
    return Text2Image(cfg, pipe)


# --------------------------------------------------------------------------- prompts


def _chunk_ids(tokenizer, prompt: str) -> list[list[int]]:
    """Token ids of ``prompt`` in chunks of ``model_max_length − 2``, each as BOS + chunk + EOS
    padded with the tokenizer's pad id to ``model_max_length`` (the empty prompt: one chunk)."""
    n = int(tokenizer.model_max_length)
    body = tokenizer(prompt, add_special_tokens=False, truncation=False).input_ids
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    step = n - 2
    pieces = [body[i : i + step] for i in range(0, len(body), step)] or [[]]
    return [[bos] + p + [eos] + [pad] * (step - len(p)) for p in pieces]


@torch.no_grad()
def encode_prompts_chunked(
    tokenizers: Sequence, text_encoders: Sequence, prompts: Sequence[str], device
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """SDXL prompt embeddings without the 77-token limit (compel's ``truncate_long_prompts=False``).

    For each encoder: the penultimate hidden state (SDXL's ``hidden_states[-2]``, no final
    layer norm) of every chunk (:func:`_chunk_ids`), concatenated along the sequence; prompts
    with fewer chunks are padded with the empty prompt's chunk. Encoders are concatenated
    along features. The pooled embedding is the last encoder's ``text_embeds`` of each
    prompt's first chunk. A prompt that fits in one chunk gets exactly the embeddings of
    diffusers' ``encode_prompt``. Returns ``(prompt_embeds [B, L, D], pooled [B, D₂])``.
    """
    per_encoder, pooled = [], None
    for k, (tok, enc) in enumerate(zip(tokenizers, text_encoders)):
        chunks = [_chunk_ids(tok, p) for p in prompts]
        empty = _chunk_ids(tok, "")[0]
        n_max = max(len(c) for c in chunks)
        flat = [c[j] if j < len(c) else empty for c in chunks for j in range(n_max)]
        ids = torch.tensor(flat, device=device)
        out = enc(ids, output_hidden_states=True)
        hidden = out.hidden_states[-2].reshape(len(prompts), n_max * ids.shape[1], -1)
        per_encoder.append(hidden)
        if k == len(tokenizers) - 1 and hasattr(out, "text_embeds"):
            pooled = out.text_embeds.reshape(len(prompts), n_max, -1)[:, 0]
    return torch.cat(per_encoder, dim=-1), pooled


class Text2Image:
    """A loaded pipeline with the config's call settings: ``t2i(prompts, generators)`` → PIL images.

    One ``torch.Generator`` per prompt: each image depends only on its prompt and its own
    generator (not on the batch it shares).
    """

    def __init__(self, cfg: dict, pipe):
        self.cfg = normalize_t2i_config(cfg)
        self.pipe = pipe
        self.kind = self.cfg["kind"]
        self._compel = None
        self.calls = 0  # pipeline invocations (tests use it to prove cache hits)

    def _call_kwargs(self) -> dict:
        c = self.cfg
        kw: dict[str, Any] = {
            "num_inference_steps": int(c["num_inference_steps"]),
            "guidance_scale": float(c["guidance_scale"]),
        }
        if c.get("timesteps"):
            kw["timesteps"] = [int(t) for t in c["timesteps"]]
        for key in ("height", "width"):
            if c.get(key):
                kw[key] = int(c[key])
        return kw

    def _sdxl_embeds(self, prompts: list[str]) -> dict:
        mode = self.cfg["long_prompt"]
        pipe = self.pipe
        if mode == "truncate":
            return {"prompt": prompts}
        if mode == "chunk":
            embeds, pooled = encode_prompts_chunked(
                [pipe.tokenizer, pipe.tokenizer_2],
                [pipe.text_encoder, pipe.text_encoder_2],
                prompts,
                pipe.device,
            )
            return {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}
        if self._compel is None:
            try:
                from compel import Compel, ReturnedEmbeddingsType
            except ImportError as exc:
                raise ImportError(
                    "t2i.long_prompt: compel needs the 'compel' package (pip install compel); "
                    "or use long_prompt: truncate (the same 77-token cut) or chunk"
                ) from exc
            self._compel = Compel(
                tokenizer=[pipe.tokenizer, pipe.tokenizer_2],
                text_encoder=[pipe.text_encoder, pipe.text_encoder_2],
                returned_embeddings_type=ReturnedEmbeddingsType.PENULTIMATE_HIDDEN_STATES_NON_NORMALIZED,
                requires_pooled=[False, True],
            )
        embeds, pooled = [], []
        for p in prompts:  # one at a time, as the repo does (equal lengths when truncating)
            e, pl = self._compel(p)
            embeds.append(e)
            pooled.append(pl)
        return {"prompt_embeds": torch.cat(embeds), "pooled_prompt_embeds": torch.cat(pooled)}

    @torch.no_grad()
    def __call__(self, prompts: Sequence[str], generators: Sequence[torch.Generator]):
        prompts = [str(p) for p in prompts]
        if len(generators) != len(prompts):
            raise ValueError(f"{len(generators)} generators for {len(prompts)} prompts")
        kw = self._call_kwargs()
        self.calls += 1
        if self.kind == "demo":
            kw.pop("timesteps", None)
            return list(self.pipe(prompts, generator=list(generators), output_type="pil", **kw).images)
        if self.kind == "sdxl_hyper":
            kw.update(self._sdxl_embeds(prompts))
        else:
            kw["prompt"] = prompts
        out = self.pipe(generator=list(generators), output_type="pil", **kw)
        return list(out.images)


# --------------------------------------------------------------------------- tiny SDXL (tests)


def _tiny_clip_tokenizer(pad_token: str = "<|endoftext|>"):
    """A CLIP BPE tokenizer over single byte-level characters (no merges): every character is a
    token, so prompts get long quickly. Built offline."""
    from transformers import CLIPTokenizer

    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    chars = [chr(c) for c in cs]
    vocab: dict[str, int] = {}
    for t in chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]:
        vocab.setdefault(t, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=[], pad_token=pad_token, model_max_length=77)


def build_tiny_sdxl(
    dest: str | os.PathLike,
    *,
    seed: int = 0,
    variant: str | None = "fp16",
    unet_file: str = "Hyper-SDXL-1step-Unet.safetensors",
) -> Path:
    """Write a random, tiny SDXL-architecture model in :func:`download_t2i`'s layout.

    ``<dest>/base``: ``StableDiffusionXLPipeline.save_pretrained`` (``variant`` files) of the
    SDXL component classes with tiny sizes (UNet with ``addition_embed_type="text_time"``,
    two CLIP text encoders, the second with projection, ``AutoencoderKL``, the base's
    ``EulerDiscreteScheduler`` settings), UNet weights removed as in a download; and
    ``<dest>/unet/<unet_file>``: a *different* random UNet's state dict (seed + 1), standing
    in for the Hyper-SD checkpoint. No network access.
    """
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    dest = Path(dest)
    tok1 = _tiny_clip_tokenizer()
    tok2 = _tiny_clip_tokenizer(pad_token="!")  # SDXL's tokenizer_2 pads with "!"

    def unet(s):
        torch.manual_seed(s)
        return UNet2DConditionModel(
            block_out_channels=(32, 64),
            layers_per_block=1,
            sample_size=16,
            in_channels=4,
            out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=(2, 4),
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            transformer_layers_per_block=(1, 1),
            projection_class_embeddings_input_dim=6 * 8 + 32,
            cross_attention_dim=64,
            norm_num_groups=8,
        )

    def text_cfg(tok):
        return CLIPTextConfig(
            vocab_size=len(tok),
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=3,
            num_attention_heads=4,
            max_position_embeddings=77,
            projection_dim=32,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
            hidden_act="gelu",
        )

    torch.manual_seed(seed)
    vae = AutoencoderKL(
        block_out_channels=(8, 16),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=32,
        force_upcast=True,
        scaling_factor=0.13025,
    )
    te1 = CLIPTextModel(text_cfg(tok1))
    te2 = CLIPTextModelWithProjection(text_cfg(tok2))
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        steps_offset=1,
        timestep_spacing="leading",
        prediction_type="epsilon",
        interpolation_type="linear",
    )
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=te1,
        text_encoder_2=te2,
        tokenizer=tok1,
        tokenizer_2=tok2,
        unet=unet(seed),
        scheduler=scheduler,
    )
    base = dest / "base"
    pipe.save_pretrained(base, variant=variant)
    for f in (base / "unet").glob("*.safetensors"):
        f.unlink()  # a download fetches only the base UNet's config
    (dest / "unet").mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.contiguous() for k, v in unet(seed + 1).state_dict().items()}, str(dest / "unet" / unet_file)
    )
    return dest
