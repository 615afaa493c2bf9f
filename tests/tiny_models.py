"""Tiny random vision-language models built from the real transformers configs.

Importable by any test: ``from tiny_models import build_tiny_llava`` (tests/ is on ``sys.path``
under pytest's default rootdir-based import mode) or ``from tests.tiny_models import ...``.

Every builder writes a complete ``save_pretrained`` directory (model + processor with a chat
template) so that the model is loaded through the same path as a real checkpoint:
``vcdflow.models.load_vlm(path)``. Weights are random (seeded), so outputs are meaningless but
deterministic; the models are a few hundred kB and run in milliseconds on a CPU.
"""

from __future__ import annotations

from pathlib import Path

import torch

# A word-level vocabulary: special tokens first, then template words, then filler words.
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]
TEMPLATE_WORDS = ["USER", "ASSISTANT", ":", "?", ".", ",", "!", "\n", "Reason", "Choice", "-", '"']
FILLER_WORDS = (
    "a an the is are there any in on of to and with image photo picture this that what how many "
    "yes no one two three cup dog cat person car tree table chair bird red blue green left right "
    "above below describe detail please answer question word single you objects detector confused "
    "fuzzy overview impression provide vertical horizontal flip color inversion random crop mask "
    "noise select augmentation expert data analyst description covering all visible elements"
).split()

# The LLaVA-1.5 chat template of llava-hf (system text, then ``USER: <image>\n{text} ASSISTANT:``).
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' ' }}{% endfor %}"
    "{% else %}"
    "{{ message['role'].upper() + ': ' }}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' ' }}{% endfor %}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def _word_tokenizer(extra_special: list[str] | None = None):
    """A ``PreTrainedTokenizerFast`` over a WordLevel model (whitespace + punctuation split)."""
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    specials = SPECIAL_TOKENS + list(extra_special or [])
    vocab: dict[str, int] = {}
    for w in specials + TEMPLATE_WORDS + FILLER_WORDS:
        w_norm = w if w in specials else w.lower()
        vocab.setdefault(w_norm, len(vocab))
    tok = Tokenizer(WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    # keep newlines, words and single punctuation marks; drop spaces
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"\n|\w+|[^\w\s]"), behavior="removed", invert=True)
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    fast.add_special_tokens({"additional_special_tokens": specials[4:]})
    return fast


