"""Paper protocols as data (``vcdflow.protocols``) and ``vcdflow prompt``.

For every paper protocol and every family the paper ran, the exact text of one POPE question and
one CHAIR prompt is asserted against the string the official script builds — written out here
literally, with the official file:line that builds it — and the token ids on a tiny model against
the tokenizer run on that official string. Where a paper did not run CHAIR (or a family), the
expected text is the documented fallback (``unified``'s prompt in the paper's template).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vcdflow.cli import main
from vcdflow.decoding import METHODS
from vcdflow.decoding.types import Branch
from vcdflow.benchmarks import BENCHMARKS as REGISTRY
from vcdflow.metrics.pope import PARSERS
from vcdflow.protocols import (
    FAMILIES,
    PAPER_OF,
    PROTOCOLS,
    Resolved,
    diff,
    get_protocol,
    preprocess_image,
    protocol_for,
    template_names,
)
from vcdflow.protocols.cli import branch_texts
from vcdflow.protocols.base import IMAGE_PREPROCESS

#: methods other helpers are writing (PAPER_OF may name them before they are registered)
PENDING = {
    "dola",
    "deco",
    "revisit",
    "pai",
    "sid",
    "only",
    "vasparse",
    "contrastive_search",
    "text_cd",
    "opera",
    "vista",
    "vti",
    "halc",
}

Q = "Is there a snowboard in the image?"  # the first POPE question (llava_pope_test.jsonl:1)

# haotian-liu/LLaVA llava/conversation.py:325-327 (conv_llava_v1.system), written out
HUMAN = (
    "A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the human's questions."
)
# yejipark-m/ConVis eval_configs/llava-1.5_eval.yaml:13 (system_message), written out
USER = (
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the user's questions."
)
DISTURBANCE = "You are a confused objects detector to provide a fuzzy overview or impression of the image."

# (protocol, method, family, benchmark) → {branch: text} (InstructBLIP: {branch: (text, qformer)})
OFFICIAL = {
    # DAMO-NLP-SG/VCD experiments/eval/object_hallucination_vqa_llava.py:47-52 (conv llava_v1 :108)
    ("vcd", "vcd", "llava", "pope"): {
        "original": HUMAN
        + " USER: <image>\nIs there a snowboard in the image? Please answer this question with "
        "one word. ASSISTANT:"
    },
    # VCD ran no CHAIR: unified's CHAIR prompt in VCD's llava_v1 conversation
    ("vcd", "vcd", "llava", "chair"): {
        "original": HUMAN + " USER: <image>\nPlease describe this image in detail. ASSISTANT:"
    },
    # DAMO-NLP-SG/VCD experiments/eval/object_hallucination_vqa_instructblip.py:49 (prompt, also the Q-Former's)
    ("vcd", "vcd", "instructblip", "pope"): {
        "original": ("Is there a snowboard in the image? Please answer this question with one word.",) * 2
    },
    ("vcd", "vcd", "instructblip", "chair"): {"original": ("Please describe this image in detail.",) * 2},
    # p1k0pan/ICD experiments/gen_scripts/icd_llava_pope.py:52-55 (llava_v1) and :58-63 (llava_custom,
    # system = preprompt; experiments/llava/conversation.py:347-357), --format no_format (:34)
    ("icd", "icd", "llava", "pope"): {
        "original": HUMAN + " USER: <image>\nIs there a snowboard in the image? ASSISTANT:",
        "disturbed": DISTURBANCE + " USER: <image>\nIs there a snowboard in the image? ASSISTANT:",
    },
    # the repo's LLaVA script is POPE only: unified's CHAIR prompt
    ("icd", "icd", "llava", "chair"): {
        "original": HUMAN + " USER: <image>\nPlease describe this image in detail. ASSISTANT:",
        "disturbed": DISTURBANCE + " USER: <image>\nPlease describe this image in detail. ASSISTANT:",
    },
    # p1k0pan/ICD experiments/gen_scripts/icd_ib_pope.py:43 (LLM text), :47,53 (normal.json: the Q-Former reads
    # txt_processors["eval"](preprompt)), experiments/lavis/processors/blip_processors.py:49-68
    ("icd", "icd", "instructblip", "pope"): {
        "original": (Q, Q),
        "disturbed": (
            Q,
            "you are a confused objects detector to provide a fuzzy overview or impression of the image",
        ),
    },
    # p1k0pan/ICD experiments/gen_scripts/icd_coco_chair.py:41 + experiments/data/chair/chair-val.json:5
    ("icd", "icd", "instructblip", "chair"): {
        "original": ("Please name all the objects in this image.",) * 2,
        "disturbed": (
            "Please name all the objects in this image.",
            "you are a confused objects detector to provide a fuzzy overview or impression of the image",
        ),
    },
    # sangminwoo/RITUAL eval_bench/pope_eval_llava.py:235-251 (no suffix, :247)
    ("ritual", "ritual", "llava", "pope"): {
        "original": HUMAN + " USER: <image>\nIs there a snowboard in the image? ASSISTANT:",
        "transformed": HUMAN + " USER: <image>\nIs there a snowboard in the image? ASSISTANT:",
    },
    # sangminwoo/RITUAL eval_bench/chair_eval_llava.py:177,206-218
    ("ritual", "ritual", "llava", "chair"): {
        "original": HUMAN + " USER: <image>\nPlease describe this image in detail. ASSISTANT:"
    },
    # sangminwoo/RITUAL eval_bench/pope_eval_instructblip.py:209; chair_eval_instructblip.py:181
    ("ritual", "ritual", "instructblip", "pope"): {"original": (Q, Q)},
    ("ritual", "ritual", "instructblip", "chair"): {
        "original": ("Please describe this image in detail.",) * 2
    },
    # M3ID through RITUAL's scripts (use_m3id): the same texts (text-only branch: see the xfail below)
    ("m3id", "m3id", "llava", "pope"): {
        "original": HUMAN + " USER: <image>\nIs there a snowboard in the image? ASSISTANT:"
    },
    ("m3id", "m3id", "llava", "chair"): {
        "original": HUMAN + " USER: <image>\nPlease describe this image in detail. ASSISTANT:"
    },
    ("m3id", "m3id", "instructblip", "pope"): {"original": (Q, Q)},
    ("m3id", "m3id", "instructblip", "chair"): {"original": ("Please describe this image in detail.",) * 2},
    # yfzhang114/LLaVA-Align experiments/eval/calibrate/llava_calibrate.py:136-144
    ("vdd", "vdd", "llava", "pope"): {
        "original": HUMAN
        + " USER: <image>\nIs there a snowboard in the image? Please answer this question with "
        "one word. ASSISTANT:"
    },
    ("vdd", "vdd", "llava", "chair"): {  # VDD ran no CHAIR
        "original": HUMAN + " USER: <image>\nPlease describe this image in detail. ASSISTANT:"
    },
    # eunwooim/selfaug src/eval/pope.py:57 (append_txt, no final period) + src/models/llava_model.py:74-94
    ("selfaug", "selfaug", "llava", "pope"): {
        "original": HUMAN
        + " USER: <image>\nIs there a snowboard in the image?\nAnswer the question using a single "
        "word or phrase ASSISTANT:"
    },
    ("selfaug", "selfaug", "llava", "chair"): {  # Self-Aug ran no CHAIR
        "original": HUMAN + " USER: <image>\nPlease describe this image in detail. ASSISTANT:"
    },
    # eunwooim/selfaug src/eval/pope.py:57 + src/models/instructblip_model.py:53-56
    ("selfaug", "selfaug", "instructblip", "pope"): {
        "original": ("Is there a snowboard in the image?\nAnswer the question using a single word or phrase",)
        * 2
    },
    ("selfaug", "selfaug", "instructblip", "chair"): {
        "original": ("Please describe this image in detail.",) * 2
    },
    # sangminwoo/AvisC eval_bench/pope_eval_llavab.py:216-227 (conv llava_v1, no suffix)
    ("avisc", "avisc", "llava", "pope"): {
        "original": HUMAN + " USER: <image>\nIs there a snowboard in the image? ASSISTANT:",
        "blind": HUMAN + " USER: <image>\nIs there a snowboard in the image? ASSISTANT:",
    },
    ("avisc", "avisc", "llava", "chair"): {  # AvisC ran no CHAIR
        "original": HUMAN + " USER: <image>\nPlease describe this image in detail. ASSISTANT:"
    },
    # sangminwoo/AvisC eval_bench/pope_eval_instructblipb.py:201,215
    ("avisc", "avisc", "instructblip", "pope"): {"original": (Q, Q)},
    ("avisc", "avisc", "instructblip", "chair"): {"original": ("Please describe this image in detail.",) * 2},
    # IVY-LVLM/CODE models/llava-model-hf.py:53-64 + models/llava/conversation.py:109-111 (pope)
    ("code", "code", "llava", "pope"): {
        "describe": HUMAN
        + " USER: <image>\nProvide a detailed description of the image, covering all visible "
        "elements and their interactions, so as to thoroughly answer any potential questions "
        "about the image. ASSISTANT:",  # make_alttext: no response prompt (:57-58)
        "original": HUMAN
        + " USER: <image>\nIs there a snowboard in the image? Answer the question using a single "
        "word or phrase. ASSISTANT:",
    },
    # IVY-LVLM/CODE models/llava-model-hf.py:128-129, :60 + conversation.py:114-115 ('' → the turn ends in a space)
    ("code", "code", "llava", "chair"): {
        "original": HUMAN + " USER: <image>\nPlease describe this image in detail.  ASSISTANT:"
    },
    # yejipark-m/ConVis run_scripts/pope_eval.py:312 (suffix), :37,339 (template), minigpt4/models/llava.py:192
    # (system_message + prompt: no separator), eval_configs/llava-1.5_eval.yaml:13
    ("convis", "convis", "llava", "pope"): {
        "original": USER
        + "USER: <image> Is there a snowboard in the image? Please answer yes or no. ASSISTANT:",
        "reconstruction0": USER + "USER: <image> Is there a snowboard in the image? Please answer yes or no. "
        "ASSISTANT:",
    },
    # yejipark-m/ConVis run_scripts/caption_generation.py:352-359
    ("convis", "convis", "llava", "chair"): {
        "original": USER + "USER: <image> Please describe this image in detail. ASSISTANT:"
    },
    # haotian-liu/LLaVA llava/eval/model_vqa_loader.py:42-51 with --conv-mode vicuna_v1 (scripts/v1_5/eval/pope.sh:9;
    # llava/conversation.py:242-252) on llava_pope_test.jsonl:1's text
    ("llava_eval", "greedy", "llava", "pope"): {
        "original": USER
        + " USER: <image>\nIs there a snowboard in the image?\nAnswer the question using a single "
        "word or phrase. ASSISTANT:"
    },
    ("llava_eval", "greedy", "llava", "chair"): {  # LLaVA's evaluation has no CHAIR
        "original": USER + " USER: <image>\nPlease describe this image in detail. ASSISTANT:"
    },
    # unified: llava_v1 + LLaVA-1.5's own POPE prompt (llava_pope_test.jsonl:1)
    ("unified", "vcd", "llava", "pope"): {
        "original": HUMAN
        + " USER: <image>\nIs there a snowboard in the image?\nAnswer the question using a single "
        "word or phrase. ASSISTANT:"
    },
    ("unified", "vcd", "llava", "chair"): {
        "original": HUMAN + " USER: <image>\nPlease describe this image in detail. ASSISTANT:"
    },
    ("unified", "vcd", "instructblip", "pope"): {
        "original": (
            "Is there a snowboard in the image?\nAnswer the question using a single word or phrase.",
        )
        * 2
    },
    ("unified", "vcd", "qwen2_5_vl", "pope"): {
        "original": "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<|vision_start|>"
        "<image><|vision_end|>Is there a snowboard in the image?\nAnswer the question using a single word "
        "or phrase.<|im_end|>\n<|im_start|>assistant\n"
    },
    # ---- the cd_rethink controls, the second wave and the third-wave baselines (protocols/*.py)
    # ustc-hyin/cd_rethink inference/pope_infer_olm.py:55-65 (qs + " Answer the question using a single word or
    # phrase."), scripts/pope_infer_spurious.sh:31 (--conv-mode vicuna_v1 → llava/conversation.py:252-262)
    ("cd_rethink", "olm", "llava", "pope"): {
        "original": USER
        + " USER: <image>\nIs there a snowboard in the image? Answer the question using a single word or "
        "phrase. ASSISTANT:"
    },
    ("cd_rethink", "apc", "llava", "chair"): {  # cd_rethink ran no CHAIR: unified's prompt in vicuna_v1
        "original": USER + " USER: <image>\nPlease describe this image in detail. ASSISTANT:"
    },
    # yfzhang114/LLaVA-Align experiments/eval/calibrate/llava_calibrate.py:136-144 (conv llava_v1, VCD's suffix)
    ("debias", "debias", "llava", "pope"): {
        "original": HUMAN
        + " USER: <image>\nIs there a snowboard in the image? Please answer this question with "
        "one word. ASSISTANT:"
    },
    ("debias", "debias", "llava", "chair"): {  # the calibration scripts are POPE only
        "original": HUMAN + " USER: <image>\nPlease describe this image in detail. ASSISTANT:"
    },
    # YuyaoGe/CARVE carve/pipeline.py:74 (f"{text} {ANSWER_SUFFIX}", :17) and :86-87 (f"{tag}\nUSER: {query}\nASSISTANT:")
    ("carve", "greedy", "llava", "pope"): {
        "original": "<image>\nUSER: Is there a snowboard in the image? Answer the question using a single word or "
        "phrase.\nASSISTANT:"
    },
    ("carve", "greedy", "llava", "chair"): {  # CARVE ran no CHAIR: unified's prompt in CARVE's LLaVA format
        "original": "<image>\nUSER: Please describe this image in detail.\nASSISTANT:"
    },
    # YuyaoGe/CARVE carve/pipeline.py:78-81 (processor.apply_chat_template, image then text)
    ("carve", "greedy", "qwen2_5_vl", "pope"): {
        "original": "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<|vision_start|>"
        "<image><|vision_end|>Is there a snowboard in the image? Answer the question using a single word "
        "or phrase.<|im_end|>\n<|im_start|>assistant\n"
    },
    ("carve", "greedy", "qwen2_5_vl", "chair"): {
        "original": "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<|vision_start|>"
        "<image><|vision_end|>Please describe this image in detail.<|im_end|>\n<|im_start|>assistant\n"
    },
    # bscho333/ReVisiT LLaVA1.5/eval/chair_eval_llava.py:114,131-145 (its own Conversation = llava_v1)
    ("revisit", "greedy", "llava", "chair"): {
        "original": HUMAN + " USER: <image>\nPlease describe this image in detail. ASSISTANT:"
    },
    ("revisit", "greedy", "llava", "pope"): {  # ReVisiT ships CHAIR only: unified's POPE prompt
        "original": HUMAN
        + " USER: <image>\nIs there a snowboard in the image?\nAnswer the question using a single "
        "word or phrase. ASSISTANT:"
    },
    # bscho333/ReVisiT Qwen2.5-VL/eval/chair_eval_qwenvl.py:113-125 (processor chat template)
    ("revisit", "greedy", "qwen2_5_vl", "chair"): {
        "original": "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<|vision_start|>"
        "<image><|vision_end|>Please describe this image in detail.<|im_end|>\n<|im_start|>assistant\n"
    },
    ("revisit", "greedy", "qwen2_5_vl", "pope"): {
        "original": "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<|vision_start|>"
        "<image><|vision_end|>Is there a snowboard in the image?\nAnswer the question using a single word "
        "or phrase.<|im_end|>\n<|im_start|>assistant\n"
    },
    # mengchuang123/VASparse-github run_scripts/caption_generation_patch_vasparse.py:80,499-503 +
    # minigpt4/models/llava.py:187 (system_message + prompt) + eval_configs/llava-1.5_eval.yaml:13
    ("vasparse", "greedy", "llava", "chair"): {
        "original": USER + "USER: <image> Please describe this image in detail. ASSISTANT:"
    },
    ("vasparse", "greedy", "llava", "pope"): {  # VASparse's POPE is HALC's OPOPE: unified's POPE prompt
        "original": USER
        + "USER: <image> Is there a snowboard in the image?\nAnswer the question using a single word "
        "or phrase. ASSISTANT:"
    },
    # vasparse_script: the same script at its -b 1 (one beam); same texts
    ("vasparse_script", "greedy", "llava", "chair"): {
        "original": USER + "USER: <image> Please describe this image in detail. ASSISTANT:"
    },
    ("vasparse_script", "greedy", "llava", "pope"): {
        "original": USER
        + "USER: <image> Is there a snowboard in the image?\nAnswer the question using a single word "
        "or phrase. ASSISTANT:"
    },
    # the HALC harness (VASparse fork for DoLa, HALC itself): run_scripts/caption_generation.py:63 / :439 (:453 in
    # HALC); run_scripts/pope_eval.py:64 (template.replace('<question>', ...)); InstructBLIP '<ImageHere><question>' (:60)
    ("dola", "greedy", "llava", "chair"): {
        "original": USER + "USER: <image> Please describe this image in detail. ASSISTANT:"
    },
    ("dola", "greedy", "llava", "pope"): {
        "original": USER + "USER: <image> Is there a snowboard in the image? ASSISTANT:"
    },
    ("dola", "greedy", "instructblip", "chair"): {"original": ("Please describe this image in detail.",) * 2},
    ("dola", "greedy", "instructblip", "pope"): {"original": (Q, Q)},
    ("halc", "greedy", "llava", "chair"): {
        "original": USER + "USER: <image> Please describe this image in detail. ASSISTANT:"
    },
    ("halc", "greedy", "llava", "pope"): {
        "original": USER + "USER: <image> Is there a snowboard in the image? ASSISTANT:"
    },
    ("halc", "greedy", "instructblip", "chair"): {"original": ("Please describe this image in detail.",) * 2},
    ("halc", "greedy", "instructblip", "pope"): {"original": (Q, Q)},
    # zjunlp/Deco pope_llava.py:73-92 (VCD suffix commented out, conv llava_v1) and chair_llava.py:99-110
    ("deco", "greedy", "llava", "pope"): {
        "original": HUMAN + " USER: <image>\nIs there a snowboard in the image? ASSISTANT:"
    },
    ("deco", "greedy", "llava", "chair"): {
        "original": HUMAN + " USER: <image>\nPlease describe this image in detail. ASSISTANT:"
    },
    # LALBJ/PAI constants.py:14,27 + pope_eval.py:94-96 + model_loader.py:89-128; chair_eval.py:94 (PAI's wording)
    ("pai", "greedy", "llava", "pope"): {
        "original": USER + "USER: <image> Is there a snowboard in the image? ASSISTANT:"
    },
    ("pai", "greedy", "llava", "chair"): {
        "original": USER + "USER: <image> Please help me describe the image in detail. ASSISTANT:"
    },
    # huofushuo/SID pope_eval.py:64-69,280-285; eval_utils/chair_eval.py:211-213; minigpt4/models/llava.py:119
    ("sid", "greedy", "llava", "pope"): {
        "original": USER + "USER: <image> Is there a snowboard in the image? ASSISTANT:"
    },
    ("sid", "greedy", "llava", "chair"): {
        "original": USER + "USER: <image> Please describe this image in detail. ASSISTANT:"
    },
    ("sid", "greedy", "instructblip", "pope"): {"original": (Q, Q)},
    ("sid", "greedy", "instructblip", "chair"): {"original": ("Please describe this image in detail.",) * 2},
    # zifuwan/ONLY eval_bench/pope_eval_llava.py:257-273 ('<image>\n' + qs), chair_eval_llava.py:167;
    # pope_eval_instructblip.py:224 (prompt = qs), chair_eval_instructblip.py:183
    ("only", "greedy", "llava", "pope"): {
        "original": HUMAN + " USER: <image>\nIs there a snowboard in the image? ASSISTANT:"
    },
    ("only", "greedy", "llava", "chair"): {
        "original": HUMAN + " USER: <image>\nPlease describe this image in detail. ASSISTANT:"
    },
    ("only", "greedy", "instructblip", "pope"): {"original": (Q, Q)},
    ("only", "greedy", "instructblip", "chair"): {"original": ("Please describe this image in detail.",) * 2},
    # shengliu66/VTI experiments/eval/run_mmhal_vti.py:101-106 (conv llava_v1); it ran neither benchmark:
    # unified's prompts
    ("vti", "greedy", "llava", "pope"): {
        "original": HUMAN
        + " USER: <image>\nIs there a snowboard in the image?\nAnswer the question using a single "
        "word or phrase. ASSISTANT:"
    },
    ("vti", "greedy", "llava", "chair"): {
        "original": HUMAN + " USER: <image>\nPlease describe this image in detail. ASSISTANT:"
    },
    # LzVv123456/VISTA anchor.py:12,15,38 + myutils.py:30-34; chair_eval.py:98 (PAI's wording)
    ("vista", "greedy", "llava", "pope"): {
        "original": USER + "USER: <image> Is there a snowboard in the image? ASSISTANT:"
    },
    ("vista", "greedy", "llava", "chair"): {
        "original": USER + "USER: <image> Please help me describe the image in detail. ASSISTANT:"
    },
    ("vista", "greedy", "instructblip", "pope"): {"original": (Q, Q)},
    ("vista", "greedy", "instructblip", "chair"): {
        "original": ("Please help me describe the image in detail.",) * 2
    },
    # shikiw/OPERA pope_eval.py:47,50,192-193; chair_eval.py:166-168; minigpt4/models/llava.py:118
    ("opera", "greedy", "llava", "pope"): {
        "original": USER + "USER: <image> Is there a snowboard in the image? ASSISTANT:"
    },
    ("opera", "greedy", "llava", "chair"): {
        "original": USER + "USER: <image> Please describe this image in detail. ASSISTANT:"
    },
    ("opera", "greedy", "instructblip", "pope"): {"original": (Q, Q)},
    ("opera", "greedy", "instructblip", "chair"): {
        "original": ("Please describe this image in detail.",) * 2
    },
}

# Texts a method itself changes (checked through its branches, not in the token-id tests, which build the
# protocol's prompt without the method): ustc-hyin/cd_rethink inference/pope_infer_pba.py:51
METHOD_TEXTS = {
    ("cd_rethink", "pba", "llava", "pope"): {
        "pba": USER
        + " USER: <image>\nIs there a snowboard in the image? Answer the question using a single word or "
        "phrase. Answer yes whenever possible. ASSISTANT:"
    },
}


@pytest.mark.parametrize("key", list(OFFICIAL) + list(METHOD_TEXTS), ids=lambda k: "-".join(k))
def test_prompt_text_equals_the_official_string(key):
    protocol, method, family, bench = key
    rows = {r["branch"]: r for r in branch_texts(family, method, bench, Q, protocol)}
    for branch, want in {**OFFICIAL, **METHOD_TEXTS}[key].items():
        got = rows[branch]
        if family == "instructblip":
            assert (got["text"], got["qformer"]) == want, (key, branch)
        else:
            assert got["text"] == want, (key, branch)


@pytest.mark.xfail(
    strict=True,
    reason="decoding/methods/m3id.py (and vdd.py variant 'none') drop the image part "
    "with its '\\n'; the official text-only branch removes only the image token",
)
def test_m3id_text_only_branch_keeps_the_newline_after_the_image():
    # sangminwoo/RITUAL experiments/llava/model/language_model/llava_llama.py:224: input_ids[input_ids != -200],
    # i.e. the official prompt (pope_eval_llava.py:247-251) with '<image>' deleted and its '\n' kept
    rows = {r["branch"]: r["text"] for r in branch_texts("llava", "m3id", "pope", Q, "m3id")}
    assert rows["text_only"] == HUMAN + " USER: \nIs there a snowboard in the image? ASSISTANT:"


def test_vcdflow_prompt_previews_every_method_on_every_family():
    from vcdflow.protocols import FAMILY_TEMPLATE

    # without a model: every family vcdflow ships a copy of the chat template of (the others ask
    # for --model: tests/test_families.py)
    for method in METHODS:
        for family in [f for f in FAMILIES if f in FAMILY_TEMPLATE]:
            rows = branch_texts(family, method, "pope", Q, "unified")
            assert rows and all(Q in r["text"] or r["branch"] == "describe" for r in rows), (method, family)


def test_every_paper_protocol_and_family_it_ran_is_covered():
    covered = {(p, f, b) for p, _, f, b in OFFICIAL}
    for name, proto in PROTOCOLS.items():
        for fam in proto.families_run if name != "unified" else ():
            assert (name, fam, "pope") in covered and (name, fam, "chair") in covered, (name, fam)


def test_paper_mode_and_named_protocols_resolve_the_same():
    for method, paper in PAPER_OF.items():
        assert protocol_for(method, "paper") == paper
        assert protocol_for(method, paper) == paper
    assert protocol_for("icd", "unified") == protocol_for("icd", None) == "unified"
    originals = {
        "greedy",
        "sample",
        "contrast",
        "vcd",
        "vcd_legacy",
        "icd",
        "ritual",
        "m3id",
        "vdd",
        "selfaug",
        "apc",
        "code",
        "avisc",
        "convis",
    }
    assert originals <= set(PAPER_OF) <= set(METHODS) | PENDING and set(PAPER_OF.values()) <= set(PROTOCOLS)
    with pytest.raises(ValueError, match="method 'nomethod' has no paper protocol"):
        protocol_for("nomethod", "paper")
    with pytest.raises(ValueError, match="unknown protocol 'nope'; valid protocols: avisc"):
        protocol_for("vcd", "nope")
    with pytest.raises(ValueError, match="unknown protocol 'x'"):
        get_protocol("x")


def test_every_resolved_setting_is_valid_and_cited():
    shipped = set(template_names())
    for name, proto in PROTOCOLS.items():
        for fam in FAMILIES:
            for bench in ("pope", "chair", "mme", "amber"):
                for method in METHODS:
                    for mode in (None, "greedy", "sample"):
                        r = proto.resolve(method=method, family=fam, benchmark=bench, mode=mode)
                        assert isinstance(r, Resolved)
                        assert r.chat_template == "model" or r.chat_template in shipped
                        assert r.parser in set(PARSERS) | set(
                            REGISTRY[bench].parsers
                        )  # a POPE rule or the scorer's own
                        assert r.image_preprocess in IMAGE_PREPROCESS
                        METHODS[method].resolve(dict(r.params))  # overrides are valid parameters
                        for f in (
                            "system",
                            "chat_template",
                            "prompt",
                            "parser",
                            "do_sample",
                            "temperature",
                            "top_p",
                            "top_k",
                            "params",
                            "max_new_tokens",
                            "image_preprocess",
                            "seeds",
                        ):
                            assert r.sources[f], (name, fam, bench, method, f)
                        d = r.as_dict()
                        assert json.loads(json.dumps(d)) == d
                        if mode is not None and method not in ("greedy", "sample"):
                            assert r.do_sample == (mode == "sample")


def test_paper_values_flow_from_their_scripts():
    vcd_ib = get_protocol("vcd").resolve("vcd", "instructblip", "pope")
    assert (vcd_ib.params["alpha"], vcd_ib.top_k, vcd_ib.max_new_tokens) == (0.5, 50, 256)
    vcd_ll = get_protocol("vcd").resolve("vcd", "llava", "pope")
    assert (vcd_ll.params["beta"], vcd_ll.top_k, vcd_ll.seeds, vcd_ll.parser) == (0.2, None, (55,), "vcd")
    sa = get_protocol("selfaug").resolve("selfaug", "llava", "pope")
    assert sa.params["crop_ratio"] == 2.5 and sa.seeds == (11, 21, 31, 41, 51) and sa.max_new_tokens == 768
    icd_ib = get_protocol("icd").resolve("icd", "instructblip", "pope")
    assert icd_ib.params["position"] == "qformer" and icd_ib.top_k == 50
    conv = get_protocol("convis").resolve("convis", "llava", "pope")
    assert (conv.do_sample, conv.params["alpha"], conv.params["beta"], conv.max_new_tokens) == (
        False,
        0.1,
        None,
        16,
    )
    assert get_protocol("convis").resolve("convis", "llava", "chair").params["alpha"] == 1.0
    assert get_protocol("code").resolve("code", "llava", "pope").do_sample is False
    uni = get_protocol("unified").resolve("vcd", "llava", "pope", mode="sample")
    assert (uni.temperature, uni.top_p, uni.top_k, uni.parser, uni.params) == (1.0, 1.0, None, "official", {})
    assert get_protocol("unified").resolve("vcd", "llava", "pope").do_sample is False
    # a family the paper did not run: its family fields come from unified, and the sources say so
    q = get_protocol("vcd").resolve("vcd", "qwen2_5_vl", "pope")
    assert q.chat_template == "model" and q.system is None and "did not run qwen2_5_vl" in q.sources["family"]
    assert q.prompt == "{question} Please answer this question with one word."  # the paper's own POPE prompt
    le = get_protocol("llava_eval").resolve("vcd", "llava", "pope")
    assert (le.image_preprocess, le.do_sample, le.system, le.max_new_tokens) == (
        "pad_square_mean",
        False,
        USER,
        128,
    )
    c = get_protocol("avisc").resolve("avisc", "llava", "chair")
    assert "did not run chair" in c.sources["benchmark"] and c.max_new_tokens == 64


def test_diff_lists_what_a_paper_changes_against_unified():
    assert diff("unified", "unified") == []
    rows = diff("convis")
    by = {(r["family"], r["benchmark"], r["field"]): r for r in rows}
    s = by[("llava", "pope", "system")]
    assert s["a"] == USER and s["b"] == HUMAN and "llava-1.5_eval.yaml:13" in s["source_a"]
    assert by[("llava", "pope", "chat_template")]["a"] == "halc_llava"
    assert by[("llava", "pope", "parser")]["a"] == "opera"
    assert ("llava", "pope", "top_p") not in by  # equal values are not listed
    vcd = {(r["family"], r["benchmark"], r["field"]): r for r in diff("vcd")}
    assert (
        vcd[("instructblip", "pope", "top_k")]["a"] == 50
        and vcd[("instructblip", "pope", "top_k")]["b"] is None
    )
    assert vcd[("instructblip", "pope", "params")]["a"]["alpha"] == 0.5
    assert {r["family"] for r in diff("vcd")} == {"llava", "instructblip"}  # the families VCD ran


def _llava_expand2square(pil_img, background_color):
    # haotian-liu/LLaVA llava/mm_utils.py:152-163, verbatim logic
    width, height = pil_img.size
    if width == height:
        return pil_img
    elif width > height:
        result = Image.new(pil_img.mode, (width, width), background_color)
        result.paste(pil_img, (0, (width - height) // 2))
        return result
    else:
        result = Image.new(pil_img.mode, (height, height), background_color)
        result.paste(pil_img, ((height - width) // 2, 0))
        return result


@pytest.mark.parametrize("size", [(40, 25), (25, 40), (31, 31), (7, 2)])
def test_preprocess_image_pads_like_llava(size):
    mean = [0.48145466, 0.4578275, 0.40821073]  # CLIP's image_mean → (122, 116, 104)
    img = Image.fromarray(np.random.RandomState(0).randint(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    got = preprocess_image(img, "pad_square_mean", mean)
    want = _llava_expand2square(img, tuple(int(x * 255) for x in mean))  # mm_utils.py:171
    assert got.size == (max(size),) * 2 and np.array_equal(np.asarray(got), np.asarray(want))
    if size[0] != size[1]:
        assert tuple(np.asarray(got)[0, 0]) == (122, 116, 104) or tuple(np.asarray(got)[-1, -1]) == (
            122,
            116,
            104,
        )
    assert preprocess_image(img, "processor", mean) is img
    with pytest.raises(ValueError, match="unknown image_preprocess 'crop'"):
        preprocess_image(img, "crop", mean)


# --------------------------------------------------------------------------- token ids on tiny models


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tiny_models import build_tiny_instructblip, build_tiny_llava

    from vcdflow.models import load_vlm

    root = tmp_path_factory.mktemp("protocol_models")
    return {
        "llava": (root / "llava", load_vlm(build_tiny_llava(root / "llava"))),
        "instructblip": (root / "ib", load_vlm(build_tiny_instructblip(root / "ib"))),
    }


def _expected_llava_ids(tok, text, image_id, n_image):
    """The official ``tokenizer_image_token``'s split at ``<image>``, with the placeholder expanded."""
    before, _, after = text.partition("<image>")
    ids = tok(before, add_special_tokens=False)["input_ids"]
    if _:
        ids = ids + [image_id] * n_image + tok(after, add_special_tokens=False)["input_ids"]
    return ([tok.bos_token_id] if tok("x")["input_ids"][:1] == [tok.bos_token_id] else []) + ids


