"""Image distortions used to build contrast branches (PIL + torch; no torchvision).

Tensor functions act on normalised image batches ``x`` [N, 3, H, W] (the processor's output, e.g.
CLIP-normalised); PIL functions act on the raw image before the processor. All randomness comes
from the ``torch.Generator`` passed in (the request's own stream).

* :func:`diffusion_noise` — VCD (``DAMO-NLP-SG/VCD:vcd_utils/vcd_add_noise.py``): 1000-step DDPM
  forward process, betas = sigmoid(linspace(−6, 6, 1000))·(5e-3 − 1e-5) + 1e-5, ᾱ = cumprod(1−β),
  x_T = √ᾱ_T·x + √(1−ᾱ_T)·ε on the normalised tensor (T = noise_step, 0-based index).
* Self-Aug menu (``eunwooim/selfaug:src/models/base_models.py``): :func:`hflip`, :func:`vflip`,
  :func:`invert_colors` (de-normalise, clamp to [0, 1], 1−x, re-normalise), :func:`random_crop`
  (square of side ⌊min(h, w) / ratio⌋ at a random place, resized back with antialiased bilinear),
  :func:`random_mask` (square of side ⌊min(h, w) / ratio⌋ set to 0 in normalised space), noise.
* RITUAL menu (``sangminwoo/RITUAL:eval_bench/pope_eval_llava.py``, torchvision v2 on PIL):
  :data:`RITUAL_TRANSFORMS` — horizontal flip, vertical flip, rotation (uniform ±180°, nearest,
  same size, black fill), colour jitter (brightness, contrast, saturation ∈ U[0, 2], hue ∈
  U[−0.5, 0.5], applied in a random order), Gaussian blur (kernel 13, σ ∈ U[1.5, 2.0], reflect
  padding), random resized crop (scale U[0.08, 1], log-ratio U[log 3/4, log 4/3], 10 tries then a
  centre crop; output 336×336 bilinear).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageEnhance, ImageOps


# --- random helpers (all from the given generator) ---------------------------------------------
def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return float(lo + (hi - lo) * torch.rand((), generator=g, dtype=torch.float64))


def _randint(g: torch.Generator, lo: int, hi: int) -> int:
    """Uniform integer in [lo, hi) (like ``torch.randint``)."""
    return int(torch.randint(lo, hi, (1,), generator=g))


# --- VCD diffusion noise -------------------------------------------------------------------------
def vcd_alpha_bar(num_steps: int = 1000) -> torch.Tensor:
    """ᾱ_t of VCD's schedule (float64), index t = 0 … num_steps−1."""
    betas = torch.sigmoid(torch.linspace(-6, 6, num_steps, dtype=torch.float64)) * (5e-3 - 1e-5) + 1e-5
    return torch.cumprod(1.0 - betas, dim=0)


def noise_coefficients(noise_step: int) -> tuple[float, float]:
    """(√ᾱ_T, √(1−ᾱ_T)) for VCD's schedule: T=500 → (0.863, 0.505), T=999 → (0.285, 0.959)."""
    if not 0 <= int(noise_step) <= 999:
        raise ValueError(f"noise_step must be in 0..999, got {noise_step}")
    ab = float(vcd_alpha_bar()[int(noise_step)])
    return math.sqrt(ab), math.sqrt(1.0 - ab)


def diffusion_noise(x: torch.Tensor, noise_step: int, generator: torch.Generator) -> torch.Tensor:
    a, b = noise_coefficients(noise_step)
    eps = torch.randn(x.shape, generator=generator, dtype=torch.float32)
    return (a * x.float() + b * eps).to(x.dtype)


# --- Self-Aug tensor augmentations ---------------------------------------------------------------
def hflip(x: torch.Tensor) -> torch.Tensor:
    return x.flip(-1)


def vflip(x: torch.Tensor) -> torch.Tensor:
    return x.flip(-2)


