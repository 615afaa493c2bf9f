"""``text_cd``: contrastive decoding against a smaller *amateur* model (the LLM baselines of
Li et al., ACL 2023, arXiv 2210.15097, and O'Brien & Lewis, arXiv 2309.09117), through the engine's second
model (:mod:`vcdflow.decoding.amateur`).

Parameter ``variant``: ``variant="obrien"`` (default; O'Brien & Lewis, greedy)::

    V_valid = {j : s_e,j ≥ log α + max s_e}
    s_CD    = (1+β)·s_e − β·s_a  on V_valid,  −∞ elsewhere        (s = logits)

α = ``alpha`` = 0.1, β = ``beta`` = 0.5 (the paper's defaults; its GSM8K best is β = 0.25 for
LLaMA-65B). From a secondary summary of the paper (no code released): UNVERIFIED beyond these
defaults. Greedy is the paper's setting; sampling (not in the paper) samples from s_CD; beams via
``generate(num_beams=…)`` run the generic beam search over s_CD.

``variant="li"`` (Li et al., beam search; ``XiangLi1999/ContrastiveDecoding@170e914``)::

    expert:  ℓ_e = log_softmax(z_e), masked by EntrP: keep ℓ_e ≥ min(ℓ_(min_keep), max ℓ_e + log α)
             (``transformers/src/transformers/generation_logits_process.py:212-245``; α = 0.1
             hard-coded for a student in beam mode, ``generation_utils.py:1542``, min_keep 2 with beams,
             ``:698``; here ``alpha``)
    amateur: ℓ_a = log_softmax(z_a) / τ  (−∞ → +∞, ``generation_utils.py`` beam_search L2533)
    beams:   candidates = top 2·num_beams of the expert's per-step ℓ_e over all beams (at the first
             step: the masked ℓ_e + beam score, i.e. beam 0 only); each scored
             (masked ℓ_e + beam score) − st_coef·ℓ_a, re-sorted (``decoder_helper.py:21-54``
             ``post_process_reweight``), then the beam scorer (finished hypotheses
             Σ / length^length_penalty, ``length_norm="total"``: the 4.x decoder-only hypothesis
             holds the prompt ids).

With ``num_beams`` = 1 (Li's ``greedy_search``, ``generation_utils.py`` L1937–1963): argmax of
z_e − st_coef·z_a/τ on raw logits — the EntrP head is off in greedy mode (``relative_top = None``,
L1340–1345), the amateur's temperature warper divides its logits.

``st_coef`` = 0.5 (argparse default, ``text-generation/run_generation.py:417``; README example
1.0), ``student_temperature`` τ = 1.0 (``:442``; README 0.5), ``num_beams`` = 5 (``:435``),
``ignore_prefix`` (``:444``, default ``'yes'`` marked IMPORTANT): the amateur sees only the last
prompt token plus its own continuation. ``ignore_prefix=None`` (default) means True for ``li``
and False for ``obrien``. Li's ``student_min_prob`` (default 0: off) is not exposed.

``amateur``: a model directory :func:`vcdflow.models.load_vlm` loads (required), run with its own
chat template on the same user/system text, with the image when ``amateur_image`` (default True)
and the amateur is a VLM; logits are compared on the shared vocabulary prefix (the tokenizers must
agree there; checked at load). In the demo world the workflow trains a smaller demo model as the
amateur (``workflow/rules/amateur.smk``).

Divergences: Li's code scores GPT-2/OPT text LMs; with ``ignore_prefix`` GPT-2 feeds the last
prompt token at its original position, we feed it at position 0 (identical for rotary models:
only relative positions enter attention). Li's beam scorer is transformers 4.2x's
``BeamSearchScorer``; we use :class:`vcdflow.decoding.beams.BeamSearch` (5.24 bookkeeping,
total-length normalisation), which differs only in which hypotheses are kept at
``max_new_tokens``. Li's candidate pool is 2·K whatever the number of EOS ids
(``generation_utils.py:2647-2648``; :attr:`LiBeamSearch.pool_factor`), not transformers 5's
max(2, 1 + n_eos)·K. Not mirrored: Li's run script generates exactly ``length`` tokens
(``text-generation/run_generation.py:771-772,964-965``: ``min_length = max_length`` suppresses
EOS) — a text-continuation setting; on LVLM benchmarks the answer ends at EOS as for every other
method. Every family.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import MappingProxyType

import torch

from ..amateur import AmateurStream, check_vocab, load_amateur
from ..beams import BeamSearch
from ..types import InputError
from .base import Method

VARIANTS = ("obrien", "li")


def entrp_mask(lp: torch.Tensor, relative_top: float, min_keep: int) -> torch.Tensor:
    """Li et al.'s ``EntrPLogitsWarper`` on log-probs ``lp`` [..., V]: −∞ below
    min(the min_keep-th largest, max + log relative_top)."""
    srt = torch.sort(lp, dim=-1, descending=True).values
    thresh = torch.minimum(srt[..., min_keep - 1], lp.max(dim=-1).values + math.log(relative_top))
    return lp.masked_fill(lp < thresh.unsqueeze(-1), -float("inf"))


class LiBeamSearch(BeamSearch):
    """Li et al.'s candidate set and CD re-ranking inside the HF beam bookkeeping (module docstring)."""

    #: 2·K candidates whatever the number of EOS ids (XiangLi1999/ContrastiveDecoding@170e914
    #: transformers/src/transformers/generation_utils.py:2647-2648; transformers 5 keeps
    #: max(2, 1 + n_eos)·K, 3·K for Qwen's two EOS ids)
    pool_factor = 2

    def __init__(
        self,
        score,
        amateur: AmateurStream,
        num_beams: int,
        st_coef: float,
        temperature: float,
        relative_top: float,
        length_penalty: float = 1.0,
    ):
        super().__init__(
            score, num_beams, length_penalty=length_penalty, early_stopping=False, length_norm="total"
        )
        self.amateur = amateur
        self.coef = float(st_coef)
        self.tau = float(temperature)
        self.relative_top = float(relative_top)

    def candidates(self, lp, running, keep, first, rows):
        K, V = lp.shape
        masked = entrp_mask(lp, self.relative_top, 2 if self.k > 1 else 1)
        acc = masked + running[:, None]
        pick = acc if first else lp  # the code's next_token_scores_keep
        _, idx = torch.topk(pick.reshape(-1), k=keep)
        ama = self.amateur.logits[torch.tensor(rows, device=self.amateur.logits.device)][:, :V].float()
        student = torch.log_softmax(ama, dim=-1).to(lp.device) / self.tau
        student = student.masked_fill(student == -float("inf"), float("inf"))
        cd = acc.reshape(-1)[idx] - self.coef * student.reshape(-1)[idx]
        order = torch.sort(cd, descending=True, stable=True).indices
        return cd[order], idx[order]


