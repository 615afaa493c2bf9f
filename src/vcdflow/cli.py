"""``vcdflow`` command line: the library without Snakemake.

    vcdflow methods                                   every decoding method, its defaults and source
    vcdflow build-pope INSTANCES OUT_DIR [...]        POPE question files for any COCO-format data
    vcdflow decode --model DIR --questions F --images D --method vcd --out results.jsonl [...]
    vcdflow score --results results.jsonl --metrics metrics.csv [--parser official]

``decode`` and ``score`` cover POPE-format question files (the official line format; yours from
``build-pope`` too) with the same runner and scorer the workflow uses: the result file has the
workflow's record format and resumes from ``<out>.partial`` after an interruption.
"""

from __future__ import annotations

import argparse
import json
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
    return 0


def _build_pope(args, rest) -> int:
    from .data import pope_builder

    pope_builder.cli(rest)
    return 0


def _run_dict(a) -> dict:
    """The run slice the workflow's common.smk builds (run_config), from command-line flags."""
    split = a.split or Path(a.questions).stem.rsplit("_", 1)[-1]
    do_sample = a.do_sample or a.method == "sample"  # as the workflow's method_config
    return {
        "benchmark": {"name": "pope", "split": split, "questions": a.questions, "images": a.images,
                      "prompt": a.prompt, "max_new_tokens": a.max_new_tokens,
                      **({"n_questions": a.n_questions} if a.n_questions else {})},
        "model": {"name": Path(a.model).name, "path": a.model, "family": "auto", "dtype": a.dtype,
                  "batch_size": a.batch_size, "prompt_suffix": {}, "revision": "local"},
        "method": {"label": a.label or a.method, "method": a.method,
                   "mode": "sample" if do_sample else "greedy", "do_sample": do_sample,
                   "temperature": a.temperature, "top_p": a.top_p, "top_k": a.top_k,
                   "params": json.loads(a.params) if a.params else {}, "prompt_suffix": {}},
        "seed": a.seed, "device": a.device, "threads": a.threads, "gpu_lock_dir": ".vcdflow/gpu-locks",
    }


def _decode(a) -> int:
    from .decoding import METHODS
    from .gpu import gpu_lease
    from .runner import run_shard

    if a.method not in METHODS:
        raise SystemExit(f"vcdflow decode: unknown method {a.method!r}; valid: {', '.join(sorted(METHODS))}")
    try:
        run = _run_dict(a)
        if not isinstance(run["method"]["params"], dict):
            raise ValueError(f"expected a JSON object, got {a.params!r}")
        METHODS[a.method].resolve(run["method"]["params"])  # bad parameters fail before the model loads
    except (ValueError, KeyError, TypeError) as exc:
        raise SystemExit(f"vcdflow decode: --params: {exc}") from None
    if a.device == "cpu":
        import torch

        torch.set_num_threads(a.threads)
        run_shard(run, a.out)
    else:
        with gpu_lease(run["gpu_lock_dir"], log=lambda msg: print(msg, file=sys.stderr)):
            import torch  # after CUDA_VISIBLE_DEVICES is set, as in the workflow's decode.py

            torch.set_num_threads(a.threads)
            run_shard(run, a.out)
    print(a.out)
    return 0


def _score(a) -> int:
    from .scoring import score_file

    from .io import read_jsonl

    results = Path(a.results)
    records = read_jsonl(results)
    # split and seed as decode wrote them (item ids are pope/<split>/<question_id>), unless given
    splits = {str(r.get("item_id", "")).split("/")[1] for r in records if str(r.get("item_id", "")).count("/") >= 2}
    seeds = {r.get("seed") for r in records}
    split = a.split or (splits.pop() if len(splits) == 1 else "all")
    seed = a.seed if a.seed is not None else (seeds.pop() if len(seeds) == 1 and None not in seeds else 0)
    bench = {"name": "pope", "split": split, "parser": a.parser}
    stem = results.name[: -len(".jsonl")] if results.name.endswith(".jsonl") else results.name
    scored = a.scored or str(results.with_name(stem + ".scored.jsonl"))
    scores = score_file(bench, results, scored, a.metrics, model=a.model_name, method=a.method_name, seed=seed)
    print(json.dumps({k: v for k, v in scores.items() if v is not None}, sort_keys=True))
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vcdflow", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("methods", help="list the decoding methods with their defaults")
    from .protocols.cli import add_parser as _add_prompt_parser  # vcdflow prompt
    _add_prompt_parser(sub)
    sub.add_parser("build-pope", help="POPE questions from a COCO instances file (see --help of it)",
                   add_help=False)

    d = sub.add_parser("decode", help="decode a POPE-format question file with one method")
    d.add_argument("--model", required=True, help="model folder (save_pretrained layout)")
    d.add_argument("--questions", required=True, help="POPE-format question file")
    d.add_argument("--images", required=True, help="image folder")
    d.add_argument("--out", required=True, help="result JSONL (resumes from <out>.partial)")
    d.add_argument("--split", default=None, help="default: last _part of the file name")
    d.add_argument("--method", default="greedy")
    d.add_argument("--label", default=None, help="method label in the records (default: --method)")
    d.add_argument("--params", default=None, help='method parameters as JSON, e.g. \'{"alpha": 1}\'')
    d.add_argument("--do-sample", action="store_true")
    d.add_argument("--temperature", type=float, default=1.0)
    d.add_argument("--top-p", type=float, default=1.0)
    d.add_argument("--top-k", type=int, default=None)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--prompt", default="{question} Please answer this question with one word.")
    d.add_argument("--max-new-tokens", type=int, default=8)
    d.add_argument("--n-questions", type=int, default=None, help="seeded subsample (file order kept)")
    d.add_argument("--batch-size", type=int, default=16)
    d.add_argument("--dtype", default="float32")
    d.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    d.add_argument("--threads", type=int, default=1)

    s = sub.add_parser("score", help="POPE metrics of a result file (long-format CSV)")
    s.add_argument("--results", required=True)
    s.add_argument("--metrics", required=True, help="output CSV: benchmark,split,model,method,seed,metric,value")
    s.add_argument("--scored", default=None, help="per-item outcomes (default: <results>.scored.jsonl)")
    s.add_argument("--parser", default="official", choices=["official", "opera", "vcd"])
    s.add_argument("--split", default=None, help="default: from the records' item ids")
    s.add_argument("--model-name", default="model")
    s.add_argument("--method-name", default="method")
    s.add_argument("--seed", type=int, default=None, help="default: the records' seed")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["build-pope"]:
        return _build_pope(None, argv[1:])
    a = parser().parse_args(argv)
    if a.command == "methods":
        return _methods(a)
    if a.command == "prompt":  # vcdflow.protocols.cli
        from .protocols.cli import run as _prompt
        return _prompt(a)
    if a.command == "decode":
        return _decode(a)
    return _score(a)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
