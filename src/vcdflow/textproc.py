"""Torch-free text helpers shared by decoding methods and protocols (so that ``vcdflow prompt``,
``--help`` and the protocol registry import without torch)."""

from __future__ import annotations

DISTURBANCE = "You are a confused objects detector to provide a fuzzy overview or impression of the image."


def blip_pre_caption(caption: str, max_words: int = 50) -> str:
    """LAVIS ``BlipCaptionProcessor`` (``prompt=""``, ``max_words=50``; p1k0pan/ICD
    experiments/lavis/processors/blip_processors.py:34-37, 49-68): lower-case, ``[.!"()*#:;~]`` →
    space, squeeze spaces, strip, keep ``max_words`` words."""
    import re

    caption = re.sub(r"([.!\"()*#:;~])", " ", caption.lower())
    caption = re.sub(r"\s{2,}", " ", caption)
    caption = caption.rstrip("\n").strip(" ")
    words = caption.split(" ")
    if len(words) > max_words:
        caption = " ".join(words[:max_words])
    return caption
