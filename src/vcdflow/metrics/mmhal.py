"""MMHal-Bench (Sun et al., LLaVA-RLHF, 2023): 96 open questions on OpenImages images in 8
question types, each answer rated 0-6 by a chat judge against the human answer and the image's
object labels; a rating below 3 means the answer hallucinates.

Data (HF dataset ``Shengcao1006/MMHal-Bench``): ``response_template.json`` — a list of 96
records (``question_type, question_topic, image_id, image_src, image_content`` (a list of
labels), ``question, gt_answer, model_answer``) — and ``images/`` holding each ``image_src``'s
file name. Items keep file order: the official per-type average assumes it (type = position % 8).

Official scoring: the dataset's ``eval_gpt4.py``; the copy read here is the same authors'
``llava-rlhf/LLaVA-RLHF Eval/eval_gpt_mmhal.py`` (commit 830a083; the HF dataset repository was
not retrievable from this machine). One user message ``TEMPLATE.format(", ".join(image_content),
question, gt_answer, model_answer)`` (:6-74, :95-96), temperature 0.0 (:107), official judge
``gpt-4-0314`` (:81). Rating: the ``s`` in 0..6 for which ``f"rating: {s}"`` occurs in the
lower-cased reply; zero or several matches count as 0 (:127-137). ``hallucination`` = rating < 3
(:139-144). ``score`` = mean rating (:152), ``hallucination_rate`` = share hallucinating — the
official prints a fraction (:153), here it is in percent like every other rate; ``score_<type>``
= mean rating per question type, type = (position in the 96-record file) % 8 (:146-154), named
``attribute, adversarial, comparison, counting, relation, environment, holistic, other`` (the
dataset's order).

Every judged row carries ``judge``; :func:`vcdflow.metrics.judge.judged_by` gives the label to
write beside the numbers. Records with ``error`` set count in ``n_errors`` and are not judged.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from .judge import Judge, judge_rows, judged_by, single_judge, join_records

__all__ = [
    "TEMPLATE",
    "GPT_MODEL_OFFICIAL",
    "TEMPERATURE",
    "QUESTION_TYPES",
    "load_items",
    "judge_prompt",
    "parse_rating",
    "judge_items",
    "score_items",
    "score",
    "judged_by",
]

TEMPLATE = (  # llava-rlhf/LLaVA-RLHF Eval/eval_gpt_mmhal.py:6-74 (4 '{}' slots)
    "Please act as an impartial and objective judge and evaluate the quality of the response provided by a Large Multimodal Model (LMM) to the user question. Your evaluation should be mainly based on whether the response is informative, and whether the response contains any hallucination. Hallucination, in this context, refers to a situation where the LMM generates a response that includes information not present or implied in the image or previous conversation. A hallucination could be a false claim about an object, action, emotion, or any other detail that is not grounded in the image.\n"
    "\n"
    "For clarity, consider these examples:\n"
    "\n"
    "### Example 1:\n"
    "- Image Contents: Lynx, Cat\n"
    "- Question: How many cats can you see in this image?\n"
    "- Standard Human-Generated Answer: There are two cats visible in the image.\n"
    "- LMM Response to Evaluate: There is one cat in the image.\n"
    "- Analysis: The LMM's response is false because it claims there is only one cat in the image, when in fact there are two.\n"
    "- Hallucination: Yes.\n"
    "\n"
    "### Example 2:\n"
    "- Image Contents: Tree, Plant, Panda, Animal\n"
    "- Question: What can you see from this photo?\n"
    "- Standard Human-Generated Answer: In this photo we can see branches. We can see a panda on a branch. The background is blurry.\n"
    "- LMM Response to Evaluate: In the photo, I can see a large black and white panda sitting on a tree branch. The image captures the panda's unique appearance and its natural habitat, showcasing the beauty and rarity of these animals.\n"
    "- Analysis: The LMM's response is not false because it does not make any false claims about the image contents. For example, it does not claim that the panda is eating bamboo.\n"
    "- Hallucination: No.\n"
    "\n"
    "### Example 3:\n"
    "- Image Contents: Fashion accessory, Mammal, Dog, Umbrella\n"
    "- Question: Describe this image in details.\n"
    "- Standard Human-Generated Answer: In this picture I can see a dog laying under a yellow umbrella on a beach, and there is a rope on the right side. In the background I can see few persons talking or lying. At the top of the image, I can see the blue and clear sky.\n"
    "- LMM Response to Evaluate: The image features a brown dog laying on the sand at the beach, underneath a yellow umbrella. The dog is positioned near the water, and there are people in the background. The beach is sandy, and the sun is shining, creating a pleasant atmosphere. The dog is enjoying the shade provided by the umbrella, which is a common way to protect pets from the sun's harmful rays. The presence of people in the background suggests that the beach is a popular spot for leisure activities, such as sunbathing, swimming, and relaxing.\n"
    "- Analysis: The LMM's response is false because it claims that the dog is positioned near the water, but there is no water in the image.\n"
    "- Hallucination: Yes.\n"
    "\n"
    "### Example 4:\n"
    "- Image Contents: Clothing, Luggage and bags, Man, Building, Woman, Person\n"
    "- Question: Where is this photo taken?\n"
    '- Standard Human-Generated Answer: From the slogan "Welcome to Houston, Texas", we can infer that this photo is taken at an airport in Houston, Texas.\n'
    "- LMM Response to Evaluate: This photo is taken at an airport, specifically at the entrance of a terminal. However, the specific location of this airport cannot be determined from the image.\n"
    '- Analysis: Although the LMM\'s response does not explicitly mention the location "Houston, Texas" and does not perfectly answer the question, it makes no false claims about the image contents. Therefore, this response is not considered hallucination. It is OK if the LMM fails to directly answer the question, expresses uncertainty, or cannot include all the objects or details in the human-generated answer.\n'
    "- Hallucination: No.\n"
    "\n"
    "### Example 5:\n"
    "- Image Contents: Tree, Tower\n"
    "- Question: What environmental concerns are involved in this photo?\n"
    "- Standard Human-Generated Answer: This photo shows a smokestack emitting smoke. It may cause severe air pollution which threatens human health.\n"
    "- LMM Response to Evaluate: In the photo, there are several environmental concerns related to the smokestack emitting smoke. The smoke from the smokestack is a byproduct of industrial processes, which can contribute to air pollution, climate change, and negative impacts on human health. The smoke contains harmful pollutants, such as particulate matter, sulfur dioxide, nitrogen oxides, and carbon monoxide, which can lead to respiratory problems, heart disease, and other health issues. Additionally, the smoke contributes to the greenhouse effect, which can lead to global warming and climate change. The smokestack's emissions also affect the environment, as they can harm wildlife, vegetation, and ecosystems. Therefore, it is essential to address these environmental concerns by implementing measures to reduce emissions and promote sustainable practices in industrial processes.\n"
    "- Analysis: Although the LMM's response is significantly longer than the standard human-generated answer, it does not contain any false claims about the image contents. Instead, it provides additional general information about the environmental concerns, which can be inferred from the smoke emission. Such detailed analysis or reasoning should be considered as a positive aspect, as long as it contains no false claims.\n"
    "- Hallucination: No.\n"
    "\n"
    "With these examples in mind, please help me evaluate whether the response by the LMM is informative, and whether hallucination exists in it, based on the comparison between the LMM's response and the factual information provided in the image contents, question, and the standard human-generated answer below.\n"
    "\n"
    "Please note that the standard human-generated answer may only contain factual information but may not give a detailed analysis. Also, the standard human-generated answer may not be completely comprehensive in describing all the objects and their attributes, so please be a bit more cautious during evalutation. LMM's detailed analysis or reasoning should be encouraged.\n"
    "\n"
    "To evaluate the LMM responses, first, begin your evaluation by providing a short explanation. Second, after providing your explanation, you must rate the response by choosing from the following options:\n"
    "- Rating: 6, very informative with good analysis or reasoning, no hallucination\n"
    "- Rating: 5, very informative, no hallucination\n"
    "- Rating: 4, somewhat informative, no hallucination\n"
    "- Rating: 3, not informative, no hallucination\n"
    "- Rating: 2, very informative, with hallucination\n"
    "- Rating: 1, somewhat informative, with hallucination\n"
    "- Rating: 0, not informative, with hallucination\n"
    "\n"
    "### Image Contents\n"
    "{}\n"
    "\n"
    "### Question\n"
    "{}\n"
    "\n"
    "### Standard Human-Generated Answer\n"
    "{}\n"
    "\n"
    "### LMM Response to Evaluate\n"
    "{}\n"
)
GPT_MODEL_OFFICIAL = "gpt-4-0314"  # eval_gpt_mmhal.py:81
TEMPERATURE = 0.0  # :107
QUESTION_TYPES = (
    "attribute",
    "adversarial",
    "comparison",
    "counting",
    "relation",
    "environment",
    "holistic",
    "other",
)
_KEYS = ("question_type", "image_src", "image_content", "question", "gt_answer")


def load_items(
    json_file: str | os.PathLike,
    image_dir: str | os.PathLike | None = None,
    *,
    prefix: str = "mmhal/",
    check_images: bool = False,
) -> list[dict]:
    """Items in file order. Keys: ``item_id`` (``mmhal/<position>``), ``index`` (position),
    ``image`` (file name of ``image_src``), ``image_path``, ``image_id``, ``question_id``
    (position), ``question``, ``gt_answer``, ``image_content`` (list), ``question_type``,
    ``question_topic``, ``label`` (None)."""
    path = Path(json_file)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"mmhal: {path} not found") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of records")
    img_dir = Path(image_dir) if image_dir is not None else path.parent / "images"
    items = []
    for i, d in enumerate(data):
        missing = [k for k in _KEYS if k not in d]
        if missing:
            raise ValueError(f"{path}[{i}]: missing key(s) {missing}")
        if not isinstance(d["image_content"], list):
            raise ValueError(f"{path}[{i}]: image_content must be a list of labels")
        name = str(d["image_src"]).rstrip("/").rsplit("/", 1)[-1]
        img = img_dir / name
        if check_images and not img.is_file():
            raise FileNotFoundError(f"{path}[{i}]: image {img} missing")
        items.append(
            {
                "item_id": f"{prefix}{i}",
                "index": i,
                "image": name,
                "image_path": str(img),
                "image_id": d.get("image_id", name),
                "question_id": i,
                "question": d["question"],
                "gt_answer": d["gt_answer"],
                "image_content": list(d["image_content"]),
                "question_type": d["question_type"],
                "question_topic": d.get("question_topic"),
                "label": None,
            }
        )
    return items


def judge_prompt(image_content: Sequence[str], question: str, gt_answer: str, answer: str) -> str:
    """eval_gpt_mmhal.py:95-96."""
    return TEMPLATE.format(", ".join(image_content), question, gt_answer, answer)


def parse_rating(reply: str) -> tuple[int, bool]:
    """(rating, parsed): eval_gpt_mmhal.py:127-137 — exactly one ``rating: s`` (s in 0..6) in the
    lower-cased reply, else (0, False)."""
    low = reply.lower()
    found = [s for s in range(7) if f"rating: {s}" in low]
    return (found[0], True) if len(found) == 1 else (0, False)


def _join(records, items):
    return join_records(
        records,
        items,
        bench="mmhal",
        title="an MMHal-Bench",
        required=("index", "image_content", "question", "gt_answer"),
    )


def judge_items(records, items, judge: Judge | Mapping[str, Any], *, workers: int = 1) -> list[dict]:
    """Ask ``judge`` the official rating question for every non-error record; adds
    ``judge_reply`` and ``judge`` to each (``score`` reads them)."""

    def build(row):
        return [
            {
                "role": "user",
                "content": judge_prompt(
                    row["image_content"], row["question"], row["gt_answer"], row.get("answer") or ""
                ),
            }
        ]

    return judge_rows(_join(records, items), judge, build, workers=workers, temperature=TEMPERATURE)


def score_items(records, items=None) -> list[dict]:
    """Per judged record: ``item_id, index, question_type`` (by position % 8), ``rating``,
    ``parsed``, ``hallucination`` (0/1), ``judge``."""
    rows = []
    for it in _join(records, items):
        if it.get("error"):
            continue
        if "judge_reply" not in it:
            raise KeyError(f"mmhal: record {it['item_id']!r} has no judge_reply (run judge_items first)")
        s, ok = parse_rating(it["judge_reply"])
        rows.append(
            {
                "item_id": it["item_id"],
                "index": int(it["index"]),
                "question_type": QUESTION_TYPES[int(it["index"]) % 8],
                "rating": s,
                "parsed": ok,
                "hallucination": 0 if s >= 3 else 1,
                "judge": it.get("judge"),
            }
        )
    return rows


def score(
    records: Iterable[Mapping[str, Any]], items: Sequence[Mapping[str, Any]] | None = None
) -> dict[str, float]:
    """``score`` (mean rating 0-6), ``hallucination_rate`` (percent), ``score_<type>`` for the
    8 types, ``n`` (judged), ``n_parse_failures``, ``n_errors``."""
    records = list(records)
    rows = score_items(records, items)
    if rows:
        single_judge(rows, "mmhal")
    n = len(rows)
    out = {
        "score": sum(r["rating"] for r in rows) / n if n else math.nan,
        "hallucination_rate": 100.0 * sum(r["hallucination"] for r in rows) / n if n else math.nan,
    }
    for t in QUESTION_TYPES:
        v = [r["rating"] for r in rows if r["question_type"] == t]
        out[f"score_{t}"] = sum(v) / len(v) if v else math.nan
    out["n"] = float(n)
    out["n_parse_failures"] = float(sum(1 for r in rows if not r["parsed"]))
    out["n_errors"] = float(sum(1 for r in records if r.get("error")))
    return out
