"""Expected failures and the one-line messages users see (command line and workflow scripts).

Two kinds of error are *expected* and reach the user as one line naming the culprit (file, key,
item), what was expected and what to do — never a traceback:

* :class:`UsageError` (exit status 2): a command-line option that cannot work (``--params``
  that is not a JSON object, an unknown parameter, a value of the wrong type or range);
* :class:`InputError` (exit status 1): an input file or folder that is missing or malformed (the
  questions file, the images folder, the model directory, its ``config.json`` or weights, a torn
  result file) or an output another process is writing (:class:`OutputLocked`).

Both subclass ``ValueError`` so library callers that catch ``ValueError`` keep working. Every
other exception is an internal error and keeps its traceback. :func:`guard` is the single place
that turns an expected error into its line: ``vcdflow decode``/``score`` and the workflow's
``decode.py``/``score.py`` all go through it; ``--debug`` or ``VCDFLOW_DEBUG=1`` adds the
traceback.

The builders below (``bad_param_type``, ``model_missing``…) are the texts; the table in
``docs/troubleshooting.md`` lists them.
"""

from __future__ import annotations

import errno
import os
import sys
import traceback
from typing import Any, Callable


class UserError(ValueError):
    """An expected failure caused by the input; ``str(exc)`` is the whole one-line message."""

    exit_code = 1

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))  # always one line


class InputError(UserError):
    """A missing or malformed input file/folder (exit status 1)."""

    exit_code = 1


class MissingInput(InputError, FileNotFoundError):
    """An input file or folder that does not exist (also a ``FileNotFoundError``)."""


class UsageError(UserError):
    """A command-line option or parameter that cannot work (exit status 2)."""

    exit_code = 2


class OutputLocked(InputError):
    """Another live process holds ``<output>.lock``."""


def debug_enabled(flag: bool = False) -> bool:
    """``--debug`` given, or ``VCDFLOW_DEBUG`` set to 1/true/yes."""
    return bool(flag) or os.environ.get("VCDFLOW_DEBUG", "").strip().lower() in ("1", "true", "yes", "on")


#: errno values of an output that cannot be written (disk full, quota, read-only, no permission,
#: file size limit): the user's to fix, not a bug
WRITE_ERRNOS = frozenset(
    getattr(errno, n) for n in ("ENOSPC", "EDQUOT", "EROFS", "EACCES", "EPERM", "EFBIG") if hasattr(errno, n)
)


def guard(
    prog: str,
    fn: Callable[[], int | None],
    *,
    debug: bool = False,
    output: Any = None,
    kept: str | None = None,
    echo: Any = None,
) -> int:
    """Run ``fn``; an expected error prints ``<prog>: error: <message>`` on stderr (the rule's
    log in a workflow script) and returns its exit status (``--debug``/``VCDFLOW_DEBUG=1``: the
    traceback first); anything else propagates with its traceback.

    An output that cannot be written (:data:`WRITE_ERRNOS`: disk full, read-only folder) is an
    expected error too: one line naming the file (the error's, else ``output``) and what is kept
    (``kept``, e.g. the checkpoint that a rerun resumes from); exit status 1. ``echo``: a second
    stream for the line (a workflow script's console, when stderr is the rule's log)."""

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)
        if echo is not None and echo is not sys.stderr:
            print(line, file=echo, flush=True)

    try:
        rc = fn()
        return 0 if rc is None else int(rc)
    except UserError as exc:
        if debug_enabled(debug):
            traceback.print_exc(file=sys.stderr)
        say(f"{prog}: error: {exc}")
        return exc.exit_code
    except OSError as exc:
        if exc.errno not in WRITE_ERRNOS:
            raise
        if debug_enabled(debug):
            traceback.print_exc(file=sys.stderr)
        say(f"{prog}: error: {write_failed(exc, output, kept)}")
        return 1


def write_failed(exc: OSError, output: Any = None, kept: str | None = None) -> InputError:
    """The line of an output that cannot be written: the file, why, and that nothing is lost."""
    path = exc.filename or output or "the output"
    return InputError(
        f"cannot write {path}: {exc.strerror or exc} (disk full or a read-only folder?); "
        f"{kept or 'nothing already written is lost'} — free space or fix the folder's "
        f"permissions and rerun the same command"
    )


# --------------------------------------------------------------------------- message builders


def bad_params_json(text: str, problem: str) -> UsageError:
    return UsageError(
        f"--params: not valid JSON ({problem}) in {text!r}; expected a JSON object such as "
        f"'{{\"alpha\": 1.0}}'"
    )


def bad_param(problem: str, where: str = "--params") -> UsageError:
    """A parameter problem found by ``Method.resolve`` (unknown name, type, range, None)."""
    return UsageError(f"{where}: {problem}")


def unknown_method(name: str, valid) -> UsageError:
    return UsageError(f"unknown method {name!r}; valid: {', '.join(sorted(valid))} (see `vcdflow methods`)")


def questions_bad(path, problem: str) -> InputError:
    """``problem`` as the item loader words it (it already names the file and line)."""
    problem = str(problem)
    where = "" if problem.startswith(str(path)) else f"{path}: "
    return InputError(
        f"{where}{problem}; expected a POPE question file (one JSON object per line with "
        f"question_id, image, text, label) — fix the file and rerun"
    )


def path_missing(what: str, path, fix: str) -> InputError:
    return MissingInput(f"{what} {path} does not exist; {fix}")


def no_images_found(folder, n: int, example) -> InputError:
    return InputError(
        f"images folder {folder}: none of the {n} images the questions name exists "
        f"(e.g. {example}); expected the folder that holds them — check --images (benchmarks.<name>.images in a "
        f"workflow config)"
    )


def model_missing(path) -> InputError:
    return MissingInput(
        f"model directory {path} does not exist; expected a save_pretrained folder "
        f"(config.json + weights) — check --model (models.<name>.path in a workflow config)"
    )


def model_not_dir(path) -> InputError:
    return InputError(
        f"model path {path} is not a directory; expected a save_pretrained folder "
        f"(config.json + weights) — check --model (models.<name>.path in a workflow config)"
    )


def model_config_bad(path, problem: str) -> InputError:
    return InputError(
        f"{path}: {problem}; expected the model's JSON config — restore it from the "
        f"original download or save_pretrained"
    )


def model_weights_bad(path, problem: str) -> InputError:
    return InputError(
        f"{path}: corrupt weights file ({problem}); re-download the model or re-save it with save_pretrained"
    )


def model_load_failed(path, exc: BaseException) -> InputError:
    return InputError(
        f"model {path} could not be loaded ({type(exc).__name__}: {exc}); check that the "
        f"folder is a complete save_pretrained model"
    )


def results_bad(path, problem: str) -> InputError:
    problem = str(problem)
    where = "" if problem.startswith(str(path)) else f"{path}: "
    return InputError(
        f"{where}{problem}; expected one JSON record per line as `vcdflow decode` writes "
        f"them — the file is cut or edited (decode writes it atomically): write it again "
        f"(rerun `vcdflow decode` with the same options, or delete it and rerun the workflow)"
    )


def output_locked(output, lock, holder: str) -> OutputLocked:
    return OutputLocked(
        f"{output} is being written by another process ({holder}; lock {lock}); "
        f"wait for it to finish or stop it — two writers would interleave one output"
    )
