"""Data types of the decoding API: :class:`Request`, :class:`Output`, :class:`Branch`,
:class:`BranchContext` and :class:`State`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch


class InputError(ValueError):
    """A request cannot be decoded (missing/bad image, over-long prompt…): becomes ``Output.error``."""


@dataclass
class Request:
    """One item to decode.

    ``prompt`` is the user turn *without* chat template (the family adapter applies it).
    ``image``/``contrast_image`` are ``PIL.Image`` objects or image file paths. ``contrast_prompt``
    and ``contrast_image`` feed the generic ``contrast`` method; ``contrast_images`` (list) feeds
    ``convis`` (its reconstructed images). ``system`` is an optional system message. ``item_id``
    names the item in outputs and seeds its random generators (see
    :func:`vcdflow.decoding.sampling.request_seed`).
    """

    image: Any = None
    prompt: str = ""
    contrast_image: Any = None
    contrast_prompt: str | None = None
    item_id: str = ""
    system: str | None = None
    contrast_images: list | None = None


@dataclass
class Output:
    """Result for one request. ``text`` is the decoded answer (``""`` on error); ``token_ids`` the
    generated ids (EOS excluded); ``input_ids`` the original branch's prompt ids; ``error`` a
    message or None; ``meta`` method extras (mode, transform, augmentation, finish reason…)."""

    item_id: str
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    input_ids: list[int] = field(default_factory=list)
    error: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Branch:
    """One forward stream of a request. The original branch comes first.

    ``pixel_fn(images, mean, std) -> images`` acts on the *normalised* image tensor
    ``[N, 3, H, W]`` (float32, CPU) after the processor (VCD noise, Self-Aug augmentations);
    ``mean``/``std`` are the processor's normalisation constants ``[1, 3, 1, 1]``.
    ``image_token_scale`` [n_image_tokens] multiplies the projected image features (AvisC).
    ``qformer_prompt`` (InstructBLIP only) is the Q-Former's instruction when it differs from
    the LLM text (ICD's official InstructBLIP variants); None = the LLM text, as the processor does.
    ``image`` may also be a list of images (a multi-image branch: one prompt holding every image
    in order, as the family's processor builds it — LLaVA one ``<image>`` each, Qwen2.5-VL one vision
    block each; InstructBLIP refuses it, one Q-Former query set per prompt); such a branch batches
    like any other (CARVE's code-faithful final pass: original + refined image).
    """

    prompt: str
    image: Any = None
    system: str | None = None
    pixel_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    image_token_scale: torch.Tensor | None = None
    name: str = "original"
    qformer_prompt: str | None = None


@dataclass
class BranchContext:
    """What a method sees while building a request's branches: the resolved ``params``, the
    request's own random generator ``rng`` (seeded from (seed, item_id); every random choice a
    method makes must come from it), the family ``adapter``, ``meta`` (copied into
    ``Output.meta``) and ``prepared`` (whatever the method's batched ``prepare`` stored)."""

    params: Mapping[str, Any]
    rng: torch.Generator
    adapter: Any
    do_sample: bool
    meta: dict[str, Any] = field(default_factory=dict)
    prepared: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class State:
    """Per-call decoding state handed to ``combine``/``plausibility``: the resolved params.

    Per-request extras: inside ``combine``/``plausibility``, ``contexts``
    holds the :class:`BranchContext` of each request of the group being combined, in the order
    of the logits' leading dimension (``ctx.prepared`` tensors and token ids stored by the
    method's ``prepare``, ``ctx.adapter``; ``ctx.meta`` is copied into ``Output.meta`` after
    decoding, so first-step logging writes there). ``temperature`` is the sampling
    temperature (None in greedy mode). Both are filled by the engine's ``method_chooser``;
    empty/None when a caller builds a ``State`` itself."""

    params: Mapping[str, Any]
    contexts: tuple = ()
    temperature: float | None = None
    #: [n_requests, n_branches] row indices of the group's logits in the current forward's batch
    rows: Any = None
    #: the group members' request indices in the decode call (index ``hooks.tokens``/``hooks.seqs``)
    requests: tuple = ()
    #: the method's :class:`~vcdflow.decoding.hooks.DecodeHooks` (``Method.forward_hooks``) or None
    hooks: Any = None
    #: [n_requests, V] the amateur model's logits for the group's original-branch rows (shared
    #: vocabulary prefix; ``vcdflow.decoding.amateur``), or None when the method has no amateur
    amateur: Any = None