def invert_colors(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    pix = torch.clamp(x * std + mean, 0.0, 1.0)
    return ((1.0 - pix) - mean) / std


def random_crop(x: torch.Tensor, ratio: float, generator: torch.Generator) -> torch.Tensor:
    h, w = x.shape[-2:]
    size = int(min(h, w) // ratio)
    top = _randint(generator, 0, h - size + 1)
    left = _randint(generator, 0, w - size + 1)
    crop = x[..., top : top + size, left : left + size]
    return F.interpolate(crop.float(), size=(h, w), mode="bilinear", align_corners=False, antialias=True).to(
        x.dtype
    )


def random_mask(x: torch.Tensor, ratio: float, generator: torch.Generator) -> torch.Tensor:
    h, w = x.shape[-2:]
    size = int(min(h, w) // ratio)
    top = _randint(generator, 0, h - size + 1)
    left = _randint(generator, 0, w - size + 1)
    out = x.clone()
    out[..., top : top + size, left : left + size] = 0.0
    return out


# --- RITUAL PIL transforms -----------------------------------------------------------------------
def _rgb(img: Image.Image) -> Image.Image:
    return img if img.mode == "RGB" else img.convert("RGB")


def rotate(img: Image.Image, g: torch.Generator, degrees: float = 180.0) -> Image.Image:
    angle = _uniform(g, -degrees, degrees)
    return _rgb(img).rotate(angle, resample=Image.NEAREST, expand=False, fillcolor=(0, 0, 0))


def adjust_hue(img: Image.Image, factor: float) -> Image.Image:
    """Shift the hue channel by ``factor`` of a full turn (uint8 HSV, wrap-around)."""
    h, s, v = _rgb(img).convert("HSV").split()
    hh = (np.asarray(h, dtype=np.int16) + int(factor * 255)) % 256
    h = Image.fromarray(hh.astype(np.uint8), "L")
    return Image.merge("HSV", (h, s, v)).convert("RGB")


def color_jitter(
    img: Image.Image,
    g: torch.Generator,
    brightness: float = 1.0,
    contrast: float = 1.0,
    saturation: float = 1.0,
    hue: float = 0.5,
) -> Image.Image:
    order = torch.randperm(4, generator=g).tolist()
    b = _uniform(g, max(0.0, 1 - brightness), 1 + brightness)
    c = _uniform(g, max(0.0, 1 - contrast), 1 + contrast)
    s = _uniform(g, max(0.0, 1 - saturation), 1 + saturation)
    h = _uniform(g, -hue, hue)
    img = _rgb(img)
    for fn in order:
        if fn == 0:
            img = ImageEnhance.Brightness(img).enhance(b)
        elif fn == 1:
            img = ImageEnhance.Contrast(img).enhance(c)
        elif fn == 2:
            img = ImageEnhance.Color(img).enhance(s)
        else:
            img = adjust_hue(img, h)
    return img


def gaussian_kernel1d(kernel_size: int, sigma: float) -> torch.Tensor:
    half = (kernel_size - 1) * 0.5
    x = torch.linspace(-half, half, kernel_size, dtype=torch.float64)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def gaussian_blur(
    img: Image.Image, g: torch.Generator, kernel_size: int = 13, sigma: tuple[float, float] = (1.5, 2.0)
) -> Image.Image:
    s = _uniform(g, sigma[0], sigma[1])
    k = gaussian_kernel1d(kernel_size, s).float()
    x = torch.from_numpy(np.asarray(_rgb(img), dtype=np.float32)).permute(2, 0, 1).unsqueeze(0)
    pad = kernel_size // 2
    x = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).repeat(3, 1, 1, 1), groups=3)
    x = F.conv2d(x, k.view(1, 1, -1, 1).repeat(3, 1, 1, 1), groups=3)
    arr = x[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()
    return Image.fromarray(arr, "RGB")


def random_resized_crop(
    img: Image.Image,
    g: torch.Generator,
    size: int = 336,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> Image.Image:
    img = _rgb(img)
    W, H = img.size
    area = H * W
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    box = None
    for _ in range(10):
        target = area * _uniform(g, scale[0], scale[1])
        aspect = math.exp(_uniform(g, log_r[0], log_r[1]))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= W and 0 < h <= H:
            i = _randint(g, 0, H - h + 1)
            j = _randint(g, 0, W - w + 1)
            box = (j, i, j + w, i + h)
            break
    if box is None:  # centre crop at the clamped aspect ratio
        in_ratio = W / H
        if in_ratio < min(ratio):
            w, h = W, int(round(W / min(ratio)))
        elif in_ratio > max(ratio):
            h, w = H, int(round(H * max(ratio)))
        else:
            w, h = W, H
        i, j = (H - h) // 2, (W - w) // 2
        box = (j, i, j + w, i + h)
    return img.crop(box).resize((size, size), Image.BILINEAR)


#: RITUAL's menu in the official order (one is drawn uniformly per sample).
RITUAL_TRANSFORMS = ("horizontal flip", "vertical flip", "rotation", "color jitter", "gaussian blur", "crop")


def ritual_transform(img: Image.Image, name: str, g: torch.Generator, crop_size: int = 336) -> Image.Image:
    if name == "horizontal flip":
        return ImageOps.mirror(_rgb(img))
    if name == "vertical flip":
        return ImageOps.flip(_rgb(img))
    if name == "rotation":
        return rotate(img, g)
    if name == "color jitter":
        return color_jitter(img, g)
    if name == "gaussian blur":
        return gaussian_blur(img, g)
    if name == "crop":
        return random_resized_crop(img, g, size=crop_size)
    raise ValueError(f"unknown RITUAL transform {name!r}; valid: {', '.join(RITUAL_TRANSFORMS)}")
