"""Model loading and per-family adapters: ``load_vlm(name_or_dir, device, dtype) -> VLM``."""

from .loading import FAMILIES, VLM, load_vlm, parse_dtype

__all__ = ["FAMILIES", "VLM", "load_vlm", "parse_dtype"]
