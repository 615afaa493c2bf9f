"""The demo LLaVA: the shipped weights when they were trained on these inputs, else trained here.

See vcdflow.models.demo_shipped: the training settings and the digests of the world's train split
are compared with the shipped folder's record at job time; a trained folder records its own (so
it can be shipped as it is: copy it to resources/demo_model/).
"""

from vcdflow.shim import start

log = start(snakemake)  # noqa: F821

from pathlib import Path  # noqa: E402

from vcdflow.models.demo_shipped import copy_if_same_inputs, record_inputs  # noqa: E402

smk = snakemake  # noqa: F821
settings = dict(smk.params.train)
settings.pop("shipped", None)
settings["threads"] = smk.threads  # the thread count decides float rounding, so the weights
world = Path(smk.input.instances).parent.parent
out = smk.output[0]
copied, why = (
    False,
    "demo.train.shipped is false" if smk.params.train.get("shipped", True) else "none found",
)
if settings.get("max_seconds") is not None:
    why = "demo.train.max_seconds is set (the weights then depend on the wall clock)"
elif smk.params.shipped:
    copied, why = copy_if_same_inputs(smk.params.shipped, world, settings, out)
if copied:
    log.info(
        "used the shipped demo model %s: trained on these inputs (%s)",
        smk.params.shipped,
        "training_inputs.json matches",
    )
else:
    log.info("training the demo model (shipped weights not used: %s)", why)
    import torch

    from vcdflow.models.demo import train_demo_model

    torch.set_num_threads(smk.threads)
    t = {k: v for k, v in settings.items() if k != "threads"}
    info = train_demo_model(world, out, **t)
    record_inputs(out, world, settings)
    log.info("trained demo model: %s", info)
