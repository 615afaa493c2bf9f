"""``vcdflow prompt``: the exact text every branch of a method feeds the model, before any GPU hour.

    vcdflow prompt --family llava --protocol paper --method icd --benchmark pope \\
        --question "Is there a dog in the image?"

prints one JSON object per branch and line, ``{"branch": name, "text": ...}``: the chat template
applied, ``<image>`` standing for the family's image placeholder (one, unexpanded: LLaVA's
``<image>``, Qwen2.5-VL's ``<|image_pad|>``). InstructBLIP lines also carry ``"qformer"``, the
Q-Former's instruction (its 32 query outputs are prepended to the LLM text by the processor and
are not written). A method's preparatory queries come first (Self-Aug's ``sas`` query, CODE's
``describe`` query); a contrast branch that depends on their answer shows a placeholder
(``<description>``; Self-Aug's augmentation is the parser's fallback, noise — the text is the same
for every augmentation). A method whose contrast branches are built from the model's own outputs
(its ``prepare`` stage, e.g. ``carve``, ``iava``) shows its original branch, with a note on stderr.

Without ``--model`` the family's official template shipped with the package is used
(``vcdflow/protocols/templates``); ``--model DIR`` uses that model's processor (its own chat
template where the protocol says ``model``, and its image token). ``--params`` overrides method
parameters on top of the protocol's. Bad values print one line naming the option and exit 2.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from types import SimpleNamespace
from typing import Any

from .base import BENCHMARKS, FAMILIES

PLACEHOLDER = "<image>"
#: image placeholder tokens written by the shipped templates / processors → shown as ``<image>``
_IMAGE_TOKENS = ("<|image_pad|>", "<image>")


class UsageError(ValueError):
    """A bad option value: ``option`` names it."""

    def __init__(self, option: str, message: str):
        super().__init__(f"{option}: {message}")
        self.option = option


def _processor_adapter(model_dir: str, family: str | None):
    """(family, adapter) from a model folder without loading the weights: the family's adapter
    class over the folder's processor (``build_text`` needs only the processor)."""
    from pathlib import Path

    from ..models.adapters import ADAPTERS
    from ..models.loading import _load_processor

    from . import family_of_model

    path = Path(model_dir)
    if not (path / "config.json").is_file():
        raise UsageError("--model", f"{model_dir}: no config.json (expected a save_pretrained folder)")
    try:
        fam = family_of_model(path)
    except ValueError as exc:
        raise UsageError("--model", str(exc)) from None
    if family is not None and family != fam:
        raise UsageError("--family", f"{family!r} but --model {model_dir} is a {fam} model")
    try:
        processor = _load_processor(path, fam)
    except Exception as exc:  # noqa: BLE001 - reported as one line
        raise UsageError(
            "--model", f"{model_dir}: cannot load its processor: {type(exc).__name__}: {exc}"
        ) from None
    adapter = ADAPTERS[fam].__new__(ADAPTERS[fam])  # no weights: text building needs the processor only
    adapter.processor = processor
    adapter.tokenizer = getattr(processor, "tokenizer", processor)
    return fam, adapter


def _show(text: str, image_token: str | None) -> str:
    """The family's placeholder → one ``<image>`` (a processor-expanded run collapses to one)."""
    for tok in ((image_token,) if image_token else ()) + _IMAGE_TOKENS:
        if tok and tok in text:
            text = re.sub(f"(?:{re.escape(tok)})+", PLACEHOLDER, text)
    return text


