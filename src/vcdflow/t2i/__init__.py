"""Text-to-image reconstructions for ConVis (Park et al., AAAI 2025; ``yejipark-m/ConVis``).

Pipeline of the method, one module per step:

1. :mod:`.captions` — the VLM captions each benchmark image ``n`` times (nucleus sampling,
   T = 0.7, top-p = 0.9, ≤ 256 tokens, "Please describe this image in detail.");
2. :mod:`.reconstruct` — a text-to-image model (:mod:`.pipeline`: SDXL + Hyper-SD 1-step in
   the paper, :mod:`.demo_t2i` in the demo world) renders every caption into a cached PNG and a
   manifest maps each image to its ``n`` reconstructions;
3. decoding — :func:`attach_reconstructions` puts those paths on each item as
   ``contrast_images``; the engine's ``convis`` method contrasts the original image against
   them: s = (1+α)·ℓ(v) − α·(1/n)·Σᵢ ℓ(v′ᵢ).
"""

from .captions import (
    CAPTION_DEFAULTS,
    CAPTION_PROMPT,
    caption_images,
    clean_caption,
    convis_images,
    image_key,
    read_captions,
)
from .pipeline import (
    DEMO_T2I,
    PAPER_T2I,
    Text2Image,
    build_tiny_sdxl,
    download_t2i,
    load_t2i,
    normalize_t2i_config,
    t2i_hash,
)
from .reconstruct import (
    attach_reconstructions,
    check_image,
    read_manifest,
    reconstruct,
    reconstruction_path,
    t2i_seed,
)

__all__ = [
    "CAPTION_DEFAULTS",
    "CAPTION_PROMPT",
    "DEMO_T2I",
    "PAPER_T2I",
    "Text2Image",
    "attach_reconstructions",
    "build_tiny_sdxl",
    "caption_images",
    "check_image",
    "clean_caption",
    "convis_images",
    "download_t2i",
    "image_key",
    "load_t2i",
    "normalize_t2i_config",
    "read_captions",
    "read_manifest",
    "reconstruct",
    "reconstruction_path",
    "t2i_hash",
    "t2i_seed",
]
