"""``vcdflow protocol show NAME``: a protocol's resolved settings per family and benchmark, each
value with its source, before any GPU hour is spent; ``vcdflow protocol list``: the protocols.

    vcdflow protocol show opera
    vcdflow protocol show halc --method dola --family instructblip --benchmark chair
    vcdflow protocol show pai --json

For each (family, benchmark) — by default the families and benchmarks the protocol ran — it
prints every field of :class:`vcdflow.protocols.Resolved` (read from the record itself, so a field
added to it later is shown without changing this command) with ``sources[field]`` — a field that
is a record of optional settings (``data``: CHAIR image subset, POPE question-file version) one
line per declared key with ``sources[key]`` —, then the
method's effective parameters: the protocol's overrides with their source, the rest the method's
own defaults. A family or benchmark the paper did not run says so (its family- or benchmark-
specific fields come from ``unified``). ``--method`` picks the method whose mode and parameters
are shown (default: the protocol's own method, :data:`vcdflow.protocols.PAPER_OF`; ``greedy`` for
a protocol that is no method's paper). ``--json`` prints one JSON object per (family, benchmark).
A bad name prints one line naming the option (exit 2).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from typing import Any

from .base import BENCHMARKS, FAMILIES, Resolved

#: Resolved fields shown on their own (the rest are shown generically, in the record's order)
_SPECIAL = ("protocol", "sources", "params")


class UsageError(ValueError):
    """A bad option value: the message starts with the option's name."""


def own_method(name: str) -> str:
    """The method a protocol is the paper of (the first in :data:`PAPER_OF`), else ``greedy``."""
    from . import PAPER_OF

    return next((m for m, p in PAPER_OF.items() if p == name), "greedy")


def _pick(
    values: list[str] | None, valid: tuple[str, ...], default: tuple[str, ...], option: str
) -> tuple[str, ...]:
    if not values:
        return default
    if values == ["all"]:
        return valid
    bad = [v for v in values if v not in valid]
    if bad:
        raise UsageError(f"{option}: unknown value {bad[0]!r}; valid: {', '.join(valid)} (or all)")
    return tuple(dict.fromkeys(values))


def settings(
    protocol: str,
    method: str | None = None,
    families: list[str] | None = None,
    benchmarks: list[str] | None = None,
) -> list[dict]:
    """One dict per (family, benchmark): ``protocol``, ``title``, ``method``, ``family``,
    ``benchmark``, ``ran`` (the protocol's notes on the family and benchmark), ``fields``
    (``{name: {"value", "source"}}`` for every field of the resolved record but the parameters)
    and ``params`` (``{name: {"value", "source"}}``: the method's effective parameters).
    ``UsageError`` naming the option for a bad value."""
    from ..decoding.methods import METHODS
    from . import get_protocol, protocol_for

    if method is not None and method not in METHODS:
        raise UsageError(f"--method: unknown method {method!r}; valid: {', '.join(sorted(METHODS))}")
    try:
        name = protocol_for(method, protocol) if protocol == "paper" and method else protocol
        if name == "paper":
            raise ValueError("'paper' needs --method (each method's own paper protocol)")
        proto = get_protocol(name)
    except ValueError as exc:
        raise UsageError(f"NAME: {exc}") from None
    method = method or own_method(proto.name)
    fams = _pick(families, FAMILIES, tuple(proto.families_run), "--family")
    benches = _pick(
        benchmarks,
        BENCHMARKS,
        tuple(b for b in BENCHMARKS if b in proto.benchmarks_run) or BENCHMARKS,
        "--benchmark",
    )
    m = METHODS[method]
    out = []
    for fam in fams:
        for bench in benches:
            r = proto.resolve(method, fam, bench)
            src = dict(r.sources)
            shown: dict[str, dict] = {}
            used: set[str] = set()
            for f in fields(Resolved):
                if f.name in _SPECIAL:
                    continue
                value = getattr(r, f.name)
                if f.name not in src and hasattr(value, "items"):
                    # a record of optional settings (the benchmark data): one entry per declared key,
                    # each with its own source
                    for k, v in value.items():
                        shown[f"{f.name}.{k}"] = {"value": _plain(v), "source": src.get(k, "")}
                        used.add(k)
                    if not value:
                        shown[f.name] = {"value": {}, "source": "none declared: the config's setting"}
                    continue
                shown[f.name] = {"value": _plain(value), "source": src.get(f.name, "")}
                used.add(f.name)
            if "search" in shown and not shown["search"]["value"]:
                shown["search"]["source"] = (
                    "none fixed: one beam (a config entry's num_beams, or a method "
                    "that runs its own search, e.g. its beam parameters below)"
                )
            try:
                effective = m.resolve(dict(r.params))
            except (ValueError, TypeError) as exc:
                raise UsageError(f"--method: {method!r} under {proto.name!r}: {exc}") from None
            params = {
                k: {
                    "value": _plain(v),
                    "source": src.get("params", "")
                    if k in r.params
                    else f"the method's default ({type(m).__module__})",
                }
                for k, v in sorted(effective.items())
            }
            ran = {k: v for k, v in src.items() if k not in used and k != "params"}
            out.append(
                {
                    "protocol": proto.name,
                    "title": proto.title,
                    "method": method,
                    "family": fam,
                    "benchmark": bench,
                    "ran": ran,
                    "fields": shown,
                    "params": params,
                }
            )
    return out


