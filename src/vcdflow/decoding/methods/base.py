"""The method protocol: a method is a frozen declarative object, not a decoding loop.

A method declares

* ``name`` and ``defaults`` (official hyper-parameters; the docstring gives their sources);
* ``branches(request, ctx) -> list[Branch]``: the original branch first, then its contrast
  branches (noised pixels, a disturbed prompt, transformed or reconstructed images, no image…);
* ``combine(logits[..., n_branches, V], step, state) -> scores[..., V]``: how the branch logits
  become next-token scores (default: VCD's ``(1+α)·ℓ − α·mean(ℓ′)`` over the contrast branches);
* ``plausibility(logits, step, state) -> β | None``: the APC threshold from the ORIGINAL branch
  (None: no constraint);
* optionally ``prepare(items, runner)``: a batched stage before branch building (Self-Aug's SAS
  query, CODE's self-description, AvisC's attention probe) using the engine's helpers;
* ``requires_image``; ``contrast_steps`` (contrast branches leave after that many tokens, VCD's
  pre-fix bug); ``mode`` (``greedy``/``sample`` force the decoding mode).

The engine (``vcdflow.decoding.engine``) stacks every branch of every request in one batch,
runs one forward per step, calls ``combine`` and ``plausibility`` on each request's rows (the
leading ``...`` dimension groups requests with the same branch count), then temperature/top-k/
top-p and argmax or sampling. ``step`` is the 0-based index of the token being chosen.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar, Mapping

import torch

from ..types import Branch, BranchContext, InputError, Request, State


def vcd_combine(logits: torch.Tensor, alpha) -> torch.Tensor:
    """(1+α)·ℓ − α·mean_i ℓ′_i over ``logits[..., 0, :]`` (original) and ``logits[..., 1:, :]``."""
    if logits.shape[-2] == 1:
        return logits[..., 0, :]
    return (1 + alpha) * logits[..., 0, :] - alpha * logits[..., 1:, :].mean(dim=-2)


@dataclass(frozen=True)
class Method:
    """Base class; subclasses set the class variables and override what differs."""

    name: ClassVar[str] = ""
    defaults: ClassVar[Mapping[str, Any]] = MappingProxyType({})
    requires_image: ClassVar[bool] = True
    contrast_steps: ClassVar[int | None] = None
    mode: ClassVar[str | None] = None
    #: params whose value may be None
    nullable: ClassVar[frozenset] = frozenset()
    #: parameter -> accepted type(s), where the default's type does not tell (e.g. a None default)
    param_types: ClassVar[Mapping[str, Any]] = MappingProxyType({})
    #: True when ``branches``/``prepare`` draw from the request generator ``ctx.rng`` (noise,
    #: transforms, augmentations): then even greedy output depends on the seed. False: a greedy
    #: run is decoded once and recorded for every seed (:func:`vcdflow.config.seed_free`).
    random_draw: ClassVar[bool] = False
    #: extra per-item input kinds the workflow must provide (:data:`vcdflow.config.METHOD_INPUTS`),
    #: e.g. ConVis' ``convis_reconstructions``
    extra_inputs: ClassVar[tuple] = ()
    #: model families the method applies to (None: every family); others fail naming the family
    families: ClassVar[tuple | None] = None
    #: what the method needs from a model family (keys of :data:`vcdflow.models.families.NEEDS`:
    #: ``image_tokens``, ``image_grid``, ``multi_image``); a family that lacks one is refused with
    #: one line naming the method, the family and why (:func:`vcdflow.models.families.refusal`)
    needs: ClassVar[tuple] = ()
    #: benchmark answer kinds the method is meant for (None: every kind; see
    #: :class:`vcdflow.benchmarks.base.Benchmark` ``answers``): the workflow's grid leaves the
    #: method out of other benchmarks/splits (PBA's "Answer yes whenever possible." is for yes/no items)
    answer_kinds: ClassVar[tuple | None] = None
    #: False: the engine never uses shared-prefix prefill for this method (its hooks need every
    #: row's full prefill in one forward); generate(share_prefix=True) is then ignored
    share_prefix: ClassVar[bool] = True
    #: Request field -> benchmark item key the runner fills it from when the item has ALL these keys
    #: (``vcdflow.runner.decode_batch``; each through the benchmark's prompt template), e.g. LQCD on
    #: the leading-query POPE: ``{"prompt": "neutral_question", "contrast_prompt": "question"}``
    item_prompts: ClassVar[Mapping[str, str]] = MappingProxyType({})
    #: Request field -> benchmark item key of the method's contrastive input, filled when the item
    #: has ANY of them (``contrast_prompt`` through the prompt template, ``contrast_image`` loaded
    #: like the image; an item with none is an error row naming the keys), e.g. cid / contrast:
    #: ``{"contrast_prompt": "contrast_question", "contrast_image": "contrast_image"}``
    item_contrast: ClassVar[Mapping[str, str]] = MappingProxyType({})
    #: True: no contrast at all — ``combine`` is the original branch's logits and there is no
    #: plausibility constraint (``greedy``/``sample``): the engine picks straight from the
    #: logits and skips the generic contrast scorer (its per-step copies); same tokens
    plain: ClassVar[bool] = False
    #: True: ``combine`` and ``plausibility`` read only the branch logits and ``state.params`` (not
    #: ``step``, contexts, hooks or rows): the static step may run them with the forward (under
    #: ``torch.compile`` with ``compile="on"``). A subclass that overrides either sets it anew
    tensor_combine: ClassVar[bool] = False

    # --- parameters -----------------------------------------------------------------------------
    def resolve(self, params: Mapping[str, Any] | None) -> dict[str, Any]:
        """Defaults overlaid with ``params``; unknown names raise ``ValueError`` naming them."""
        params = dict(params or {})
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            valid = ", ".join(sorted(self.defaults)) or "(none)"
            raise ValueError(
                f"unknown parameter{'s' if len(unknown) > 1 else ''} "
                f"{', '.join(repr(u) for u in unknown)} for method {self.name!r}; "
                f"valid parameters: {valid}"
            )
        out = {**self.defaults, **params}
        for k, v in out.items():
            if v is None and k not in self.nullable and self.defaults.get(k) is not None:
                raise ValueError(f"parameter {k!r} of method {self.name!r} must not be None")
        for k in params:
            self.check_type(k, out[k])
        self.validate(out)
        return out

    def param_type(self, key: str) -> tuple[type, ...] | None:
        """Accepted types of parameter ``key``: ``param_types[key]`` if the method declares it,
        else inferred from the default's type (a float default accepts any real number, an int
        default an integer; a None default: anything)."""
        declared = dict(self.param_types).get(key)
        if declared is not None:
            return declared if isinstance(declared, tuple) else (declared,)
        default = self.defaults.get(key)
        if default is None:
            return None
        if isinstance(default, bool):
            return (bool,)
        if isinstance(default, float):
            return (int, float)
        if isinstance(default, int):
            return (int,)
        return (type(default),)

    def check_type(self, key: str, value: Any) -> None:
        """``ValueError`` naming method, parameter, expected type and the given value."""
        types = self.param_type(key)
        if types is None or value is None:
            return
        ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
        if not ok and int in types and float not in types and isinstance(value, float) and value.is_integer():
            ok = True  # 500.0 for an integer parameter
        if not ok:
            names = " or ".join(
                "number" if t is float else t.__name__ for t in types if not (t is int and float in types)
            )
            raise ValueError(
                f"parameter {key!r} of method {self.name!r} must be {names}, "
                f"got {value!r} ({type(value).__name__})"
            )

    def validate(self, p: Mapping[str, Any]) -> None:
        if "alpha" in p and p["alpha"] is not None and float(p["alpha"]) < 0:
            raise ValueError(f"parameter 'alpha' of method {self.name!r} must be >= 0, got {p['alpha']}")
        if "beta" in p and p["beta"] is not None and not 0 <= float(p["beta"]) <= 1:
            raise ValueError(f"parameter 'beta' of method {self.name!r} must be in [0, 1], got {p['beta']}")
        if "noise_step" in p and not 0 <= int(p["noise_step"]) <= 999:
            raise ValueError(
                f"parameter 'noise_step' of method {self.name!r} must be in 0..999, got {p['noise_step']}"
            )

    def processors(self, p: Mapping[str, Any]) -> dict | None:
        """The HF logits processors this run applies (:mod:`vcdflow.decoding.processors`), read
        from the parameters ``repetition_penalty``, ``no_repeat_ngram_size`` and
        ``repetition_context`` where the method has them: ``{"repetition", "ngram", "context"}``,
        or None when both processors are neutral. The engine applies them."""
        theta = float(p.get("repetition_penalty", 1.0))
        ngram = int(p.get("no_repeat_ngram_size", 0))
        if theta == 1.0 and ngram <= 0:
            return None
        return {"repetition": theta, "ngram": ngram, "context": str(p.get("repetition_context", "prompt"))}

    # --- stages -----------------------------------------------------------------------------------
    def prepare(self, items: list, runner) -> None:
        """Batched work before ``branches`` (default: none). ``items`` have ``.request``,
        ``.ctx`` and ``.fail(message)``."""

    def forward_hooks(self, adapter, params: Mapping[str, Any]):
        """A fresh :class:`vcdflow.decoding.hooks.DecodeHooks` for one decode call, or None
        (default): hooks on the model's layers/attention whose captures ``combine`` reads through
        ``state.hooks`` and ``state.rows``."""
        return None

    def original(self, request: Request) -> Branch:
        return Branch(prompt=request.prompt, image=request.image, system=request.system)

    def branches(self, request: Request, ctx: BranchContext) -> list[Branch]:
        return [self.original(request)]

    def combine(self, logits: torch.Tensor, step: int, state: State) -> torch.Tensor:
        return vcd_combine(logits, state.params.get("alpha", 0.0))

    def plausibility(self, logits: torch.Tensor, step: int, state: State):
        return state.params.get("beta")

    def usable(self, items: list, adapter) -> list:
        """The ``prepare`` items this method can run: each needs an image (``requires_image``) and a
        family in ``families``; the others fail with one line naming why."""
        family = getattr(adapter, "family", None)
        ok = []
        for it in items:
            try:
                if self.requires_image:
                    self.require_image(it.request)
                why = self.refusal(family)
                if why:
                    raise InputError(why)
                ok.append(it)
            except Exception as e:  # noqa: BLE001 - reported per item
                it.fail(str(e))
        return ok

    def refusal(self, family) -> str | None:
        """Why this method cannot run on ``family`` (its ``families`` and ``needs``), None when it can."""
        from ...models.families import refusal

        if self.families is not None and family not in self.families:
            return self.family_error(family)
        return refusal(self.name, self.needs, family) if self.needs else None

    def applies_to(self) -> tuple | None:
        """The families this method runs on (``families`` and ``needs``); None: every family."""
        if not self.needs:
            return self.families
        from ...models.families import applicable

        return tuple(f for f in applicable(self.needs) if self.families is None or f in self.families)

    def family_error(self, family) -> str:
        return (
            f"method {self.name!r} does not apply to the {family} family "
            f"(it applies to: {', '.join(self.families or ())})"
        )

    def require_image(self, request: Request) -> None:
        if request.image is None:
            raise InputError(f"method {self.name!r} needs an image (Request.image is None)")
