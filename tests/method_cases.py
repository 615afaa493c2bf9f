"""What the generic all-method tests (tests/test_decoding.py, tests/test_models.py,
tests/test_shared_prefix.py) need to know about each registered method.

* ``COVERED_ELSEWHERE``: methods whose greedy/sampling output is checked against their own plain
  reference in another module (tests/reference_*.py), not against tests/reference_decoder.py;
  ``test_every_method_has_a_reference`` (test_decoding) fails for a method checked nowhere.
* ``runtime_params(method, vlm, model_dir, root)``: the parameters a method needs to run at all on
  the tiny models — artefacts it reads (HALC's helper models, VTI's fitted directions, text CD's
  amateur) built here for the given model, and layer choices that exist in a 2-layer model.
"""

from __future__ import annotations

from pathlib import Path

from reference_attention import COVERED as _ATTENTION
from reference_halc import COVERED as _HALC
from reference_layers import COVERED as _LAYERS
from reference_methods import COVERED as _WAVE2
from reference_steering import COVERED as _STEERING

#: tests/test_methods_beams.py + tests/test_beams.py (references in tests/reference_beams.py)
_BEAMS = ("contrastive_search", "text_cd", "opera")

COVERED_ELSEWHERE = frozenset(_WAVE2 + _LAYERS + _ATTENTION + _STEERING + _HALC + _BEAMS)


def _halc(vlm, model_dir, root):
    from reference_halc import halc_params

    return halc_params(Path(root) / "halc_aux")


def _text_cd(vlm, model_dir, root):
    return {"amateur": str(model_dir)}  # the model as its own amateur: same vocabulary


def _vti(vlm, model_dir, root):
    """Random text-only directions of the model's shape ([L, D]); alpha_image 0 (no vision part)."""
    import torch

    from vcdflow.steering_fit import save_directions

    ad = vlm.adapter
    n, d = len(ad.decoder_layers()), int(ad.text_config.hidden_size)
    g = torch.Generator().manual_seed(0)
    path = Path(root) / f"vti_{vlm.family}_{n}x{d}.pt"
    if not path.exists():
        save_directions(
            {"text": torch.randn(n, d, generator=g), "vision": None, "meta": {"test": True}}, path
        )
    return {"directions": str(path), "alpha_image": 0.0}


_NEEDS = {"halc": _halc, "text_cd": _text_cd, "vti": _vti}

#: layer choices that exist in the tiny 2-layer models (the defaults name layer 2)
SMALL = {"pai": {"start_layer": 1}, "sid": {"layer": 1}}


def runtime_params(method: str, vlm, model_dir, root, base: dict | None = None) -> dict | None:
    """``base`` (the test's own params for ``method``) plus what ``method`` needs to run."""
    extra = dict(SMALL.get(method, {}))
    if method in _NEEDS:
        extra.update(_NEEDS[method](vlm, model_dir, root))
    out = {**(base or {}), **extra}
    return out or None