def _sharpen(model, factor: float = 3.0) -> None:
    """Scale the language model's matrices: sharper, more varied greedy continuations than the
    default init (which collapses into repeating one token)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "embed_tokens" in name:
                p.normal_(0.0, 0.125)
            elif p.ndim == 2 and ("language_model" in name or "lm_head" in name):
                p.mul_(factor)


def build_tiny_llava(
    path: str | Path,
    *,
    seed: int = 0,
    image_size: int = 56,
    patch_size: int = 14,
    hidden: int = 64,
    layers: int = 2,
    vocab_pad: int = 0,
) -> Path:
    """Save a random LLaVA (CLIP vision tower + Llama text model) and its processor to ``path``.

    ``image_size // patch_size`` squared image tokens per image (16 by default).
    """
    from transformers import (
        CLIPImageProcessorPil,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    path = Path(path)
    tokenizer = _word_tokenizer()
    vocab_size = len(tokenizer) + vocab_pad
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=32,
    )
    text = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=image_token_id,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    _sharpen(model)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA_CHAT_TEMPLATE,
    )
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


QWEN_SPECIALS = [
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<|endoftext|>",
]
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for c in message['content'] %}{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tiny_qwen2_5_vl(path: str | Path, *, seed: int = 0, hidden: int = 64) -> Path:
    """Save a random Qwen2.5-VL (windowed ViT with 2×2 merge, 3-D mrope text model) + processor.
    Images are resized to 56×56 (min_pixels = max_pixels = 56²): 16 patches → 4 image tokens."""
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessorPil,
    )

    path = Path(path)
    tokenizer = _word_tokenizer(QWEN_SPECIALS)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIALS}
    config = Qwen2_5_VLConfig(
        vision_config={
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "out_hidden_size": hidden,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 56,
            "fullatt_block_indexes": [1],
            "in_channels": 3,
        },
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": hidden,
            "intermediate_size": 2 * hidden,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 2048,
            "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]},
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
            "tie_word_embeddings": False,
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    _sharpen(model)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    ip = Qwen2VLImageProcessorPil(
        min_pixels=56 * 56,
        max_pixels=56 * 56,
        patch_size=14,
        merge_size=2,
        temporal_patch_size=2,
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
    )
    model.save_pretrained(path)
    try:  # needs transformers' video processor (torchvision)
        processor = Qwen2_5_VLProcessor(
            image_processor=ip, tokenizer=tokenizer, chat_template=QWEN_CHAT_TEMPLATE
        )
        processor.save_pretrained(path)
    except Exception:  # noqa: BLE001 - save the parts; load_vlm builds an image-only processor
        tokenizer.chat_template = QWEN_CHAT_TEMPLATE
        tokenizer.save_pretrained(path)
        ip.save_pretrained(path)
        (path / "chat_template.jinja").write_text(QWEN_CHAT_TEMPLATE)
    return path


def build_tiny_instructblip(
    path: str | Path, *, seed: int = 0, hidden: int = 64, num_query_tokens: int = 4
) -> Path:
    """Save a random InstructBLIP (ViT + Q-Former reading the instruction + Llama) + processor."""
    from transformers import (
        BlipImageProcessorPil,
        InstructBlipConfig,
        InstructBlipForConditionalGeneration,
        InstructBlipProcessor,
        InstructBlipQFormerConfig,
        InstructBlipVisionConfig,
        LlamaConfig,
    )

    path = Path(path)
    tokenizer = _word_tokenizer()
    qformer_tokenizer = _word_tokenizer()
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    vision = InstructBlipVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=28,
        patch_size=14,
    )
    qformer = InstructBlipQFormerConfig(
        vocab_size=len(qformer_tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        encoder_hidden_size=32,
        pad_token_id=qformer_tokenizer.pad_token_id,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    config = InstructBlipConfig(
        vision_config=vision.to_dict(),
        qformer_config=qformer.to_dict(),
        text_config=text.to_dict(),
        num_query_tokens=num_query_tokens,
        image_token_index=image_token_id,
    )
    torch.manual_seed(seed)
    model = InstructBlipForConditionalGeneration(config).eval()
    _sharpen(model)
    with torch.no_grad():  # direct construction leaves the vision tower and query tokens ~0
        gen = torch.Generator().manual_seed(seed)
        for name, p in model.vision_model.named_parameters():
            if "norm" in name:
                p.fill_(1.0 if name.endswith("weight") else 0.0)
            elif p.ndim >= 2 or "embedding" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
            else:
                p.zero_()
        model.query_tokens.copy_(torch.randn(model.query_tokens.shape, generator=gen))
        for name, p in model.named_parameters():
            if p.ndim == 2 and ("qformer" in name or "language_projection" in name):
                p.mul_(4.0)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    ip = BlipImageProcessorPil(size={"height": 28, "width": 28}, image_mean=CLIP_MEAN, image_std=CLIP_STD)
    processor = InstructBlipProcessor(
        image_processor=ip,
        tokenizer=tokenizer,
        qformer_tokenizer=qformer_tokenizer,
        num_query_tokens=num_query_tokens,
    )
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


# --- newer families (one builder each; tiny: 2-layer towers and decoders, 28-px tiles) ----------

#: LLaVA-NeXT / LLaVA-OneVision any-res geometry: 28-px tiles of 14-px patches (2x2 patches per
#: tile), grid pinpoints up to 2x2 tiles; an image is a base tile + its grid tiles (+ newlines)
ANYRES_TILE = 28
ANYRES_PINPOINTS = [[28, 28], [28, 56], [56, 28], [56, 56]]
QWEN_LLAVA_CHAT_TEMPLATE = (  # llava-onevision-qwen2's ChatML, images as ``<image>`` lines
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% for c in message['content'] %}{% if c['type'] == 'image' %}<image>\n"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _finish(model, tokenizer, path, processor_parts: dict, processor_cls, **proc_kw) -> Path:
    """Sharpen, set generation ids, save model + processor (the processor's parts and chat template
    one by one when the full processor cannot be built here: a video processor needs torchvision)."""
    _sharpen(model)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(path)
    template = proc_kw.get("chat_template")
    try:
        processor_cls(**processor_parts, tokenizer=tokenizer, **proc_kw).save_pretrained(path)
    except Exception:  # noqa: BLE001 - save the parts; load_vlm builds an image-only processor
        tokenizer.chat_template = template
        tokenizer.save_pretrained(path)
        for part in processor_parts.values():
            part.save_pretrained(path)
        if template:
            (path / "chat_template.jinja").write_text(template)
        extra = {k: v for k, v in proc_kw.items() if k != "chat_template"}
        if extra:  # processor settings (image token counts...) the image-only processor reads back
            import json

            (path / "processor_config.json").write_text(
                json.dumps({"processor_class": processor_cls.__name__, **extra}, indent=1)
            )
    return path


def _text_cfg(tokenizer, hidden: int, **kw) -> dict:
    return {
        "vocab_size": len(tokenizer),
        "hidden_size": hidden,
        "intermediate_size": 2 * hidden,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 2048,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "tie_word_embeddings": False,
        **kw,
    }


def build_tiny_qwen2_vl(path: str | Path, *, seed: int = 0, hidden: int = 64) -> Path:
    """Save a random Qwen2-VL (ViT with 2x2 merge, 3-D mrope Qwen2 text model) + processor; images
    resized to between 28x28 and 112x112 pixels (dynamic resolution: 1 to 16 image tokens)."""
    from transformers import (
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessorPil,
        Qwen2VLProcessor,
    )

    path = Path(path)
    tokenizer = _word_tokenizer(QWEN_SPECIALS)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIALS}
    config = Qwen2VLConfig(
        vision_config={
            "depth": 2,
            "embed_dim": 32,
            "hidden_size": hidden,
            "mlp_ratio": 2,
            "num_heads": 2,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "in_channels": 3,
        },
        text_config=_text_cfg(tokenizer, hidden, rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]}),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config).eval()
    ip = Qwen2VLImageProcessorPil(
        min_pixels=28 * 28,
        max_pixels=112 * 112,
        patch_size=14,
        merge_size=2,
        temporal_patch_size=2,
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
    )
    return _finish(
        model, tokenizer, path, {"image_processor": ip}, Qwen2VLProcessor, chat_template=QWEN_CHAT_TEMPLATE
    )


def build_tiny_llava_next(path: str | Path, *, seed: int = 0, hidden: int = 64) -> Path:
    """Save a random LLaVA-NeXT (CLIP tower, any-res: a 28-px base tile + up to 2x2 grid tiles,
    unpadded features with a newline embedding per row) + processor."""
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessorPil,
        LlavaNextProcessor,
    )

    path = Path(path)
    tokenizer = _word_tokenizer()
    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=ANYRES_TILE,
        patch_size=14,
        projection_dim=32,
    )
    config = LlavaNextConfig(
        vision_config=vision,
        text_config=LlamaConfig(**_text_cfg(tokenizer, hidden)),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_grid_pinpoints=ANYRES_PINPOINTS,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        image_seq_length=4,
    )
    torch.manual_seed(seed)
    model = LlavaNextForConditionalGeneration(config).eval()
    ip = LlavaNextImageProcessorPil(
        size={"shortest_edge": ANYRES_TILE},
        crop_size={"height": ANYRES_TILE, "width": ANYRES_TILE},
        image_grid_pinpoints=ANYRES_PINPOINTS,
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
    )
    return _finish(
        model,
        tokenizer,
        path,
        {"image_processor": ip},
        LlavaNextProcessor,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA_CHAT_TEMPLATE,
    )


def build_tiny_llava_onevision(path: str | Path, *, seed: int = 0, hidden: int = 64) -> Path:
    """Save a random LLaVA-OneVision (SigLIP tower, any-res tiles as LLaVA-NeXT with
    ``anyres_max_9`` pooling, Qwen2 text model, ChatML) + processor."""
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        LlavaOnevisionImageProcessorPil,
        LlavaOnevisionProcessor,
        Qwen2Config,
        SiglipVisionConfig,
    )

    path = Path(path)
    tokenizer = _word_tokenizer(["<video>", "<|im_start|>", "<|im_end|>"])
    vision = SiglipVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=ANYRES_TILE,
        patch_size=14,
    )
    config = LlavaOnevisionConfig(
        vision_config=vision,
        text_config=Qwen2Config(**_text_cfg(tokenizer, hidden)),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        video_token_index=tokenizer.convert_tokens_to_ids("<video>"),
        image_grid_pinpoints=ANYRES_PINPOINTS,
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        vision_aspect_ratio="anyres_max_9",
    )
    torch.manual_seed(seed)
    model = LlavaOnevisionForConditionalGeneration(config).eval()
    ip = LlavaOnevisionImageProcessorPil(
        size={"height": ANYRES_TILE, "width": ANYRES_TILE},
        image_grid_pinpoints=ANYRES_PINPOINTS,
        image_mean=[0.5] * 3,
        image_std=[0.5] * 3,
    )
    return _finish(
        model,
        tokenizer,
        path,
        {"image_processor": ip},
        LlavaOnevisionProcessor,
        num_image_tokens=4,
        vision_feature_select_strategy="full",
        vision_aspect_ratio="anyres_max_9",
        chat_template=QWEN_LLAVA_CHAT_TEMPLATE,
    )


#: family → builder (one tiny model per family)
BUILDERS = {
    "llava": build_tiny_llava,
    "instructblip": build_tiny_instructblip,
    "qwen2_5_vl": build_tiny_qwen2_5_vl,
    "qwen2_vl": build_tiny_qwen2_vl,
    "llava_next": build_tiny_llava_next,
    "llava_onevision": build_tiny_llava_onevision,
}
_BUILT: dict = {}


def tiny_dir(family: str, tmp_path_factory) -> Path:
    """The family's tiny model folder, built once per test session (shared by every module)."""
    if family not in _BUILT or not (_BUILT[family] / "config.json").is_file():
        _BUILT[family] = BUILDERS[family](tmp_path_factory.mktemp(f"tiny-{family}"))
    return _BUILT[family]


