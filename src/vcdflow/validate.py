"""Checks of a decode run before its checkpoint is touched (:func:`vcdflow.runner.run_shard`).

Everything that can be checked up front is: the method and its parameters (names, types,
ranges), the benchmark's input files and folders, the items (a questions file that is not JSON
or lacks a key), whether any of the images exists, the model folder (``config.json``, weights).
A failure is a :class:`vcdflow.errors.UsageError` / :class:`~vcdflow.errors.InputError` with one
line naming the culprit — raised before the ``.partial`` file is read, renamed or rewritten, so
bad input never costs checkpointed work.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Mapping

from . import errors

#: benchmark keys that name an input file or folder (checked when present)
_PATH_KEYS = {
    "questions": ("questions file", "file"),
    "images": ("images folder", "dir"),
    "captions": ("captions file", "file"),
    "root": ("benchmark folder", "dir"),
}


def check_params(method: str, params: Any, *, where: str = "--params") -> dict[str, Any]:
    """The resolved parameters of ``method``; :class:`~vcdflow.errors.UsageError` otherwise,
    worded by ``Method.resolve`` (names, types — naming the method, the parameter, the expected
    type and the given value —, None and ranges)."""
    from .decoding import METHODS

    if method not in METHODS:
        raise errors.unknown_method(method, METHODS)
    if params is None:
        params = {}
    if not isinstance(params, Mapping):
        raise errors.UsageError(f"{where}: expected a JSON object, got {params!r}")
    try:
        return METHODS[method].resolve(params)
    except errors.UserError:
        raise
    except (ValueError, TypeError, KeyError) as exc:
        raise errors.bad_param(str(exc), where) from exc


def check_paths(bench: Mapping[str, Any], flags: Mapping[str, str] | None = None) -> None:
    """Every input path the benchmark slice names exists (and is a file/folder as it should).
    The message points at ``flags[key]`` (the CLI: ``--questions``) or the config key
    ``benchmarks.<name>.<key>``."""
    for key, (what, kind) in _PATH_KEYS.items():
        value = bench.get(key)
        if not value or not isinstance(value, (str, os.PathLike)):
            continue
        where = (flags or {}).get(key) or f"benchmarks.{bench.get('name', '?')}.{key} in the config"
        p = Path(value)
        if not p.exists():
            raise errors.path_missing(what, p, f"check {where}")
        if kind == "dir" and not p.is_dir():
            raise errors.InputError(f"{what} {p} is not a folder; check {where}")
        if kind == "file" and not p.is_file():
            raise errors.InputError(f"{what} {p} is not a file; check {where}")


def load_items_checked(bench: Mapping[str, Any], load: Callable[[], list[dict]]) -> list[dict]:
    """``load()`` with a loader's complaint (bad JSON, missing key, unknown label) turned into an
    :class:`~vcdflow.errors.InputError` naming the file."""
    try:
        return load()
    except errors.UserError:
        raise
    except (ValueError, FileNotFoundError, KeyError, TypeError, UnicodeDecodeError) as exc:
        source = bench.get("questions") or bench.get("captions") or bench.get("root") or bench.get("name")
        if isinstance(exc, KeyError):
            problem = f"missing key {exc.args[0]!r}" if exc.args else "missing key"
        else:
            problem = str(exc)
        if bench.get("kind", bench.get("name")) == "pope" or bench.get("questions"):
            raise errors.questions_bad(source, problem) from exc
        raise errors.InputError(f"{source}: {problem}; fix the benchmark's input files") from exc


def check_images(
    items: list[dict], folder: str | os.PathLike | None = None, *, contrast_image: bool = False
) -> None:
    """At least one of the items' images exists, and so does one of each kind of contrast image
    they name (``contrast_image_path``: the input of a method that reads one, ``contrast_image``
    true; ``contrast_images``: the
    ConVis reconstructions). A single missing image is that item's error row; all of one kind
    missing (two or more named) is a wrong folder or a lost input of the whole run, refused
    before any decoding."""
    paths = [it.get("image_path") for it in items if it.get("image_path")]
    if paths and not any(os.path.exists(p) for p in paths):
        raise errors.no_images_found(folder or os.path.dirname(paths[0]), len(paths), paths[0])
    kinds = {
        "contrast image": [
            it["contrast_image_path"] for it in items if contrast_image and it.get("contrast_image_path")
        ],
        "ConVis reconstruction": [p for it in items for p in it.get("contrast_images") or []],
    }
    for what, paths in kinds.items():
        # one named file that is missing is that item's typo (an error row); several, none there,
        # is a lost folder
        if len(paths) > 1 and not any(os.path.exists(p) for p in paths):
            raise errors.InputError(
                f"none of the {len(paths)} {what} files the items name exists (e.g. "
                f"{paths[0]}); every item needs them — restore that folder (or rerun the "
                f"step that writes them) and rerun"
            )


def _amateur_input(path) -> None:
    p = Path(path).expanduser()
    if not p.is_dir():
        raise errors.MissingInput(
            f"amateur model folder {p} does not exist; text_cd needs it (the workflow's "
            f"rule train_amateur or a download places it; `vcdflow decode`: "
            f"--params '{{\"amateur\": DIR}}')"
        )
    check_model_dir(p)


def _vti_input(path) -> None:
    from .steering_fit import load_directions

    try:
        load_directions(path)
    except ValueError as exc:  # names the file already
        raise errors.InputError(
            f"{exc}; params.directions names it (workflow: rule fit_vti writes it)"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - torch.load of a cut or foreign file raises many kinds
        raise errors.InputError(
            f"VTI directions file {path}: torch.load cannot read it ({type(exc).__name__}: cut "
            f"short or not a directions file); expected the file rule fit_vti writes "
            f"(vcdflow.steering_fit.save_directions) — refit it"
        ) from exc


def _halc_input(paths) -> None:
    for name, path in zip(("detector", "scorer", "tagger"), paths):
        p = Path(path).expanduser()
        if not p.is_dir():
            raise errors.MissingInput(
                f"HALC {name} folder {p} does not exist (the workflow's rule "
                f"download_halc_aux fetches it; `vcdflow decode`: --params {name})"
            )
        meta = p / "meta.json"
        if (p / "config.json").exists():
            check_model_dir(p)
        elif meta.is_file():
            try:
                json.loads(meta.read_text(encoding="utf-8"))
            except (ValueError, UnicodeDecodeError) as exc:
                raise errors.model_config_bad(meta, f"not valid JSON ({exc})") from exc


#: extra method input kind (vcdflow.config.METHOD_INPUTS) -> its check before any decoding: an
#: input every item reads fails the whole run naming it, instead of one error row per item
METHOD_INPUT_CHECKS: dict[str, Callable[[Any], None]] = {
    "amateur_model": _amateur_input,
    "vti_directions": _vti_input,
    "halc_aux": _halc_input,
}


def check_method_inputs(inputs: Mapping[str, Any]) -> None:
    """Each extra input of the run (``run["inputs"]``: kind -> path) is there and readable."""
    for kind, path in sorted((inputs or {}).items()):
        check = METHOD_INPUT_CHECKS.get(kind)
        if check is not None:
            check(path)


def check_model(model: Mapping[str, Any]) -> None:
    """A local model folder is complete (``config.json`` parses, weights intact); hub ids are
    checked when they are fetched."""
    path = model.get("path")
    if path and looks_local(path):
        check_model_dir(path)


def check_run(run: Mapping[str, Any]) -> None:
    """Parameter and path checks of a run slice (no items, no model)."""
    method = run.get("method") or {}
    check_params(method.get("method"), method.get("params"), where=f"method {method.get('label')!r}")
    check_paths(run.get("benchmark") or {})


def looks_local(name_or_dir: str | os.PathLike) -> bool:
    """True when ``name_or_dir`` is meant as a local folder rather than a hub id (``org/name``)."""
    name = str(name_or_dir)
    return Path(name).expanduser().exists() or name.startswith((".", "/", "~")) or name.count("/") != 1


def check_model_dir(path: str | os.PathLike) -> Path:
    """Cheap checks of a local model folder before anything is loaded; each failure is a
    :class:`vcdflow.errors.InputError` naming the file: the folder exists, ``config.json`` is
    complete JSON, every ``.safetensors`` file (and every shard its index names) has an intact
    header and all the tensor bytes the header promises."""
    path = Path(path).expanduser()
    if not path.exists():
        raise errors.model_missing(path)
    if not path.is_dir():
        raise errors.model_not_dir(path)
    cfg = path / "config.json"
    if not cfg.is_file():
        raise errors.model_config_bad(cfg, "missing")
    try:
        json.loads(cfg.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        detail = (
            f"{exc.msg} at line {exc.lineno} column {exc.colno}"
            if isinstance(exc, json.JSONDecodeError)
            else str(exc)
        )
        raise errors.model_config_bad(cfg, f"not valid JSON ({detail}; cut short?)") from exc
    files = sorted(path.glob("*.safetensors"))
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text(encoding="utf-8")).get("weight_map", {}).values())
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as exc:
            raise errors.model_config_bad(index, f"not a valid weight index ({exc})") from exc
        for name in sorted(shards):
            if not (path / name).is_file():
                raise errors.model_weights_bad(path / name, f"missing; {index.name} names it")
    for f in files:
        problem = _safetensors_problem(f)
        if problem:
            raise errors.model_weights_bad(f, problem)
    return path


def _safetensors_problem(f: Path) -> str | None:
    """Why ``f`` is not an intact safetensors file (None when its header and size agree)."""
    size = f.stat().st_size
    if size < 8:
        return f"{size} bytes, shorter than the 8-byte header length"
    with open(f, "rb") as fh:
        n = int.from_bytes(fh.read(8), "little")
        if 8 + n > size:
            return f"header of {n} bytes runs past the end of the {size}-byte file; truncated?"
        try:
            header = json.loads(fh.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError):
            return "header is not valid JSON"
    if not isinstance(header, dict):
        return "header is not a JSON object"
    end = 0
    for key, info in header.items():
        if key == "__metadata__":
            continue
        try:
            end = max(end, int(info["data_offsets"][1]))
        except (KeyError, TypeError, ValueError, IndexError):
            return f"tensor {key!r} has no valid data_offsets"
    if 8 + n + end > size:
        return f"the header promises {8 + n + end} bytes, the file has {size}; truncated?"
    return None


def check_records(path, records: list[dict], bench: Mapping[str, Any]) -> None:
    """A result file is scored only when it is one: every record has an ``item_id``, none twice,
    and a label the benchmark knows (its registry entry's ``extra["labels"]``, POPE: yes/no);
    :class:`~vcdflow.errors.InputError` naming the file, the line and the item."""
    from .benchmarks import get_benchmark

    labels = get_benchmark(bench.get("kind") or bench["name"]).extra.get("labels")
    seen: dict[str, int] = {}
    for n, rec in enumerate(records, 1):
        item = rec.get("item_id") if isinstance(rec, Mapping) else None
        if item is None:
            raise errors.results_bad(path, f"line {n}: a record without item_id")
        if item in seen:
            raise errors.results_bad(path, f"line {n}: item {item!r} appears twice (also line {seen[item]})")
        seen[item] = n
        if labels and rec.get("label") not in labels:
            raise errors.results_bad(
                path,
                f"line {n}: item {item!r} has label {rec.get('label')!r}, expected one "
                f"of {', '.join(map(repr, labels))}",
            )
