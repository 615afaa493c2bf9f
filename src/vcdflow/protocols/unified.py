"""``unified``: one shared setting for every method — the fair comparison the field lacks.

The papers differ in everything around the method (system text, POPE suffix, answer parser,
top-k, token budget, image preprocessing), so their numbers cannot be compared with one another;
here only the method changes. The choices, and why:

* **LLaVA: conv ``llava_v1``** with its system text ("curious human") — what every official LLaVA
  contrastive-decoding script runs (VCD, ICD, RITUAL, AvisC, Self-Aug, LLaVA-Align, CODE). A run
  without it is no paper's protocol. InstructBLIP: its raw prompt (no system text, as LAVIS).
  Qwen2.5-VL: the model's own chat template (default system turn "You are a helpful assistant.").
* **One POPE suffix: ``"\\nAnswer the question using a single word or phrase."``** — LLaVA-1.5's
  own POPE evaluation prompt (the question file of ``scripts/v1_5/eval/pope.sh``), the format the
  model was instruction-tuned on for short answers; Self-Aug uses it too. One-word answers keep
  every parser's edge cases (negations in long sentences) out of the comparison.
* **The official POPE parser** (RUCAIBox/POPE ``evaluate.py`` = LLaVA ``eval_pope.py``): the one
  the benchmark defines, not a repo's variant (VCD's substring rule, OPERA's ``recorder``). On
  AMBER's yes/no task the same parser maps each answer to Yes/No (AMBER parser ``pope``; AMBER's
  own script compares the raw response, parser ``exact``); MME keeps its own official parser.
* **Sampling: T = 1, top-p = 1, top-k none** — the distribution every CD paper states, with no
  silent library top-k = 50 (several official InstructBLIP/ICD runs inherit it). Greedy is the
  default mode (deterministic); the grid runs sampling explicitly (``mode: sample``).
* **Image preprocessing: the processor's own** (resize + centre crop for CLIP, plain resize for
  InstructBLIP): one path for every family and the one the VCD line of repos uses.
* **Token budgets**: POPE/MME 16 (an answer word; ConVis's POPE budget), CHAIR 64 on
  "Please describe this image in detail." (RITUAL, HALC, ConVis, VASparse), AMBER 64 (AvisC).
* **Seeds 0–4**: five runs, as VCD reports mean ± std of five.
* **Method parameters**: each method's own defaults (its file documents their official source).
"""

from __future__ import annotations

from ._shared import CHAIR_PROMPT, LLAVA_V1_SRC, LLAVA_V1_SYSTEM, PROCESSOR_IB
from ..models.families import FAMILIES as _FAMILY_RECORDS
from .base import Protocol, S

#: the newer families (Qwen2-VL, LLaVA-NeXT, LLaVA-OneVision…): no paper fixed their setting
_OWN = {
    "system": S(None, "choice: the model's own chat template and its default system turn"),
    "chat_template": S("model", "choice: the model's own chat template"),
}
_LISTED = ("llava", "instructblip", "qwen2_5_vl", "llava_next")

LLAVA_POPE_SUFFIX_SRC = (
    "choice: LLaVA-1.5's own POPE prompt (haotian-liu/LLaVA scripts/v1_5/eval/pope.sh:5 "
    "question file llava_pope_test.jsonl, copied in yfzhang114/LLaVA-Align "
    "experiments/llava/eval/pope/llava_pope_test.jsonl:1)"
)

AMBER_PARSER_SRC = (
    "choice: the official POPE parser (RUCAIBox/POPE evaluate.py), as on POPE, maps each "
    "discriminative answer to Yes/No; AMBER's own scorer compares the raw response with 'Yes'/'No' "
    "(junyangwang0410/AMBER@534babf inference.py:189, 214; parser exact)"
)

PROTOCOL = Protocol(
    name="unified",
    title="vcdflow's unified protocol (one shared setting for every method)",
    families_run=tuple(_FAMILY_RECORDS),
    benchmarks_run=("pope", "chair", "mme", "amber"),
    common={
        "parser": S(
            "official", "choice: RUCAIBox/POPE evaluate.py = haotian-liu/LLaVA llava/eval/eval_pope.py"
        ),
        "temperature": S(1.0, "choice: T = 1 (every CD paper's sampling temperature)"),
        "top_p": S(1.0, "choice: top-p = 1"),
        "top_k": S(None, "choice: no top-k (no silent library default)"),
        "image_preprocess": S("processor", "choice: the processor's own resize/crop for every family"),
        "seeds": S((0, 1, 2, 3, 4), "choice: five runs (VCD reports mean ± std of five)"),
        "params": {},
    },
    benchmark={
        "pope": {
            "prompt": S(
                "{question}\nAnswer the question using a single word or phrase.", LLAVA_POPE_SUFFIX_SRC
            ),
            "max_new_tokens": S(16, "choice: an answer word (yejipark-m/ConVis run_scripts/pope_eval.py:85)"),
        },
        "chair": {
            "prompt": S(
                CHAIR_PROMPT,
                "choice: sangminwoo/RITUAL eval_bench/chair_eval_llava.py:177, "
                "yejipark-m/ConVis run_scripts/caption_generation.py:352",
            ),
            "max_new_tokens": S(64, "choice: sangminwoo/RITUAL eval_bench/scripts/chair_eval.sh:30"),
        },
        "mme": {
            "prompt": S("{question}", "choice: MME questions end in 'Please answer yes or no.' themselves"),
            "max_new_tokens": S(16, "choice: an answer word"),
        },
        "amber": {
            "prompt": S("{question}", "choice: AMBER's query file holds the full query"),
            "max_new_tokens": S(64, "choice: sangminwoo/AvisC eval_bench/scripts/amber_eval.sh:15"),
            "parser": S("pope", AMBER_PARSER_SRC),
        },
    },
    family={
        "llava": {"system": S(LLAVA_V1_SYSTEM, LLAVA_V1_SRC), "chat_template": S("llava_v1", LLAVA_V1_SRC)},
        "instructblip": {
            "system": S(None, "InstructBLIP has no system text"),
            "chat_template": S("instructblip_raw", "InstructBLIP's raw prompt (LAVIS generate)"),
            "image_preprocess": PROCESSOR_IB,
        },
        "qwen2_5_vl": {
            "system": S(None, "the model's own default system turn ('You are a helpful assistant.')"),
            "chat_template": S("model", "the model's own chat template"),
        },
        "llava_next": {
            "system": S(
                LLAVA_V1_SYSTEM,
                "LLaVA-NeXT (Vicuna) is evaluated in LLaVA's vicuna_v1 = llava_v1 "
                "conversation, as LLaVA-1.5: " + LLAVA_V1_SRC,
            ),
            "chat_template": S("llava_v1", LLAVA_V1_SRC),
        },
        **{name: _OWN for name in _FAMILY_RECORDS if name not in _LISTED},
    },
    default_mode=S("greedy", "choice: unified runs greedy unless mode: sample is asked for"),
    notes="greedy by default; sampling runs set mode: sample",
)
