"""Fail when code, tests, workflow or docs cite the planning documents' shorthand instead of words.

The engine's capabilities were numbered in method surveys that are not in this repository, and
this project's issues by number; a reader of the code has neither. Say what is meant: "beam
search", not its capability number; "the multi-image branch", not a section sign and a section
number of a survey; no issue numbers of this project. Citations of upstream sources stay (a
paper's section, "AvisC issue #12", "snakemake issue #281").

    python tools/no_shorthand.py      # lists each line; exit 1 if there is one (run by `make lint`)
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: capability numbers (E1…E20, E14v); section references into the method surveys; this project's
#: issue numbers; the surveys' wave labels
SHORTHAND = re.compile(
    r"\bE(?:1?[0-9]|20)v?\b"
    r"|methods-[23](?:\.md)?`*\s*§|§1\.\d"
    r"|\b[Ii]ssues? \d+\b|\b[Ii]ssues? #1[3-7]\b"
    r"|\bH[23]:"
)
SCAN = ("src", "tests", "workflow", "benchmarks", "docs", "config", "profiles", "Snakefile", "README.md")
SUFFIXES = {".py", ".md", ".smk", ".yaml", ".yml", ".sh", ""}


def findings(root: Path = ROOT) -> list[str]:
    out = []
    for top in SCAN:
        base = root / top
        if not base.exists():
            continue
        files = [base] if base.is_file() else sorted(p for p in base.rglob("*") if p.is_file())
        for path in files:
            # build outputs (bytecode, the egg-info an editable install writes) are not the source
            if path.suffix not in SUFFIXES or any(
                part == "__pycache__" or part.endswith(".egg-info") for part in path.parts
            ):
                continue
            try:
                text = path.read_text()
            except UnicodeDecodeError:
                continue
            for n, line in enumerate(text.splitlines(), 1):
                if SHORTHAND.search(line):
                    out.append(f"{path.relative_to(root)}:{n}: {line.strip()[:120]}")
    return out


def main() -> int:
    found = findings()
    for line in found:
        print(line)
    if found:
        print(f"{len(found)} line(s) cite shorthand: say in words what it stands for", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
