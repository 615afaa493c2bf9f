"""``halc``: HALC's protocol (Chen et al., ICML 2024, arXiv 2403.00425; BillChan226/HALC at 12ea8b5) —
and the HALC harness factory its forks share (:mod:`vcdflow.protocols.dola` runs DoLa in the
VASparse fork of it, :mod:`vcdflow.protocols.vasparse` VASparse; ConVis is another fork).

The harness (``run_scripts/caption_generation.py`` for CHAIR, ``pope_eval.py``): OPERA's
templates (LLaVA-1.5 ``halc_llava`` with the "curious user" system text, InstructBLIP
``"<ImageHere><question>"``), the ``clip_image_eval`` / ``blip2_image_eval`` processors.

* CHAIR: "Please describe this image in detail.", ``max_new_tokens=64``, ``-n 100`` images by
  default (the papers use 500), ``--seed 0`` (the configs' ``run.seed`` 42 is not used:
  ``setup_seeds(cfg, args.seed)``); every caption sentence containing "unk" is removed afterwards
  (not modelled here).
* POPE (``pope_eval.py``): **NOT the POPE files' questions** — the script builds its own from the
  images' ground-truth objects with ``--question_template "Find evidence first and then answer: is
  there a {} in the image?"``; here the benchmark's question is asked as is (``"{question}"``).
  ``max_new_tokens=16``, the ``recorder`` parser.
* HALC (``-d halc``): DoLa-greedy token choice with beams, ``-b 3`` on CHAIR, k = 4 candidates,
  expand ratio 0.6, DINO box threshold 0.45: the method's defaults. **POPE runs one beam**:
  ``pope_eval.py:98`` defaults ``-b 1``, passed as ``halc_params["beam_size"]`` (``:289,499``), so
  this protocol sets ``beam_size: 1`` on POPE. Decoding has no sampling.
* **Beams (CHAIR).** ``caption_generation.py:111`` defaults ``-b 3`` for every ``-d``, and
  ``minigpt4/models/llava.py:230`` passes it to ``generate``: so ``-d dola`` on CHAIR is
  ``dola_beam_search`` (vendored ``transformers-4.36.2/…/generation/utils.py:1910``, defined
  :6602): 3 beams, the relative-top filter commented out (:6833-6835, :6896-6898), and
  ``beam_scorer.process`` called without ``decoder_prompt_len`` (:6975, default 0 in
  ``generation/beam_search.py:225``, ``generated_len=cur_len - decoder_prompt_len`` :286): the
  total-length normalisation (``length_norm: total``; there the prompt holds one image placeholder
  id, here the expanded image tokens — as for OPERA). This protocol fixes that for ``dola`` on
  CHAIR (``search``), with the harness's layers 0, 2, …, 30 (``caption_generation.py:462-484``).
  POPE (``pope_eval.py:98``: ``-b 1``) is DoLa-greedy with relative top 0.1 (``utils.py:1884``,
  :1422). ``-d greedy`` at the default ``-b 3`` is plain HF beam search (``utils.py:2115``, which
  records ``decoder_prompt_len``: generated-length normalisation) — whether the paper's greedy
  row used ``-b 1`` is UNVERIFIED, so ``greedy`` stays one beam here; the 3-beam baseline is a
  label of its own (``{method: greedy, num_beams: 3, protocol: halc}``), left out of
  config/paper.yaml until the beams of HALC's "beam search" row are read. DoLa's layer choice:
  HALC averages it over the beams, here each beam chooses its own (:mod:`vcdflow.decoding.methods.dola`).

* **InstructBLIP: LAVIS's repetition penalty 1.5.** LAVIS's ``generate``
  (``minigpt4/models/blip2_vicuna_instruct.py:331,485-496``; no run script sets it) passes
  ``repetition_penalty=1.5`` to the LLM's ``generate``, which gets ``inputs_embeds`` only, so its
  ``input_ids`` start as one BOS (``utils.py:658-660,670-696``): the penalty sees BOS + the
  generated ids. Declared here for ``dola`` (``dola_greedy_decode`` :3649; ``dola_beam_search``
  :6941, per beam after the log-softmax; CHAIR's total length = 1 + generated) and for ``halc``
  (its loop's three processor sites: the DoLa token :4662, the FOV candidates :4809, the
  re-decode :4980, each over its beam's ids).

Families: LLaVA-1.5 and InstructBLIP (also MiniGPT-4, mPLUG-Owl2). Not run: Qwen2.5-VL.
"""

