"""Image preprocessing a protocol names (``image_preprocess``).

* ``"processor"``: the image as is; the model's processor resizes (and, for CLIP, centre-crops)
  it — the VCD line of repos (``image_processor.preprocess(image)``).
* ``"pad_square_mean"``: LLaVA's own evaluation (``image_aspect_ratio == "pad"``): the image is
  padded to a square with the processor's mean colour, centred, before the processor —
  ``expand2square(image, tuple(int(x*255) for x in image_processor.image_mean))``
  (haotian-liu/LLaVA llava/mm_utils.py:152-163, :169-172).
"""

from __future__ import annotations

from typing import Sequence

HOW = ("processor", "pad_square_mean")


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
    raise ValueError(f"unknown image_preprocess {how!r}; valid: {', '.join(HOW)}")
