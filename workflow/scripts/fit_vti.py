"""VTI's fitted directions (workflow/rules/vti.smk): the fit list, its images, the demo fit set, the fit."""

from vcdflow.shim import start

log = start(snakemake)  # noqa: F821

import json  # noqa: E402
from pathlib import Path  # noqa: E402

from vcdflow import steering_fit as F  # noqa: E402

smk = snakemake  # noqa: F821
rule = smk.rule

if rule == "vti_fit_list":
    from vcdflow.data.download import download

    o = F.OFFICIAL_FIT_SET
    download(
        o["url"],
        smk.output[0],
        sha256=o["sha256"],
        size=o["size"],
        offline=smk.params.offline,
        progress=False,
    )
    log.info("fit list: %s", o["source"])
elif rule == "vti_fit_images":
    F.fetch_fit_images(
        F.load_demos(smk.input.fit_set), smk.output[0], offline=smk.params.offline, log=log.warning
    )
elif rule == "vti_demo_fit_set":
    recs = F.demo_fit_set(smk.input.instances)
    Path(smk.output[0]).write_text("".join(json.dumps(r) + "\n" for r in recs))
    log.info("demo fit set: %d records from %s", len(recs), smk.input.instances)
elif rule == "fit_vti":
    from vcdflow.config import execution
    from vcdflow.gpu import gpu_lease
    from vcdflow.io import file_digest

    ex = execution(smk.config, threads=smk.threads)

    def fit():
        import torch  # after CUDA_VISIBLE_DEVICES is set

        from vcdflow.models import load_vlm

        torch.set_num_threads(ex.threads)
        device = ex.device if ex.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        vlm = load_vlm(smk.input.model, device=device, dtype=smk.params.dtype)
        art = F.fit_vti(
            vlm,
            F.load_demos(smk.input.fit_set),
            smk.params.image_dir,
            dict(smk.params.fit),
            model_name=smk.wildcards.model,
            demos_digest=smk.params.fit_set_id,
            progress=log.info,
            extra_meta={"fit_set_md5": file_digest(smk.input.fit_set)},
        )
        if art["meta"]["fit_key"] != smk.wildcards.key:
            raise SystemExit(
                f"fit_vti: the configured fit settings give key {art['meta']['fit_key']}, not the "
                f"requested {smk.wildcards.key} (request vti_directions(model), or `snakemake vti_all`)"
            )
        F.save_directions(art, smk.output[0])
        log.info(
            "VTI directions: text %s, vision %s",
            None if art["text"] is None else list(art["text"].shape),
            None if art["vision"] is None else list(art["vision"].shape),
        )

    if ex.device == "cpu":
        fit()
    else:
        with gpu_lease(ex.gpu_lock_dir, log=log.info):
            fit()
else:  # pragma: no cover
    raise SystemExit(f"fit_vti.py: unknown rule {rule}")
