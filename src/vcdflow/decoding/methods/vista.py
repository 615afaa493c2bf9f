"""``vista``: Visual Steering Vector + Self-Logits Augmentation (Li et al., ICML 2025, arXiv 2502.03628).

Official code ``LzVv123456/VISTA@dc62252``. One branch (the
original); two engine capabilities: a residual probe per request and per-request
steering of every decoder layer's MLP output.

**Visual steering vector (per request, before decoding).** Positive input = the request itself
(image + prompt), negative = the same templated prompt with the image removed
(:func:`vcdflow.decoding.steering.drop_image`; official ``model_loader.py:364-424``,
``prepare_pos_prompt`` / ``prepare_null_prompt``). ``v_l = o_l(pos) − o_l(neg)`` at the last
position, ``o_l`` = output of decoder layer l (the un-normed residual stream, every layer incl.
the last: ``ForwardTracer`` hooks on the layer modules, ``steering_vector.py:86-88, 104-106``;
``obtain_vsv`` ``:113-129``: ``h = pos − neg``). The official then runs a rank-1 "PCA" on this
single difference (``:127-128``; ``myutils.py:114-130``): with one sample the centred matrix is
zero, and the SVD of a zero 1×(L·D) matrix on the CPU (``get_hiddenstates`` moves the states there,
``steering_vector.py:107``; LAPACK gesdd, checked here with ``torch.linalg.svd``) returns the first
unit vector e₀, kept by ``svd_flip`` (U = [[1]]): the official vector is ``v`` **plus 1.0 at layer 0,
coordinate 0**. The steering normalises each layer's vector on its own, so this is not negligible
at layer 0 when ‖v₀‖ ≲ 1 (the layer-0 push then points mostly along coordinate 0); the other
layers are untouched. ``pca_artefact`` = True adds it (the default under ``protocol: vista``, the
official vector); False (the method's default) uses ``v`` alone, the vector the paper describes.

**Steering** (``llm_layers.py:15-32, 132-150``; ``pope_eval.py:116-122``): after the MLP of
each decoder layer l (all layers, or the official ``--layers`` slice: parameter ``layers`` = [s, e]), at
every position (prefill and decode)::

    x ← ‖x‖ · normalize(normalize(x) + λ · (1 + max(0, cos(x, −v_l))) · normalize(v_l))

**Self-logits augmentation** (``llava/model/language_model/llava_llama.py:92-103``)::

    ℓ̃ = (1 − α) · ℓ + α · mean_{l = s..e} W_lm · o_l        (o_l not normed, steered)

window ``logits_layers`` = [s, e] inclusive, indices into ``hidden_states[1:]`` = decoder-layer
outputs (index L − 1 is the final-normed output there, as HF returns it, and so here); official "25,30" for the 32-layer LLaMA-7B (``pope_eval.py:36``). ``None`` (default)
means [L − 7, L − 2] (clipped at 0), which is 25…30 at L = 32 — for other depths (Qwen2.5-VL-7B:
28 → 21…26; tiny test models) the mapping is **ours** (the README asks to re-tune per model).
``logits_aug`` (default true): false turns SLA off; ``lam: 0`` turns the steering off.

Defaults (code, LLaVA-1.5): ``lam`` λ = 0.1 (``chair_eval.py:30`` argparse default and
``run_mmhal.sh``); the run scripts use **0.17 for CHAIR** (``run_chair.sh:9``) and **0.01 for
POPE** (``run_pope.sh:10``, also ``pope_eval.py:31``) — set them per benchmark in the config.
``logits_alpha`` α = 0.3 (``pope_eval.py:37``, all three scripts). Official decoding: greedy
(``--do-sample`` off), beam 1, repetition penalty 1.0, seed 1994, batch size 1 (asserted,
``pope_eval.py:65``); sampling also runs here (official sampling flags: top-p 0.9, top-k 0, T 1).
CHAIR: 512 tokens, "Please help me describe the image in detail."; POPE: 32 tokens, bare
question. λ for InstructBLIP/MiniGPT-4/Shikra (paper): **UNVERIFIED** (the code's defaults are
the same for every model).

Engine notes. The hooks compute the vectors in ``start`` — the probe batch is [original rows of
every request, the same rows without image] (2 extra prefills per request, batched) — because
a decode hook does not see ``ctx.prepared``; ``Method.prepare`` is therefore not used.
``share_prefix = False``: every request's prefix KV is steered with its own vector, so prefixes
can never be shared. Batch size does not change a request's vector (unlike the official
batch-1 assertion, vectors are per request). InstructBLIP: the negative is the text part only
(the 32 query tokens dropped), as the official. Qwen2.5-VL: the image and its vision markers
are dropped. All three families and the demo model.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

import torch

from ..hooks import DecodeHooks, LayerCapture
from ..steering import ActivationSteering, HookChain, drop_image, residual_probe
from .base import Method


def sla_window(n_layers: int, logits_layers) -> list[int]:
    """Decoder-layer indices of the SLA window (inclusive): ``logits_layers`` [s, e] or, when
    None, [L − 7, L − 2] clipped at 0 (official 25…30 at L = 32)."""
    if logits_layers is None:
        e = max(n_layers - 2, 0)
        s = max(n_layers - 7, 0)
    else:
        s, e = int(logits_layers[0]), int(logits_layers[1])
    if not 0 <= s <= e < n_layers:
        raise ValueError(
            f"parameter 'logits_layers' of method 'vista' must be [s, e] with 0 <= s <= e < "
            f"{n_layers} (the model's decoder layers), got {logits_layers!r}"
        )
    return list(range(s, e + 1))


class VistaSteering(ActivationSteering):
    """Decoder-layer steering with per-request visual steering vectors computed in ``start`` by the residual probe."""

    def __init__(self, lam: float, layers=None, probe_chunk: int = 8, pca_artefact: bool = False):
        super().__init__(vectors={}, lam=float(lam), gate=True, per_request=True)
        self.steer_layers = layers
        self.probe_chunk = probe_chunk
        self.pca_artefact = bool(pca_artefact)

    def start(self, adapter, seqs, tokens) -> None:
        if self.lam == 0:  # no steering: no probe
            self.vectors = {}
            super().start(adapter, seqs, tokens)
            return
        L = len(adapter.decoder_layers())
        pos = [s[0] for s in seqs]
        rows = pos + [drop_image(adapter, e) for e in pos]
        outs = residual_probe(adapter, rows, chunk=self.probe_chunk)
        n = len(pos)
        v = torch.stack([outs[i] - outs[n + i] for i in range(n)])  # [n, L, D]
        if self.pca_artefact:  # the official rank-1 PCA of one sample: + e₀ (module docstring)
            v[:, 0, 0] += 1.0
        self.vsv = v
        s, e = (0, L) if self.steer_layers is None else (int(self.steer_layers[0]), int(self.steer_layers[1]))
        self.vectors = {l: v[:, l, :] for l in range(s, e)}
        super().start(adapter, seqs, tokens)


@dataclass(frozen=True)
class VISTA(Method):
    name = "vista"
    defaults = MappingProxyType(
        {
            "lam": 0.1,
            "layers": None,
            "logits_aug": True,
            "logits_alpha": 0.3,
            "logits_layers": None,
            "pca_artefact": False,
        }
    )
    nullable = frozenset({"layers", "logits_layers"})
    param_types = MappingProxyType({"layers": (list, tuple), "logits_layers": (list, tuple)})
    share_prefix = False

    def validate(self, p):
        super().validate(p)
        if float(p["lam"]) < 0:
            raise ValueError(f"parameter 'lam' of method 'vista' must be >= 0, got {p['lam']}")
        if not 0 <= float(p["logits_alpha"]) <= 1:
            raise ValueError(
                f"parameter 'logits_alpha' of method 'vista' must be in [0, 1], got {p['logits_alpha']}"
            )
        for key in ("layers", "logits_layers"):
            v = p[key]
            if v is not None and (
                len(v) != 2 or not all(isinstance(i, int) and not isinstance(i, bool) for i in v)
            ):
                raise ValueError(
                    f"parameter {key!r} of method 'vista' must be null or two layer indices [s, e], got {v!r}"
                )
        if p["layers"] is not None and not 0 <= p["layers"][0] < p["layers"][1]:
            raise ValueError(
                f"parameter 'layers' of method 'vista' must be a slice [s, e) with 0 <= s < e, "
                f"got {p['layers']!r}"
            )

    def forward_hooks(self, adapter, params) -> DecodeHooks:
        L = len(adapter.decoder_layers())
        if params["layers"] is not None and params["layers"][1] > L:
            raise ValueError(
                f"parameter 'layers' of method 'vista': {params['layers']!r} is beyond the model's "
                f"{L} decoder layers"
            )
        window = sla_window(L, params["logits_layers"]) if params["logits_aug"] else []
        return HookChain(
            parts=[
                VistaSteering(params["lam"], params["layers"], pca_artefact=params["pca_artefact"]),
                LayerCapture(layers=window),
            ]
        )

    def combine(self, logits, step, state):
        ell = logits[..., 0, :]
        p = state.params
        if not p["logits_aug"]:
            return ell
        cap = state.hooks[1]
        ad = state.contexts[0].adapter
        head, L = ad.lm_head(), len(ad.decoder_layers())
        hs = [cap.last[l][state.rows[:, 0]] for l in cap.layers]
        # hidden_states[1:][L-1] is the final-normed output in the official read (HF appends it normed)
        hs = [ad.final_norm()(h) if l == L - 1 else h for l, h in zip(cap.layers, hs)]
        # mean_l W_lm·h_l = W_lm·mean_l h_l (W_lm is linear): one LM-head product instead of one per layer
        aug = head(torch.stack(hs).mean(0)).float()
        a = float(p["logits_alpha"])
        return (1 - a) * ell + a * aug

    def plausibility(self, logits, step, state):
        return None
