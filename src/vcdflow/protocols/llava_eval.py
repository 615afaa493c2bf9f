"""``llava_eval``: LLaVA-1.5's own evaluation protocol (haotian-liu/LLaVA at c121f04) — the
baseline setting of LLaVA's paper, and of cd_rethink (conv ``vicuna_v1``, greedy). Not a CD paper:
no method maps to it in ``PAPER_OF``; name it to run any method in LLaVA's own setting.

* Conv ``vicuna_v1`` (``scripts/v1_5/eval/pope.sh --conv-mode vicuna_v1``): the **"curious user"**
  system text, same ``SYSTEM USER: <image>\\n{q} ASSISTANT:`` layout as ``llava_v1``.
* POPE: the question + ``"\\nAnswer the question using a single word or phrase."``
  (``llava_pope_test.jsonl``); greedy (``--temperature 0``); ``max_new_tokens`` 128; the official
  parser (``llava/eval/eval_pope.py``).
* Images **padded to a square with the mean colour** (``process_images`` with the checkpoint's
  ``image_aspect_ratio: pad``) — the only protocol here that pads.
* Families: LLaVA only. Benchmarks: POPE (LLaVA's MME file rewrites MME's own suffix; CHAIR and
  AMBER are not in its evaluation suite): the others come from ``unified``.
"""

from __future__ import annotations

from ._shared import VICUNA_V1_SYSTEM
from .base import Protocol, S

R = "haotian-liu/LLaVA"
LOADER = f"{R} llava/eval/model_vqa_loader.py"

PROTOCOL = Protocol(
    name="llava_eval",
    title="LLaVA-1.5's own evaluation (Liu et al., 2023; haotian-liu/LLaVA scripts/v1_5/eval)",
    families_run=("llava",),
    benchmarks_run=("pope",),
    common={
        "parser": S("official", f"{R} llava/eval/eval_pope.py:11-20 (POPE's official rule)"),
        "temperature": S(1.0, f"{R} scripts/v1_5/eval/pope.sh:8 (--temperature 0 → greedy, {LOADER}:109)"),
        "top_p": S(1.0, f"{LOADER}:139 (top_p None)"),
        "top_k": S(None, "greedy: no warpers"),
        "max_new_tokens": S(128, f"{LOADER}:141"),
        "image_preprocess": S(
            "pad_square_mean",
            f"{LOADER}:54 → {R} llava/mm_utils.py:169-172 (expand2square with "
            "the processor's mean; image_aspect_ratio 'pad' of the LLaVA-1.5 "
            "checkpoints, UNVERIFIED here: hub config)",
        ),
        "seeds": S((0,), "greedy: the seed does not matter"),
        "params": {},
    },
    benchmark={
        "pope": {
            "prompt": S(
                "{question}\nAnswer the question using a single word or phrase.",
                f"{R} scripts/v1_5/eval/pope.sh:5 (llava_pope_test.jsonl; copy: yfzhang114/LLaVA-Align "
                "experiments/llava/eval/pope/llava_pope_test.jsonl:1)",
            )
        },
    },
    family={
        "llava": {
            "system": S(
                VICUNA_V1_SYSTEM,
                f"{R} scripts/v1_5/eval/pope.sh:9 (--conv-mode vicuna_v1) → "
                f"{R} llava/conversation.py:242-252",
            ),
            "chat_template": S("llava_v1", f"{LOADER}:43-51 (SeparatorStyle.TWO, as llava_v1)"),
        },
    },
    default_mode=S("greedy", f"{R} scripts/v1_5/eval/pope.sh:8 (--temperature 0)"),
)
