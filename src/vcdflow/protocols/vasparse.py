"""``vasparse``: VASparse's protocol (Zhuang et al., CVPR 2025, arXiv 2501.06553;
mengchuang123/VASparse-github at 4929816), its HALC-fork harness (:mod:`vcdflow.protocols.halc`).

Families: LLaVA-1.5 (``run_scripts/caption_generation_patch_vasparse.py``; MiniGPT-4 and
mPLUG-Owl2 have their own scripts). Not run: InstructBLIP, Qwen2.5-VL. Benchmarks: **CHAIR** (the
released VASparse script; the paper's POPE table is HALC's offline OPOPE, not POPE, and its MME
script is not VASparse's): POPE, MME and AMBER come from ``unified``.

* CHAIR: "Please describe this image in detail.", ``max_new_tokens=64``, ``-n 100`` (paper 500,
  five runs), ``--seed 0``, sentences with "unk" removed afterwards (not modelled).
* **Beams: 3** (the paper's implementation details, arXiv 2501.06553: beam search, 3 beams at a
  64-token limit, 2 at 512 — the setting of its Table 1), with transformers 4.36.2's beam
  normalisation (the fork's vendored ``beam_search`` records ``decoder_prompt_len``:
  generated-length, ``length_norm: generated``). The released script defaults to ``-b 1``
  (``caption_generation_patch_vasparse.py:157``) and cannot run as shipped (see the method's
  docstring); the named protocol ``vasparse_script`` is that one-beam setting, otherwise the
  same. Greedy → beam search alone moves LLaVA-1.5's CHAIR_s by about 2 points in the paper's
  own Table 1, so a one-beam run is not comparable with its VASparse row.
* Template ``halc_llava`` ("curious user" system text straight into ``USER:``).
* VASparse: ``mask_rate`` 0.5, ``contrastive_rate`` 0.1, ``sparse_kv_cache_rate`` 0.9 (the
  method's defaults). The released script does not run as shipped (see the method's docstring).
"""

from __future__ import annotations

from .base import Protocol, S
from .halc import halc_harness

R = "mengchuang123/VASparse-github"
CG = f"{R} run_scripts/caption_generation_patch_vasparse.py"

TU = f"{R} transformers-4.36.2/src/transformers/generation/utils.py"


def _protocol(name: str, title: str, beams: S | None) -> "Protocol":
    return halc_harness(
        name,
        title,
        R,
        method="vasparse",
        cg_path="run_scripts/caption_generation_patch_vasparse.py",
        families=("llava",),
        benchmarks=("chair",),
        cg={
            "template": 80,
            "ib_template": 77,
            "beam": 157,
            "beam_value": 1,
            "seed": 163,
            "max": 165,
            "n": 164,
            "n_value": 100,
            "prompt": 499,
            "sysjoin": 187,
        },
        pe={"recorder": 248},
        params=S(
            {},
            f"{CG}:127-148 (mask_rate 0.5, contrastive_rate 0.1, sparse_kv_cache_rate 0.9), :567-576: "
            "the method's defaults",
        ),
        bench_layers={"chair": {"search": {"vasparse": beams}}} if beams is not None else None,
    )


#: the paper's setting (Table 1): 3 beams on CHAIR
PROTOCOL = _protocol(
    "vasparse",
    "VASparse (Zhuang et al., CVPR 2025, arXiv 2501.06553)",
    S(
        {"num_beams": 3, "length_norm": "generated"},
        "VASparse paper arXiv 2501.06553, implementation details (beam search: 3 beams at 64 new tokens, the "
        f"setting of its Table 1; the released script's -b 1 is protocol vasparse_script, {CG}:157); "
        f"normalisation: {TU}:7248,7323 (beam_search records decoder_prompt_len: generated length)",
    ),
)

#: the released script's setting: -b 1 (one beam)
SCRIPT = _protocol(
    "vasparse_script", "VASparse's released script (-b 1; arXiv 2501.06553, VASparse-github at 4929816)", None
)
