"""``dola``: DoLa (Chuang et al., ICLR 2024, arXiv 2309.03883; voidism/DoLa) as the LVLM papers run it.

DoLa is an LLM method: its own repository evaluates TruthfulQA / GSM8K / StrategyQA (LLaMA, with
repetition penalty 1.2), no LVLM benchmark. Its LVLM numbers (VASparse Tab. 1, RITUAL's and
OPERA's tables) come from the HALC harness; this protocol is **the VASparse fork of it**
(mengchuang123/VASparse-github at 4929816, ``run_scripts/caption_generation.py -d dola`` and
``pope_eval.py``), chosen because its default ``-b 1`` runs **DoLa-greedy** (relative top 0.1,
candidate layers 0, 2, …, 30, mature layer 32) — the variant our single-beam decoder reproduces.
HALC's own copy defaults to ``-b 3`` (``dola_beam_search``, no relative-top filter): name the
``halc`` protocol for that harness. See :mod:`vcdflow.protocols.halc` for the harness (templates,
POPE questions built by the script, "unk" sentence filter).

* LLaVA-1.5: no repetition penalty (commented out in ``minigpt4/models/llava.py:241``), unlike
  DoLa's own LLM scripts (θ = 1.2). **InstructBLIP: θ = 1.5** — LAVIS's ``generate`` default
  (``minigpt4/models/blip2_vicuna_instruct.py:331,485-496``; no run script sets it), applied in
  ``dola_greedy_decode`` (vendored ``transformers-4.36.2/.../generation/utils.py:3661``) over one BOS
  and the generated ids (``generate`` gets ``inputs_embeds`` only: ``utils.py:658-660,670-696``;
  ``repetition_context: generated``).
* Families: LLaVA-1.5 and InstructBLIP (the harness's ``INSTRUCTION_TEMPLATE``). Not run:
  Qwen2.5-VL.
"""

from __future__ import annotations

from ._shared import lavis_penalty
from .base import S
from .halc import halc_harness

R = "mengchuang123/VASparse-github"
CG = f"{R} run_scripts/caption_generation.py"

TU = f"{R} transformers-4.36.2/src/transformers/generation/utils.py"
#: LAVIS's InstructBLIP generate in the VASparse fork: repetition_penalty 1.5 over BOS + generated ids
IB_PENALTY = lavis_penalty(R, "331,485-496", f"{TU}:658-660,670-696", f"dola_greedy_decode {TU}:3661")

PROTOCOL = halc_harness(
    "dola",
    "DoLa (Chuang et al., ICLR 2024) in the HALC harness (VASparse fork, -b 1)",
    R,
    method="dola",
    cg={
        "template": 63,
        "ib_template": 60,
        "beam": 111,
        "beam_value": 1,
        "seed": 117,
        "max": 119,
        "n": 118,
        "n_value": 100,
        "prompt": 439,
        "sysjoin": 187,
    },
    pe={"qtemplate": "192-197", "max": 104, "recorder": 248},
    params=S(
        {"layers": list(range(0, 32, 2)), "relative_top": 0.1, "repetition_penalty": 1.0},
        f"{CG}:444-462 (candidate layers 0, 2, …, 30, mature 32 = the last), :286-287 (-d dola); relative top "
        f"0.1: {R} transformers-4.36.2/src/transformers/generation/utils.py:1422 (the vendored transformers "
        f"the -d dola path runs; {R} decoder_zoo/Greedy/patching_generate.py is not imported by {CG}:1-46); "
        f"no repetition penalty: {R} "
        "minigpt4/models/llava.py:145,241 (1.0; the pass-through is commented out)",
    ),
    family_layers={"instructblip": {"params": {"dola": IB_PENALTY}}},
)