from __future__ import annotations

from ._shared import CHAIR_PROMPT, harness_instructblip, harness_llava, lavis_penalty
from .base import Protocol, S


def halc_harness(
    name: str,
    title: str,
    repo: str,
    *,
    cg: dict,
    pe: dict,
    method: str,
    params: S,
    families: tuple[str, ...] = ("llava", "instructblip"),
    benchmarks: tuple[str, ...] = ("chair", "pope"),
    cg_path: str = "run_scripts/caption_generation.py",
    notes: str = "",
    more_params: dict | None = None,
    bench_layers: dict | None = None,
    family_layers: dict | None = None,
    family_bench_layers: dict | None = None,
) -> Protocol:
    """A protocol in the HALC harness of ``repo``; ``cg`` / ``pe`` give the line numbers (as text)
    in its caption (CHAIR) and POPE scripts: keys ``template``, ``ib_template``, ``beam``, ``seed``,
    ``max``, ``n``, ``prompt`` (CHAIR), and ``qtemplate``, ``recorder`` (POPE). ``more_params``:
    further ``{method: S(params)}`` of the common layer (other methods the harness runs);
    ``bench_layers``: ``{kind: {field: value}}`` merged into a benchmark's layer (``params`` /
    ``search`` per method); ``family_layers``: ``{family: {field: value}}`` merged into a family's
    layer (InstructBLIP's LAVIS repetition penalty); ``family_bench_layers``: ``{(family, kind):
    {field: value}}``, the family × benchmark layers."""
    CG = f"{repo} {cg_path}"
    PE = f"{repo} run_scripts/pope_eval.py"
    YAML = f"{repo} eval_configs/llava-1.5_eval.yaml"
    benchmark = {
        "chair": {
            "prompt": S(CHAIR_PROMPT, f"{CG}:{cg['prompt']} (-n {cg['n_value']} images: {CG}:{cg['n']})"),
            "max_new_tokens": S(64, f"{CG}:{cg['max']}"),
        },
    }
    if "pope" in benchmarks:
        benchmark["pope"] = {
            "prompt": S(
                "{question}",
                f"{PE}:{pe['qtemplate']} — NOT exact: the script builds its "
                "own questions from ground-truth objects with the template "
                "'Find evidence first and then answer: is there a {} in the "
                "image?'; here the benchmark's question as is",
            ),
            "max_new_tokens": S(16, f"{PE}:{pe['max']}"),
        }
    for kind, layer in (bench_layers or {}).items():
        benchmark[kind] = {**benchmark.get(kind, {}), **layer}
    family = {
        "llava": harness_llava(
            f"{YAML}:13 (system_message)",
            f"{CG}:{cg['template']} ('USER: <ImageHere> <question> ASSISTANT:'); {repo} "
            f"minigpt4/models/llava.py:{cg['sysjoin']} (system_message + prompt: no separator)",
            f"{YAML}:21 (clip_image_eval)",
        ),
        "instructblip": harness_instructblip(
            f"{CG}:{cg['ib_template']} ('<ImageHere><question>')",
            f"{repo} eval_configs/instructblip_eval.yaml (blip2_image_eval)",
        ),
    }
    for fam, layer in (family_layers or {}).items():
        family[fam] = {**family.get(fam, {}), **layer}
    return Protocol(
        name=name,
        title=title,
        families_run=families,
        benchmarks_run=benchmarks,
        common={
            "parser": S("opera", f"{PE}:{pe['recorder']} (recorder: OPERA's rule)"),
            "temperature": S(1.0, f"{CG}:{cg['beam']} (no --sample: T unused)"),
            "top_p": S(1.0, f"{CG}:{cg['beam']} (no sampling: no warpers)"),
            "top_k": S(None, f"{CG}:{cg['beam']} (no sampling: no warpers)"),
            "seeds": S((0,), f"{CG}:{cg['seed']} (--seed 0 → setup_seeds(cfg, args.seed))"),
            "params": {method: params, **(more_params or {})},
        },
        benchmark=benchmark,
        family=family,
        family_benchmark=dict(family_bench_layers or {}),
        modes={
            method: S(
                "greedy",
                f"{CG}:{cg['beam']} (-b {cg['beam_value']}, no --sample: the method's own "
                "token choice / beams, no sampling)",
            )
        },
        default_mode=S("greedy", f"{CG}:{cg['beam']} (no --sample)"),
        notes=notes,
    )