@dataclass(frozen=True)
class TextCD(Method):
    name = "text_cd"
    defaults = MappingProxyType(
        {
            "amateur": None,
            "variant": "obrien",
            "alpha": 0.1,
            "beta": 0.5,
            "st_coef": 0.5,
            "student_temperature": 1.0,
            "num_beams": 5,
            "ignore_prefix": None,
            "amateur_image": True,
        }
    )
    nullable = frozenset({"amateur", "ignore_prefix"})
    param_types = MappingProxyType({"amateur": str, "ignore_prefix": bool})
    requires_image = False
    #: the amateur's model directory is an input the workflow provides (vcdflow.config.METHOD_INPUTS)
    extra_inputs = ("amateur_model",)

    def validate(self, p):
        if p["variant"] not in VARIANTS:
            raise ValueError(
                f"parameter 'variant' of method {self.name!r} must be one of {', '.join(VARIANTS)}, "
                f"got {p['variant']!r}"
            )
        if float(p["beta"]) < 0:
            raise ValueError(f"parameter 'beta' of method {self.name!r} must be >= 0, got {p['beta']}")
        if not 0 < float(p["alpha"]) <= 1:
            raise ValueError(f"parameter 'alpha' of method {self.name!r} must be in (0, 1], got {p['alpha']}")
        if float(p["student_temperature"]) <= 0:
            raise ValueError(
                f"parameter 'student_temperature' of method {self.name!r} must be > 0, "
                f"got {p['student_temperature']}"
            )
        if int(p["num_beams"]) < 1:
            raise ValueError(
                f"parameter 'num_beams' of method {self.name!r} must be >= 1, got {p['num_beams']}"
            )
        if float(p["st_coef"]) < 0:
            raise ValueError(f"parameter 'st_coef' of method {self.name!r} must be >= 0, got {p['st_coef']}")

    def _ignore_prefix(self, p) -> bool:
        return (p["variant"] == "li") if p["ignore_prefix"] is None else bool(p["ignore_prefix"])

    def amateur_stream(self, adapter, params):
        if not params.get("amateur"):
            raise InputError(
                f"method {self.name!r} needs parameter 'amateur' (a model directory load_vlm loads)"
            )
        vlm = load_amateur(params["amateur"], adapter)
        check_vocab(adapter, vlm.adapter)
        return AmateurStream(
            vlm, last_token_only=self._ignore_prefix(params), with_image=bool(params["amateur_image"])
        )

    def search(self, score, params, hooks, opts):
        if params["variant"] != "li" or int(params["num_beams"]) == 1:
            return None  # obrien / Li's greedy: the plain chooser (or generate(num_beams=…)'s beams)
        if opts.get("num_beams", 1) > 1:
            raise ValueError(f"method {self.name!r} variant 'li' sets its beams with parameter 'num_beams'")
        if opts.get("mode") != "greedy":
            raise ValueError(f"method {self.name!r} variant 'li' is beam search: decode with do_sample=False")
        # opts["amateur"]: the stream the engine built for this decode call (amateur_stream)
        return LiBeamSearch(
            score,
            opts["amateur"],
            int(params["num_beams"]),
            float(params["st_coef"]),
            float(params["student_temperature"]),
            float(params["alpha"]),
            length_penalty=opts.get("length_penalty", 1.0),
        )

    def combine(self, logits, step, state):
        ell = logits[..., 0, :]
        if state.params["variant"] == "li":
            if int(state.params["num_beams"]) == 1:  # Li's greedy_search: raw logits, no EntrP head
                tau = float(state.params["student_temperature"])
                return ell - float(state.params["st_coef"]) * state.amateur.to(ell.dtype) / tau
            return ell  # the Li search reads the amateur itself
        b = float(state.params["beta"])
        return (1 + b) * ell - b * state.amateur.to(ell.dtype)

    def plausibility(self, logits, step, state):
        return None if state.params["variant"] == "li" else float(state.params["alpha"])
