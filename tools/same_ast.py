"""Show that a formatting or wording change is behaviour-neutral: every changed Python file parses
to the same syntax tree as before, docstrings aside.

    python tools/same_ast.py REV            # compare the working tree's .py files with REV's
    python tools/same_ast.py REV --strings  # also ignore every string constant (comment-like texts)

``ruff format`` keeps the syntax tree (it only moves tokens); a reworded docstring is not code. A
file that differs in anything else is listed with the first differing node, and the exit status is 1.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class _Strip(ast.NodeTransformer):
    def __init__(self, strings: bool):
        self.strings = strings

    def _body(self, node):
        self.generic_visit(node)
        body = node.body
        if (
            body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            node.body = body[1:] or [ast.Pass()]
        return node

    visit_Module = visit_ClassDef = visit_FunctionDef = visit_AsyncFunctionDef = _body

    def visit_Constant(self, node):
        if self.strings and isinstance(node.value, str):
            return ast.Constant(value="")
        return node


def tree(source: str, strings: bool) -> str:
    return ast.dump(_Strip(strings).visit(ast.parse(source)), include_attributes=False)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("rev", help="the commit to compare with (e.g. the one before the change)")
    ap.add_argument("--strings", action="store_true", help="ignore string constants as well as docstrings")
    args = ap.parse_args(argv)
    changed = subprocess.run(
        ["git", "diff", "--name-only", args.rev, "--", "*.py"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    bad = 0
    for rel in changed:
        path = ROOT / rel
        if not path.exists():
            continue
        shown = subprocess.run(["git", "show", f"{args.rev}:{rel}"], cwd=ROOT, capture_output=True, text=True)
        if shown.returncode:
            continue  # a new file
        a, b = tree(shown.stdout, args.strings), tree(path.read_text(), args.strings)
        if a != b:
            bad += 1
            lines_a, lines_b = a.replace("), ", "),\n").splitlines(), b.replace("), ", "),\n").splitlines()
            diff = [
                ln
                for ln in difflib.unified_diff(lines_a, lines_b, lineterm="", n=0)
                if ln[:1] in "+-" and ln[:3] not in ("+++", "---")
            ][:4]
            print(f"DIFFERS {rel}: " + " | ".join(d[:150] for d in diff))
    print(
        f"{len(changed)} changed .py files compared with {args.rev}; {bad} differ beyond docstrings"
        + (" and strings" if args.strings else "")
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
