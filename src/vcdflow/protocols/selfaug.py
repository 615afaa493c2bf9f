"""``selfaug``: Self-Augmented VCD's protocol (Im, Ali, Gupta, ICLR 2026, arXiv 2510.13315;
eunwooim/selfaug at ff3c77c).

Families: LLaVA-1.5 (``src/models/llava_model.py``) and InstructBLIP (``instructblip_model.py``).
Not run: Qwen2.5-VL (the repo has Qwen-VL and Qwen3-VL). Benchmarks: POPE and MME (no CHAIR,
no AMBER: from ``unified``).

* POPE: the question + ``"\\nAnswer the question using a single word or phrase"`` (no final
  period; MME's suffix has one). LLaVA: conv ``llava_v1``; image_processor.preprocess (no pad).
* Sampling: ``GenerationConfig(max_new_tokens=768, temperature=1.0, top_p=1, top_k=None)``
  (LLaVA). InstructBLIP goes through LAVIS ``generate`` with top-p 1 and no ``top_k`` (→ 50).
* α = 1, β = 0.1, τ = 0.5, noise 500, seeds 11–51 (``src/script/pope.bash``). **Crop ratio 2.5**:
  ``pope.bash`` sets ``crop_ratio=2.0`` but ``generate_sentence`` calls ``apply_augmentation``
  without it, so the function default 2.5 applies; mask ratio 2 likewise.
* SAS runs text-only and greedy on the raw question (no suffix), in the same conversation
  template (so it gets the LLaVA system text too). On InstructBLIP the official SAS call also sets
  ``repetition_penalty=1.1`` (``src/models/instructblip_model.py:126-131``): not modelled here.
* Parser: ``src/eval/eval_pope.py`` = VCD's substring rule (parser ``"vcd"``).
"""

from __future__ import annotations

from ._shared import IMPLICIT_TOP_K, INSTRUCTBLIP_RAW, LLAVA_V1_SYSTEM, NO_SYSTEM_IB
from .base import Protocol, S

R = "eunwooim/selfaug"
LL = f"{R} src/models/llava_model.py"
IB = f"{R} src/models/instructblip_model.py"
BASE = f"{R} src/models/base_models.py"
BASH = f"{R} src/script/pope.bash"
SUFFIX = "\nAnswer the question using a single word or phrase"

PROTOCOL = Protocol(
    name="selfaug",
    title="Self-Augmented VCD (Im, Ali, Gupta, ICLR 2026, arXiv 2510.13315)",
    families_run=("llava", "instructblip"),
    benchmarks_run=("pope", "mme"),
    common={
        "parser": S("vcd", f"{R} src/eval/eval_pope.py:56-70 (lower-case, substring yes/no, as VCD)"),
        "temperature": S(1.0, f"{BASE}:36"),
        "top_p": S(1.0, f"{BASE}:37"),
        "top_k": S(None, f"{BASE}:38 (top_k=None)"),
        "max_new_tokens": S(768, f"{BASE}:35"),
        "image_preprocess": S("processor", f"{LL}:86-89 (image_processor.preprocess: no pad)"),
        "seeds": S((11, 21, 31, 41, 51), f"{BASH}:14"),
        "params": {
            "selfaug": S(
                {
                    "alpha": 1.0,
                    "beta": 0.1,
                    "tau": 0.5,
                    "crop_ratio": 2.5,
                    "mask_ratio": 2.0,
                    "noise_step": 500,
                    "sas_strip_suffix": SUFFIX,
                },
                f"{BASH}:8-10,13 (α, β, τ, noise); crop/mask: {BASE}:86-87 defaults 2.5/2 — "
                f"{BASH}:11-12 set 2.0 but {LL}:106-117 never pass them; SAS reads the raw "
                f"question: {LL}:73,110 (get_self_aug(original_query))",
            )
        },
    },
    benchmark={
        "pope": {"prompt": S("{question}" + SUFFIX, f"{R} src/eval/pope.py:57 (append_txt); {LL}:74-75")},
        "mme": {
            "prompt": S(
                "{question}\nAnswer the question using a single word or phrase.",
                f"{R} src/eval/mme.py:55 (append_txt; with a final period, unlike POPE's)",
            )
        },
    },
    family={
        "llava": {
            "system": S(LLAVA_V1_SYSTEM, f"{LL}:91-94 (conv_templates['llava_v1'])"),
            "chat_template": S("llava_v1", f"{LL}:80-94"),
        },
        "instructblip": {
            "system": NO_SYSTEM_IB,
            "chat_template": INSTRUCTBLIP_RAW,
            "image_preprocess": S("processor", f"{IB}:34,61-63 (LAVIS vis_processors['eval'])"),
            "top_k": S(50, f"{IB}:115-124 pass no top_k: {IMPLICIT_TOP_K}"),
            "top_p": S(1.0, f"{IB}:120"),
            "max_new_tokens": S(
                256,
                "UNVERIFIED: Self-Aug uses the LAVIS package; its generate "
                "defaults max_length=256 in the copy vendored by DAMO-NLP-SG/VCD",
            ),
        },
    },
    family_benchmark={
        ("instructblip", "pope"): {
            "prompt": S("{question}" + SUFFIX, f"{R} src/eval/pope.py:57; {IB}:53-56")
        },
    },
)
