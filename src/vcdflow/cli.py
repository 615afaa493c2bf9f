"""``vcdflow`` command line: the library without Snakemake.

    vcdflow methods                                   every decoding method, its defaults and source
    vcdflow build-pope INSTANCES OUT_DIR [...]        POPE question files for any COCO-format data
    vcdflow decode --model DIR --questions F --images D --method vcd --out results.jsonl [...]
    vcdflow score --results results.jsonl --metrics metrics.csv [--parser official]
    vcdflow prompt --family llava --protocol paper --method icd --benchmark pope --question "..."
                                                      the exact text of every branch (one JSON line each)
    vcdflow protocol show NAME [--method M] [--family F] [--benchmark B] [--json]
                                                      a protocol's resolved settings, each with its source

``decode`` and ``score`` cover POPE-format question files (the official line format; yours from
``build-pope`` too) with the same runner and scorer the workflow uses: the result file has the
workflow's record format and resumes from ``<out>.partial`` after an interruption.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Sequence


def _methods(args) -> int:
    from .decoding import METHODS

    for name in sorted(METHODS):
        m = METHODS[name]
        doc = (sys.modules[type(m).__module__].__doc__ or "").strip().splitlines()
        print(f"{name}: {doc[0].removeprefix(f'``{name}``: ') if doc else ''}")
        print(f"    defaults: {json.dumps(dict(m.defaults), sort_keys=True)}")
    from .models.families import matrix_text

    print(
        "\nmethod x model family (a refused pair fails with the numbered reason; the workflow leaves it out):"
    )
    print(matrix_text(METHODS))
    return 0


def _build_pope(args, rest) -> int:
    from .data import pope_builder

    pope_builder.cli(rest)
    return 0


def _run_dict(a) -> dict:
    """The run the workflow would build for these flags: :func:`vcdflow.config.pope_file_run`
    (the same ``build_run`` as ``common.smk``; a bad method, parameter or protocol raises
    ``ConfigError`` naming it)."""
    from .config import pope_file_run

    split = a.split or Path(a.questions).stem.rsplit("_", 1)[-1]
    params = _parse_params(a.params) if isinstance(a.params, str) else (a.params or {})
    return pope_file_run(
        questions=a.questions,
        images=a.images,
        model=a.model,
        method=a.method,
        label=a.label,
        split=split,
        params=params,
        do_sample=True if a.do_sample else None,
        temperature=a.temperature,
        top_p=a.top_p,
        top_k=a.top_k,
        seed=a.seed,
        prompt=a.prompt,
        max_new_tokens=a.max_new_tokens,
        n_questions=a.n_questions or None,
        dtype=a.dtype,
        protocol=getattr(a, "protocol", None) or "unified",
        batch_size=a.batch_size,
        device=a.device,
        threads=a.threads,
        family=_model_family(a.model),
    )


def _model_family(model: str) -> str:
    """The family of a local model folder (:func:`vcdflow.protocols.family_of_model`), else
    ``auto``: the model checks that follow name what is wrong with the folder."""
    from .protocols import family_of_model

    try:
        return family_of_model(model)
    except ValueError:
        return "auto"


def _parse_params(text: str | None) -> dict:
    from . import errors

    if not text:
        return {}
    try:
        params = json.loads(text)
    except json.JSONDecodeError as exc:
        raise errors.bad_params_json(text, str(exc)) from None
    if not isinstance(params, dict):
        raise errors.UsageError(f"--params: expected a JSON object, got {text!r}; e.g. '{{\"alpha\": 1.0}}'")
    return params


def _decode(a) -> int:
    from . import errors, validate
    from .runner import prepare_shard

    params = _parse_params(a.params)
    # Paths first (no torch import: a wrong path fails in a fraction of a second), then the
    # method and its parameters, then the items; run_shard repeats it all under the output lock.
    validate.check_paths(
        {"questions": a.questions, "images": a.images},
        flags={"questions": "--questions", "images": "--images"},
    )
    validate.check_model({"path": a.model})
    validate.check_params(a.method, params)  # names, types, ranges: before the model loads
    from .decoding import get_method
    from .decoding.engine import check_keywords

    try:  # --top-k & co. without --do-sample (or for a greedy-only method) would be ignored
        check_keywords(get_method(a.method), a.do_sample, a.temperature, a.top_p, a.top_k)
    except ValueError as exc:
        raise errors.UsageError(f"{exc} (--do-sample, --temperature, --top-p, --top-k)") from None
    from .protocols import PROTOCOLS

    if a.protocol not in ("unified", "paper", *PROTOCOLS):
        raise errors.UsageError(
            f"--protocol: unknown protocol {a.protocol!r}; valid: unified, paper, "
            f"{', '.join(sorted(set(PROTOCOLS) - {'unified'}))}"
        )
    try:
        run = _run_dict(a)
    except errors.UserError:
        raise
    except (ValueError, KeyError, TypeError) as exc:
        raise errors.UsageError(str(exc)) from exc
    prepare_shard(run, check_params=False)
    from .gpu import gpu_lease
    from .runner import run_shard

    progress = sys.stderr.isatty()
    if a.device == "cpu":
        import torch

        torch.set_num_threads(a.threads)
        run_shard(run, a.out, progress=progress)
    else:
        with gpu_lease(run["gpu_lock_dir"], log=lambda msg: print(msg, file=sys.stderr)):
            import torch  # after CUDA_VISIBLE_DEVICES is set, as in the workflow's decode.py

            torch.set_num_threads(a.threads)
            run_shard(run, a.out, progress=progress)
    print(a.out)
    return 0


def _score(a) -> int:
    from . import errors
    from .io import read_jsonl
    from .scoring import score_file

    results = Path(a.results)
    if not results.is_file():
        raise errors.path_missing(
            "result file", results, "check --results (`vcdflow decode --out` writes it)"
        )
    try:
        records = read_jsonl(results)
    except (ValueError, UnicodeDecodeError) as exc:
        raise errors.results_bad(results, str(exc)) from exc
    if not records:
        raise errors.results_bad(results, "no records")
    # split and seed as decode wrote them (item ids are pope/<split>/<question_id>), unless given
    splits = {
        str(r.get("item_id", "")).split("/")[1] for r in records if str(r.get("item_id", "")).count("/") >= 2
    }
    seeds = {r.get("seed") for r in records}
    split = a.split or (splits.pop() if len(splits) == 1 else "all")
    seed = a.seed if a.seed is not None else (seeds.pop() if len(seeds) == 1 and None not in seeds else 0)
    bench = {"name": "pope", "split": split, "parser": a.parser}
    stem = results.name[: -len(".jsonl")] if results.name.endswith(".jsonl") else results.name
    scored = a.scored or str(results.with_name(stem + ".scored.jsonl"))
    try:
        scores = score_file(
            bench, results, scored, a.metrics, model=a.model_name, method=a.method_name, seed=seed
        )
    except errors.UserError:
        raise
    except (KeyError, TypeError) as exc:
        raise errors.results_bad(
            results, f"a record lacks a field the POPE scorer needs ({type(exc).__name__}: {exc})"
        ) from exc
    print(json.dumps({k: v for k, v in scores.items() if v is not None}, sort_keys=True))
    return 0


class _StderrHandler(logging.StreamHandler):
    """Logs to whatever ``sys.stderr`` is at the time (a rule's log file, pytest's capture)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


