"""Paper protocols as data: ``PROTOCOLS[name]`` → a frozen :class:`Protocol` (one file per paper).

A protocol fixes everything *around* a method that decides a result: the conversation template
and system text per model family, the benchmark prompt templates and suffixes, the answer parser,
the decoding mode and warpers (temperature, top-p, top-k — including library defaults an official
script silently inherited), per-family method hyper-parameters, ``max_new_tokens``, image
preprocessing, seeds and subsets. Every value carries its source (``repo/path:line``).

Two kinds of run:

* ``protocol: unified`` (the default): one shared setting for every method — the fair comparison;
* ``protocol: paper``: each method under its own paper's protocol (:data:`PAPER_OF`) — the
  reproduction. A named protocol (``vcd``, ``icd``, …) can also be chosen per method.

CONTRACT (used by the workflow, the runner and the CLI; keep these names):

* ``PROTOCOLS: dict[str, Protocol]``; ``get_protocol(name) -> Protocol`` (``ValueError`` naming
  the unknown name and listing the valid ones);
* ``PAPER_OF: dict[str, str]`` engine method name → its paper's protocol name;
  ``protocol_for(method, choice) -> str`` resolves ``"paper"`` / ``"unified"`` / a name;
* ``Protocol.resolve(method=, family=, benchmark=, mode=) -> Resolved`` where ``benchmark`` is
  the benchmark *kind* (``pope``, ``chair``, ``mme``, ``amber``) and ``mode`` is ``greedy`` or
  ``sample`` (``None``: the protocol's own mode for that method);
* ``Resolved`` (frozen): ``protocol, system, chat_template, prompt, parser, do_sample,
  temperature, top_p, top_k, params, max_new_tokens, image_preprocess, seeds, sources``
  (``prompt`` holds ``{question}``; ``params`` are method-parameter overrides on top of the
  method's defaults; ``chat_template`` names a template shipped in
  ``vcdflow/protocols/templates/`` or ``"model"`` for the model's own; ``image_preprocess`` is
  ``"processor"`` or ``"pad_square_mean"``; ``sources`` maps each field name to its citation);
* ``Resolved.as_dict()`` → a JSON-able dict (goes into the run record and the result hash);
* ``diff(a, b) -> list[dict]`` per (family, benchmark, field) how protocol ``a`` differs from
  ``b`` (the report lists paper protocols against ``unified``);
* ``preprocess_image(image, how, mean) -> PIL.Image``.

Also (additions, same module): ``family_of_model(path)`` (a model folder's family — what
``family: auto`` stands for; ``resolve`` needs a real family), ``Resolved.format_prompt(question)``,
``FAMILY_TEMPLATE`` and ``render``/``render_text`` (the shipped chat templates), and the adapters'
``chat_template`` attribute (``vcdflow.models.adapters.FamilyAdapter.chat_template``: set it to
``Resolved.chat_template`` unless that is ``"model"``).
"""

from __future__ import annotations

import json

from .base import BENCHMARKS, FAMILIES, FIELDS, MODES, Protocol, Resolved, S, diff
from .chat import FAMILY_TEMPLATE, load_template, render, render_text, template_names
from .images import expand2square, preprocess_image
from . import avisc, code, convis, icd, llava_eval, m3id, ritual, selfaug, unified, vcd, vdd
from . import (
    carve,
    cd_rethink,
    debias,
    deco,
    dola,
    halc,
    only,
    opera,
    pai,
    revisit,
    sid,
    vasparse,
    vista,
    vti,
)

#: every protocol by name (one file per paper, plus ``unified``)
PROTOCOLS: dict[str, Protocol] = {
    p.name: p
    for p in (
        unified.PROTOCOL,
        vcd.PROTOCOL,
        icd.PROTOCOL,
        ritual.PROTOCOL,
        m3id.PROTOCOL,
        vdd.PROTOCOL,
        selfaug.PROTOCOL,
        avisc.PROTOCOL,
        code.PROTOCOL,
        convis.PROTOCOL,
        llava_eval.PROTOCOL,
        # cd_rethink controls, the second wave and the third-wave baselines
        cd_rethink.PROTOCOL,
        debias.PROTOCOL,
        carve.PROTOCOL,
        revisit.PROTOCOL,
        vasparse.PROTOCOL,
        dola.PROTOCOL,
        deco.PROTOCOL,
        pai.PROTOCOL,
        sid.PROTOCOL,
        only.PROTOCOL,
        vti.PROTOCOL,
        vista.PROTOCOL,
        opera.PROTOCOL,
        halc.PROTOCOL,
        vasparse.SCRIPT,
    )
}

