"""``opera``: OPERA's protocol (Huang et al., CVPR 2024, arXiv 2311.17911; shikiw/OPERA at 61426ef) —
the MiniGPT-4-style harness that SID, HALC, VASparse, PAI and VISTA inherit.

Families: LLaVA-1.5 and InstructBLIP (``pope_eval.py``/``chair_eval.py`` ``--model``; also
MiniGPT-4 and Shikra). Not run: Qwen2.5-VL. Benchmarks: POPE and CHAIR (MME and AMBER come from
``unified``).

* LLaVA: ``system_message + "USER: <ImageHere> <question> ASSISTANT:"`` — the **"curious user"**
  text runs straight into ``USER:`` (template ``halc_llava``); InstructBLIP:
  ``"<ImageHere><question>"`` (the 32 query outputs, then the question as is).
* POPE: the bare question, ``max_new_tokens=10``, OPERA's ``recorder`` parser; CHAIR: "Please
  describe this image in detail.", ``max_new_tokens=512``, the first 500 COCO val2014 images of a
  seeded shuffle — here OPERA's **released ids** (LLaVA-1.5's list; InstructBLIP's own list),
  and POPE the **e3e3926** files it ships (``chair_subset`` / ``pope_version``, docs/protocols.md).
  Seed 42 (``run.seed`` of the eval configs).
* Decoding: **beam search, 5 beams** (README commands ``--beam 5``) with OPERA's penalty (σ = 50,
  r = 15, N_can = 5, α = 1: the method's defaults) with its column scores in **float16**
  (``penalty_dtype``: φ ≤ 6.6e-3 or +inf, as the fp16 reference; the method's own default,
  float32, keeps φ continuous); no sampling. Here the mode is ``greedy``
  (``do_sample`` off); the beams are the method's own.
* Baselines (paper: greedy and beam search with N_beam = 5; the
  released captions ``log/chair_eval_results/{llava-1.5,instructblip,…}/{greedy,beam5,ours}.jsonl``):
  ``greedy`` stays one beam; the beam baseline is the config label ``beam5`` (``{method: greedy,
  num_beams: 5}`` under ``protocol: opera``). No script runs it (``pope_eval.py:206`` /
  ``chair_eval.py:178`` hard-code ``opera_decoding=True``): its harness is OPERA's, and its beam
  semantics the vendored transformers 4.29.2 — total-length normalisation
  (``transformers-4.29.2/src/transformers/generation/beam_search.py:889``
  ``sum_logprobs / hyp.shape[-1] ** length_penalty``), fixed here for every method (``search``
  ``"*"``: ``length_norm: total``; the prompt there holds one image placeholder id, here the
  expanded image tokens); ``length_penalty`` / ``early_stopping`` 1.0 / False (not passed).
* Images: ``clip_image_eval`` (resize + centre crop, no pad) for LLaVA, ``blip2_image_eval``
  (224², bicubic) for InstructBLIP.
* **InstructBLIP: repetition penalty 1.5 and a one-id prompt.** LAVIS's ``generate``
  (``minigpt4/models/blip2_vicuna_instruct.py:252,379-390``) defaults to
  ``repetition_penalty=1.5`` and no script overrides it, so OPERA's InstructBLIP runs — ``opera``
  and the released ``greedy``/``beam5`` baselines alike — apply it, inside OPERA's beam search
  after the log-softmax (``transformers-4.29.2/.../generation/utils.py:3567``). It calls the LLM's
  ``generate`` with ``inputs_embeds`` only, so ``input_ids`` start as one BOS (``utils.py:548-550,
  584-594``): the penalty sees BOS + the generated ids (``repetition_context: generated``) and the
  total-length normalisation counts one prompt id (``length_norm: total_bos``). LLaVA-1.5's
  ``generate`` passes none (``minigpt4/models/llava.py``).
"""

from __future__ import annotations

from ._shared import CHAIR_PROMPT, harness_instructblip, harness_llava, lavis_penalty
from .base import Protocol, S

R = "shikiw/OPERA"
PE = f"{R} pope_eval.py"
CE = f"{R} chair_eval.py"
YAML = f"{R} eval_configs/llava-1.5_eval.yaml"
TU = f"{R} transformers-4.29.2/src/transformers/generation/utils.py"
#: LAVIS's InstructBLIP generate: repetition_penalty 1.5 over BOS + generated ids
IB_PENALTY = lavis_penalty(R, "252,379-390", f"{TU}:548-550,584-594")

