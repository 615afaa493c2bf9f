"""``avisc``: AvisC's protocol (Woo et al., arXiv 2405.17820; sangminwoo/AvisC at 772eba4).

Families: LLaVA-1.5 (``eval_bench/pope_eval_llavab.py``, ``amber_eval_llava.py``) and InstructBLIP
(``pope_eval_instructblipb.py``). Not run: Qwen2.5-VL (the scripts list Qwen-VL). Benchmarks:
POPE, MME, AMBER — no CHAIR (its prompt comes from ``unified``).

* LLaVA: conv ``llava_v1``; user turn ``"<image>\\n{q}"``, **no suffix**; sampling T = 1, top-p = 1,
  ``top_k=None`` (no top-k); ``max_token`` 64. InstructBLIP: raw question, LAVIS ``generate`` with
  no ``top_k`` (→ 50), ``max_length=64``.
* α: the paper's 2.5 (LLaVA) and 3 (InstructBLIP), quoted by the authors in AvisC issue #12 and
  ``amber_eval.sh`` (``cd_alpha=2.5``); ``pope_eval_batch.sh`` passes ``cd_alpha=1.0`` — the
  script is incomplete (``$conv``, ``$batch_size``, ``$use_cd`` are never set), so the paper's
  values are used. λ = 1 (``lamb=1.0`` in both scripts; the argparse defaults are 0.99 / 0.95),
  P = 0.5, masking ``zeros``, β = 0.1. Seed 42. Parser: the OPERA-style ``recorder``.
"""

from __future__ import annotations

from ._shared import IMPLICIT_TOP_K, INSTRUCTBLIP_RAW, LLAVA_V1_SYSTEM, NO_SYSTEM_IB, PROCESSOR_IB
from .base import Protocol, S

R = "sangminwoo/AvisC"
PL = f"{R} eval_bench/pope_eval_llavab.py"
PI = f"{R} eval_bench/pope_eval_instructblipb.py"
BATCH = f"{R} eval_bench/scripts/pope_eval_batch.sh"
AMBER = f"{R} eval_bench/scripts/amber_eval.sh"
BLIP = f"{R} experiments/lavis/models/blip2_models/blip2_vicuna_instruct.py"

PROTOCOL = Protocol(
    name="avisc",
    title="AvisC (Woo et al., arXiv 2405.17820)",
    families_run=("llava", "instructblip"),
    benchmarks_run=("pope", "mme", "amber"),
    common={
        "parser": S("opera", f"{PL}:131-142 (recorder: OPERA's rule)"),
        "temperature": S(1.0, f"{PL}:61"),
        "top_p": S(1.0, f"{PL}:62"),
        "top_k": S(None, f"{PL}:63,271 (top_k=None passed: no top-k warper)"),
        "max_new_tokens": S(64, f"{PL}:83,272; {BATCH}:15; {AMBER}:15"),
        "image_preprocess": S("processor", f"{R} eval_bench/pope_loader.py:44 (trans.preprocess: no pad)"),
        "seeds": S((42,), f"{BATCH}:6; {AMBER}:6"),
        "params": {
            "avisc": S(
                {"alpha": 2.5, "beta": 0.1, "layer_gamma": 0.5, "lamb": 1.0, "masking_scheme": "zeros"},
                f"α 2.5: the paper's LLaVA value (§4.1, quoted in {R} issue #12; {AMBER}:17 "
                f"cd_alpha=2.5; {BATCH}:17 passes 1.0); "
                f"{BATCH}:11-13,18 (layer_gamma 0.5, zeros, lamb 1.0, cd_beta 0.1)",
            )
        },
    },
    benchmark={
        "pope": {"prompt": S("{question}", f"{PL}:219,225 ('<image>\\n' + q, no suffix)")},
        "mme": {
            "prompt": S(
                "{question}",
                f"{R} experiments/eval/mme_llava.py:107-120 (first line of the question, no suffix)",
            )
        },
        "amber": {"prompt": S("{question}", f"{R} eval_bench/amber_eval_llava.py:175,186,192")},
    },
    family={
        "llava": {
            "system": S(LLAVA_V1_SYSTEM, f"{PL}:58,224 (conv llava_v1)"),
            "chat_template": S("llava_v1", f"{PL}:216-227"),
        },
        "instructblip": {
            "system": NO_SYSTEM_IB,
            "chat_template": INSTRUCTBLIP_RAW,
            "image_preprocess": PROCESSOR_IB,
            "top_k": S(50, f"{PI}:214-227 / {BLIP}:395-418 pass no top_k: {IMPLICIT_TOP_K}"),
            "top_p": S(1.0, f"{PI}:63,218"),
            "max_new_tokens": S(64, f"{PI}:84,226 (max_length=args.max_token)"),
            "params": {
                "avisc": S(
                    {"alpha": 3.0, "beta": 0.1, "layer_gamma": 0.5, "lamb": 1.0, "masking_scheme": "zeros"},
                    f"α 3: the paper's InstructBLIP value (§4.1, quoted in "
                    f"{R} issue #12); lamb {BATCH}:13 (argparse default {PI}:82 is 0.95)",
                )
            },
        },
    },
    family_benchmark={
        ("instructblip", "pope"): {"prompt": S("{question}", f"{PI}:201,215 (prompt = qs)")},
    },
)