def _plain(v: Any) -> Any:
    """JSON-able (mappings → dict, tuples → list)."""
    return json.loads(json.dumps(v, default=lambda o: dict(o) if hasattr(o, "items") else str(o)))


def _text(blocks: list[dict]) -> str:
    lines: list[str] = []
    if blocks:
        b0 = blocks[0]
        lines += [f"protocol {b0['protocol']}: {b0['title']}", f"method {b0['method']}", ""]
    for b in blocks:
        lines.append(f"== {b['family']} × {b['benchmark']}")
        for note in b["ran"].values():
            lines.append(f"   ({note})")
        for k, v in b["fields"].items():
            lines.append(f"  {k} = {json.dumps(v['value'], ensure_ascii=False)}")
            if v["source"]:
                lines.append(f"      source: {v['source']}")
        lines.append(f"  params of {b['method']}:")
        for k, v in b["params"].items():
            lines.append(f"    {k} = {json.dumps(v['value'], ensure_ascii=False)}")
            lines.append(f"        source: {v['source']}")
        lines.append("")
    return "\n".join(lines)


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``protocol`` (``show``, ``list``) on ``vcdflow``'s subparsers."""
    p = subparsers.add_parser(
        "protocol",
        help="a protocol's resolved settings with their sources",
        description=__doc__.split("\n\n")[0],
    )
    sub = p.add_subparsers(dest="protocol_command", required=True)
    s = sub.add_parser("show", help="every resolved setting per family and benchmark, each with its source")
    s.add_argument("name", help="a protocol name (vcdflow protocol list), or paper with --method")
    s.add_argument(
        "--method",
        default=None,
        help="the method whose mode and parameters are shown (default: the protocol's own)",
    )
    s.add_argument(
        "--family",
        action="append",
        default=None,
        help=f"{' | '.join(FAMILIES)} | all (repeatable; default: the families the protocol ran)",
    )
    s.add_argument(
        "--benchmark",
        action="append",
        default=None,
        help=f"{' | '.join(BENCHMARKS)} | all (repeatable; default: the benchmarks the protocol ran)",
    )
    s.add_argument("--json", action="store_true", help="one JSON object per (family, benchmark)")
    sub.add_parser("list", help="every protocol with its title and the method it is the paper of")
    return p


def run(args) -> int:
    """``vcdflow protocol``: settings on stdout; a bad value → one line on stderr, exit 2."""
    from . import PROTOCOLS

    if args.protocol_command == "list":
        for name in sorted(PROTOCOLS):
            print(f"{name}: {PROTOCOLS[name].title} (method {own_method(name)})")
        return 0
    try:
        blocks = settings(args.name, args.method, args.family, args.benchmark)
    except UsageError as exc:
        print(f"vcdflow protocol show: {exc}", file=sys.stderr)
        return 2
    if args.json:
        for b in blocks:
            print(json.dumps(b, ensure_ascii=False))
    else:
        print(_text(blocks))
    return 0
