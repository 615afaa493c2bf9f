"""Fetch one of HALC's auxiliary models (workflow/rules/halc.smk) into its resources folder.

Offline with nothing placed, or a download that fails its checksum, ends in one line naming the
folder or file (the rule's log and the console), not a traceback."""

import sys

from vcdflow.shim import start

start(snakemake)  # noqa: F821

from vcdflow import errors  # noqa: E402
from vcdflow.data.fetch import fetch_halc_aux  # noqa: E402
from vcdflow.data.hub_revisions import settings  # noqa: E402

out = snakemake.output[0]  # noqa: F821


def fetch():
    from vcdflow.data.download import DownloadError

    try:
        # the revisions lock and update flag are read from the config at job time (never params: a
        # changed flag must not re-download existing folders)
        dest = fetch_halc_aux(
            dict(snakemake.params.spec),
            out,
            offline=bool(snakemake.params.offline),  # noqa: F821
            **settings(snakemake.config),
        )  # noqa: F821
    except (FileNotFoundError, DownloadError) as exc:  # offline and missing, a checksum mismatch
        if isinstance(exc, errors.UserError):
            raise
        raise errors.InputError(str(exc) if out in str(exc) else f"{out}: {exc}") from exc
    print(f"halc auxiliary model {dest.name}: {dest}")


rc = errors.guard(f"halc auxiliary model {out}", fetch, echo=sys.__stderr__)
if rc:
    sys.exit(rc)
