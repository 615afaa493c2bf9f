"""The demo LVLM: a tiny ``transformers`` LLaVA trained on the demo world in minutes on CPU.

Architecture (``build_demo_vlm``): ``LlavaForConditionalGeneration`` = CLIP vision tower
(``CLIPVisionConfig``) → 2-layer GELU projector → Llama LM (``LlamaConfig``), the layout of
LLaVA-1.5 (Liu et al. 2023) at toy scale. ``vision_feature_select_strategy="default"`` drops
the CLS feature, so an image costs ``(image_size // patch_size)**2`` ``<image>`` tokens
(default 32 px / 8 px patches = 16 tokens; the 64 px scenes are resized by the processor).
Vision features come from the last CLIP layer (``vision_feature_layer=-1``); the LM's input
and output embeddings are untied (tying them slowed learning in trials).

Tokenizer: a word-level ``tokenizers`` model (lowercase normaliser; pre-tokeniser =
whitespace split + isolated punctuation, so ``"image?"`` → ``image``, ``?``) wrapped in
``PreTrainedTokenizerFast`` with ``<pad> <s> </s> <unk>`` and the special ``<image>`` token.
Words outside ``VOCAB_WORDS`` (plus, when training on another COCO-format world, the words
of its captions and category names) map to ``<unk>``. A ``<s>`` is prepended to every text.

Processor: ``LlavaProcessor(CLIPImageProcessor, tokenizer, patch_size,
vision_feature_select_strategy="default", num_additional_image_tokens=1)`` with the chat
template ``CHAT_TEMPLATE``, LLaVA-1.5 style::

    [system text + " "] "USER: " ["<image>\\n" per image] user text " ASSISTANT:"

(assistant turns render as ``"ASSISTANT: " text "</s>"``). Every prompt — training here and
decoding in the engine — goes through ``processor.apply_chat_template(messages,
add_generation_prompt=True, tokenize=False)``.

Training (``train_demo_model``) has two stages.

1. *Alignment* (``align_steps``, cf. LLaVA's projector pre-training): only the vision tower,
   projector and input embeddings, on a training-only grounding loss — every projected image
   token, dotted with the input embeddings of the 12 category words (+ a bias), predicts by
   binary cross-entropy which categories' COCO boxes cover >= 15% of its patch. No LM pass,
   so it is cheap; it gives image tokens that already "look like" the words they depict.
2. *Instruction tuning* (``steps``): the whole model on two tasks mixed per example, with the
   grounding loss kept as an auxiliary term (``aux_weight``):

   * captioning: ``CAPTION_INSTRUCTION`` → the image's canonical caption (``caption_fraction``);
   * POPE-style yes/no: ``"Is there a X in the image?"`` (with ``POPE_SUFFIX`` half of the
     time) → ``yes``/``no``, 50/50. Negatives are absent categories drawn with weight
     ``same_group_negative_weight`` (default 0.1) when X belongs to the scene group of an
     object in the image, else 1: questions about absent *co-occurring* objects are rare in
     training, as in real instruction data, so the model learns a language prior ("a fork goes
     with a cup") and hallucinates on POPE's adversarial split.

The LM loss covers the answer tokens and the closing ``</s>`` only. AdamW, linear warm-up then
cosine decay to 0.1·lr. The grounding head (a bias) is discarded; the saved model is a plain
``LlavaForConditionalGeneration``. Everything is seeded; on CPU with a fixed thread count a
rerun gives the same losses and weights.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from vcdflow.data.demo_world import CAPTION_INSTRUCTION, CATEGORIES as DEMO_CATEGORIES
from vcdflow.data.pope_builder import pope_question
from ..io import replace_dir

__all__ = [
    "DemoModelConfig",
    "VOCAB_WORDS",
    "SPECIAL_TOKENS",
    "CHAT_TEMPLATE",
    "CAPTION_INSTRUCTION",
    "POPE_SUFFIX",
    "build_tokenizer",
    "build_processor",
    "build_demo_vlm",
    "prompt_messages",
    "render_prompt",
    "train_demo_model",
    "evaluate_pope_quick",
    "pope_first_token",
    "main",
]

POPE_SUFFIX = "Please answer this question with one word."  # VCD's POPE prompt suffix

PAD, BOS, EOS, UNK, IMAGE = "<pad>", "<s>", "</s>", "<unk>", "<image>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK, IMAGE)

_CATEGORY_WORDS = tuple(c.name for c in DEMO_CATEGORIES)
#: Every word the demo model can read or write (after lowercasing and punctuation split).
VOCAB_WORDS: tuple[str, ...] = (
    # chat template
    "user",
    "assistant",
    ":",
    # instructions and questions
    "please",
    "describe",
    "this",
    "image",
    "in",
    "detail",
    ".",
    "is",
    "there",
    "a",
    "an",
    "the",
    "?",
    "answer",
    "question",
    "with",
    "one",
    "word",
    "yes",
    "no",
    # captions
    "and",
    ",",
    "picture",
    "of",
) + _CATEGORY_WORDS

#: LLaVA-1.5-style chat template (see module docstring). Content may be a string or a list
#: of ``{"type": "image"}`` / ``{"type": "text", "text": ...}`` parts.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['content'] is string %}"
    "{% set texts = [message['content']] %}{% set n_img = 0 %}"
    "{% else %}"
    "{% set texts = message['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') | list %}"
    "{% set n_img = message['content'] | selectattr('type', 'equalto', 'image') | list | length %}"
    "{% endif %}"
    "{% if message['role'] == 'system' %}{{ texts | join(' ') }}{{ ' ' }}"
    "{% elif message['role'] == 'user' %}{{ 'USER: ' }}{{ '<image>\\n' * n_img }}{{ texts | join(' ') }}{{ ' ' }}"
    "{% elif message['role'] == 'assistant' %}{{ 'ASSISTANT: ' }}{{ texts | join(' ') }}{{ '</s>' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


@dataclass
class DemoModelConfig:
    """Sizes of the demo LLaVA (defaults: ~1.0M parameters, 16 image tokens)."""

    image_size: int = 32  # pixels fed to the vision tower (scenes are resized to this)
    patch_size: int = 8
    vision_hidden: int = 96
    vision_layers: int = 2
    vision_heads: int = 4
    text_hidden: int = 160
    text_layers: int = 3
    text_heads: int = 4
    max_positions: int = 2048  # RoPE: free in parameters; room for Self-Aug's ~600-token SAS prompt and CODE
    tie_embeddings: bool = False
    extra_words: tuple[str, ...] = field(default_factory=tuple)

    @property
    def n_image_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2


# --------------------------------------------------------------------------- building


def build_tokenizer(extra_words: Sequence[str] = ()):
    """Word-level fast tokenizer over ``VOCAB_WORDS`` (+ ``extra_words``)."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    words = list(dict.fromkeys(list(VOCAB_WORDS) + [w.lower() for w in extra_words]))
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for w in words:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(WordLevel(vocab=vocab, unk_token=UNK))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation(behavior="isolated")]
    )
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        pad_token=PAD,
        extra_special_tokens={"image_token": IMAGE},
        padding_side="left",
        model_max_length=512,
    )
    fast.add_special_tokens({"additional_special_tokens": [IMAGE]})
    return fast


