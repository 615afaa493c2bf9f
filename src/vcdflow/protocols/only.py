"""``only``: ONLY's protocol (Wan et al., ICCV 2025, arXiv 2507.00898; zifuwan/ONLY at 109bffe), RITUAL's
evaluation scripts (:mod:`vcdflow.protocols.ritual`) with ONLY's settings.

Families: LLaVA-1.5 (``eval_bench/pope_eval_llava.py``, ``chair_eval_llava.py``) and InstructBLIP
(``*_instructblip.py``). Not run: Qwen2.5-VL (the repo has Qwen-VL-Chat). Benchmarks: POPE,
CHAIR, MME (no AMBER: from ``unified``).

* LLaVA: RITUAL's ``Conversation`` = conv ``llava_v1`` ("curious human"), ``"<image>\\n{q}"`` with no
  suffix; ``image_processor.preprocess``. InstructBLIP: the raw question through LAVIS ``generate``
  (no ``top_k`` passed → transformers' top-k = 50).
* **Sampling** (``do_sample=True`` always), T = 1, top-p 1, ``top_k=None`` (LLaVA).
* POPE: ``max_new_tokens=8`` (LLaVA; InstructBLIP ``max_length=4``), seed 42, γ = **0.2**, β = 0.1;
  CHAIR: 500 images (an unseeded shuffle officially; seed 3407 here, ``chair_subset``), **128** tokens, seed 3407, γ = 0.25; MME: seed 5, γ = 0.25, **β = 0.4**.
  α₁ = 3 (collaborative), α₂ = 1 (contrastive), enhanced layer 0 everywhere.
* Parser: the ``recorder`` rule (OPERA's).
* No repetition penalty, InstructBLIP included: ONLY's InstructBLIP script passes
  ``repetition_penalty=1`` (``eval_bench/pope_eval_instructblip.py:254``), overriding LAVIS's 1.5.
"""

from __future__ import annotations

from ._shared import (
    CHAIR_PROMPT,
    IMPLICIT_TOP_K,
    INSTRUCTBLIP_RAW,
    LLAVA_V1_SYSTEM,
    NO_SYSTEM_IB,
    PROCESSOR_IB,
)
from .base import Protocol, S

R = "zifuwan/ONLY"
PL = f"{R} eval_bench/pope_eval_llava.py"
PI = f"{R} eval_bench/pope_eval_instructblip.py"
CL = f"{R} eval_bench/chair_eval_llava.py"
CI = f"{R} eval_bench/chair_eval_instructblip.py"
PSH = f"{R} eval_bench/scripts/pope_eval.sh"
CSH = f"{R} eval_bench/scripts/chair_eval.sh"
MSH = f"{R} experiments/cd_scripts/mme_eval.sh"
BLIP = f"{R} experiments/lavis/models/blip2_models/blip2_vicuna_instruct.py"


def _params(gamma: float, beta: float, src: str) -> dict:
    return {"only": S({"alpha_pos": 3.0, "alpha_neg": 1.0, "beta": beta, "gamma": gamma, "layer": 0}, src)}


PROTOCOL = Protocol(
    name="only",
    title="ONLY (Wan et al., ICCV 2025, arXiv 2507.00898)",
    families_run=("llava", "instructblip"),
    benchmarks_run=("pope", "chair", "mme"),
    common={
        "parser": S("only", f"{PL}:130-142,314 (recorder: OPERA's rule on the first line, out.split('\\n'))"),
        "temperature": S(1.0, f"{PL}:59,289"),
        "top_p": S(1.0, f"{PL}:60,290"),
        "top_k": S(None, f"{PL}:61,291 (top_k=None passed: no top-k warper)"),
        "max_new_tokens": S(8, f"{PL}:86"),
        "image_preprocess": S("processor", f"{R} eval_bench/pope_loader.py:55 (trans.preprocess: no pad)"),
        "seeds": S((42,), f"{PSH}:3"),
        "params": _params(
            0.2,
            0.1,
            f"{PSH}:31-35 (ritual_alpha_pos 3, ritual_alpha_neg 1, ritual_beta 0.1, "
            "js_gamma 0.2, enhance_layer_index 0)",
        ),
    },
    benchmark={
        "pope": {"prompt": S("{question}", f"{PL}:269 ('<image>\\n' + qs: no suffix, 'for opera? setting')")},
        "chair": {
            "prompt": S(CHAIR_PROMPT, f"{CL}:167"),
            "max_new_tokens": S(128, f"{CSH}:37 (500 images: {CSH}:36)"),
            "chair_subset": S(
                {"rule": "shuffle", "seed": 3407, "n": 500, "exact": False},
                f"{R} eval_bench/chair_loader.py:35-36 (random.shuffle of os.listdir) → "
                f"{CL}:153-159 (first {CSH}:36 = 500). Not reproducible exactly: {CL} never seeds "
                f"Python's random (its --seed, {CL}:72 ← {CSH}:3,44, is parsed and unused), so the "
                "official draw changes per run; the script's seed 3407 is used here, on sorted names",
            ),
            "seeds": S((3407,), f"{CSH}:3"),
            "params": _params(0.25, 0.1, f"{CSH}:30-34 (js_gamma 0.25, ritual_beta 0.1)"),
        },
        "mme": {
            "prompt": S(
                "{question}",
                f"UNVERIFIED: {R} experiments/eval/mme_llava.py not read (RITUAL's copy "
                "keeps the question without a suffix)",
            ),
            "seeds": S((5,), f"{MSH}:1"),
            "params": _params(0.25, 0.4, f"{MSH}:25-28 (ritual_beta 0.4, js_gamma 0.25)"),
        },
    },
    family={
        "llava": {
            "system": S(LLAVA_V1_SYSTEM, f"{PL}:257-267 (its own Conversation = llava_v1)"),
            "chat_template": S("llava_v1", f"{PL}:257-273 (SeparatorStyle.TWO, '<image>\\n' + qs)"),
        },
        "instructblip": {
            "system": NO_SYSTEM_IB,
            "chat_template": INSTRUCTBLIP_RAW,
            "image_preprocess": PROCESSOR_IB,
            "top_k": S(50, f"{BLIP}:440 (llm_model.generate without top_k): {IMPLICIT_TOP_K}"),
            "top_p": S(1.0, f"{PI}:63,253"),
        },
    },
    family_benchmark={
        ("instructblip", "pope"): {
            "prompt": S("{question}", f"{PI}:224 (prompt = qs)"),
            "max_new_tokens": S(4, f"{PI}:265 (max_length=4)"),
        },
        ("instructblip", "chair"): {
            "max_new_tokens": S(128, f"{CI}:216 (max_length=args.max_new_tokens); {CSH}:37")
        },
    },
    modes={"only": S("sample", f"{PL}:288 (do_sample=True)")},
    default_mode=S("sample", f"{PL}:288 (do_sample=True)"),
)