@pytest.mark.parametrize("key", [k for k in OFFICIAL if k[2] == "llava"], ids=lambda k: "-".join(k))
def test_llava_token_ids_equal_the_official_string_tokenized(tiny, key):
    protocol, method, family, bench = key
    _, vlm = tiny["llava"]
    a = vlm.adapter
    r = get_protocol(protocol).resolve(method, family, bench)
    a.chat_template = r.chat_template
    try:
        image = Image.new("RGB", (60, 40), (200, 10, 10))
        branch = {
            "original": (r.system, r.format_prompt(Q), image),
            "disturbed": (DISTURBANCE, r.format_prompt(Q), image),
        }
        for name, (system, prompt, img) in branch.items():
            if name not in OFFICIAL[key]:
                continue
            enc = a.encode(Branch(prompt=prompt, image=img, system=system))
            n_img = int((enc.input_ids == a.image_token_id).sum())
            assert n_img == 16  # 56 px / 14 px patches, all in one placeholder run
            want = _expected_llava_ids(a.tokenizer, OFFICIAL[key][name], a.image_token_id, n_img)
            assert enc.input_ids.tolist() == want, (key, name)
    finally:
        a.chat_template = None


@pytest.mark.parametrize("key", [k for k in OFFICIAL if k[2] == "instructblip"], ids=lambda k: "-".join(k))
def test_instructblip_token_ids_and_qformer_ids(tiny, key):
    protocol, method, family, bench = key
    _, vlm = tiny["instructblip"]
    a, proc = vlm.adapter, vlm.processor
    r = get_protocol(protocol).resolve(method, family, bench)
    a.chat_template = r.chat_template
    try:
        from vcdflow.decoding.types import BranchContext, Request

        req = Request(
            image=Image.new("RGB", (30, 30), (0, 90, 200)), prompt=r.format_prompt(Q), system=r.system
        )
        p = METHODS[method].resolve(dict(r.params))
        ctx = BranchContext(
            params=p,
            rng=torch.Generator().manual_seed(0),
            adapter=a,
            do_sample=False,
            prepared={"keep": None, "sas_reply": ""},
        )
        branches = {b.name: b for b in METHODS[method].branches(req, ctx)}
        for name, (text, qtext) in OFFICIAL[key].items():
            enc = a.encode(branches[name])
            n_q = vlm.model.config.num_query_tokens
            want = [a.image_token_id] * n_q + a.tokenizer(text)["input_ids"]  # query outputs, then the prompt
            assert enc.input_ids.tolist() == want, (key, name)
            assert enc.extras["qformer_input_ids"][0].tolist() == proc.qformer_tokenizer(qtext)["input_ids"]
    finally:
        a.chat_template = None


