"""``selfaug``: Self-Augmented Visual Contrastive Decoding (Im, Ali, Gupta, arXiv 2510.13315,
ICLR 2026; ``eunwooim/selfaug``).

1. **SAS** (self-augmentation selection): the model itself, text-only and greedy, reads
   ``PROMPT_FULL`` (augmentation menu with effects + 6 worked examples, asks for "Reason:" and
   "Choice:") filled with the question, and picks the augmentation.
2. Contrast: s = (1+α)·ℓ(y | v, x) − α·ℓ(y | aug(v), x), α = 1.
3. **SAT** (sparsity-adaptive truncation): APC with β_t = σ(−τ·H₂(p_t)), τ = 0.5 (τ < 0:
   β_t = (H₂/log₂|V|)^(1/|τ|); ``tau=None`` falls back to the fixed ``beta``).

Augmentation menu (``src/models/base_models.py``, on the normalised pixel tensor): vertical flip,
horizontal flip, colour inversion (de-normalise, invert, re-normalise), random crop (square of side
min(h, w)/``crop_ratio``, resized back), random mask (square of side min(h, w)/``mask_ratio`` set to
0), diffusion noise at ``noise_step``. Defaults from ``src/script/pope.bash``: ``alpha`` = α = 1,
``beta`` = β = 0.1 (used only when ``tau`` is None), ``tau`` = τ = 0.5, crop_ratio = 2.5 (the effective
official value: ``pope.bash`` sets 2.0 but ``generate_sentence`` never passes it on, so
``apply_augmentation``'s default 2.5 applies, ``src/models/base_models.py:87``), mask_ratio = 2.0,
noise_step = 500; SAS generation up to ``sas_max_new_tokens`` = 768 (the repo's GenerationConfig).

Parsing (official ``parse_aug``): lower-case the reply, take the text after the first "choice:"
(the whole reply when absent), then the first matching keyword in the order crop → horizontal →
vertical → inver(sion) → mask, else **noise** (the documented fallback). ``Output.meta`` records
``selfaug_augmentation``, ``selfaug_parsed`` (True when "choice:" was present *and* a keyword
matched after it) and ``selfaug_reply``. ``augmentation`` fixes the augmentation and skips SAS
(the single-augmentation ablations). ``sas_prompt``: "full" (default), "icl", "reason", "base"
(the repo's ablation prompts). The official SAS sees the raw question without the benchmark
suffix (``get_self_aug(original_query)``, ``src/models/llava_model.py:73,110``); here it sees
``Request.prompt`` with ``sas_strip_suffix`` (default None; the ``selfaug`` protocol sets its POPE
suffix) removed from its end.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

from ..distortions import diffusion_noise, hflip, invert_colors, random_crop, random_mask, vflip
from ..plausibility import sat_beta
from ..types import Branch
from .base import Method

AUGMENTATIONS = ("vertical_flip", "horizontal_flip", "color_inversion", "random_crop", "random_mask", "noise")

_HEAD = (
    "You are an expert data augmentation analyst. Your task is to select the single most semantically "
    "disruptive image augmentation that most effectively invalidates the question's premise or prevents "
    "a confident answer."
)
_HEAD_REASON = (
    " Provide a clear reason explaining why the augmentation is chosen, then state your final choice."
)
_MENU = """## Augmentations and Their Effects ##
- Vertical flip: Flips image top-to-bottom. Disrupts questions about \u201cabove\u201d, \u201cbelow\u201d, \u201cunder\u201d or reading orientation.
- Color inversion: Replaces each color with its complement. Disrupts questions relying on accurate color identification.
- Random crop: Removes random parts of the image. Disrupts questions requiring global context or peripheral objects.
- Random mask: Occludes portions of the image. Disrupts object presence, count, or attribute recognition.
- Noise: Adds visual distortion. Disrupts questions requiring small details, texture, or text clarity.
- Horizontal flip: Flips the image left-to-right. Disrupts questions about left/right positioning and left-to-right text reading."""
_EXAMPLES = (
    (
        "Is the mirror above the TV?",
        "The question focuses on vertical positioning. Vertical flip reverses top and bottom, making \u201cabove\u201d "
        "mean \u201cbelow,\u201d invalidating the question. Other augmentations don't affect vertical relationships.",
        "vertical flip",
    ),
    (
        "Is this photo taken indoors?",
        "The question requires identifying a specific environmental context. Random crop may exclude key background "
        "elements like trees, invalidating the question. Flips, color inversion, noise, and random mask don't "
        "directly affect scene context.",
        "random crop",
    ),
    (
        "Are there any green beans in the image?",
        "The question requires identifying a specific color. Color inversion changes green to its complement, "
        "invalidating the question. Flips, noise, random mask, and random crop don't target color directly.",
        "color inversion",
    ),
    (
        "How many people are in the image?",
        "The question requires counting visible people. Random mask can completely obscure one or more people, "
        "making the exact count impossible. Noise obscures details but typically doesn't hide entire objects, "
        "allowing approximate counting. Flips and color inversion don't affect object visibility or count.",
        "random mask",
    ),
    (
        "Is the cat on the right side of the laptop?",
        "The question relies on horizontal positioning. Horizontal flip reverses left and right, making \u201cright\u201d "
        "mean \u201cleft\u201d, invalidating the question. Other augmentations don't target horizontal positions.",
        "horizontal flip",
    ),
    (
        "Does this artwork exist in the form of painting?",
        "The question requires identifying the texture of the artwork. Noise obscures fine details, making it hard "
        "to identify the medium. Other augmentations don't target texture details.",
        "noise",
    ),
)
_TAIL = (
    "## Your Answer ##\nIf multiple augmentations could disrupt the question, select the one whose effect is "
    "most direct and unambiguous. You must choose one of the given augmentations following the {fmt} format."
)


def sas_prompt(question: str, reason: bool = True, icl: bool = True) -> str:
    """The SAS prompt (``PROMPT_FULL`` when reason and icl; ``PROMPT_ICL``/``REASON``/``BASE`` else)."""
    parts = [_HEAD + (_HEAD_REASON if reason else ""), "", _MENU, ""]
    if icl:
        parts.append("## Examples ##")
        for q, why, choice in _EXAMPLES:
            parts.append(f'Question: "{q}"')
            if reason:
                parts.append(f"Reason: {why}")
            parts.append(f"Choice: {choice}")
            parts.append("")
    fmt = '"Reason:" and "Choice:"' if reason else '"Choice:"'
    parts.append(_TAIL.format(fmt=fmt))
    parts.append("")
    parts.append(f'Question: "{question}"')
    return "\n".join(parts) + "\n"


_PROMPT_FLAGS = {"full": (True, True), "icl": (False, True), "reason": (True, False), "base": (False, False)}


def sas_question(prompt: str, params) -> str:
    """The question SAS reads: ``prompt`` without ``params["sas_strip_suffix"]`` at its end."""
    suffix = params.get("sas_strip_suffix")
    return prompt[: -len(suffix)] if suffix and prompt.endswith(suffix) else prompt


def parse_choice(reply: str) -> tuple[str, bool]:
    """Official ``parse_aug`` + keyword mapping → (augmentation, parsed)."""
    text = reply.lower()
    has_choice = "choice:" in text
    aug = text.split("choice:")[1].strip() if has_choice else text
    for key, name in (
        ("crop", "random_crop"),
        ("horizontal", "horizontal_flip"),
        ("vertical", "vertical_flip"),
        ("inver", "color_inversion"),
        ("mask", "random_mask"),
    ):
        if key in aug:
            return name, has_choice
    return "noise", has_choice and "noise" in aug


def augmentation_fn(name: str, params, rng):
    if name == "vertical_flip":
        return lambda x, mean, std: vflip(x)
    if name == "horizontal_flip":
        return lambda x, mean, std: hflip(x)
    if name == "color_inversion":
        return lambda x, mean, std: invert_colors(x, mean, std)
    if name == "random_crop":
        return lambda x, mean, std: random_crop(x, float(params["crop_ratio"]), rng)
    if name == "random_mask":
        return lambda x, mean, std: random_mask(x, float(params["mask_ratio"]), rng)
    if name == "noise":
        return lambda x, mean, std: diffusion_noise(x, int(params["noise_step"]), rng)
    raise ValueError(f"unknown augmentation {name!r}; valid: {', '.join(AUGMENTATIONS)}")


@dataclass(frozen=True)
class SelfAug(Method):
    name = "selfaug"
    random_draw = True  # the augmentation's own parameters
    defaults = MappingProxyType(
        {
            "alpha": 1.0,
            "beta": 0.1,
            "tau": 0.5,
            "crop_ratio": 2.5,
            "mask_ratio": 2.0,
            "noise_step": 500,
            "augmentation": None,
            "sas_prompt": "full",
            "sas_max_new_tokens": 768,
            "sas_strip_suffix": None,
        }
    )
    nullable = frozenset({"augmentation", "tau", "sas_strip_suffix"})

    def validate(self, p):
        super().validate(p)
        if p["augmentation"] is not None and p["augmentation"] not in AUGMENTATIONS:
            raise ValueError(
                f"parameter 'augmentation' of method 'selfaug' must be one of "
                f"{', '.join(AUGMENTATIONS)} or None, got {p['augmentation']!r}"
            )
        if p["sas_prompt"] not in _PROMPT_FLAGS:
            raise ValueError(
                f"parameter 'sas_prompt' of method 'selfaug' must be one of "
                f"{', '.join(_PROMPT_FLAGS)}, got {p['sas_prompt']!r}"
            )
        if p["tau"] is not None and float(p["tau"]) == 0:
            raise ValueError("parameter 'tau' of method 'selfaug' must be non-zero or None")

    def prepare(self, items, runner):
        todo = [it for it in items if it.ctx.params["augmentation"] is None]
        if not todo:
            return
        reason, icl = _PROMPT_FLAGS[todo[0].ctx.params["sas_prompt"]]
        queries = [
            Branch(
                prompt=sas_prompt(sas_question(it.request.prompt, it.ctx.params), reason, icl),
                image=None,
                system=it.request.system,
                name="sas",
            )
            for it in todo
        ]
        replies = runner.greedy_texts(queries, int(todo[0].ctx.params["sas_max_new_tokens"]))
        for it, reply in zip(todo, replies):
            if isinstance(reply, Exception):
                it.fail(f"Self-Aug SAS query failed: {reply}")
                continue
            it.ctx.prepared["sas_reply"] = reply

    def branches(self, request, ctx):
        self.require_image(request)
        aug = ctx.params["augmentation"]
        if aug is None:
            reply = ctx.prepared["sas_reply"]
            aug, parsed = parse_choice(reply)
            ctx.meta.update(selfaug_reply=reply, selfaug_parsed=parsed)
        ctx.meta["selfaug_augmentation"] = aug
        return [
            self.original(request),
            Branch(
                prompt=request.prompt,
                image=request.image,
                system=request.system,
                pixel_fn=augmentation_fn(aug, ctx.params, ctx.rng),
                name=aug,
            ),
        ]

    def plausibility(self, logits, step, state):
        tau = state.params["tau"]
        if tau is None:
            return state.params["beta"]
        return sat_beta(logits[..., 0, :], float(tau))
