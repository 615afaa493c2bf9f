"""The all-method reference test of test_decoding (the batched, cached engine against the plain
batch-1 no-cache reference decoder, tests/reference_decoder.py) on a second family: LLaVA-NeXT,
whose any-res images give rows of different lengths (the requests' images are 80x100, 64x64 and
120x70 pixels: different tile grids) and whose pixel distortions act per tile."""

from __future__ import annotations

import pytest

from test_decoding import requests_, test_greedy_matches_reference, vlm  # noqa: F401 (collected here)
from tiny_models import tiny_dir


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_dir("llava_next", tmp_path_factory)
