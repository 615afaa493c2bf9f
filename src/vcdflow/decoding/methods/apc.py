"""``apc``: the adaptive plausibility constraint alone, no contrast branch.

    s = ℓ;  s[ℓ < log β + max ℓ] = −inf

The "APC-only" control of cd_rethink (arXiv 2504.10020, ``ustc-hyin/cd_rethink``): with sampling
it turns plain sampling into near-greedy decoding and recovers most of VCD's POPE gain.
Parameter: ``beta`` = β = 0.1 (VCD's ``cd_beta``). Greedy decoding is unchanged by APC (the argmax always
survives), so this method matters in sampling mode.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

from .base import Method


@dataclass(frozen=True)
class APC(Method):
    name = "apc"
    defaults = MappingProxyType({"beta": 0.1})
    requires_image = False

    def combine(self, logits, step, state):
        return logits[..., 0, :]
