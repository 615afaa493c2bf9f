"""``sid``: SID's protocol (Huo et al., ICLR 2025, arXiv 2408.02032; huofushuo/SID at 127dd41), OPERA's
harness (:mod:`vcdflow.protocols.opera`) with SID's sampler.

Families: LLaVA-1.5 and InstructBLIP (``pope_eval.py`` ``INSTRUCTION_TEMPLATE``). Not run:
Qwen2.5-VL. Benchmarks: POPE (``pope_eval.py``) and CHAIR (``eval_utils/chair_eval.py``).

* Templates as OPERA's (``halc_llava`` / ``instructblip_raw``), seed 42 (``run.seed``).
* POPE: bare question, ``max_new_tokens=10``, ``recorder`` parser; CT²S keeps **K = 100** image
  tokens chosen at layer 2 (``--fast-v-attention-rank 100 --fast-v-agg-layer 2``).
* CHAIR: "Please describe this image in detail.", 512 tokens, 500 images (seed-42 shuffle, not
  reproducible exactly: ``chair_subset``), **K = 50**. POPE random = head, popular and
  adversarial = e3e3926 (``pope_version``).
* Decoding: ``--sample --sample-greedy`` (POPE defaults): the patched sampler takes the
  **argmax of the un-masked contrast** s = (1+α)ℓ − αℓ_SID with **α = 0.5** (the sampler's default;
  no script passes ``cd_alpha``) — greedy, no APC; β = 0.1 only in sampling mode. CHAIR's
  ``--sample`` defaults to False (plain greedy unless passed): the protocol runs SID there too.
* No repetition penalty, InstructBLIP included: SID's LAVIS ``generate`` passes the default
  ``repetition_penalty=1.5`` on, but its ``--sample-greedy`` path takes the argmax of the contrast
  before any logits processor runs (``vcd_sample.py:180,190-191``), so the penalty never acts.
"""

from __future__ import annotations

from ._shared import CHAIR_PROMPT, harness_instructblip, harness_llava
from .base import Protocol, S

R = "huofushuo/SID"
PE = f"{R} pope_eval.py"
CE = f"{R} eval_utils/chair_eval.py"
VS = f"{R} vcd_sample.py"
YAML = f"{R} eval_configs/llava-1.5_eval.yaml"

PROTOCOL = Protocol(
    name="sid",
    title="SID (Huo et al., ICLR 2025, arXiv 2408.02032)",
    families_run=("llava", "instructblip"),
    benchmarks_run=("pope", "chair"),
    common={
        "parser": S("opera", f"{PE}:160 (recorder: OPERA's rule)"),
        "temperature": S(1.0, f"{PE}:312-330 (no temperature passed: 1)"),
        "top_p": S(1.0, f"{PE}:312-330 (no top_p passed)"),
        "top_k": S(None, f"{VS}:190-191 (greedy argmax: no warpers)"),
        "seeds": S((42,), f"{YAML}:33 (run.seed) → {PE}:113-118"),
        "params": {
            "sid": S(
                {"alpha": 0.5, "beta": 0.1},
                f"{VS}:168-169 (cd_alpha 0.5, cd_beta 0.1 defaults; {PE}:329-330 pass neither)",
            )
        },
    },
    benchmark={
        "pope": {
            "prompt": S("{question}", f"{PE}:280-285 (template.replace('<question>', q))"),
            "max_new_tokens": S(10, f"{PE}:320"),
            "pope_version": S(
                {"random": "head", "popular": "e3e3926", "adversarial": "e3e3926"},
                f"{PE}:51-55,202 ({R}@127dd41 pope/coco/coco_pope_*.json: popular and adversarial "
                "md5-equal to e3e3926's; random holds POPE head's 3,000 questions, other bytes)",
            ),
            "params": {
                "sid": S(
                    {"alpha": 0.5, "beta": 0.1, "keep": 100, "layer": 2},
                    f"{VS}:168-169; {PE}:91,93 (fast-v-attention-rank 100, agg layer 2)",
                )
            },
        },
        "chair": {
            "prompt": S(CHAIR_PROMPT, f"{CE}:211-213"),
            "max_new_tokens": S(512, f"{CE}:248 (500 images: {CE}:102)"),
            "chair_subset": S(
                {"rule": "shuffle", "seed": 42, "n": 500, "exact": False},
                f"{YAML}:33 (run.seed 42) → {CE}:61-66,116 (setup_seeds) → {CE}:167-168 "
                f"(random.shuffle of os.listdir) → {CE}:102,196 (first 500). Not reproducible "
                "exactly: os.listdir order depends on the file system (shuffled here on sorted names)",
            ),
            "params": {
                "sid": S(
                    {"alpha": 0.5, "beta": 0.1, "keep": 50, "layer": 2},
                    f"{VS}:168-169; {CE}:96,98 (fast-v-attention-rank 50, agg layer 2)",
                )
            },
        },
    },
    family={
        "llava": harness_llava(
            f"{YAML}:14 (system_message)",
            f"{PE}:69; {R} minigpt4/models/llava.py:119 (system_message + prompt)",
            f"{YAML} (clip_image_eval, as OPERA's)",
        ),
        "instructblip": harness_instructblip(
            f"{PE}:66 ('<ImageHere><question>')",
            f"{R} eval_configs/instructblip_eval.yaml (blip2_image_eval)",
        ),
    },
    modes={
        "sid": S("greedy", f"{PE}:87,99 (--sample-greedy, --sample default True) → {VS}:190-191 (argmax)")
    },
    default_mode=S("greedy", f"{PE}:87 (--sample-greedy: argmax)"),
)
