"""The model families vcdflow runs, one declarative record each (no torch import: the CLI and the
workflow read this before any model is loaded).

A :class:`Family` says how transformers loads the family (``model_type`` in ``config.json``, the
``*ForConditionalGeneration`` class, the processor class), which adapter builds its inputs
(:data:`vcdflow.models.adapters.ADAPTERS`, by the image-token ``layout``), whether its processor
ships a video processor (then it is loaded image-only: transformers builds video processors only
with torchvision, which cannot live beside the CPU torch), whether its image tokens sit inside the
decoder's sequence, and its official chat format for ``vcdflow prompt`` without a model.

Adding a family = one record here (+ one tiny-model test in ``tests/test_families.py``).

Image-token layouts (how an image becomes decoder tokens, and so what the adapter does):

* ``grid``: a fixed number of placeholder tokens per image, one per vision patch (LLaVA-1.5: 576);
* ``query``: a fixed number of learned query outputs (InstructBLIP's Q-Former: 32), no spatial grid;
* ``packed``: dynamic resolution, patches flattened and 2x2-merged, 3-D multimodal rope positions
  from the model's own ``get_rope_index`` (Qwen2-VL, Qwen2.5-VL);
* ``anyres``: a base tile + the tiles of the best-fitting grid pinpoint, unpadded to the image's
  aspect ratio with one newline embedding per feature row (LLaVA-NeXT, LLaVA-OneVision); the
  number of image tokens depends on the image size;
* ``tiles``: dynamic tiling into fixed-size tiles + a thumbnail, a fixed number of tokens per
  tile, the tiles of all images stacked along the batch dimension (InternVL): the grid adapter,
  with each tile counted as one image;
* ``cross_attention``: the image never enters the decoder's sequence; cross-attention layers read
  the vision states (Llama-3.2-Vision, ``mllama``).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

LAYOUTS = ("grid", "query", "packed", "anyres", "tiles", "cross_attention")

#: what a decoding method can need from a family (``Method.needs``), in words
NEEDS = {
    "image_tokens": "the image as tokens in the decoder's sequence (positions to read, mask or scale)",
    "image_grid": "a spatial grid of image tokens",
    "multi_image": "several images in one prompt",
    "plain_attention_mask": "the decoder's attention mask as one tensor (read by its attention and hidden-state hooks)",
}

#: layout → need it lacks → why (the one-line reason of a refusal and of the method x family matrix)
LACKS = {
    "query": {
        "image_grid": "its Q-Former query tokens have no spatial grid",
        "multi_image": "one Q-Former query set per prompt",
    },
    "anyres": {
        "image_grid": "an any-res image is a base tile plus grid tiles unpadded to the aspect ratio, with "
        "a newline token per row: no single grid of the picture"
    },
    "tiles": {
        "image_grid": "an image is several tiles plus a thumbnail, each its own token grid: no single grid "
        "of the picture"
    },
    "cross_attention": {
        "image_tokens": "cross-attention layers read the image; the decoder's sequence has no image tokens",
        "image_grid": "the decoder's sequence has no image tokens",
    },
}


@dataclass(frozen=True)
class Family:
    """One model family.

    Attributes:
        name: vcdflow's family name (config ``models.<m>.family``, protocol layers, reports).
        title: the models it covers, for tables.
        model_type: ``config.json``'s ``model_type``.
        model_class: transformers' conditional-generation class (when ``architectures`` names none).
        processor_class: transformers' processor class (built image-only when ``video_processor``).
        layout: how images become decoder tokens (:data:`LAYOUTS`).
        video_processor: the processor holds a video processor (needs torchvision) → image-only load.
        official_template: shipped chat template (``vcdflow/protocols/templates``) written like the
            model's own, for ``vcdflow prompt`` without ``--model``; None: the model's own only.
        requires: extra Python packages the processor needs (SmolVLM2: ``num2words``).
        bidirectional_image: an image's tokens attend to each other both ways in the decoder
            (Gemma 3): the prefill forward gets ``token_type_ids`` marking them.
        lacks_more: needs (keys of :data:`NEEDS`) this family cannot meet beyond its layout's
            (:data:`LACKS`) → why.
        example: a hub id of a real checkpoint (documentation; ``config/paper.yaml`` pins revisions).
    """

    name: str
    title: str
    model_type: str
    model_class: str
    processor_class: str
    layout: str
    video_processor: bool = False
    official_template: str | None = None
    requires: tuple[str, ...] = ()
    bidirectional_image: bool = False
    lacks_more: tuple[tuple[str, str], ...] = ()
    example: str = ""

    def __post_init__(self):
        if self.layout not in LAYOUTS:
            raise ValueError(
                f"family {self.name}: unknown layout {self.layout!r}; valid: {', '.join(LAYOUTS)}"
            )

    def lacks(self, needs) -> dict[str, str]:
        """The ``needs`` (keys of :data:`NEEDS`) this family cannot meet → why not."""
        unknown = [n for n in needs if n not in NEEDS]
        if unknown:
            raise ValueError(f"unknown method need(s) {', '.join(unknown)}; valid: {', '.join(NEEDS)}")
        lacking = {**LACKS.get(self.layout, {}), **dict(self.lacks_more)}
        return {n: lacking[n] for n in needs if n in lacking}

    @property
    def image_tokens_in_decoder(self) -> bool:
        """True when the image is a run of tokens in the decoder's sequence (every layout but
        cross-attention): methods that read or edit image-token positions need it."""
        return self.layout != "cross_attention"


_RECORDS = (
    Family(
        "llava",
        "LLaVA-1.5",
        "llava",
        "LlavaForConditionalGeneration",
        "LlavaProcessor",
        "grid",
        official_template="llava_v1",
        example="llava-hf/llava-1.5-7b-hf",
    ),
    Family(
        "instructblip",
        "InstructBLIP",
        "instructblip",
        "InstructBlipForConditionalGeneration",
        "InstructBlipProcessor",
        "query",
        official_template="instructblip_raw",
        example="Salesforce/instructblip-vicuna-7b",
    ),
    Family(
        "qwen2_5_vl",
        "Qwen2.5-VL",
        "qwen2_5_vl",
        "Qwen2_5_VLForConditionalGeneration",
        "Qwen2_5_VLProcessor",
        "packed",
        video_processor=True,
        official_template="qwen2_5_vl",
        example="Qwen/Qwen2.5-VL-7B-Instruct",
    ),
    Family(
        "qwen2_vl",
        "Qwen2-VL",
        "qwen2_vl",
        "Qwen2VLForConditionalGeneration",
        "Qwen2VLProcessor",
        "packed",
        video_processor=True,
        official_template="qwen2_5_vl",
        example="Qwen/Qwen2-VL-7B-Instruct",
    ),
    Family(
        "llava_next",
        "LLaVA-NeXT (LLaVA-1.6)",
        "llava_next",
        "LlavaNextForConditionalGeneration",
        "LlavaNextProcessor",
        "anyres",
        official_template="llava_v1",
        example="llava-hf/llava-v1.6-vicuna-7b-hf",
    ),
    Family(
        "llava_onevision",
        "LLaVA-OneVision",
        "llava_onevision",
        "LlavaOnevisionForConditionalGeneration",
        "LlavaOnevisionProcessor",
        "anyres",
        video_processor=True,
        official_template="llava_onevision",
        example="llava-hf/llava-onevision-qwen2-7b-ov-hf",
    ),
    Family(
        "gemma3",
        "Gemma 3",
        "gemma3",
        "Gemma3ForConditionalGeneration",
        "Gemma3Processor",
        "grid",
        bidirectional_image=True,
        example="google/gemma-3-4b-it",
        lacks_more=(
            (
                "plain_attention_mask",
                "its decoder gets one mask per attention type (sliding window "
                "and full), which vcdflow's decoder hooks do not read yet",
            ),
        ),
    ),
    Family(
        "internvl",
        "InternVL3",
        "internvl",
        "InternVLForConditionalGeneration",
        "InternVLProcessor",
        "tiles",
        video_processor=True,
        example="OpenGVLab/InternVL3-8B-hf",
    ),
)

#: family name → record
FAMILIES: MappingProxyType = MappingProxyType({f.name: f for f in _RECORDS})
#: ``config.json`` ``model_type`` → record
BY_MODEL_TYPE: MappingProxyType = MappingProxyType({f.model_type: f for f in _RECORDS})


def refusal(method: str, needs, family: str) -> str | None:
    """One line saying why ``method`` (with ``needs``) cannot run on ``family``; None when it can
    (or the family is unknown, e.g. a test's stand-in)."""
    spec = FAMILIES.get(family)
    missing = spec.lacks(needs) if spec is not None else {}
    if not missing:
        return None
    need, why = next(iter(missing.items()))
    return f"method {method!r} needs {NEEDS[need]}, which the {family} family ({spec.title}) does not have: {why}"


def applicable(needs) -> list[str]:
    """The families a method with ``needs`` runs on."""
    return [name for name, f in FAMILIES.items() if not f.lacks(needs)]


def matrix_text(methods) -> str:
    """The method x family matrix as text: ``methods`` maps a method name to an object with
    ``refusal(family)`` (None: it runs); one row per method, ``runs`` or ``refused (n)`` per
    family, then the numbered reasons."""
    names = list(FAMILIES)
    reasons: list[str] = []
    rows = []
    for method in sorted(methods):
        cells = []
        for fam in names:
            why = methods[method].refusal(fam)
            if why is None:
                cells.append("runs")
                continue
            if why not in reasons:
                reasons.append(why)
            cells.append(f"refused ({reasons.index(why) + 1})")
        rows.append([method] + cells)
    header = ["method"] + names
    widths = [max(len(r[k]) for r in rows + [header]) for k in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*header)] + [fmt.format(*r) for r in rows]
    lines += [f"({k}) {why}" for k, why in enumerate(reasons, 1)]
    return "\n".join(line.rstrip() for line in lines)


def get_family(name: str) -> Family:
    """The record of family ``name``; ``ValueError`` naming it and the valid ones."""
    if name not in FAMILIES:
        raise ValueError(f"unknown family {name!r}; valid families: {', '.join(FAMILIES)}")
    return FAMILIES[name]


def family_of_model_type(model_type: str | None, where: str = "config.json") -> Family:
    """The record for a ``config.json`` ``model_type``; ``ValueError`` naming ``where``."""
    if model_type not in BY_MODEL_TYPE:
        raise ValueError(
            f"unsupported model_type {model_type!r} in {where}; supported: {', '.join(BY_MODEL_TYPE)}"
        )
    return BY_MODEL_TYPE[model_type]
