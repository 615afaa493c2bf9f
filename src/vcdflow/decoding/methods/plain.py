"""Plain decoding baselines without contrast: ``greedy`` and ``sample``.

* ``greedy``: argmax of the model's logits (always greedy, whatever ``do_sample`` says).
* ``sample``: multinomial sampling from softmax(ℓ / T) after top-k/top-p (always samples) —
  the "Regular" baseline of VCD Table 1 (T = 1, top_p = 1).

Neither needs an image (text-only prompts decode too). No plausibility constraint.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

from .base import Method


@dataclass(frozen=True)
class Greedy(Method):
    name = "greedy"
    defaults = MappingProxyType({})
    requires_image = False
    mode = "greedy"
    plain = True

    def combine(self, logits, step, state):
        return logits[..., 0, :]

    def plausibility(self, logits, step, state):
        return None


@dataclass(frozen=True)
class Sample(Greedy):
    name = "sample"
    mode = "sample"
