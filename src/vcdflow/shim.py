"""Start of every workflow script shim: stderr (logging, tqdm) goes to the rule's log file.

The package never imports Snakemake; shims pass the ``snakemake`` object in.
"""

from __future__ import annotations

import logging
import sys


def start(smk) -> logging.Logger:
    """Redirect stderr to ``smk.log[0]`` (line-buffered) and configure logging."""
    if smk.log:
        sys.stderr = open(smk.log[0], "w", buffering=1)
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        force=True,
    )
    return logging.getLogger("vcdflow.workflow")
