"""Score one result file into per-item outcomes and metric rows.

A torn or malformed result file ends the job with the one-line message of
:mod:`vcdflow.errors` in the rule's log (``VCDFLOW_DEBUG=1`` adds the traceback).
"""

import sys

from vcdflow.shim import start

log = start(snakemake)  # noqa: F821

from vcdflow import errors  # noqa: E402
from vcdflow.io import read_jsonl  # noqa: E402
from vcdflow.scoring import score_file  # noqa: E402

w = snakemake.wildcards  # noqa: F821
results = snakemake.input.results  # noqa: F821


def score():
    try:
        read_jsonl(results)
    except (ValueError, UnicodeDecodeError) as exc:
        raise errors.results_bad(results, str(exc)) from exc
    scores = score_file(
        snakemake.params.bench,  # noqa: F821
        results,
        snakemake.output.scored,  # noqa: F821
        snakemake.output.metrics,  # noqa: F821
        model=w.model,
        method=w.method,
        seed=int(w.seed),
    )
    log.info("scores: %s", scores)


rc = errors.guard(
    f"score {results}",
    score,
    echo=sys.__stderr__,
    output=snakemake.output.metrics,  # noqa: F821
    kept=f"nothing is lost: {results} is untouched",
)
if rc:
    if sys.stderr is not sys.__stderr__:
        print(f"score {results}: see {snakemake.log[0]}", file=sys.__stderr__)  # noqa: F821
    sys.exit(rc)