def build_processor(tokenizer, cfg: DemoModelConfig | None = None):
    """``LlavaProcessor`` with a CLIP image processor at ``cfg.image_size`` and ``CHAT_TEMPLATE``."""
    from transformers import LlavaProcessor

    try:  # transformers 5: the PIL backend; pinned so that training and decoding agree
        from transformers import CLIPImageProcessorPil as _ImageProcessor
    except ImportError:  # transformers 4.x
        from transformers import CLIPImageProcessor as _ImageProcessor

    cfg = cfg or DemoModelConfig()
    s = cfg.image_size
    image_processor = _ImageProcessor(
        size={"shortest_edge": s},
        crop_size={"height": s, "width": s},
        do_center_crop=True,
        do_resize=True,
        do_convert_rgb=True,
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=cfg.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
        image_token=IMAGE,
    )


def build_demo_vlm(cfg: DemoModelConfig | None = None, seed: int = 0):
    """Freshly initialised ``(model, processor)`` (weights seeded by ``seed``)."""
    from transformers import (
        CLIPVisionConfig,
        GenerationConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
    )

    cfg = cfg or DemoModelConfig()
    tokenizer = build_tokenizer(cfg.extra_words)
    processor = build_processor(tokenizer, cfg)
    vocab_size = len(tokenizer)
    vision = CLIPVisionConfig(
        image_size=cfg.image_size,
        patch_size=cfg.patch_size,
        hidden_size=cfg.vision_hidden,
        intermediate_size=2 * cfg.vision_hidden,
        num_hidden_layers=cfg.vision_layers,
        num_attention_heads=cfg.vision_heads,
        projection_dim=cfg.vision_hidden,
    )
    text = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=cfg.text_hidden,
        intermediate_size=2 * cfg.text_hidden,
        num_hidden_layers=cfg.text_layers,
        num_attention_heads=cfg.text_heads,
        num_key_value_heads=cfg.text_heads,
        max_position_embeddings=cfg.max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=cfg.tie_embeddings,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE),
        image_seq_length=cfg.n_image_tokens,
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        projector_hidden_act="gelu",
        tie_word_embeddings=cfg.tie_embeddings,
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
        max_new_tokens=32,
    )
    model.eval()
    return model, processor