R = "BillChan226/HALC"
TU = f"{R} transformers-4.36.2/src/transformers/generation/utils.py"
#: LAVIS's InstructBLIP generate in HALC's copy: repetition_penalty 1.5 over BOS + generated ids
IB_PENALTY = lavis_penalty(R, "331,485-496", f"{TU}:658-660,670-696")

PROTOCOL = halc_harness(
    "halc",
    "HALC (Chen et al., ICML 2024, arXiv 2403.00425)",
    R,
    method="halc",
    cg={
        "template": 63,
        "ib_template": 60,
        "beam": 111,
        "beam_value": 3,
        "seed": 117,
        "max": 119,
        "n": 118,
        "n_value": 100,
        "prompt": 453,
        "sysjoin": 183,
    },
    pe={"qtemplate": "192-200", "max": 105, "recorder": 249},
    params=S(
        {},
        f"{R} run_scripts/caption_generation.py:111 (-b 3), :128-133 (-k 4), :148-153 (expand ratio 0.6), "
        ":175 (box threshold 0.45): the method's defaults",
    ),
    # DoLa in HALC's own harness (the module docstring, "Beams"): layers 0..30, no repetition penalty;
    # CHAIR: -b 3 -> dola_beam_search (no relative-top filter, total-length normalisation)
    more_params={
        "dola": S(
            {"layers": list(range(0, 32, 2)), "repetition_penalty": 1.0},
            f"{R} run_scripts/caption_generation.py:462-484 (candidate layers 0, 2, …, 30, mature 32); "
            f"{R} minigpt4/models/llava.py:236 (repetition_penalty commented out: 1.0)",
        )
    },
    bench_layers={
        "chair": {
            "params": {
                "dola": S(
                    {"relative_top": 0.0},
                    f"{TU}:6833-6835,6896-6898 (dola_beam_search: relative_top_filter commented out)",
                )
            },
            "search": {
                "dola": S(
                    {"num_beams": 3, "length_norm": "total"},
                    f"{R} run_scripts/caption_generation.py:111 (-b 3) -> {R} minigpt4/models/llava.py:230 "
                    f"-> {TU}:1910 (dola_beam_search); {TU}:6975 (beam_scorer.process without "
                    f"decoder_prompt_len: {R} transformers-4.36.2/src/transformers/generation/"
                    "beam_search.py:225,286 generated_len = cur_len - 0, the total length); "
                    "length_penalty / early_stopping: the generation-config defaults 1.0 / False "
                    f"({R} minigpt4/models/llava.py:237 length_penalty commented out)",
                )
            },
        },
        "pope": {
            "params": {
                "dola": S(
                    {"relative_top": 0.1},
                    f"{R} run_scripts/pope_eval.py:98 (-b 1) -> {TU}:1884 (dola_greedy_decode), "
                    ":1422 (relative_top 0.1)",
                ),
                "halc": S(
                    {"beam_size": 1},
                    f"{R} run_scripts/pope_eval.py:98 (-b default 1) -> :289 num_beams = args.beam, "
                    ":499 halc_params['beam_size'] (one beam on POPE)",
                ),
            },
        },
    },
    # InstructBLIP: LAVIS's repetition penalty for DoLa (dola_greedy_decode :3649, dola_beam_search
    # :6941 on each beam's log-probs) and HALC's loop (:4662, :4809, :4980); on CHAIR DoLa's beams'
    # total length counts one BOS, not the prompt
    family_layers={
        "instructblip": {
            "params": {
                "dola": S(
                    IB_PENALTY.value,
                    IB_PENALTY.source + f"; dola_greedy_decode {TU}:3649, dola_beam_search "
                    f"{TU}:6941 (after the log-softmax, per beam)",
                ),
                "halc": S(
                    IB_PENALTY.value,
                    IB_PENALTY.source + f"; halc_dola_beam_search {TU}:4662 (DoLa token, over "
                    f"beam_input_ids), :4809 (FOV candidates), :4980 (re-decode; "
                    "both over beam_intermediate_token_lists)",
                ),
            }
        }
    },
    family_bench_layers={
        ("instructblip", "chair"): {
            "search": {
                "dola": S(
                    {"num_beams": 3, "length_norm": "total_bos"},
                    f"{R} run_scripts/caption_generation.py:111 (-b 3) -> {TU}:1910 (dola_beam_search); {TU}:6975 (no "
                    f"decoder_prompt_len: the total length) with input_ids = one BOS ({TU}:658-660,670-696, inputs_embeds only): "
                    "1 + generated",
                )
            }
        }
    },
)
