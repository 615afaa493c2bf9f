"""``vasparse``: VASparse's protocol (Zhuang et al., CVPR 2025, arXiv 2501.06553;
mengchuang123/VASparse-github at 4929816), its HALC-fork harness (:mod:`vcdflow.protocols.halc`).

Families: LLaVA-1.5 (``run_scripts/caption_generation_patch_vasparse.py``; MiniGPT-4 and
mPLUG-Owl2 have their own scripts). Not run: InstructBLIP, Qwen2.5-VL. Benchmarks: **CHAIR** (the
released VASparse script; the paper's POPE table is HALC's offline OPOPE, not POPE, and its MME
script is not VASparse's): POPE, MME and AMBER come from ``unified``.

* CHAIR: "Please describe this image in detail.", ``max_new_tokens=64``, ``-n 100`` (paper 500,
  five runs), ``--seed 0``, ``-b 1`` (the paper says beam 3 at 64 tokens), sentences with "unk"
  removed afterwards (not modelled).
* Template ``halc_llava`` ("curious user" system text straight into ``USER:``).
* VASparse: ``mask_rate`` 0.5, ``contrastive_rate`` 0.1, ``sparse_kv_cache_rate`` 0.9 (the
  method's defaults). The released script does not run as shipped (see the method's docstring).
"""

from __future__ import annotations

from .base import S
from .halc import halc_harness

R = "mengchuang123/VASparse-github"
CG = f"{R} run_scripts/caption_generation_patch_vasparse.py"

PROTOCOL = halc_harness(
    "vasparse", "VASparse (Zhuang et al., CVPR 2025, arXiv 2501.06553)", R, method="vasparse",
    cg_path="run_scripts/caption_generation_patch_vasparse.py", families=("llava",), benchmarks=("chair",),
    cg={"template": 80, "ib_template": 77, "beam": 157, "beam_value": 1, "seed": 163, "max": 165, "n": 164,
        "n_value": 100, "prompt": 499, "sysjoin": 187},
    pe={"recorder": 248},
    params=S({}, f"{CG}:127-148 (mask_rate 0.5, contrastive_rate 0.1, sparse_kv_cache_rate 0.9), :567-576: "
                 "the method's defaults"),
)