def prompt_messages(text: str, *, image: bool = True, system: str | None = None) -> list[dict]:
    """Chat messages in the form the engine uses: optional system turn, then one user turn."""
    msgs = []
    if system is not None:
        msgs.append({"role": "system", "content": [{"type": "text", "text": system}]})
    content = ([{"type": "image"}] if image else []) + [{"type": "text", "text": text}]
    msgs.append({"role": "user", "content": content})
    return msgs


def render_prompt(processor, text: str, *, image: bool = True, system: str | None = None) -> str:
    return processor.apply_chat_template(
        prompt_messages(text, image=image, system=system), add_generation_prompt=True, tokenize=False
    )


# --------------------------------------------------------------------------- data


def _load_world(demo_dir: Path, split: str):
    from vcdflow.io import read_json

    inst_path = demo_dir / "annotations" / f"instances_{split}.json"
    cap_path = demo_dir / "annotations" / f"captions_{split}.json"
    for p in (inst_path, cap_path):
        if not p.is_file():
            raise FileNotFoundError(f"{p}: missing (build the demo world first)")
    inst, caps = read_json(inst_path), read_json(cap_path)
    for key in ("images", "annotations", "categories"):
        if key not in inst:
            raise ValueError(f"{inst_path}: missing key {key!r}")
    cats = {c["id"]: c for c in inst["categories"]}
    images = sorted(inst["images"], key=lambda im: im["id"])
    present: dict[int, list[int]] = {im["id"]: [] for im in images}
    boxes: dict[int, list[tuple[int, list[float]]]] = {im["id"]: [] for im in images}
    for a in inst["annotations"]:
        if a["image_id"] not in present or a["category_id"] not in cats:
            raise ValueError(f"{inst_path}: annotation {a.get('id')} has unknown image/category")
        if a["category_id"] not in present[a["image_id"]]:
            present[a["image_id"]].append(a["category_id"])
        if "bbox" in a:
            boxes[a["image_id"]].append((a["category_id"], a["bbox"]))
    caption: dict[int, tuple[int, str]] = {}
    for a in caps["annotations"]:  # canonical caption = lowest caption id of the image
        if a["image_id"] in present and (a["image_id"] not in caption or a["id"] < caption[a["image_id"]][0]):
            caption[a["image_id"]] = (a["id"], a["caption"])
    missing = [im["id"] for im in images if im["id"] not in caption]
    if missing:
        raise ValueError(f"{cap_path}: no caption for image ids {missing[:5]}")
    return images, present, {k: v[1] for k, v in caption.items()}, cats, boxes


def _patch_targets(images, boxes, cat_ids, grid: int, min_cover: float = 0.15) -> torch.Tensor:
    """``[N, grid*grid, C]`` 0/1: category ``c``'s box covers >= ``min_cover`` of the patch."""
    col = {c: k for k, c in enumerate(cat_ids)}
    out = torch.zeros((len(images), grid * grid, len(cat_ids)))
    for n, im in enumerate(images):
        pw, ph = im["width"] / grid, im["height"] / grid
        for cid, (x, y, w, h) in boxes[im["id"]]:
            for r in range(grid):
                for c in range(grid):
                    ox = max(0.0, min(x + w, (c + 1) * pw) - max(x, c * pw))
                    oy = max(0.0, min(y + h, (r + 1) * ph) - max(y, r * ph))
                    if ox * oy >= min_cover * pw * ph:
                        out[n, r * grid + c, col[cid]] = 1.0
    return out