def test_qwen_shipped_template_token_ids(tmp_path):
    """Qwen2.5-VL under the shipped official template: the processor expands the one
    ``<|image_pad|>`` into the image's tokens (4 on the tiny model)."""
    from tiny_models import build_tiny_qwen2_5_vl

    from vcdflow.models import load_vlm

    vlm = load_vlm(build_tiny_qwen2_5_vl(tmp_path / "qwen"))
    a = vlm.adapter
    a.chat_template = "qwen2_5_vl"
    enc = a.encode(Branch(prompt="Is there a dog in the image?", image=Image.new("RGB", (56, 56), (9, 9, 9))))
    official = (
        OFFICIAL[("unified", "vcd", "qwen2_5_vl", "pope")]["original"]
        .replace("<image>", "<|image_pad|>" * 4)
        .replace(
            "Is there a snowboard in the image?\nAnswer the question using a single word or phrase.",
            "Is there a dog in the image?",
        )
    )
    assert enc.input_ids.tolist() == a.tokenizer(official)["input_ids"]
    assert int((enc.input_ids == a.image_token_id).sum()) == 4


def test_demo_model_own_template_equals_shipped_llava_v1():
    from vcdflow.models.adapters import adapter_for
    from vcdflow.models.demo import build_demo_vlm

    model, processor = build_demo_vlm(seed=0)
    a = adapter_for("llava", model, processor)
    img = Image.new("RGB", (32, 32), (5, 5, 5))
    for system, has_image in ((HUMAN, True), (None, True), (HUMAN, False)):
        own = a.build_text("Is there a cup in the image?", has_image, system)
        a.chat_template = "llava_v1"
        shipped = a.build_text("Is there a cup in the image?", has_image, system)
        enc = a.encode(
            Branch(prompt="Is there a cup in the image?", image=img if has_image else None, system=system)
        )
        a.chat_template = None
        assert own == shipped
        assert (
            enc.input_ids.tolist()
            == a.encode(
                Branch(prompt="Is there a cup in the image?", image=img if has_image else None, system=system)
            ).input_ids.tolist()
        )