PROTOCOL = Protocol(
    name="opera",
    title="OPERA (Huang et al., CVPR 2024, arXiv 2311.17911)",
    families_run=("llava", "instructblip"),
    benchmarks_run=("pope", "chair"),
    common={
        "parser": S("opera", f"{PE}:123-136 (recorder: 'no' if a negation word, else 'yes')"),
        "temperature": S(1.0, f"{PE}:200-210 (beam search, no sampling: T unused)"),
        "top_p": S(1.0, f"{PE}:200-210 (beam search: no warpers)"),
        "top_k": S(None, f"{PE}:200-210 (beam search: no warpers)"),
        "seeds": S((42,), f"{YAML}:29 (run.seed 42) → {PE}:81-86 setup_seeds"),
        "search": {
            "*": S(
                {"length_norm": "total"},
                f"{R} transformers-4.29.2/src/transformers/generation/beam_search.py:889 "
                "(sum_logprobs / hyp.shape[-1] ** length_penalty: prompt + generated ids)",
            )
        },
        "params": {
            "opera": S(
                {"penalty_dtype": "float16"},
                f"{R} README.md:123,152 (--beam 5 --scale_factor 50 --threshold 15 "
                "--num_attn_candidates 5 --penalty_weights 1: the method's defaults); the column "
                f"scores in float16: {R} minigpt4/models/llava.py:76 (fp16 model) + "
                f"{R} transformers-4.29.2/src/transformers/generation/utils.py:3424-3428 (fp16 buffer)",
            )
        },
    },
    benchmark={
        "pope": {
            "prompt": S("{question}", f"{PE}:192-193 (template.replace('<question>', q): no suffix)"),
            "max_new_tokens": S(10, f"{PE}:204"),
            "pope_version": S(
                "e3e3926",
                f"{PE}:39-42,146 ({R}@61426ef pope_coco/coco_pope_*.json: md5 equal "
                "to AoiDragon/POPE e3e3926's three COCO files; random has 2,910 questions)",
            ),
        },
        "chair": {
            "prompt": S(CHAIR_PROMPT, f"{CE}:166-168"),
            "max_new_tokens": S(512, f"{CE}:176 (500 images: {CE}:151)"),
            "chair_subset": S(
                {"ids": "opera_llava-1.5"},
                f"{R}@61426ef log/chair_eval_results/llava-1.5/ours.jsonl (the 500 images of "
                f"{CE}:99,123-124,151: seed 42, shuffled os.listdir, first 500; released ids)",
            ),
        },
    },
    family={
        "llava": harness_llava(
            f"{YAML}:13 (system_message)",
            f"{PE}:50 ('USER: <ImageHere> <question> ASSISTANT:'); {R} minigpt4/models/llava.py:172 "
            "(system_message + prompt: no separator)",
            f"{YAML}:19-22 (clip_image_eval)",
        ),
        "instructblip": {
            **harness_instructblip(
                f"{PE}:47 ('<ImageHere><question>')",
                f"{R} eval_configs/instructblip_eval.yaml:15 (blip2_image_eval)",
            ),
            "params": {
                "opera": S(
                    {**IB_PENALTY.value, "length_norm": "total_bos"},
                    IB_PENALTY.source + f"; applied after the log-softmax in opera_beam_search "
                    f"({TU}:3567); length: {TU}:548-550,584-594 + {R} transformers-4.29.2/src/"
                    "transformers/generation/beam_search.py:889 (hyp = BOS + generated)",
                ),
                # the released greedy/beam5 captions come from the same LAVIS generate
                "greedy": IB_PENALTY,
            },
            "search": {
                "*": S(
                    {"length_norm": "total_bos"},
                    f"{TU}:548-550,584-594 (inputs_embeds only: input_ids = one BOS) + {R} "
                    "transformers-4.29.2/src/transformers/generation/beam_search.py:889 "
                    "(sum_logprobs / hyp.shape[-1] ** length_penalty, hyp = BOS + generated)",
                )
            },
        },
    },
    family_benchmark={
        ("instructblip", "chair"): {
            "chair_subset": S(
                {"ids": "opera_instructblip"},
                f"{R}@61426ef log/chair_eval_results/instructblip/ours.jsonl (InstructBLIP's own "
                "500 released ids: its shuffle drew another set, 6 ids shared with LLaVA-1.5's)",
            )
        },
    },
    modes={
        "opera": S(
            "greedy", f"{R} README.md:123 (--beam 5, no --sample: beam search, the method's own beams)"
        )
    },
    default_mode=S("greedy", f"{PE}:198-203 (num_beams=args.beam, no sampling)"),
)
