"""Image preprocessing a protocol names (``image_preprocess``).

* ``"processor"``: the image as is; the model's processor resizes (and, for CLIP, centre-crops)
  it — the VCD line of repos (``image_processor.preprocess(image)``).
* ``"pad_square_mean"``: LLaVA's own evaluation (``image_aspect_ratio == "pad"``): the image is
  padded to a square with the processor's mean colour, centred, before the processor —
  ``expand2square(image, tuple(int(x*255) for x in image_processor.image_mean))``
  (haotian-liu/LLaVA llava/mm_utils.py:152-163, :169-172).
* ``"qwen_max_pixels_448"``: Qwen2.5-VL at CARVE's resolution — the image resized (PIL bicubic,
  the Qwen image processor's resampling) to Qwen's ``smart_resize`` size for ``max_pixels`` =
  256·28·28 = 448² (YuyaoGe/CARVE carve/pipeline.py:46-51: ``AutoProcessor.from_pretrained(...,
  max_pixels=256*28*28)``), so the processor, whose own limit is higher, keeps that size: about
  234 visual tokens for a 640×480 COCO image instead of about 391.
"""

from __future__ import annotations

from typing import Sequence

HOW = ("processor", "pad_square_mean", "qwen_max_pixels_448")
#: Qwen2.5-VL's pixel budget in CARVE's code (256·28·28 = 448²)
CARVE_MAX_PIXELS = 256 * 28 * 28


def cap_pixels(image, max_pixels: int):
    """``image`` resized (bicubic) to Qwen's ``smart_resize`` size under ``max_pixels`` (factor
    28, the processor's min_pixels 56²); unchanged when it already has that size."""
    from PIL import Image
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    w, h = image.size
    h_bar, w_bar = smart_resize(h, w, factor=28, min_pixels=56 * 56, max_pixels=int(max_pixels))
    return image if (w_bar, h_bar) == (w, h) else image.resize((w_bar, h_bar), Image.BICUBIC)


def expand2square(pil_img, background_color):
    """LLaVA's ``expand2square`` (haotian-liu/LLaVA llava/mm_utils.py:152-163)."""
    from PIL import Image

    width, height = pil_img.size
    if width == height:
        return pil_img
    if width > height:
        result = Image.new(pil_img.mode, (width, width), background_color)
        result.paste(pil_img, (0, (width - height) // 2))
        return result
    result = Image.new(pil_img.mode, (height, height), background_color)
    result.paste(pil_img, ((height - width) // 2, 0))
    return result


def preprocess_image(image, how: str, mean: Sequence[float] | None = None):
    """``image`` (PIL) prepared as protocol ``how`` says; ``mean`` is the processor's
    ``image_mean`` (0–1 floats; required for ``pad_square_mean``)."""
    if how == "processor":
        return image
    if how == "pad_square_mean":
        if mean is None:
            raise ValueError("image_preprocess 'pad_square_mean' needs the processor's image_mean")
        return expand2square(image, tuple(int(x * 255) for x in mean))
    if how == "qwen_max_pixels_448":
        return cap_pixels(image, CARVE_MAX_PIXELS)
    raise ValueError(f"unknown image_preprocess {how!r}; valid: {', '.join(HOW)}")