INTERNVL_SPECIALS = {
    "start_image_token": "<img>",
    "end_image_token": "</img>",
    "context_image_token": "<IMG_CONTEXT>",
    "video_token": "<video>",
}
INTERNVL_CHAT_TEMPLATE = (  # InternVL3's ChatML, an image part as its context token on its own line
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% for c in message['content'] %}{% if c['type'] == 'image' %}<IMG_CONTEXT>\n"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tiny_internvl(path: str | Path, *, seed: int = 0, hidden: int = 64) -> Path:
    """Save a random InternVL (transformers-native ``internvl``: InternViT tower, pixel-shuffle
    projector, Qwen2 text model) + processor: 56-px tiles (1 to 4 tiles + a thumbnail per image,
    GOT-OCR2 dynamic tiling), 4 image tokens per tile."""
    from transformers import (
        GotOcr2ImageProcessorPil,
        InternVLConfig,
        InternVLForConditionalGeneration,
        InternVLProcessor,
        PreTrainedTokenizerFast,
        Qwen2Config,
    )

    path = Path(path)
    base = _word_tokenizer(["<|im_start|>", "<|im_end|>", *INTERNVL_SPECIALS.values()])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=base.backend_tokenizer,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        extra_special_tokens=INTERNVL_SPECIALS,
    )
    config = InternVLConfig(
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": [56, 56],
            "patch_size": [14, 14],
        },
        text_config=Qwen2Config(**_text_cfg(tokenizer, hidden)).to_dict(),
        image_token_id=tokenizer.context_image_token_id,
        image_seq_length=4,
        downsample_ratio=0.5,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = InternVLForConditionalGeneration(config).eval()
    ip = GotOcr2ImageProcessorPil(
        size={"height": 56, "width": 56},
        crop_to_patches=True,
        min_patches=1,
        max_patches=4,
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
    )
    return _finish(
        model,
        tokenizer,
        path,
        {"image_processor": ip},
        InternVLProcessor,
        image_seq_length=4,
        chat_template=INTERNVL_CHAT_TEMPLATE,
    )


