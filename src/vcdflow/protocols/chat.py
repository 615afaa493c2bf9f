"""Shipped chat templates (``vcdflow/protocols/templates/*.jinja``) and their rendering.

``render(template, messages)`` renders a shipped template (by name: ``llava_v1``, ``halc_llava``,
``instructblip_raw``, ``qwen2_5_vl``) or a Jinja source string over Hugging Face-style messages
(``{"role", "content": [{"type": "image"} | {"type": "text", "text": ...}]}``) — the same messages
the family adapters give ``processor.apply_chat_template``. ``image_token`` is the text written
for each image part (``<image>`` for LLaVA; Qwen2.5-VL's template writes its own
``<|vision_start|><|image_pad|><|vision_end|>``); the processor expands it later.

:data:`FAMILY_TEMPLATE` is each family's official conversation format, used by ``vcdflow prompt``
when no model is given and a protocol says ``chat_template: model``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

TEMPLATE_DIR = Path(__file__).with_name("templates")

#: the official chat format per family (what ``"model"`` stands for without a model)
from ..models.families import FAMILIES as _FAMILIES  # noqa: E402 (no torch there)

FAMILY_TEMPLATE = {name: f.official_template for name, f in _FAMILIES.items() if f.official_template}


def template_names() -> list[str]:
    return sorted(p.stem for p in TEMPLATE_DIR.glob("*.jinja"))


def is_source(template: str) -> bool:
    """True when ``template`` is Jinja source rather than a shipped template's name."""
    return "{{" in template or "{%" in template


def load_template(name: str) -> str:
    """The Jinja source of shipped template ``name``; ``ValueError`` naming it and the valid ones."""
    path = TEMPLATE_DIR / f"{name}.jinja"
    if not path.is_file():
        raise ValueError(
            f"unknown chat template {name!r}; shipped templates: {', '.join(template_names())} "
            f"(or 'model' for the model's own)"
        )
    return path.read_text(encoding="utf-8")


@lru_cache(maxsize=32)
def _compiled(source: str):
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(source)


def messages_for(prompt: str, has_image: bool, system: str | None) -> list[dict]:
    """The single-turn messages every adapter builds (system message only when ``system``)."""
    msgs: list[dict] = []
    if system:
        msgs.append({"role": "system", "content": [{"type": "text", "text": system}]})
    content: list[dict] = [{"type": "image"}] if has_image else []
    content.append({"type": "text", "text": prompt})
    msgs.append({"role": "user", "content": content})
    return msgs


def render(
    template: str, messages: list[dict], add_generation_prompt: bool = True, image_token: str = "<image>"
) -> str:
    """Render a shipped template (by name) or Jinja source over ``messages``."""
    source = template if is_source(template) else load_template(template)
    return _compiled(source).render(
        messages=messages, add_generation_prompt=add_generation_prompt, image_token=image_token
    )


def render_text(
    template: str, prompt: str, has_image: bool, system: str | None = None, image_token: str = "<image>"
) -> str:
    """One branch's full input text (placeholder unexpanded) under ``template``."""
    return render(template, messages_for(prompt, has_image, system), image_token=image_token)
