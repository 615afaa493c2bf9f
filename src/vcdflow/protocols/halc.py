"""``halc``: HALC's protocol (Chen et al., ICML 2024, arXiv 2403.00425; BillChan226/HALC at 12ea8b5) —
and the HALC harness factory its forks share (:mod:`vcdflow.protocols.dola` runs DoLa in the
VASparse fork of it, :mod:`vcdflow.protocols.vasparse` VASparse; ConVis is another fork).

The harness (``run_scripts/caption_generation.py`` for CHAIR, ``pope_eval.py``): OPERA's
templates (LLaVA-1.5 ``halc_llava`` with the "curious user" system text, InstructBLIP
``"<ImageHere><question>"``), the ``clip_image_eval`` / ``blip2_image_eval`` processors.

* CHAIR: "Please describe this image in detail.", ``max_new_tokens=64``, ``-n 100`` images by
  default (the papers use 500), ``--seed 0`` (the configs' ``run.seed`` 42 is not used:
  ``setup_seeds(cfg, args.seed)``); every caption sentence containing "unk" is removed afterwards
  (not modelled here).
* POPE (``pope_eval.py``): **NOT the POPE files' questions** — the script builds its own from the
  images' ground-truth objects with ``--question_template "Find evidence first and then answer: is
  there a {} in the image?"``; here the benchmark's question is asked as is (``"{question}"``).
  ``max_new_tokens=16``, the ``recorder`` parser.
* HALC (``-d halc``): DoLa-greedy token choice with beams, ``-b 3``, k = 4 candidates, expand
  ratio 0.6, DINO box threshold 0.45: the method's defaults. Decoding has no sampling.

Families: LLaVA-1.5 and InstructBLIP (also MiniGPT-4, mPLUG-Owl2). Not run: Qwen2.5-VL.
"""

from __future__ import annotations

from ._shared import CHAIR_PROMPT, harness_instructblip, harness_llava
from .base import Protocol, S


def halc_harness(name: str, title: str, repo: str, *, cg: dict, pe: dict, method: str, params: S,
                 families: tuple[str, ...] = ("llava", "instructblip"),
                 benchmarks: tuple[str, ...] = ("chair", "pope"), cg_path: str = "run_scripts/caption_generation.py",
                 notes: str = "") -> Protocol:
    """A protocol in the HALC harness of ``repo``; ``cg`` / ``pe`` give the line numbers (as text)
    in its caption (CHAIR) and POPE scripts: keys ``template``, ``ib_template``, ``beam``, ``seed``,
    ``max``, ``n``, ``prompt`` (CHAIR), and ``qtemplate``, ``recorder`` (POPE)."""
    CG = f"{repo} {cg_path}"
    PE = f"{repo} run_scripts/pope_eval.py"
    YAML = f"{repo} eval_configs/llava-1.5_eval.yaml"
    benchmark = {
        "chair": {"prompt": S(CHAIR_PROMPT, f"{CG}:{cg['prompt']} (-n {cg['n_value']} images: {CG}:{cg['n']})"),
                  "max_new_tokens": S(64, f"{CG}:{cg['max']}")},
    }
    if "pope" in benchmarks:
        benchmark["pope"] = {"prompt": S("{question}", f"{PE}:{pe['qtemplate']} — NOT exact: the script builds its "
                                                       "own questions from ground-truth objects with the template "
                                                       "'Find evidence first and then answer: is there a {} in the "
                                                       "image?'; here the benchmark's question as is"),
                             "max_new_tokens": S(16, f"{PE}:{pe['max']}")}
    return Protocol(
        name=name, title=title, families_run=families, benchmarks_run=benchmarks,
        common={
            "parser": S("opera", f"{PE}:{pe['recorder']} (recorder: OPERA's rule)"),
            "temperature": S(1.0, f"{CG}:{cg['beam']} (no --sample: T unused)"),
            "top_p": S(1.0, f"{CG}:{cg['beam']} (no sampling: no warpers)"),
            "top_k": S(None, f"{CG}:{cg['beam']} (no sampling: no warpers)"),
            "seeds": S((0,), f"{CG}:{cg['seed']} (--seed 0 → setup_seeds(cfg, args.seed))"),
            "params": {method: params},
        },
        benchmark=benchmark,
        family={
            "llava": harness_llava(f"{YAML}:13 (system_message)",
                                   f"{CG}:{cg['template']} ('USER: <ImageHere> <question> ASSISTANT:'); {repo} "
                                   f"minigpt4/models/llava.py:{cg['sysjoin']} (system_message + prompt: no separator)",
                                   f"{YAML}:21 (clip_image_eval)"),
            "instructblip": harness_instructblip(f"{CG}:{cg['ib_template']} ('<ImageHere><question>')",
                                                 f"{repo} eval_configs/instructblip_eval.yaml (blip2_image_eval)"),
        },
        modes={method: S("greedy", f"{CG}:{cg['beam']} (-b {cg['beam_value']}, no --sample: the method's own "
                                   "token choice / beams, no sampling)")},
        default_mode=S("greedy", f"{CG}:{cg['beam']} (no --sample)"),
        notes=notes,
    )


R = "BillChan226/HALC"

PROTOCOL = halc_harness(
    "halc", "HALC (Chen et al., ICML 2024, arXiv 2403.00425)", R, method="halc",
    cg={"template": 63, "ib_template": 60, "beam": 111, "beam_value": 3, "seed": 117, "max": 119, "n": 118,
        "n_value": 100, "prompt": 453, "sysjoin": 183},
    pe={"qtemplate": "192-200", "max": 105, "recorder": 249},
    params=S({}, f"{R} run_scripts/caption_generation.py:111 (-b 3), :128-133 (-k 4), :148-153 (expand ratio 0.6), "
                 ":175 (box threshold 0.45): the method's defaults"),
)
