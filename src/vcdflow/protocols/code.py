"""``code``: CODE's protocol (Kim et al., arXiv 2406.01920; IVY-LVLM/CODE at 31adf82).

Families: LLaVA-1.5 (``models/llava-model-hf.py``, the llava-hf checkpoints through their HF
processor). Not run: InstructBLIP, Qwen2.5-VL (the repo's others are LLaVA-NeXT, InternVL,
Emu2, Yi-VL, InternLM-XC2). Benchmarks: POPE and CHAIR (no MME, no AMBER: from ``unified``).

* Conv ``llava_v1``; the user turn is ``"<image>\\n" + text + " " + response prompt`` where the
  response prompt is ``"Answer the question using a single word or phrase."`` for POPE and ``""``
  for CHAIR — so the CHAIR turn ends in a **space** ("…in detail. " + " ASSISTANT:": two
  spaces). The self-description query gets no response prompt.
* Greedy (``temperature 0``, ``do_sample`` off, one beam), ``max_new_tokens=2048``; description
  up to 512 tokens. a = ``cd_alpha`` = 0.7. The llava-hf processor (resize + centre crop).
* Parser: ``benchmarks/pope.py:31-41`` — POPE's official rule on the **lower-cased** answer
  ("NO" counts as no there); here the official parser (case-sensitive).
"""

from __future__ import annotations

from ._shared import CHAIR_PROMPT, LLAVA_V1_SYSTEM
from .base import Protocol, S

R = "IVY-LVLM/CODE"
HF = f"{R} models/llava-model-hf.py"
CONV = f"{R} models/llava/conversation.py"
EV = f"{R} evaluate.py"

PROTOCOL = Protocol(
    name="code",
    title="CODE (Kim et al., arXiv 2406.01920)",
    families_run=("llava",),
    benchmarks_run=("pope", "chair"),
    common={
        "parser": S(
            "official", f"{R} benchmarks/pope.py:31-41 (official rule after .lower(); ours is case-sensitive)"
        ),
        "temperature": S(1.0, f"{EV}:95-97 (temperature 0 = greedy; T irrelevant)"),
        "top_p": S(1.0, f"{EV}:110-113"),
        "top_k": S(None, f"{EV}:105-107 (do_sample off: no warpers)"),
        "max_new_tokens": S(2048, f"{EV}:89-93"),
        "image_preprocess": S("processor", f"{HF}:18,73 (AutoProcessor of llava-hf: resize + centre crop)"),
        "seeds": S((0,), "UNVERIFIED: greedy, evaluate.py sets no seed"),
        "params": {"code": S({"alpha": 0.7, "description_max_new_tokens": 512}, f"{EV}:125-129; {HF}:40-48")},
    },
    benchmark={
        "pope": {
            "prompt": S(
                "{question} Answer the question using a single word or phrase.",
                f"{HF}:53,60 + {CONV}:109-111",
            )
        },
        "chair": {
            "prompt": S(
                CHAIR_PROMPT + " ",
                f"{HF}:128-129 + :60 with {CONV}:114-115 (response prompt '': a trailing space)",
            )
        },
    },
    family={
        "llava": {
            "system": S(LLAVA_V1_SYSTEM, f"{CONV}:344-350 (conv llava_v1, {HF}:16 conv_mode)"),
            "chat_template": S("llava_v1", f"{HF}:52-64"),
        },
    },
    modes={"code": S("greedy", f"{EV}:94-108 (temperature 0, num_beams 1, no do_sample)")},
)
