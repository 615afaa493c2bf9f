"""``cd_rethink``: the protocol of "The Mirage of Performance Gains" (Yin, Si, Wang, arXiv 2504.10020;
ustc-hyin/cd_rethink at 4303279) — its controls PBA, OLM and APC-only, and VCD / greedy / sampling
in its setting.

Families: LLaVA-1.5 (``inference/pope_infer_*.py``, ``liuhaotian/llava-v1.5-7b``; the figures also
show 13B and Qwen-VL-Chat, not Qwen2.5-VL). Benchmarks: POPE only (COCO, A-OKVQA, GQA); CHAIR,
MME and AMBER come from ``unified``.

* Conv ``vicuna_v1`` (every script passes ``--conv-mode vicuna_v1``): the **"curious user"**
  system text in the ``llava_v1`` layout; user turn ``"<image>\\n{q} Answer the question using a
  single word or phrase."``. PBA appends ``" Answer yes whenever possible."`` to that turn (the
  ``pba`` method's ``suffix``); OLM and APC use the plain prompt.
* Greedy runs pass ``--temperature 0``, sampling runs ``--temperature 1``; ``top_p`` None, and no
  ``top_k`` is passed, so transformers 4.31's default **top-k = 50** applies when sampling (the
  patched samplers call ``logits_warper``, ``spurious_utils/apc_utils.py:162,169``).
  ``max_new_tokens=1024``; ``image_processor.preprocess`` (no pad).
* Parser: ``eval/pope_eval_base.py`` — lower-case substring yes/no (parser ``"vcd"``).
* Modes: PBA and OLM greedy, APC-only sampling (``scripts/pope_infer_spurious.sh``); VCD both
  (greedy is the README's main table, ``scripts/pope_infer_cd.sh``). Their VCD: noise step **900**,
  α = 1, **β = 0.2** (the sampler defaults); APC-only: **β = 0.2**.
* Seeds: the scripts set none (torch's unseeded RNG): recorded as UNVERIFIED (0).
"""

from __future__ import annotations

from ._shared import IMPLICIT_TOP_K, VICUNA_V1_SYSTEM
from .base import Protocol, S

R = "ustc-hyin/cd_rethink"
BASE = f"{R} inference/pope_infer_base.py"
CD = f"{R} inference/pope_infer_cd.py"
PBA = f"{R} inference/pope_infer_pba.py"
OLM = f"{R} inference/pope_infer_olm.py"
APC = f"{R} inference/pope_infer_apc.py"
SPUR = f"{R} scripts/pope_infer_spurious.sh"
SUFFIX = " Answer the question using a single word or phrase."

PROTOCOL = Protocol(
    name="cd_rethink",
    title="cd_rethink controls (Yin, Si, Wang, arXiv 2504.10020)",
    families_run=("llava",),
    benchmarks_run=("pope",),
    common={
        "parser": S(
            "vcd", f"{R} eval/pope_eval_base.py:46-58 (lower-case; 'yes' in answer / 'no' in answer)"
        ),
        "temperature": S(1.0, f"{R} scripts/pope_infer_base.sh:24 (--temperature 1; greedy runs :12 pass 0)"),
        "top_p": S(1.0, f"{BASE}:110,73 (--top_p None: no top-p warper)"),
        "top_k": S(50, f"{BASE}:68-77 passes no top_k: {IMPLICIT_TOP_K}"),
        "max_new_tokens": S(1024, f"{BASE}:76; {CD}:113; {PBA}:76; {OLM}:84; {APC}:85"),
        "image_preprocess": S("processor", f"{BASE}:61 (image_processor.preprocess: no pad)"),
        "seeds": S((0,), "UNVERIFIED: the scripts set no seed (scripts/pope_infer_*.sh pass none)"),
        "params": {
            "vcd": S(
                {"alpha": 1.0, "beta": 0.2, "noise_step": 900},
                f"{CD}:159 (--noise-step 900); {R} inference/cd_utils/vcd_utils.py:165-166 (cd_alpha 1, "
                f"cd_beta 0.2 defaults; the script passes neither)",
            ),
            "vcd_legacy": S(
                {"alpha": 1.0, "beta": 0.2, "noise_step": 900},
                f"{CD}:159; {R} inference/cd_utils/vcd_utils.py:165-166",
            ),
            "apc": S(
                {"beta": 0.2},
                f"{R} inference/spurious_utils/apc_utils.py:147-158 (α 1 against an identical "
                f"branch: s = ℓ; cd_beta 0.2 default)",
            ),
            "pba": S({"suffix": " Answer yes whenever possible."}, f"{PBA}:51"),
            "olm": S(
                {"yes_word": "Yes", "no_word": "No", "min_sum": 0.2, "max_diff": 0.5},
                f"{R} inference/spurious_utils/olm_utils.py:124-139 (YES_INDEX 3869 '▁Yes', NO_INDEX 1939 "
                f"'▁No'; sum > 0.2, |diff| < 0.5)",
            ),
        },
    },
    benchmark={
        "pope": {
            "prompt": S(
                "{question}" + SUFFIX,
                f"{BASE}:51; {CD}:67; {OLM}:59; {APC}:60 ({PBA}:51 adds "
                "' Answer yes whenever possible.': the pba method's suffix)",
            )
        },
    },
    family={
        "llava": {
            "system": S(
                VICUNA_V1_SYSTEM, f"{SPUR}:15 (--conv-mode vicuna_v1) → {R} llava/conversation.py:252-262"
            ),
            "chat_template": S(
                "llava_v1",
                f"{BASE}:55-65 (DEFAULT_IMAGE_TOKEN + '\\n' + qs; vicuna_v1 is "
                "SeparatorStyle.TWO, the llava_v1 layout)",
            ),
        },
    },
    modes={
        "pba": S("greedy", f"{SPUR}:14 (--temperature 0)"),
        "olm": S("greedy", f"{SPUR}:30-32 (--temperature 0 --use-olm)"),
        "apc": S("sample", f"{SPUR}:46-48 (--temperature 1 --use-apc)"),
        "vcd": S(
            "greedy", f"{R} scripts/pope_infer_cd.sh:13 (greedy; the sampling run :27 is the other table)"
        ),
    },
    default_mode=S("greedy", f"{R} scripts/pope_infer_base.sh:12 (the README's greedy table; :24 samples)"),
)