BUILDERS["internvl"] = build_tiny_internvl


GEMMA3_SPECIALS = {
    "boi_token": "<start_of_image>",
    "eoi_token": "<end_of_image>",
    "image_token": "<image_soft_token>",
}
GEMMA3_CHAT_TEMPLATE = (  # Gemma 3's turns, an image part as its begin-of-image token
    "{{ bos_token }}{% for message in messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "<start_of_turn>{{ 'user' if role == 'system' else role }}\n"
    "{% for c in message['content'] %}{% if c['type'] == 'image' %}<start_of_image>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}<end_of_turn>\n"
    "{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


def build_tiny_gemma3(path: str | Path, *, seed: int = 0, hidden: int = 64) -> Path:
    """Save a random Gemma 3 (SigLIP tower, pooled to 4 image tokens per image, Gemma 3 text model
    with sliding-window layers; image tokens attend to each other bidirectionally) + processor."""
    from transformers import (
        Gemma3Config,
        Gemma3ForConditionalGeneration,
        Gemma3ImageProcessorPil,
        Gemma3Processor,
        PreTrainedTokenizerFast,
    )

    path = Path(path)
    base = _word_tokenizer(["<start_of_turn>", "<end_of_turn>", "model", "user", *GEMMA3_SPECIALS.values()])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=base.backend_tokenizer,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        extra_special_tokens=GEMMA3_SPECIALS,
    )
    text = _text_cfg(
        tokenizer,
        hidden,
        head_dim=16,
        sliding_window=8,
        query_pre_attn_scalar=16,
        layer_types=["sliding_attention", "full_attention"],
    )
    config = Gemma3Config(
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 56,
            "patch_size": 14,
        },
        text_config=text,
        mm_tokens_per_image=4,
        boi_token_index=tokenizer.boi_token_id,
        eoi_token_index=tokenizer.eoi_token_id,
        image_token_index=tokenizer.image_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = Gemma3ForConditionalGeneration(config).eval()
    with torch.no_grad():  # the projector starts at zero: images would not reach the decoder
        proj = model.model.multi_modal_projector.mm_input_projection_weight
        proj.copy_(torch.randn(proj.shape, generator=torch.Generator().manual_seed(seed)) * 0.5)
    ip = Gemma3ImageProcessorPil(size={"height": 56, "width": 56}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    return _finish(
        model,
        tokenizer,
        path,
        {"image_processor": ip},
        Gemma3Processor,
        image_seq_length=4,
        chat_template=GEMMA3_CHAT_TEMPLATE,
    )


BUILDERS["gemma3"] = build_tiny_gemma3
