"""``vista``: VISTA's protocol (Li et al., ICML 2025, arXiv 2502.03628; LzVv123456/VISTA at dc62252),
built on PAI's loader (:mod:`vcdflow.protocols.pai`).

Families: LLaVA-1.5 (``run_pope.sh``/``run_chair.sh`` ``--model llava-1.5``) and InstructBLIP
(``model_loader.py:451``; its λ is not in the scripts: the LLaVA values are used, UNVERIFIED for the
paper). Not run: Qwen2.5-VL (28 layers: the 25–30 window does not exist). Benchmarks: POPE and
CHAIR (MMHal is not ours).

* Templates: ``SYSTEM_MESSAGE + "USER: <ImageHere> <question> ASSISTANT:"`` for LLaVA
  (``halc_llava``), ``"<ImageHere><question>"`` for InstructBLIP (``anchor.py``).
* POPE: the bare question, ``max_new_tokens=32``, VSV λ = **0.01**; CHAIR: "Please help me describe
  the image in detail." (PAI's), 512 tokens, a 500-image subset (``np.random.choice``), λ = **0.17**;
  SLA α = 0.3 over layers 25–30 in both; elsewhere (MMHal's script) λ = 0.1. Data: POPE e3e3926
  (``pope_version``); CHAIR the seed-1994 draw re-run on sorted names, not reproducible exactly
  (``chair_subset``). The steering vector keeps the official PCA artefact (``pca_artefact``).
* Greedy (``--do-sample`` off), one beam, repetition penalty 1.0, seed 1994. When sampling is
  asked, the scripts' warpers are top-p 0.9 and ``top_k=0`` (off), T = 1.
* Parser: ``pope_ans.py`` = OPERA's ``recorder``.
"""

from __future__ import annotations

from ._shared import harness_instructblip, harness_llava
from .base import Protocol, S

R = "LzVv123456/VISTA"
PE = f"{R} pope_eval.py"
CE = f"{R} chair_eval.py"

PROTOCOL = Protocol(
    name="vista",
    title="VISTA (Li et al., ICML 2025, arXiv 2502.03628)",
    families_run=("llava", "instructblip"),
    benchmarks_run=("pope", "chair"),
    common={
        "parser": S("opera", f"{R} pope_ans.py:11-24 (recorder: OPERA's rule)"),
        "temperature": S(1.0, f"{PE}:47; {CE}:46 (--temperature 1.0; greedy by default)"),
        "top_p": S(0.9, f"{PE}:43; {CE}:42 (--top-p 0.9, used only with --do-sample)"),
        "top_k": S(None, f"{PE}:44; {CE}:43 (--top-k 0: no top-k warper)"),
        "seeds": S((1994,), f"{PE}:50,67; {CE}:49,64 (--seed 1994)"),
        "params": {
            "vista": S(
                {"lam": 0.1, "logits_alpha": 0.3, "pca_artefact": True},
                f"{R} run_mmhal.sh:7-10 (--vsv-lambda 0.1 --logits-aug --logits-alpha 0.3: the "
                f"scripts' value outside POPE and CHAIR); {PE}:36 (--logits-layers '25,30'); "
                f"pca_artefact: {R} steering_vector.py:127-128 + myutils.py:114-130 (rank-1 PCA of "
                "one sample on the CPU: + e0, layer 0 coordinate 0)",
            )
        },
    },
    benchmark={
        "pope": {
            "prompt": S("{question}", f"{PE}:130-140 (the POPE question in {R} anchor.py:15's template)"),
            "max_new_tokens": S(32, f"{PE}:40"),
            "pope_version": S(
                "e3e3926",
                f"{R} anchor.py:41-45 + {PE}:84 ({R}@dc62252 pope_coco/coco_pope_*.json: "
                "random and adversarial md5-equal to e3e3926's; popular is e3e3926 with one "
                "question's 'imange' typo corrected)",
            ),
            "params": {
                "vista": S(
                    {"lam": 0.01, "logits_alpha": 0.3},
                    f"{R} run_pope.sh:9-12 (--vsv-lambda 0.01 --logits-aug --logits-alpha 0.3)",
                )
            },
        },
        "chair": {
            "prompt": S("Please help me describe the image in detail.", f"{CE}:98"),
            "max_new_tokens": S(512, f"{CE}:39 (500-image subset: {CE}:26,84)"),
            "chair_subset": S(
                {"rule": "shuffle_choice", "seed": 1994, "n": 500, "exact": False},
                f"{CE}:49,64 (seed_everything(1994): random and numpy) → {R} eval_data_loader.py:14-15 "
                f"(random.shuffle of os.listdir) → {CE}:26,83-85 (np.random.choice(len, 500, "
                "replace=False) into it). Not reproducible exactly: os.listdir order depends on "
                "the file system (shuffled here on sorted names)",
            ),
            "params": {
                "vista": S(
                    {"lam": 0.17, "logits_alpha": 0.3},
                    f"{R} run_chair.sh:8-11 (--vsv-lambda 0.17 --logits-alpha 0.3); {CE}:35",
                )
            },
        },
    },
    family={
        "llava": harness_llava(
            f"{R} anchor.py:38 (SYSTEM_MESSAGE) via {R} myutils.py:30-34",
            f"{R} anchor.py:15 ('USER: <ImageHere> <question> ASSISTANT:')",
            f"{R} model_loader.py (PAI's loader: image_processor, no pad)",
        ),
        "instructblip": harness_instructblip(
            f"{R} anchor.py:12 ('<ImageHere><question>')",
            f"{R} model_loader.py:451 (LAVIS blip2 eval processor)",
        ),
    },
    modes={"vista": S("greedy", f"{PE}:41-42; {CE}:40-41 (--do-sample off, --num-beams 1)")},
    default_mode=S("greedy", f"{PE}:41-42 (--do-sample off)"),
)