# --------------------------------------------------------------------------- vcdflow prompt


def test_vcdflow_prompt_subprocess_prints_one_json_line_per_branch():
    exe = Path(sys.executable).with_name("vcdflow")
    out = subprocess.run(
        [
            str(exe),
            "prompt",
            "--family",
            "llava",
            "--protocol",
            "paper",
            "--method",
            "icd",
            "--benchmark",
            "pope",
            "--question",
            Q,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert rows == [
        {"branch": "original", "text": OFFICIAL[("icd", "icd", "llava", "pope")]["original"]},
        {"branch": "disturbed", "text": OFFICIAL[("icd", "icd", "llava", "pope")]["disturbed"]},
    ]


def test_vcdflow_prompt_bad_params_exit_2_with_one_line(capsys):
    assert main(["prompt", "--family", "llava", "--method", "vcd", "--params", '{"alpah": 1}']) == 2
    cap = capsys.readouterr()
    assert cap.out == "" and cap.err.strip().splitlines() == [
        "vcdflow prompt: --params: unknown parameter 'alpah' for method 'vcd'; valid parameters: "
        + ", ".join(sorted(METHODS["vcd"].defaults))
    ]


@pytest.mark.parametrize(
    "argv, option",
    [
        (["--family", "lava", "--method", "vcd"], "--family"),
        (["--method", "vcd"], "--family"),
        (["--family", "llava", "--method", "vdc"], "--method"),
        (["--family", "llava", "--method", "vcd", "--benchmark", "popee"], "--benchmark"),
        (["--family", "llava", "--method", "vcd", "--protocol", "nope"], "--protocol"),
        (["--family", "llava", "--method", "vcd", "--params", "[1]"], "--params"),
        (["--family", "llava", "--method", "vcd", "--params", "{x"], "--params"),
        (["--family", "llava", "--method", "icd", "--params", '{"position": "qformer"}'], "--params"),
        (["--method", "vcd", "--model", "/nonexistent/dir"], "--model"),
    ],
)
def test_vcdflow_prompt_bad_values_name_the_option(argv, option, capsys):
    assert main(["prompt", *argv]) == 2
    cap = capsys.readouterr()
    lines = cap.err.strip().splitlines()
    assert cap.out == "" and len(lines) == 1 and lines[0].startswith(f"vcdflow prompt: {option}: "), lines


def test_family_of_model_reads_the_model_type(tiny, tmp_path):
    from vcdflow.protocols import family_of_model

    assert (
        family_of_model(tiny["llava"][0]) == "llava"
        and family_of_model(tiny["instructblip"][0]) == "instructblip"
    )
    with pytest.raises(ValueError, match="config.json: cannot read the model_type"):
        family_of_model(tmp_path)
    with pytest.raises(ValueError, match=r"unknown family 'auto'.*family_of_model"):
        get_protocol("unified").resolve("vcd", "auto", "pope")


def test_vcdflow_prompt_with_model_uses_its_processor(tiny, capsys):
    path, _ = tiny["llava"]
    assert main(["prompt", "--model", str(path), "--protocol", "paper", "--method", "vcd"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["branch"] for r in rows] == ["original", "noised"]
    assert rows[0]["text"] == (
        HUMAN + " USER: <image>\nIs there a dog in the image? Please answer this question "
        "with one word. ASSISTANT:"
    )  # one <image>, not 16
    assert main(["prompt", "--model", str(path), "--family", "qwen2_5_vl", "--method", "vcd"]) == 2
    assert "--family: 'qwen2_5_vl' but --model" in capsys.readouterr().err
    ib, _ = tiny["instructblip"]
    assert main(["prompt", "--model", str(ib), "--protocol", "paper", "--method", "icd"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rows[1] == {
        "branch": "disturbed",
        "text": "Is there a dog in the image?",
        "qformer": "you are a confused objects detector to provide a fuzzy overview or impression "
        "of the image",
    }


# --------------------------------------------------------------------------- the new protocols


def test_paper_of_covers_every_registered_method():
    assert set(METHODS) <= set(PAPER_OF), sorted(set(METHODS) - set(PAPER_OF))
    assert set(PAPER_OF) - set(METHODS) <= PENDING  # only methods still being written
    for method in METHODS:  # every registered method resolves under its paper protocol on every family
        proto = get_protocol(protocol_for(method, "paper"))
        for fam in FAMILIES:
            proto.resolve(method, fam, "pope")
    # no-code methods and LLM baselines run the unified setting as their "paper" run
    assert {
        m: PAPER_OF[m] for m in ("iava", "cid", "lqcd", "contrastive_search", "text_cd")
    } == dict.fromkeys(("iava", "cid", "lqcd", "contrastive_search", "text_cd"), "unified")
    assert protocol_for("vcd", "cd_rethink") == "cd_rethink" and PAPER_OF["vcd"] == "vcd"


def test_new_paper_values_flow_from_their_scripts():
    cdr = get_protocol("cd_rethink")
    apc = cdr.resolve("apc", "llava", "pope")
    # scripts/pope_infer_spurious.sh:46-48 (sampling), spurious_utils/apc_utils.py:148 (β 0.2), no top_k → 50
    assert (apc.do_sample, apc.params, apc.top_k, apc.system, apc.max_new_tokens) == (
        True,
        {"beta": 0.2},
        50,
        USER,
        1024,
    )
    v = cdr.resolve(
        "vcd", "llava", "pope"
    )  # inference/pope_infer_cd.py:159 (noise 900), vcd_utils.py:165-166
    assert (v.do_sample, v.params["noise_step"], v.params["beta"], v.parser) == (False, 900, 0.2, "vcd")
    assert (
        cdr.resolve("pba", "llava", "pope").do_sample is False
        and cdr.resolve("olm", "llava", "pope").do_sample is False
    )
    d = get_protocol("debias").resolve(
        "debias", "llava", "pope"
    )  # run_llava.sh:1,8-12; llava_calibrate.py:173
    assert (d.do_sample, d.temperature, d.seeds, d.params["beta"], d.max_new_tokens) == (
        True,
        0.2,
        (55,),
        0.2,
        64,
    )
    c = get_protocol("carve").resolve("carve", "llava", "pope")  # carve/pipeline.py:86-87,114,154
    assert (c.chat_template, c.system, c.max_new_tokens, c.do_sample) == ("carve_llava", None, 32, False)
    assert get_protocol("carve").resolve("carve", "qwen2_5_vl", "pope").chat_template == "model"
    sid = get_protocol("sid")  # pope_eval.py:91,320; eval_utils/chair_eval.py:96,248; vcd_sample.py:168
    assert [sid.resolve("sid", "llava", b).params["keep"] for b in ("pope", "chair")] == [100, 50]
    assert (
        sid.resolve("sid", "llava", "pope").params["alpha"] == 0.5
        and sid.resolve("sid", "llava", "pope").max_new_tokens == 10
    )
    only = get_protocol("only")  # eval_bench/scripts/{pope,chair}_eval.sh; experiments/cd_scripts/mme_eval.sh
    got = {
        b: (
            only.resolve("only", "llava", b).params["gamma"],
            only.resolve("only", "llava", b).params["beta"],
            only.resolve("only", "llava", b).seeds,
        )
        for b in ("pope", "chair", "mme")
    }
    assert got == {"pope": (0.2, 0.1, (42,)), "chair": (0.25, 0.1, (3407,)), "mme": (0.25, 0.4, (5,))}
    assert (
        only.resolve("only", "instructblip", "pope").max_new_tokens == 4
        and only.resolve("only", "llava", "pope").do_sample
    )
    vista = get_protocol("vista")  # run_pope.sh:10, run_chair.sh:9
    assert [vista.resolve("vista", "llava", b).params["lam"] for b in ("pope", "chair")] == [0.01, 0.17]
    deco = get_protocol("deco")  # pope_llava.py:99,118 (process_images, 5 tokens); chair_llava.py:114,168
    assert (
        deco.resolve("deco", "llava", "pope").image_preprocess,
        deco.resolve("deco", "llava", "pope").max_new_tokens,
        deco.resolve("deco", "llava", "chair").image_preprocess,
    ) == ("pad_square_mean", 5, "processor")
    rv = get_protocol("revisit")  # chair_eval_llava.py:76-77, chair_eval_qwenvl.py:73-74, eval_chair_*.sh:19
    assert [rv.resolve("revisit", f, "chair").params["layers"] for f in ("llava", "qwen2_5_vl")] == [
        "last",
        "all",
    ]
    assert rv.resolve("revisit", "llava", "chair").max_new_tokens == 512
    pai = get_protocol("pai").resolve("pai", "llava", "chair")  # README.md:82; chair_eval.py:94
    assert pai.params["gamma"] == 1.1 and pai.prompt == "Please help me describe the image in detail."
    assert (
        "did not run instructblip"
        in get_protocol("pai").resolve("pai", "instructblip", "pope").sources["family"]
    )
    dola = get_protocol("dola").resolve(
        "dola", "llava", "chair"
    )  # VASparse fork caption_generation.py:117,119,444-462
    assert (
        dola.seeds,
        dola.max_new_tokens,
        dola.params["layers"][-1],
        dola.params["repetition_penalty"],
        dola.chat_template,
        dola.system,
    ) == ((0,), 64, 30, 1.0, "halc_llava", USER)
    assert get_protocol("opera").resolve("opera", "llava", "chair").max_new_tokens == 512
    assert get_protocol("opera").resolve("opera", "llava", "pope").max_new_tokens == 10
    vti = get_protocol("vti").resolve("vti", "llava", "pope")  # MMHal only: benchmark fields from unified
    assert (
        "did not run pope" in vti.sources["benchmark"]
        and vti.prompt == get_protocol("unified").resolve("vti", "llava", "pope").prompt
    )


@pytest.mark.parametrize("name", sorted(set(PROTOCOLS) - {"unified"}))
def test_diff_against_unified_works_for_every_protocol(name):
    rows = diff(name)
    assert rows and {r["family"] for r in rows} <= set(get_protocol(name).families_run)
    for r in rows:
        assert r["a"] != r["b"] and r["source_a"] and r["source_b"], r
    fields = {r["field"] for r in rows}
    assert fields <= {
        "system",
        "chat_template",
        "prompt",
        "parser",
        "do_sample",
        "temperature",
        "top_p",
        "top_k",
        "params",
        "max_new_tokens",
        "image_preprocess",
        "seeds",
    }


def test_diff_of_new_protocols_names_their_differences():
    by = {(r["family"], r["benchmark"], r["field"]): r for r in diff("cd_rethink")}
    assert by[("llava", "pope", "system")]["a"] == USER and by[("llava", "pope", "top_k")]["a"] == 50
    assert (
        by[("llava", "pope", "prompt")]["a"]
        == "{question} Answer the question using a single word or phrase."
    )
    assert ("llava", "chair", "prompt") not in by  # cd_rethink ran no CHAIR: unified's prompt
    carve = {(r["family"], r["benchmark"], r["field"]): r for r in diff("carve")}
    assert carve[("llava", "pope", "chat_template")]["a"] == "carve_llava"
    assert carve[("qwen2_5_vl", "pope", "max_new_tokens")]["a"] == 32
    vti = {(r["benchmark"], r["field"]) for r in diff("vti")}
    assert ("pope", "prompt") not in vti and ("pope", "params") in vti
