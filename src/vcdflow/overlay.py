"""Short user configs: a config names a base config and states only what differs from it.

An overlay config holds ``base:`` and the keys it changes, e.g. one model, three methods and
POPE on top of the paper grid::

    base: paper                 # config/paper.yaml of the workflow (or a path to a YAML file)
    seeds: [42]
    models: [llava-1.5-7b]      # a list of names picks the base's entries as they are
    methods: [greedy, vcd, pai]
    benchmarks:
      pope: {splits: [random]}  # a mapping: these entries, each laid over the base's

How an overlay is laid over its base (:func:`lay_over`):

- mappings are merged key by key, recursively; any other value, lists included, replaces the
  base's (``seeds: [42]`` is the whole seed list, ``spacy_model: null`` unsets the base's);
- the grid keys ``models``, ``methods`` and ``benchmarks`` say which entries are run: the
  entries the overlay names are the grid, each one laid over the base's entry of the same name
  (a name the base lacks is a new, complete entry); a list of names takes the base's entries
  unchanged. So an overlay that names three methods runs those three, not the base's 38.
  (Merging these mappings would keep every base entry, and a short config could never leave one
  out.)

``base:`` is either a name — ``config/<name>.yaml`` of the workflow (``paper``; ``config`` is the
demo) — or a path to a YAML file, relative to the overlay's own folder, else to the working
directory. A base may name its own base; a cycle is an error. The merged config is then
validated by the workflow's schema like any other. Every error is one line naming the file and
the key (:class:`OverlayError`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

GRID_KEYS = ("models", "methods", "benchmarks")


class OverlayError(ValueError):
    """A base that cannot be found or read, or an overlay key that does not fit its base."""


def read_config(path: str | Path) -> dict:
    """The mapping a YAML config file holds (one line naming the file when it is not one, or when
    a mapping has a key twice)."""
    from .config import load_yaml_strict

    path = Path(path)
    try:
        data = load_yaml_strict(path)  # a key written twice is an error naming file and line
    except OSError as exc:
        raise OverlayError(f"config {path}: cannot be read ({exc.strerror or exc})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise OverlayError(f"config {path}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    except ValueError as exc:  # vcdflow.config.ConfigError: a duplicate key, its file and line
        raise OverlayError(str(exc)) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise OverlayError(f"config {path}: must be a mapping of config keys, not {type(data).__name__}")
    return data


def find_base(ref: Any, origin: Path | None, workflow_dir: Path) -> Path:
    """The file ``base: <ref>`` of the config file ``origin`` names (see the module docstring)."""
    where = f"config {origin}" if origin else "config"
    if not isinstance(ref, str) or not ref.strip():
        raise OverlayError(
            f"{where}: base must be a config name (paper) or a path to a YAML file, not {ref!r}"
        )
    is_path = "/" in ref or ref.endswith((".yaml", ".yml"))
    if is_path:
        candidates = ([origin.parent / ref] if origin else []) + [Path(ref)]
    else:
        candidates = [workflow_dir / "config" / f"{ref}.yaml"]
    for path in candidates:
        if path.is_file():
            return path.resolve()
    names = sorted(p.stem for p in (workflow_dir / "config").glob("*.yaml"))
    raise OverlayError(
        f"{where}: base {ref!r} not found (looked for {', '.join(map(str, candidates))}; "
        f"config names: {', '.join(names)})"
    )


def _merge(base: Any, over: Any) -> Any:
    """``over`` laid over ``base``: mappings merged recursively, anything else replaced."""
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for key, value in over.items():
            out[key] = _merge(base.get(key), value)
        return out
    return over


def lay_over(base: dict, over: dict, *, where: str = "config", base_name: str = "base") -> dict:
    """The config ``over`` states on top of ``base`` (rules in the module docstring).

    ``where`` names the overlay in errors (its file), ``base_name`` the base (its file)."""
    out = dict(base)
    for key, value in over.items():
        if key == "base":
            continue
        if key not in GRID_KEYS:
            out[key] = _merge(base.get(key), value)
            continue
        have = base.get(key) or {}
        if isinstance(value, list):
            missing = [name for name in value if not isinstance(name, str) or name not in have]
            if missing:
                raise OverlayError(
                    f"{where}: {key}: {missing[0]!r} is not an entry of {base_name} "
                    f"(its {key}: {', '.join(map(str, have)) or 'none'}); give the whole entry "
                    f"as a mapping to add it"
                )
            value = {name: None for name in value}
        if not isinstance(value, dict):
            raise OverlayError(
                f"{where}: {key} must be a mapping of entries or a list of names, not {type(value).__name__}"
            )
        out[key] = {
            name: _merge(have.get(name), entry) if entry is not None else have.get(name)
            for name, entry in value.items()
        }
        empty = [name for name, entry in out[key].items() if entry is None]
        if empty:
            raise OverlayError(f"{where}: {key}.{empty[0]} is empty and {base_name} has no such entry")
    return out


def resolve(cfg: dict, origin: str | Path | None, workflow_dir: str | Path, _chain: tuple = ()) -> dict:
    """``cfg`` (read from the file ``origin``, or None) with its ``base:`` chain laid under it; a
    config without ``base:`` comes back unchanged (without the key)."""
    origin = Path(origin).resolve() if origin else None
    if "base" not in cfg:
        return cfg
    base_path = find_base(cfg["base"], origin, Path(workflow_dir))
    chain = _chain + ((origin,) if origin else ())
    if base_path in chain:
        loop = " -> ".join(str(p) for p in (*chain, base_path))
        raise OverlayError(f"config {origin}: base cycle: {loop}")
    base = resolve(read_config(base_path), base_path, workflow_dir, chain)
    return lay_over(base, cfg, where=f"config {origin}" if origin else "config", base_name=str(base_path))


def resolve_files(cfg: dict, files: list, workflow_dir: str | Path) -> dict:
    """Snakemake's merged ``config`` (its ``--configfile`` files, then ``--config``) with the
    ``base:`` chain laid under it. The base is taken relative to the last of ``files`` that names
    one (Snakemake merges later files over earlier ones, so its ``base`` is the one in force)."""
    origin = None
    for path in files:
        if "base" in read_config(path):
            origin = path
    return resolve(cfg, origin, workflow_dir)
