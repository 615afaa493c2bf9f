"""Score every result of one (model, protocol, method label, mode), or of a batch of labels
(config ``group_labels``), in one job (config ``group_decode``): per result, per-item outcomes
and metric rows, as rule score writes them."""

import sys

from vcdflow.shim import start

log = start(snakemake)  # noqa: F821

from vcdflow import errors  # noqa: E402
from vcdflow.io import read_jsonl  # noqa: E402
from vcdflow.scoring import score_file  # noqa: E402

smk = snakemake  # noqa: F821


def score(part):
    results = part["results"]
    try:
        read_jsonl(results)
    except (ValueError, UnicodeDecodeError) as exc:
        raise errors.results_bad(results, str(exc)) from exc
    scores = score_file(
        part["bench"],
        results,
        part["scored"],
        part["metrics"],
        model=part["model"],
        method=part["method"],
        seed=int(part["seed"]),
    )
    log.info("%s: %s", results, scores)


for part in smk.params.parts:
    rc = errors.guard(
        f"score {part['results']}",
        lambda: score(part),
        echo=sys.__stderr__,
        output=part["metrics"],
        kept=f"nothing is lost: {part['results']} is untouched",
    )
    if rc:
        if sys.stderr is not sys.__stderr__:
            print(f"score {part['results']}: see {smk.log[0]}", file=sys.__stderr__)
        sys.exit(rc)
