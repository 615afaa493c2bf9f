"""``carve``: CARVE's protocol (Ge et al., arXiv 2509.06461; YuyaoGe/CARVE at a1f0442).

Families: LLaVA-1.5 (``llava-hf`` through ``LlavaForConditionalGeneration``) and Qwen2.5-VL
(``carve/pipeline.py:40-62``). Not run: InstructBLIP (no spatial grid; the method refuses it).
Benchmarks: POPE (the paper's Table 1: 500 images, 9,000 questions); CHAIR, MME and AMBER come
from ``unified``. The repository ships the pipeline and a one-question ``main.py``, no POPE loop
or scorer: the parser is ours (UNVERIFIED).

* Every pass appends ``" Answer the question using a single word or phrase."`` to its text
  (``pipeline.py:17,74``): the POPE prompt is ``"{question} Answer …"`` (the method's probe G
  adds the suffix to its general instruction itself).
* LLaVA prompt: ``"<image>\\nUSER: {text}\\nASSISTANT:"`` with **no system text**
  (``pipeline.py:86-87``; template ``carve_llava``). Qwen2.5-VL: the processor's chat template,
  user turn = image then text (its default system turn).
* Greedy (``do_sample=False``), ``max_new_tokens=32`` (``pipeline.py:114,154``). Image: the
  processors' own for LLaVA; **Qwen2.5-VL at 448²**: the code loads its processor with
  ``max_pixels = 256·28·28`` (``pipeline.py:46-51``; the paper: "Qwen at 448×448"), modelled as
  ``image_preprocess: qwen_max_pixels_448`` (every input image resized to that budget: about 234
  visual tokens for a 640×480 COCO image, not about 391) and CARVE's ``max_pixels`` (its refined
  image alike); the baselines under this protocol see the same images.
* Attention maps: **t_end** (``paper_maps``), the paper's headline Table 1 column (LLaVA-1.5-7B
  89.0, Qwen2.5-VL-7B 89.7; t_start 86.8 / 87.9 — the method's own default, the weakest column);
  ``carve`` with ``maps: t_start`` / ``maps: t_full`` reproduces the other two columns. The code
  variants keep their maps (``code``: t_start, ``code_v4``: T_full) and reproduce no Table 1
  column (their final pass is the code's, not Algorithm 1's).
* Parameters: λ = 1e-8, p = 0.2, K = 3 (``main.py:20-22``), layers 20–25 (``main.py:18``: the
  method's default). Paper and code disagree; both are built as the method's ``variant``: the
  paper protocol runs the default ``paper`` (Algorithm 1: v3 first-step maps, summed-attention
  ranking, the refined image alone in the final pass); ``variant: code`` is the released final
  pass with the original and the refined image in one prompt (``pipeline.py:152``, a multi-image branch) and
  ``variant: code_v4`` the code's default version v4 (``main.py:15``, all-step maps) — labels
  ``carve_code`` / ``carve_v4`` in ``config/paper.yaml``; the protocol's values apply to them alike.
"""

from __future__ import annotations

from .base import Protocol, S

R = "YuyaoGe/CARVE"
PIPE = f"{R} carve/pipeline.py"
MAIN = f"{R} main.py"

PROTOCOL = Protocol(
    name="carve",
    title="CARVE (Ge et al., arXiv 2509.06461)",
    families_run=("llava", "qwen2_5_vl"),
    benchmarks_run=("pope",),
    common={
        "parser": S(
            "official",
            f"UNVERIFIED: {R} ships no POPE scorer ({MAIN} answers one question); POPE's official rule",
        ),
        "temperature": S(1.0, f"{PIPE}:154 (do_sample=False: T unused)"),
        "top_p": S(1.0, f"{PIPE}:154 (greedy: no warpers)"),
        "top_k": S(None, f"{PIPE}:154 (greedy: no warpers)"),
        "max_new_tokens": S(32, f"{PIPE}:114; {MAIN}:24"),
        "image_preprocess": S("processor", f"{PIPE}:59 (LLaVA: AutoProcessor, its own resize)"),
        "seeds": S((0,), f"greedy ({PIPE}:154): the seed does not matter; the code sets none"),
        "params": {
            "carve": S(
                {
                    "lam": 1e-8,
                    "top_percent": 0.2,
                    "min_keep_regions": 3,
                    "version": "v3",
                    "paper_maps": "t_end",
                },
                f"{MAIN}:20-22 (lam, top-percent, min-keep-regions); version v3 = {PIPE}:19-24 "
                f"'first' step + 'attention_sum' (the code's default v4, {MAIN}:15, is the "
                "method's variant='code_v4'); paper_maps t_end: the paper's Table 1 headline "
                "column (LLaVA-1.5-7B 89.0, Qwen2.5-VL-7B 89.7; shared/spec methods-2 CARVE "
                "numbers; UNVERIFIED: the paper's text was read through the spec's copy)",
            )
        },
    },
    benchmark={
        "pope": {
            "prompt": S(
                "{question} Answer the question using a single word or phrase.",
                f"{PIPE}:17,74 (query = f'{{text}} {{ANSWER_SUFFIX}}')",
            )
        },
    },
    family={
        "llava": {
            "system": S(None, f"{PIPE}:86-87 (no system text)"),
            "chat_template": S(
                "carve_llava", f"{PIPE}:86-87 ('<image>' * n + '\\nUSER: ' + query + '\\nASSISTANT:')"
            ),
        },
        "qwen2_5_vl": {
            "system": S(None, f"{PIPE}:78-81 (user turn only: the template's default system turn)"),
            "chat_template": S("model", f"{PIPE}:81 (processor.apply_chat_template)"),
            "image_preprocess": S(
                "qwen_max_pixels_448",
                f"{PIPE}:46-51 (max_pixels = 256*28*28; size['longest_edge'] = max_pixels)",
            ),
            "params": {
                "carve": S(
                    {"max_pixels": 256 * 28 * 28},
                    f"{PIPE}:46-51 (the processor's max_pixels applies to the refined image too, {PIPE}:152)",
                )
            },
        },
    },
    modes={"carve": S("greedy", f"{PIPE}:154 (do_sample=False)")},
    default_mode=S("greedy", f"{PIPE}:154 (do_sample=False)"),
)
