"""Plain decoding baselines without contrast: ``greedy`` and ``sample``.

* ``greedy``: argmax of the model's logits (always greedy, whatever ``do_sample`` says).
* ``sample``: multinomial sampling from softmax(ℓ / T) after top-k/top-p (always samples) —
  the "Regular" baseline of VCD Table 1 (T = 1, top_p = 1).

Neither needs an image (text-only prompts decode too). No plausibility constraint.

Parameters: ``repetition_penalty`` θ = 1.0 (off) and ``repetition_context`` (``"prompt"``):
transformers' ``RepetitionPenaltyLogitsProcessor`` over the ids (:mod:`vcdflow.decoding.processors`),
for a harness whose ``generate`` passes one — LAVIS's InstructBLIP ``generate`` defaults to
``repetition_penalty=1.5`` over one BOS and the generated ids (``repetition_context: generated``),
which OPERA's greedy and beam-search baselines inherit (protocol ``opera``). In beam search it
applies to each beam's log-probs, as transformers does.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

from ..processors import check_processor_params
from .base import Method


@dataclass(frozen=True)
class Greedy(Method):
    name = "greedy"
    defaults = MappingProxyType({"repetition_penalty": 1.0, "repetition_context": "prompt"})
    requires_image = False
    mode = "greedy"
    plain = True
    tensor_combine = True

    def validate(self, p):
        super().validate(p)
        check_processor_params(self.name, p)

    def combine(self, logits, step, state):
        return logits[..., 0, :]

    def plausibility(self, logits, step, state):
        return None


@dataclass(frozen=True)
class Sample(Greedy):
    name = "sample"
    mode = "sample"