#: engine method → its paper's protocol (what ``protocol: paper`` runs). Methods without a paper
#: of their own map to the paper whose protocol they are the baseline or control of:
#:
#: * ``greedy``, ``sample`` → ``vcd``: VCD's "Regular" baseline is plain sampling in VCD's own
#:   script (``--use_cd`` off), and its appendix greedy baseline the same setting decoded greedily;
#: * ``vcd_legacy`` → ``vcd`` (the same paper, its pre-fix KV-cache behaviour);
#: * ``apc``, ``pba``, ``olm`` → ``cd_rethink``: the controls of "The Mirage of Performance Gains"
#:   run in that paper's setting (conv ``vicuna_v1``, APC-only at β = 0.2 sampling; PBA/OLM greedy);
#:   VCD *in cd_rethink's setting* (noise 900, β = 0.2) is the ``vcd`` method with ``protocol:
#:   cd_rethink`` named explicitly (``vcd``'s own paper stays ``vcd``);
#: * ``dola`` → ``dola``: DoLa's own repository has no LVLM benchmark; its protocol is the HALC
#:   harness as forked by VASparse (``-b 1``: DoLa-greedy), where the LVLM tables' DoLa comes from;
#: * ``iava``, ``cid``, ``lqcd`` → ``unified``: no code and no readable evaluation setting (IAVA's
#:   code was withdrawn, CID has no LVLM benchmark, LQCD's leading-query templates are unread), so
#:   their paper runs are the unified one (nothing to reproduce beyond it);
#: * ``contrastive_search``, ``text_cd`` → ``unified``: LLM baselines (Su et al.; Li et al. /
#:   O'Brien & Lewis) that no LVLM harness we read runs on POPE/CHAIR/MME/AMBER;
#: * ``contrast`` (your own contrast input) → ``unified``: no paper.
#:
#: ``llava_eval`` (LLaVA-1.5's own evaluation: conv ``vicuna_v1``, greedy, pad-to-square) is no
#: method's paper; name it to run a method in LLaVA's own setting. A method missing here (a new
#: one) has no paper protocol: ``protocol_for(m, "paper")`` raises until it is added.
#: Entries may name methods still being written (their protocol's ``params`` are checked against
#: ``METHODS[m].defaults`` once the method is registered; tests/test_protocols.py).
PAPER_OF: dict[str, str] = {
    "vcd": "vcd",
    "vcd_legacy": "vcd",
    "greedy": "vcd",
    "sample": "vcd",
    "icd": "icd",
    "ritual": "ritual",
    "m3id": "m3id",
    "vdd": "vdd",
    "selfaug": "selfaug",
    "avisc": "avisc",
    "code": "code",
    "convis": "convis",
    "contrast": "unified",
    "apc": "cd_rethink",
    "pba": "cd_rethink",
    "olm": "cd_rethink",
    "debias": "debias",
    "carve": "carve",
    "iava": "unified",
    "cid": "unified",
    "lqcd": "unified",
    "revisit": "revisit",
    "vasparse": "vasparse",
    "dola": "dola",
    "deco": "deco",
    "pai": "pai",
    "sid": "sid",
    "only": "only",
    "vti": "vti",
    "vista": "vista",
    "opera": "opera",
    "halc": "halc",
    "contrastive_search": "unified",
    "text_cd": "unified",
}


def get_protocol(name: str) -> Protocol:
    """The protocol called ``name``; ``ValueError`` naming it and listing the valid ones."""
    if isinstance(name, Protocol):
        return name
    if name not in PROTOCOLS:
        raise ValueError(
            f"unknown protocol {name!r}; valid protocols: {', '.join(sorted(PROTOCOLS))} "
            f"(or 'paper' for each method's own)"
        )
    return PROTOCOLS[name]


def family_of_model(path) -> str:
    """The family (``llava``, ``instructblip``, ``qwen2_5_vl``) of a model folder, from its
    ``config.json`` ``model_type`` (what ``family: auto`` means); ``ValueError`` naming the file."""
    from pathlib import Path

    from ..models.families import BY_MODEL_TYPE as MODEL_TYPES

    cfg = Path(path) / "config.json"
    try:
        model_type = json.loads(cfg.read_text()).get("model_type")
    except (OSError, ValueError) as exc:
        raise ValueError(f"{cfg}: cannot read the model_type: {exc}") from None
    if model_type not in MODEL_TYPES:
        raise ValueError(f"{cfg}: unsupported model_type {model_type!r}; supported: {', '.join(MODEL_TYPES)}")
    return MODEL_TYPES[model_type].name


def protocol_for(method: str, choice: str | None = "unified") -> str:
    """Resolve a run's protocol choice for ``method``: ``"unified"`` (also None), ``"paper"`` (the
    method's own paper, :data:`PAPER_OF`; a method with no entry → ``ValueError`` naming it) or a
    protocol name (checked)."""
    if choice is None or choice == "unified":
        return "unified"
    if choice == "paper":
        if method not in PAPER_OF:
            raise ValueError(f"method {method!r} has no paper protocol; known: {', '.join(sorted(PAPER_OF))}")
        return PAPER_OF[method]
    return get_protocol(choice).name


__all__ = [
    "BENCHMARKS",
    "FAMILIES",
    "FAMILY_TEMPLATE",
    "FIELDS",
    "MODES",
    "PAPER_OF",
    "PROTOCOLS",
    "Protocol",
    "Resolved",
    "S",
    "diff",
    "expand2square",
    "family_of_model",
    "get_protocol",
    "load_template",
    "preprocess_image",
    "protocol_for",
    "render",
    "render_text",
    "template_names",
]
