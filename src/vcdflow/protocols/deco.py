"""``deco``: DeCo's protocol (Wang et al., ICLR 2025, arXiv 2410.11779; zjunlp/Deco at fee8d75).

Families: LLaVA-1.5 (``chair_llava.py``, ``pope_llava.py``, ``amber_llava.py``, ``mme_llava.py``).
Not run: InstructBLIP, Qwen2.5-VL (the README says the layer interval "can be adjusted according
to the model"; no other model's scripts). Benchmarks: POPE, CHAIR, MME, AMBER.

* Conv ``llava_v1``; ``"<image>\\n{q}"``. POPE: **no suffix** (VCD's is commented out),
  ``max_new_tokens=5``, the image through ``process_images`` (pad to square with the mean colour,
  LLaVA-1.5's ``image_aspect_ratio: pad``); CHAIR: "Please describe this image in detail.", 512
  tokens, 500 images — OPERA's released ids, which ``chair_llava.py`` reads (``chair_subset``); AMBER: the query, 1024 tokens; MME: the question's first line only
  (``qs.split('\\n')[0]`` drops "Please answer yes or no."), 1024 tokens. The other benchmarks use
  ``image_processor.preprocess`` (no pad).
* Decoding: CHAIR and POPE greedy (``--temperature -1`` → ``do_sample`` off); the AMBER and MME
  scripts default to sampling at T = 1, top-p 0.9 — a per-benchmark mode the protocol cannot
  express: greedy is its mode; top-p 0.9 is recorded for AMBER/MME sampling runs.
* DeCo: α = 0.6, candidate top-p 0.9, top-k 20, layers 20…28 (``range(20, 29)``): the method's
  defaults. Seed 42. ``pope_llava.py`` crashes as shipped (``args.aplha``).
* Parser: ``eval_tool/eval_pope.py`` — lower-case substring yes/no (parser ``"vcd"``).
"""

from __future__ import annotations

from ._shared import CHAIR_PROMPT, LLAVA_V1_SYSTEM
from .base import Protocol, S

R = "zjunlp/Deco"
CH = f"{R} chair_llava.py"
PO = f"{R} pope_llava.py"
AM = f"{R} amber_llava.py"
MM = f"{R} mme_llava.py"

PROTOCOL = Protocol(
    name="deco",
    title="DeCo (Wang et al., ICLR 2025, arXiv 2410.11779)",
    families_run=("llava",),
    benchmarks_run=("pope", "chair", "mme", "amber"),
    common={
        "parser": S(
            "deco",
            f"{PO}:28-33,142 (recorder: 'Yes' iff the word 'yes' occurs, else 'No') → "
            f"{R} eval_tool/eval_pope.py:33-49 (substring test on that word)",
        ),
        "temperature": S(1.0, f"{CH}:164,124 (--temperature -1: greedy, T unused)"),
        "top_p": S(1.0, f"{CH}:165 (top_p None)"),
        "top_k": S(None, f"{CH}:166 (top_k None)"),
        "image_preprocess": S("processor", f"{CH}:114 (image_processor.preprocess: no pad)"),
        "seeds": S((42,), f"{CH}:176,179 (set_seed(42))"),
        "params": {
            "deco": S(
                {},
                f"{CH}:171-175 (alpha 0.6, threshold_top_p 0.9, threshold_top_k 20, layers "
                "range(20, 29): the method's defaults)",
            )
        },
    },
    benchmark={
        "pope": {
            "prompt": S("{question}", f"{PO}:73,92 (the VCD suffix is commented out)"),
            "max_new_tokens": S(5, f"{PO}:118"),
            "image_preprocess": S(
                "pad_square_mean",
                f"{PO}:99 (process_images → expand2square with the mean; "
                "image_aspect_ratio 'pad' of llava-v1.5, UNVERIFIED here: "
                "hub config)",
            ),
        },
        "chair": {
            "prompt": S(CHAIR_PROMPT, f"{CH}:99 (500 images: {CH}:95)"),
            "max_new_tokens": S(512, f"{CH}:168"),
            "chair_subset": S(
                {"ids": "opera_llava-1.5"},
                f"{CH}:94-98 (reads ../opera_log/llava-1.5/ours.jsonl: OPERA's released 500 "
                "ids, shikiw/OPERA@61426ef log/chair_eval_results/llava-1.5/ours.jsonl)",
            ),
        },
        "amber": {
            "prompt": S("{question}", f"{AM}:98 (line['query'])"),
            "max_new_tokens": S(1024, f"{AM}:172"),
            "top_p": S(0.9, f"{AM}:169 (the AMBER script samples at T = 1, top-p 0.9)"),
        },
        "mme": {
            "prompt": S(
                "{question}",
                f"{MM}:110 — NOT exact: the script keeps the question's first line "
                "(qs.split('\\n')[0]), dropping 'Please answer yes or no.'",
            ),
            "max_new_tokens": S(1024, f"{MM}:138"),
            "top_p": S(0.9, f"{MM}:183 (the MME script samples at T = 1, top-p 0.9)"),
        },
    },
    family={
        "llava": {
            "system": S(LLAVA_V1_SYSTEM, f"{CH}:161 (--conv-mode llava_v1); {PO}:86"),
            "chat_template": S("llava_v1", f"{CH}:103-110 ('<image>\\n' + qs, conv.get_prompt())"),
        },
    },
    modes={"deco": S("greedy", f"{CH}:164,124; {PO}:158,114 (--temperature -1 → do_sample False)")},
    default_mode=S("greedy", f"{CH}:164 (--temperature -1)"),
)