def branch_texts(
    family: str | None,
    method: str,
    benchmark: str = "pope",
    question: str = "",
    protocol: str = "unified",
    params: dict | None = None,
    model: str | None = None,
) -> list[dict]:
    """What ``vcdflow prompt`` prints, as a list of ``{"branch", "text"[, "qformer"]}``.
    ``UsageError`` (naming the option) for a bad value."""
    import torch
    from PIL import Image

    from ..decoding.methods import METHODS
    from ..decoding.types import BranchContext, Request
    from . import get_protocol, protocol_for
    from .chat import FAMILY_TEMPLATE, render_text

    adapter = None
    if model is not None:
        family, adapter = _processor_adapter(model, family)
    if family not in FAMILIES:
        raise UsageError("--family", f"unknown family {family!r}; valid: {', '.join(FAMILIES)}")
    if method not in METHODS:
        raise UsageError("--method", f"unknown method {method!r}; valid: {', '.join(sorted(METHODS))}")
    if benchmark not in BENCHMARKS:
        raise UsageError("--benchmark", f"unknown benchmark {benchmark!r}; valid: {', '.join(BENCHMARKS)}")
    try:
        proto = get_protocol(protocol_for(method, protocol))
    except ValueError as exc:
        raise UsageError("--protocol", str(exc)) from None
    res = proto.resolve(method, family, benchmark)
    m = METHODS[method]
    try:
        p = m.resolve({**res.params, **(params or {})})
    except (ValueError, TypeError) as exc:
        raise UsageError("--params", str(exc)) from None

    if adapter is not None:
        adapter.chat_template = None if res.chat_template == "model" else res.chat_template
        image_token = str(getattr(adapter.processor, "image_token", None) or "") or None

        def text_of(b) -> str:
            return adapter.build_text(b.prompt, b.image is not None, b.system)
    else:
        if res.chat_template == "model" and family not in FAMILY_TEMPLATE:
            raise UsageError(
                "--family",
                f"{family}: vcdflow ships no copy of its chat template; pass --model "
                f"<its model folder> to show the model's own",
            )
        template = FAMILY_TEMPLATE[family] if res.chat_template == "model" else res.chat_template
        image_token = None

        def text_of(b) -> str:
            return render_text(template, b.prompt, b.image is not None, b.system)

    image = Image.new("RGB", (64, 48), (128, 128, 128))
    request = Request(
        image=image,
        prompt=res.format_prompt(question),
        system=res.system,
        item_id="prompt",
        contrast_image=image,  # `contrast`/`cid`: your contrast image (same text)
        contrast_images=[image] * 4 if method == "convis" else None,
    )
    stub = adapter or SimpleNamespace(family=family, unk_token="<unk>")
    ctx = BranchContext(
        params=p,
        rng=torch.Generator().manual_seed(0),
        adapter=stub,
        do_sample=res.do_sample,
        prepared={"sas_reply": "", "description": "<description>", "keep": None},
    )
    pre: list[Any] = []
    if method == "selfaug" and p.get("augmentation") is None:
        from ..decoding.methods.selfaug import _PROMPT_FLAGS, sas_prompt, sas_question

        reason, icl = _PROMPT_FLAGS[p["sas_prompt"]]
        pre.append(
            SimpleNamespace(
                name="sas",
                prompt=sas_prompt(sas_question(request.prompt, p), reason, icl),
                image=None,
                system=request.system,
                qformer_prompt=None,
            )
        )
    elif method == "code":
        pre.append(
            SimpleNamespace(
                name="describe",
                prompt=p["description_prompt"],
                image=request.image,
                system=request.system,
                qformer_prompt=None,
            )
        )
    try:
        branches = list(m.branches(request, ctx))
    except ValueError as exc:  # e.g. icd position=qformer on a non-InstructBLIP family
        raise UsageError("--params" if params else "--method", str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - branches built from model outputs (prepare stage)
        print(
            f"vcdflow prompt: note: method {method!r} builds its contrast branches from the model's own "
            f"outputs ({type(exc).__name__}: {exc}); only the original branch is shown",
            file=sys.stderr,
        )
        branches = [m.original(request)]
    rows = []
    for b in pre + branches:
        text = _show(text_of(b), image_token)
        row = {"branch": b.name, "text": text}
        if family == "instructblip":
            row["qformer"] = b.qformer_prompt if b.qformer_prompt is not None else text
        rows.append(row)
    return rows


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``prompt`` on ``vcdflow``'s subparsers."""
    p = subparsers.add_parser(
        "prompt",
        help="print the exact text each branch of a method feeds the model",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("--family", default=None, help=f"{' | '.join(FAMILIES)} (default: from --model)")
    p.add_argument(
        "--protocol", default="unified", help="unified | paper | a protocol name (default: unified)"
    )
    p.add_argument("--method", default="greedy", help="a decoding method (vcdflow methods)")
    p.add_argument("--benchmark", default="pope", help=f"{' | '.join(BENCHMARKS)} (default: pope)")
    p.add_argument("--question", default="Is there a dog in the image?", help="the item's question")
    p.add_argument(
        "--model", default=None, help="model folder: use its processor (default: the shipped template)"
    )
    p.add_argument("--params", default=None, help="method parameters as JSON, e.g. '{\"alpha\": 1}'")
    return p


def run(args) -> int:
    """``vcdflow prompt``: one JSON line per branch on stdout; a bad value → one line, exit 2."""
    try:
        params = None
        if args.params is not None:
            try:
                params = json.loads(args.params)
            except ValueError as exc:
                raise UsageError("--params", f"not JSON: {exc}") from None
            if not isinstance(params, dict):
                raise UsageError("--params", f"expected a JSON object, got {args.params!r}")
        if args.family is None and args.model is None:
            raise UsageError("--family", f"required without --model; one of {', '.join(FAMILIES)}")
        rows = branch_texts(
            args.family, args.method, args.benchmark, args.question, args.protocol, params, args.model
        )
    except UsageError as exc:
        print(f"vcdflow prompt: {exc}", file=sys.stderr)
        return 2
    for row in rows:
        print(json.dumps(row, ensure_ascii=False))
    return 0