def _world_words(world, extra_words: Sequence[str] = ()) -> list[str]:
    """Words of the world's captions and category names missing from the vocabulary, in
    first-seen order (none for the demo world), split like the tokenizer does."""
    from tokenizers import pre_tokenizers

    split = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation(behavior="isolated")]
    )
    known = set(VOCAB_WORDS) | {w.lower() for w in extra_words}
    images, _present, captions, cats, _boxes = world
    texts = [c["name"] for c in cats.values()] + [captions[im["id"]] for im in images]
    new: dict[str, None] = {}
    for text in texts:
        for word, _span in split.pre_tokenize_str(text.lower()):
            if word not in known:
                new.setdefault(word)
    return list(new)


class _TrainData:
    """Pre-processed tensors: every image once through the image processor, every distinct
    prompt once through ``apply_chat_template`` + processor (so training sees exactly the ids
    the engine will build)."""

    def __init__(self, demo_dir: Path, world, processor, cfg: DemoModelConfig, progress: bool):
        from PIL import Image

        images, present, captions, cats, boxes = world
        self.cats = cats
        self.cat_ids = sorted(cats)
        self.group = {cid: cats[cid].get("supercategory", "") for cid in cats}
        img_dir = demo_dir / "images" / "train"
        pix = []
        it = range(0, len(images), 256)
        if progress:
            from tqdm.auto import tqdm

            it = tqdm(it, desc="preprocess images", unit="batch")
        for s in it:
            batch = []
            for im in images[s : s + 256]:
                p = img_dir / im["file_name"]
                if not p.is_file():
                    raise FileNotFoundError(f"{p}: image listed in instances_train.json is missing")
                with Image.open(p) as fh:
                    batch.append(fh.convert("RGB"))
            pix.append(processor.image_processor(batch, return_tensors="pt")["pixel_values"])
        self.pixel_values = torch.cat(pix) if pix else torch.zeros(0)
        self.present = [present[im["id"]] for im in images]
        self.patch_targets = _patch_targets(images, boxes, self.cat_ids, cfg.image_size // cfg.patch_size)
        tok = processor.tokenizer
        self.cat_word_ids = [tok.convert_tokens_to_ids(cats[c]["name"].lower()) for c in self.cat_ids]
        self.eos = tok.eos_token_id
        self.pad = tok.pad_token_id
        dummy = Image.new("RGB", (cfg.image_size, cfg.image_size))
        self._prompt_cache: dict[str, list[int]] = {}

        def prompt_ids(text: str) -> list[int]:
            if text not in self._prompt_cache:
                rendered = render_prompt(processor, text)
                ids = processor(text=rendered, images=dummy, return_tensors="pt")["input_ids"][0]
                self._prompt_cache[text] = ids.tolist()
            return self._prompt_cache[text]

        self.prompt_ids = prompt_ids
        self.caption_prompt = prompt_ids(CAPTION_INSTRUCTION)
        self.question_prompts = {
            (cid, suf): prompt_ids(pope_question(cats[cid]["name"]) + (" " + POPE_SUFFIX if suf else ""))
            for cid in self.cat_ids
            for suf in (False, True)
        }

        def answer_ids(text: str) -> list[int]:
            return tok(text, add_special_tokens=False)["input_ids"] + [self.eos]

        self.captions = [answer_ids(captions[im["id"]]) for im in images]
        self.yes = answer_ids("yes")
        self.no = answer_ids("no")
        unk = tok.unk_token_id
        for ids in list(self.captions) + list(self.question_prompts.values()):
            if unk in ids:  # cannot happen: the vocabulary is extended with the world's words
                raise ValueError(f"{demo_dir}: a training text has words outside the vocabulary")

    def __len__(self):
        return len(self.present)

    def batch(
        self, rng: np.random.Generator, batch_size: int, caption_fraction: float, same_group_weight: float
    ):
        idx = rng.integers(len(self), size=batch_size)
        seqs, label_lens = [], []
        for i in idx:
            pres = self.present[int(i)]
            if rng.random() < caption_fraction:
                prompt, ans = self.caption_prompt, self.captions[int(i)]
            else:
                suf = bool(rng.random() < 0.5)
                absent = [c for c in self.cat_ids if c not in pres]
                if rng.random() < 0.5 or not absent:
                    cid, ans = pres[int(rng.integers(len(pres)))], self.yes
                else:
                    groups = {self.group[c] for c in pres}
                    w = np.array([same_group_weight if self.group[c] in groups else 1.0 for c in absent])
                    cid = absent[int(rng.choice(len(absent), p=w / w.sum()))]
                    ans = self.no
                prompt = self.question_prompts[(cid, suf)]
            seqs.append(prompt + ans)
            label_lens.append(len(ans))
        L = max(len(s) for s in seqs)
        input_ids = torch.full((batch_size, L), self.pad, dtype=torch.long)
        attn = torch.zeros((batch_size, L), dtype=torch.long)
        labels = torch.full((batch_size, L), -100, dtype=torch.long)
        for b, (s, n) in enumerate(zip(seqs, label_lens)):
            input_ids[b, : len(s)] = torch.tensor(s)
            attn[b, : len(s)] = 1
            labels[b, len(s) - n : len(s)] = torch.tensor(s[len(s) - n :])
        sel = torch.as_tensor(idx)
        return input_ids, attn, labels, self.pixel_values[sel], self.patch_targets[sel]


# --------------------------------------------------------------------------- training


def _n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def train_demo_model(
    demo_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    steps: int,
    batch_size: int = 32,
    lr: float = 1e-3,
    seed: int = 0,
    max_seconds: float | None = None,
    caption_fraction: float = 0.3,
    progress: bool = True,
    same_group_negative_weight: float = 0.1,
    warmup_fraction: float = 0.05,
    weight_decay: float = 0.01,
    aux_weight: float = 1.0,
    align_steps: int = 600,
    align_lr: float = 3e-3,
    threads: int | None = None,
    config: DemoModelConfig | None = None,
    callback=None,
    callback_every: int = 250,
    device: str = "cpu",
) -> dict:
    """Train the demo LLaVA on ``demo_dir`` (a demo world) and save it to ``out_dir``.

    Stage 1: ``align_steps`` steps of the grounding loss at ``align_lr`` (AdamW, 20 warm-up
    steps, no decay). Stage 2: ``steps`` steps of LM loss + ``aux_weight`` × grounding loss,
    AdamW(lr, betas 0.9/0.98, weight_decay), linear warm-up over ``warmup_fraction * steps``
    steps then cosine decay to 0.1·lr, gradient-norm clipping at 1.0. Stage 2 stops early
    after ``max_seconds`` of wall clock (the schedule still assumes ``steps``).
    ``callback(step, model, processor)`` (optional) runs every ``callback_every`` stage-2
    steps in eval mode under ``no_grad`` (e.g. a POPE check). ``device``: where to train
    (the saved model is moved back to CPU).
    The model and processor are written with ``save_pretrained`` into a temporary folder
    beside ``out_dir`` that replaces ``out_dir`` only when complete; ``training.json`` in it
    records the settings, steps done, seconds, parameter count and a loss-curve summary.
    Returns that dict.
    """
    from transformers.utils import logging as hf_logging

    demo_dir, out_dir = Path(demo_dir), Path(out_dir)
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not 0.0 <= caption_fraction <= 1.0:
        raise ValueError(f"caption_fraction must be in [0, 1], got {caption_fraction}")
    if threads:
        torch.set_num_threads(int(threads))
    cfg = config or DemoModelConfig()
    hf_logging.set_verbosity_error()
    t_start = time.perf_counter()
    world = _load_world(demo_dir, "train")
    extra = _world_words(world, cfg.extra_words)
    if extra:
        cfg = replace(cfg, extra_words=tuple(cfg.extra_words) + tuple(extra))
    model, processor = build_demo_vlm(cfg, seed=seed)
    data = _TrainData(demo_dir, world, processor, cfg, progress)
    t_data = time.perf_counter() - t_start

    model.to(device)
    model.train()
    # Training-only grounding loss (not part of the saved model): each projected image token,
    # scored against the LM's input embeddings of the category words, predicts which
    # categories cover its patch (BCE on 0/1 targets from the COCO boxes).
    aux_bias = torch.nn.Parameter(torch.full((1,), -2.0, device=device))
    captured: dict[str, torch.Tensor] = {}
    hook = model.model.multi_modal_projector.register_forward_hook(
        lambda mod, inp, out: captured.__setitem__("feats", out)
    )
    emb = model.get_input_embeddings()
    cat_word_ids = torch.tensor(data.cat_word_ids, device=device)

    def grounding_loss(targets: torch.Tensor) -> torch.Tensor:
        logits = captured["feats"].reshape(targets.shape[0], targets.shape[1], -1) @ emb(cat_word_ids).T
        return torch.nn.functional.binary_cross_entropy_with_logits(logits + aux_bias, targets)

    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    # Stage 1 (feature alignment, cf. LLaVA's projector pre-training): the grounding loss
    # alone, on the vision tower, projector and input embeddings; no LM pass (cheap).
    align_losses: list[float] = []
    t_align = time.perf_counter()
    if align_steps > 0:
        vis_params = (
            list(model.model.vision_tower.parameters())
            + list(model.model.multi_modal_projector.parameters())
            + list(emb.parameters())
            + [aux_bias]
        )
        opt1 = torch.optim.AdamW(vis_params, lr=align_lr, betas=(0.9, 0.98), weight_decay=0.0)
        it = range(align_steps)
        if progress:
            from tqdm.auto import tqdm

            it = tqdm(it, desc="align vision tower", unit="step")
        for step in it:
            for g in opt1.param_groups:
                g["lr"] = align_lr * min(1.0, (step + 1) / 20)
            idx = torch.as_tensor(rng.integers(len(data), size=batch_size))
            model.model.get_image_features(pixel_values=data.pixel_values[idx].to(device))
            loss1 = grounding_loss(data.patch_targets[idx].to(device))
            opt1.zero_grad(set_to_none=True)
            loss1.backward()
            opt1.step()
            align_losses.append(float(loss1.detach()))
        del opt1
    t_align = time.perf_counter() - t_align

    params = list(model.parameters()) + ([aux_bias] if aux_weight > 0 else [])
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.98), weight_decay=weight_decay)
    warm = max(1, int(warmup_fraction * steps))

    def lr_at(step: int) -> float:
        if step < warm:
            return lr * (step + 1) / warm
        t = (step - warm) / max(1, steps - warm)
        return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))

    losses: list[float] = []
    aux_losses: list[float] = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc="train demo LLaVA", unit="step")
    t_train = time.perf_counter()
    stopped_early = False
    for step in range(steps):
        if max_seconds is not None and time.perf_counter() - t_train > max_seconds:
            stopped_early = True
            break
        input_ids, attn, labels, pix, targets = (
            t.to(device) for t in data.batch(rng, batch_size, caption_fraction, same_group_negative_weight)
        )
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        out = model(input_ids=input_ids, attention_mask=attn, pixel_values=pix, labels=labels)
        loss = out.loss
        if aux_weight > 0:
            aux = grounding_loss(targets)
            loss = loss + aux_weight * aux
            aux_losses.append(float(aux.detach()))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(float(out.loss.detach()))
        if callback is not None and (step + 1) % callback_every == 0:
            model.eval()
            with torch.no_grad():
                callback(step + 1, model, processor)
            model.train()
        if bar is not None:
            bar.update(1)
            if step % 20 == 0:
                bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}")
    if bar is not None:
        bar.close()
    train_seconds = time.perf_counter() - t_train
    hook.remove()
    model.to("cpu")
    model.eval()

    n = len(losses)
    windows = 10
    curve = []
    for k in range(windows):
        a, b = k * n // windows, (k + 1) * n // windows
        if b > a:
            curve.append({"steps": [a + 1, b], "mean_loss": round(float(np.mean(losses[a:b])), 5)})
    summary = {
        "steps_requested": steps,
        "steps": n,
        "stopped_early": stopped_early,
        "batch_size": batch_size,
        "lr": lr,
        "seed": seed,
        "caption_fraction": caption_fraction,
        "same_group_negative_weight": same_group_negative_weight,
        "warmup_fraction": warmup_fraction,
        "weight_decay": weight_decay,
        "aux_weight": aux_weight,
        "align_steps": align_steps,
        "align_lr": align_lr,
        "align_seconds": round(t_align, 2),
        "final_align_loss": round(float(np.mean(align_losses[-20:])), 5) if align_losses else None,
        "final_aux_loss": round(float(np.mean(aux_losses[-max(1, n // 20) :])), 5) if aux_losses else None,
        "threads": torch.get_num_threads(),
        "params": _n_params(model),
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
        "n_image_tokens": cfg.n_image_tokens,
        "vocab_size": len(processor.tokenizer),
        "train_images": len(data),
        "seconds": round(train_seconds, 2),
        "seconds_total": round(time.perf_counter() - t_start, 2),
        "seconds_data": round(t_data, 2),
        "first_loss": round(losses[0], 5) if losses else None,
        "final_loss": round(float(np.mean(losses[-max(1, n // 20) :])), 5) if losses else None,
        "loss_curve": curve,
        "demo_dir": str(demo_dir),
    }

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    tmp.chmod(0o755)
    try:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        with open(tmp / "training.json", "w", encoding="utf-8") as fh:
            json.dump(summary, fh, indent=2, sort_keys=True)
            fh.write("\n")
        replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    summary["losses"] = losses
    return summary


# --------------------------------------------------------------------------- quick eval


@torch.no_grad()
def evaluate_pope_quick(
    model_dir: str | os.PathLike,
    pope_file: str | os.PathLike,
    images_dir: str | os.PathLike,
    n: int | None = None,
    *,
    suffix: str | None = POPE_SUFFIX,
    batch_size: int = 64,
) -> dict:
    """Greedy first-token POPE check, independent of the decoding engine.

    Loads ``model_dir`` with ``AutoProcessor``/``LlavaForConditionalGeneration``, asks each
    question (``text + " " + suffix``) through the chat template and takes the arg-max
    first token: ``"no"`` → no, anything else → yes (the official POPE parser calls every
    non-negation a yes). Returns ``accuracy`` and ``yes_ratio`` as fractions in [0, 1],
    plus ``n`` and ``other_ratio`` (first tokens that were neither yes nor no).
    """
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from vcdflow.io import read_jsonl

    processor = AutoProcessor.from_pretrained(model_dir)
    model = LlavaForConditionalGeneration.from_pretrained(model_dir).eval()
    items = read_jsonl(pope_file)
    for i, q in enumerate(items):
        if not {"image", "text", "label"} <= set(q):
            raise ValueError(f"{pope_file}:{i + 1}: needs keys image, text, label")
    if n is not None:
        items = items[:n]
    return pope_first_token(
        model, processor, items, images_dir, suffix=suffix, batch_size=batch_size, source=str(pope_file)
    )


@torch.no_grad()
def pope_first_token(
    model,
    processor,
    items: Sequence[dict],
    images_dir,
    *,
    suffix: str | None = POPE_SUFFIX,
    batch_size: int = 64,
    source: str = "POPE items",
    image_cache: dict | None = None,
) -> dict:
    """In-memory core of :func:`evaluate_pope_quick` (same rule, any model/processor)."""
    from PIL import Image

    tok = processor.tokenizer
    yes_id = tok.convert_tokens_to_ids("yes")
    no_id = tok.convert_tokens_to_ids("no")
    images_dir = Path(images_dir)
    cache: dict = {} if image_cache is None else image_cache
    correct = yes = other = 0
    for s in range(0, len(items), batch_size):
        chunk = items[s : s + batch_size]
        texts, imgs = [], []
        for q in chunk:
            if q["image"] not in cache:
                p = images_dir / q["image"]
                if not p.is_file():
                    raise FileNotFoundError(f"{p}: image of {source} not found")
                with Image.open(p) as fh:
                    cache[q["image"]] = fh.convert("RGB")
            imgs.append(cache[q["image"]])
            text = q["text"] + (" " + suffix if suffix else "")
            texts.append(render_prompt(processor, text))
        enc = processor(text=texts, images=imgs, return_tensors="pt", padding=True).to(model.device)
        mask = enc["attention_mask"]
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = model(**enc, position_ids=pos).logits[:, -1, :]
        first = logits.argmax(-1).tolist()
        for q, t in zip(chunk, first):
            pred = "no" if t == no_id else "yes"
            other += t not in (yes_id, no_id)
            yes += pred == "yes"
            correct += pred == str(q["label"]).strip().lower()
    N = len(items)
    nan = float("nan")
    return {
        "accuracy": correct / N if N else nan,
        "yes_ratio": yes / N if N else nan,
        "other_ratio": other / N if N else nan,
        "n": N,
    }


def main(demo_dir, out_dir, **train_kwargs) -> dict:
    """Entry point for a Snakemake ``script:`` shim; kwargs as :func:`train_demo_model`."""
    summary = train_demo_model(demo_dir, out_dir, **train_kwargs)
    brief = {k: v for k, v in summary.items() if k not in ("losses", "loss_curve")}
    print(json.dumps(brief, sort_keys=True))
    return summary
