"""``vti``: VTI's protocol (Liu, Ye, Zou, ICLR 2025, arXiv 2410.15778; shengliu66/VTI at bb5dfee).

The repository releases only the MMHal-Bench run (``experiments/eval/run_mmhal_vti.py``; the README's
CHAIR and POPE scripts are "To be updated"): no benchmark of ours was run, so every benchmark's
prompt and ``max_new_tokens`` come from ``unified``. What the released run fixes:

* Families: LLaVA-1.5 (``liuhaotian/llava-v1.5-7b``, conv ``llava_v1``,
  ``image_processor.preprocess``). Not run: InstructBLIP (a ``get_prompts`` path exists, no run
  script), Qwen2.5-VL.
* Decoding: **beam search, 5 beams**, ``use_cache=False`` (hard-coded, ``:116-123``:
  ``num_beams=5`` at ``:120``; ``--num_beams`` at ``:159`` is never read), ``do_sample=args.sample``
  (``:122``; ``--sample`` is off unless passed, ``:160``). This protocol fixes the 5 beams for
  ``vti`` (``search``; the run record's ``method.search``); ``length_penalty`` / ``early_stopping``
  are not passed: the generation-config defaults 1.0 / False. The pinned transformers is 4.31.0
  (``requirement.txt:2``), whose ``BeamHypotheses.add`` divides by the total length (prompt ids
  included) — ``length_norm: total``; that rests on the 4.29 copy OPERA vendors
  (``shikiw/OPERA transformers-4.29.2/src/transformers/generation/beam_search.py:889``) and the
  ``decoder_prompt_len`` argument first appearing later (4.36.2 vendored by HALC); 4.31's file
  itself was not read (UNVERIFIED); there the prompt ids hold one image placeholder, here the
  expanded image tokens (as for OPERA). The greedy baseline under ``vti`` stays one beam (the repository
  has no baseline script); the 5-beam baseline is the config label ``beam5`` (``{method: greedy,
  num_beams: 5}``).
* VTI: ``alpha_image`` = ``alpha_text`` = 0.9, 70 demos, mask ratio 0.99, 50 trials (the README
  command; the argparse defaults are 0 / 0.8 / 50), seed 42.
"""

from __future__ import annotations

from ._shared import LLAVA_V1_SYSTEM
from .base import Protocol, S

R = "shengliu66/VTI"
RUN = f"{R} experiments/eval/run_mmhal_vti.py"

PROTOCOL = Protocol(
    name="vti",
    title="VTI (Liu, Ye, Zou, ICLR 2025, arXiv 2410.15778)",
    families_run=("llava",),
    benchmarks_run=(),
    common={
        "parser": S("official", f"VTI runs no POPE ({R} README.md: 'To be updated'): POPE's official rule"),
        "temperature": S(1.0, f"{RUN}:118-123 (beam search, no sampling: T unused)"),
        "top_p": S(1.0, f"{RUN}:118-123 (beam search: no warpers)"),
        "top_k": S(None, f"{RUN}:118-123 (beam search: no warpers)"),
        "image_preprocess": S("processor", f"{RUN}:108 (image_processor.preprocess: no pad)"),
        "seeds": S((42,), f"{R} README.md:77 (--seed 42); {RUN}:162,167"),
        "search": {
            "*": S(
                {"length_norm": "total"},
                f"{R} requirement.txt:2 (transformers==4.31.0: total-length normalisation; UNVERIFIED, "
                "see the module docstring)",
            ),
            "vti": S(
                {"num_beams": 5},
                f"{RUN}:120 (num_beams=5, hard-coded; length_penalty/early_stopping not passed: 1.0 / False)",
            ),
        },
        "params": {
            "vti": S(
                {"alpha_image": 0.9, "alpha_text": 0.9},
                f"{R} README.md:75-76 (--alpha_image 0.9 --alpha_text 0.9; :81 --num_demos 70; "
                f"argparse defaults {RUN}:156-158: 50, 0, 0.8)",
            )
        },
    },
    family={
        "llava": {
            "system": S(LLAVA_V1_SYSTEM, f"{RUN}:155 (--conv-mode llava_v1), :101"),
            "chat_template": S("llava_v1", f"{RUN}:101-106 (conv_templates['llava_v1'])"),
        },
    },
    modes={"vti": S("greedy", f"{RUN}:120 (num_beams=5, no do_sample: beam search, not sampling)")},
    default_mode=S("greedy", f"{RUN}:120 (beam search, no sampling)"),
)
