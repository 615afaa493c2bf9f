"""Model loading and per-family adapters: ``load_vlm(name_or_dir, device, dtype) -> VLM``.

The family records (:mod:`vcdflow.models.families`) import no torch; ``load_vlm`` and the rest
load :mod:`vcdflow.models.loading` (torch, transformers) on first use."""

from .families import FAMILIES as FAMILY_RECORDS, Family, get_family

_LAZY = ("FAMILIES", "VLM", "load_vlm", "parse_dtype")


def __getattr__(name):
    if name in _LAZY:
        from . import loading

        return getattr(loading, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["FAMILIES", "FAMILY_RECORDS", "Family", "VLM", "get_family", "load_vlm", "parse_dtype"]
