"""Seeding and token choice.

Every request owns two CPU ``torch.Generator`` streams, seeded from ``(seed, item_id, stream)``
with SHA-256 (stable across processes and Python versions, unlike ``hash``):

* ``"branches"``: the random choices a method makes while building its branches (VCD noise,
  RITUAL's transform, Self-Aug's crop/mask position…);
* ``"sample"``: multinomial sampling of the next token.

A method with ``draw="per_image"`` (``vcd``, ``ritual``) seeds its ``"branches"`` stream from
``(seed, "image:" + image_identity(image))`` instead, so all questions about one image get the
same noise / transform (and can share that branch's prefill).

So a request's output does not depend on which other requests share its batch, nor on the batch
size, nor on the device (sampling runs on CPU probabilities).

Warpers follow ``transformers``' ``GenerationMixin`` order: temperature, then top-k, then top-p,
applied to the *contrasted* scores (after the plausibility mask), as in VCD's sampler.
"""

from __future__ import annotations

import hashlib

import torch


def request_seed(seed: int, item_id: str, stream: str) -> int:
    """63-bit seed from SHA-256 of ``f"{seed}\\x1f{item_id}\\x1f{stream}"``."""
    digest = hashlib.sha256(f"{int(seed)}\x1f{item_id}\x1f{stream}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def make_generator(seed: int, item_id: str, stream: str) -> torch.Generator:
    g = torch.Generator(device="cpu")
    g.manual_seed(request_seed(seed, item_id, stream))
    return g


def image_identity(image) -> str:
    """Content identity of a PIL image: SHA-256 of its mode, size and pixel bytes (hex, 32
    characters). Seeds ``draw="per_image"`` branch streams: the same picture gets the same stream
    whichever file or item it comes from."""
    h = hashlib.sha256(f"{image.mode}\x1f{image.size[0]}x{image.size[1]}\x1f".encode("utf-8"))
    h.update(image.tobytes())
    return h.hexdigest()[:32]


def warp(
    scores: torch.Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float = 1.0
) -> torch.Tensor:
    """Temperature → top-k → top-p on ``scores`` [G, V] (``transformers`` logits warpers)."""
    from transformers.generation.logits_process import (
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    if temperature != 1.0:
        scores = TemperatureLogitsWarper(float(temperature))(None, scores)
    if top_k is not None and top_k > 0:
        scores = TopKLogitsWarper(int(top_k))(None, scores)
    if top_p < 1.0:
        scores = TopPLogitsWarper(float(top_p))(None, scores)
    return scores


def sample_tokens(scores: torch.Tensor, generators: list[torch.Generator]) -> list[int]:
    """One multinomial draw per row of ``softmax(scores)`` with that row's generator (on CPU)."""
    probs = torch.softmax(scores.float(), dim=-1).cpu()
    return [int(torch.multinomial(probs[i], 1, generator=g)) for i, g in enumerate(generators)]