class _CliFormatter(logging.Formatter):
    def format(self, record):
        msg = record.getMessage()
        return f"vcdflow: {'warning: ' if record.levelno >= logging.WARNING else ''}{msg}"


def _setup_logging(debug: bool) -> None:
    """Library log lines (resume, error rows, where the output went) on stderr."""
    lg = logging.getLogger("vcdflow")
    handler = next((h for h in lg.handlers if isinstance(h, _StderrHandler)), None)
    if handler is None:
        handler = _StderrHandler()
        handler.setFormatter(_CliFormatter())
        lg.addHandler(handler)
    handler.setLevel(logging.DEBUG if debug else logging.INFO)
    if lg.getEffectiveLevel() > handler.level:
        lg.setLevel(handler.level)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vcdflow",
        description=__doc__.split("\n\n")[0],
        epilog="Bad input ends in one line on stderr (exit status 2: a wrong option, "
        "1: a bad input file); --debug or VCDFLOW_DEBUG=1 adds the traceback.",
    )
    p.add_argument("--debug", action="store_true", help="show the traceback of an expected error too")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser(
        "methods",
        help="list the decoding methods with their defaults, then the method x model "
        "family matrix (runs / refused and why)",
    )
    from .protocols.cli import add_parser as _add_prompt_parser  # vcdflow prompt

    _add_prompt_parser(sub)
    from .protocols.show import add_parser as _add_protocol_parser  # vcdflow protocol show / list

    _add_protocol_parser(sub)
    sub.add_parser(
        "build-pope", help="POPE questions from a COCO instances file (see --help of it)", add_help=False
    )

    d = sub.add_parser("decode", help="decode a POPE-format question file with one method")
    d.add_argument("--model", required=True, help="model folder (save_pretrained layout)")
    d.add_argument("--questions", required=True, help="POPE-format question file")
    d.add_argument("--images", required=True, help="image folder")
    d.add_argument("--out", required=True, help="result JSONL (resumes from <out>.partial)")
    d.add_argument("--split", default=None, help="default: last _part of the file name")
    d.add_argument("--method", default="greedy")
    d.add_argument("--label", default=None, help="method label in the records (default: --method)")
    d.add_argument(
        "--params",
        default=None,
        help="method parameters as JSON, e.g. '{\"alpha\": 1}'; a method's "
        'inputs are parameters too (local paths): text_cd "amateur", vti "directions", halc '
        '"detector", "scorer", "tagger"',
    )
    d.add_argument("--do-sample", action="store_true")
    d.add_argument("--temperature", type=float, default=1.0)
    d.add_argument("--top-p", type=float, default=1.0)
    d.add_argument("--top-k", type=int, default=None)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument(
        "--protocol",
        default="unified",
        help="unified (default) | paper (the method's own paper) | a protocol name; "
        "`vcdflow prompt` shows the texts it gives",
    )
    d.add_argument("--prompt", default="{question} Please answer this question with one word.")
    d.add_argument("--max-new-tokens", type=int, default=8)
    d.add_argument("--n-questions", type=int, default=None, help="seeded subsample (file order kept)")
    d.add_argument("--batch-size", type=int, default=16)
    d.add_argument("--dtype", default="float32")
    d.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    d.add_argument("--threads", type=int, default=1)
    d.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="traceback of errors too")

    s = sub.add_parser("score", help="POPE metrics of a result file (long-format CSV)")
    s.add_argument("--results", required=True)
    s.add_argument(
        "--metrics", required=True, help="output CSV: benchmark,split,model,method,seed,metric,value"
    )
    s.add_argument("--scored", default=None, help="per-item outcomes (default: <results>.scored.jsonl)")
    from .benchmarks import get_benchmark

    s.add_argument("--parser", default="official", choices=list(get_benchmark("pope").parsers))
    s.add_argument("--split", default=None, help="default: from the records' item ids")
    s.add_argument("--model-name", default="model")
    s.add_argument("--method-name", default="method")
    s.add_argument("--seed", type=int, default=None, help="default: the records' seed")
    s.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="traceback of errors too")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from . import errors

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["build-pope"]:
        return _build_pope(None, argv[1:])
    a = parser().parse_args(argv)
    if a.command == "methods":
        return _methods(a)
    if a.command == "prompt":  # vcdflow.protocols.cli
        from .protocols.cli import run as _prompt

        return _prompt(a)
    if a.command == "protocol":  # vcdflow.protocols.show
        from .protocols.show import run as _protocol

        return _protocol(a)
    debug = errors.debug_enabled(a.debug)
    _setup_logging(debug)
    prog = f"vcdflow {a.command}"
    if a.command == "decode":
        try:
            return errors.guard(
                prog,
                lambda: _decode(a),
                debug=debug,
                output=a.out,
                kept=f"nothing is lost: {a.out}.partial keeps every finished record and the "
                f"rerun resumes from it",
            )
        except KeyboardInterrupt:
            print(
                f"{prog}: interrupted; rerun the same command to resume from {a.out}.partial", file=sys.stderr
            )
            return 130
    return errors.guard(
        prog,
        lambda: _score(a),
        debug=debug,
        output=a.metrics,
        kept=f"nothing is lost: {a.results} is untouched",
    )


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
