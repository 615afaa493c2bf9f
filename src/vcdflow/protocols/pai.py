"""``pai``: PAI's protocol (Liu, Zheng, Chen, ECCV 2024, arXiv 2407.21771; LALBJ/PAI at 9bbd8bd).

Families: LLaVA-1.5 (``model_loader.py``; also MiniGPT-4 and Shikra). **Not InstructBLIP**
(``ModelLoader`` raises on it) nor Qwen2.5-VL: their family fields come from ``unified``.
Benchmarks: POPE (``pope_eval.py``) and CHAIR (``chair_eval.py``).

* LLaVA: ``SYSTEM_MESSAGE + "USER: <ImageHere> <question> ASSISTANT:"`` (``constants.py``;
  template ``halc_llava``), the text-only CFG branch the same without ``<ImageHere>``.
* POPE: the bare question; CHAIR: **"Please help me describe the image in detail."** (PAI's own
  wording), the first 500 images of a shuffle seeded 927 (``chair_subset``: the rule
  re-run on sorted file names, not reproducible exactly); POPE random = head, popular and
  adversarial = e3e3926 (``pope_version``). ``max_new_tokens=512`` in both
  scripts. Greedy (``--sample`` off), one beam. Parser: ``pope_ans.py`` = OPERA's ``recorder``.
* PAI: α = 0.2, **γ = 1.1** (the README commands; the argparse default is 2), layers 2…31
  (``--start-layer 2 --end-layer 32``), both parts on (``--use-attn --use-cfg``).
* **The attention edit starts at the second generated token** (``attn_schedule: official``):
  with ``--use-cfg`` the layers' ``use_cfg`` flag is True during the image branch's prefill, so the
  prompt and the first generated token — on POPE the whole yes/no answer — are CFG alone; the
  ``CFGLogits`` processor clears the flag after its first text-only forward. Pass
  ``attn_schedule: always`` for the paper's description (every forward, the prefill's last row
  included). The ``unified`` protocol uses the method's default, which is the same official
  schedule.
"""

from __future__ import annotations

from ._shared import harness_llava
from .base import Protocol, S

R = "LALBJ/PAI"
PE = f"{R} pope_eval.py"
CE = f"{R} chair_eval.py"

PROTOCOL = Protocol(
    name="pai",
    title="PAI (Liu, Zheng, Chen, ECCV 2024, arXiv 2407.21771)",
    families_run=("llava",),
    benchmarks_run=("pope", "chair"),
    common={
        "parser": S("opera", f"{R} pope_ans.py:11-24 (recorder: OPERA's rule)"),
        "temperature": S(1.0, f"{PE}:48,135 (--sample off: greedy, T unused)"),
        "top_p": S(1.0, f"{PE}:130-140 (no top_p passed; greedy)"),
        "top_k": S(None, f"{PE}:130-140 (greedy: no warpers)"),
        "max_new_tokens": S(512, f"{PE}:56,136; {CE}:56,119 (--max-tokens 512)"),
        "seeds": S((927,), f"{PE}:18-23; {CE}:18-23 (seed = 927)"),
        "params": {
            "pai": S(
                {
                    "alpha": 0.2,
                    "gamma": 1.1,
                    "start_layer": 2,
                    "end_layer": None,
                    "use_attn": True,
                    "use_cfg": True,
                    "attn_schedule": "official",
                },
                f"{R} README.md:65,82 (--use-attn --alpha 0.2 --use-cfg --gamma 1.1 --start-layer 2 "
                f"--end-layer 32 = every layer of the 32-layer LLaMA: end_layer None; argparse gamma "
                f"default 2 at {PE}:53); APC 0.1: {R} CFG.py:53,57 (the method's default beta); "
                f"attn_schedule official: {R} attention.py:90,125 (llama_modify sets use_cfg=True, "
                f"called at {PE}:113-122 before generate :134: the prefill, hence the first token, "
                f"is not intervened) + {R} CFG.py:30-33,48-49 (use_cfg back to False after the "
                "first step's text-only forward; never with gamma 1)",
            )
        },
    },
    benchmark={
        "pope": {
            "prompt": S(
                "{question}",
                f"{R} eval_data_loader.py:70-108 (POPEChatDataSet: each of an image's "
                f"six questions asked on its own); {PE}:65-70,94-96,111",
            ),
            "pope_version": S(
                {"random": "head", "popular": "e3e3926", "adversarial": "e3e3926"},
                f"{R} constants.py:29-33 + {PE}:65 (pope_coco/chat/coco_pope_chat_*.json, compared "
                "as (image, question, label) sets: random = POPE head, popular and adversarial "
                "= e3e3926, OPERA's)",
            ),
        },
        "chair": {
            "prompt": S(
                "Please help me describe the image in detail.",
                f"{CE}:94 (500 images: {CE}:88-89; shuffled {R} eval_data_loader.py:15)",
            ),
            "chair_subset": S(
                {"rule": "shuffle", "seed": 927, "n": 500, "exact": False},
                f"{CE}:18-23,59 (seed 927) → {R} eval_data_loader.py:14-16 (random.shuffle of "
                f"os.listdir) → {CE}:88-89 (first 500). Not reproducible exactly: os.listdir "
                "order depends on the file system (the shuffle runs here on sorted names)",
            ),
        },
    },
    family={
        "llava": harness_llava(
            f"{R} constants.py:27 (SYSTEM_MESSAGE); {PE}:95-96",
            f"{R} constants.py:14; {R} model_loader.py:87-128 (BOS + chunk before "
            "<ImageHere> + image + chunk after)",
            f"{R} model_loader.py:35-41 + {R} eval_data_loader.py:63 (image_processor(image): "
            "resize + centre crop, no pad)",
        ),
    },
    modes={"pai": S("greedy", f"{PE}:47-48 (--beam 1, --sample off)")},
    default_mode=S("greedy", f"{PE}:47-48 (--beam 1, --sample off)"),
)
