"""The method registry: ``METHODS[name]`` → a frozen method object (one file per method)."""

from __future__ import annotations

from .apc import APC
from .avisc import AvisC
from .base import Method, vcd_combine
from .carve import CARVE
from .cid import CID
from .code import CODE
from .contrast import Contrast
from .contrastive_search import ContrastiveSearch
from .convis import ConVis
from .debias import Debias
from .deco import DeCo
from .dola import DoLa
from .halc import HALC
from .iava import IAVA
from .icd import ICD
from .lqcd import LQCD
from .m3id import M3ID
from .olm import OLM
from .opera import OPERA
from .only import ONLY
from .pai import PAI
from .pba import PBA
from .plain import Greedy, Sample
from .revisit import ReVisiT
from .ritual import Ritual
from .selfaug import SelfAug
from .sid import SID
from .text_cd import TextCD
from .vasparse import VASparse
from .vcd import VCD
from .vcd_legacy import VCDLegacy
from .vdd import VDD
from .vista import VISTA
from .vti import VTI

METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Greedy(),
        Sample(),
        Contrast(),
        VCD(),
        VCDLegacy(),
        ICD(),
        Ritual(),
        M3ID(),
        VDD(),
        SelfAug(),
        APC(),
        CODE(),
        AvisC(),
        ConVis(),
        # cd_rethink controls and the second wave
        PBA(),
        OLM(),
        Debias(),
        CARVE(),
        IAVA(),
        CID(),
        LQCD(),
        # layer contrasts: early exits / vision-token states
        DoLa(),
        DeCo(),
        ReVisiT(),
        # steering
        VISTA(),
        VTI(),
        # HALC
        HALC(),
        # attention methods
        PAI(),
        SID(),
        ONLY(),
        VASparse(),
        # searches: look-ahead, amateur, beams
        ContrastiveSearch(),
        TextCD(),
        OPERA(),
    )
}


def get_method(name: str) -> Method:
    """The method called ``name``; ``ValueError`` naming it and listing the valid ones."""
    if isinstance(name, Method):
        return name
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; valid methods: {', '.join(sorted(METHODS))}")
    return METHODS[name]


__all__ = ["METHODS", "Method", "get_method", "vcd_combine"]
