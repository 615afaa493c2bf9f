"""``halc``: HALC, adaptive focal-contrast decoding (Chen et al., ICML 2024, arXiv 2403.00425;
``BillChan226/HALC@12ea8b5``) — BLIP-ranked beams (default 3, official) or beam 1, with a
token-level trigger. Read the divergences.

Per hypothesis and step t (``combine`` → ``propose``):

1. **DoLa token** (vendored ``transformers-4.36.2/src/transformers/generation/utils.py``
   ``halc_dola_beam_search`` L4608-4664): early exits ℓ_l = W_lm·h_l (HF ``hidden_states[l]``,
   **no final norm**: HALC's vendored ``models/llama/modeling_llama.py:701-706``) for the
   candidate layers (``premature_layers``; official 0, 2, …, 30 of 32 = every even index below L,
   the default here), mature = the model's logits ℓ (h_L). Premature layer
   l* = argmax_l ½[KL_mean(M‖p_L) + KL_mean(M‖p_l)], M = ½(p_L + p_l) (``kl_div(...,
   reduction="none").mean(-1)``). s = RT(log p_L) − log p_l*, where RT keeps log p_L ≥
   max + log(``relative_top`` 0.1) (−inf elsewhere; ``halc.py:752-768``) and log p_l* is set to
   −1e3 where RT(log p_L) < −1e3. y = argmax s.
2. **Trigger** (token level, before y is emitted): y starts a word (its token piece begins with
   "▁"/"Ġ", contains ".", or the tokenizer is word-level — ``check_word_complete``,
   ``halc.py:143-157``) and is not EOS. The word w = decode(y) stripped of ``.,'][)`` and one
   trailing "s" (``halc.py:245-248``); POS = tagger(w) (first token); SKIP if w has "." or ",",
   is in the exempt list, or a uniform draw < ``skip_rate`` 0.3 (``halc.py:272-277``; drawn
   from the request's own stream, the official code uses Python's global ``random``); ADD if w is
   in the add list (overrides SKIP, ``halc.py:282-283``). NOUN/PROPN/ADD → activated
   (``halc.py:292-298``), else y is kept.
3. **Grounding** (``halc.py:300-365``): boxes = detector(image, w) (``box_threshold`` 0.45); more
   than ``max_boxes`` 3 → invalid (y kept); none → the centre box [0.2, 0.2, 0.8, 0.8]
   ("not-detected"); else the smallest box.
4. **FOV pyramid** (``context_window`` 4, ``expand_ratio`` e = 0.6, ``halc.py:369-400``):
   [expand(b, −e), b, expand(b, e), expand(expand(b, e), e)], expand(b, f) grows each side by
   f·size/2 clipped to the image (``halc.py:188-202``); each crop (PIL ``crop`` of the pixel box,
   ``halc.py:414-426``) is a **spawned branch** (E19, :mod:`vcdflow.decoding.spawn`): same
   prompt, the crop as image, the generated ids teacher-forced → raw next-token logits ℓ^(i)
   (``get_intermediate_logits``: ``outputs.logits[:, -1, :]``, utils.py L5718). The views of all
   hypotheses that fire in one step go into one batched forward.
5. **Pair selection + bi-directional contrast** (``context_layer_double_multi_contrastive_decoding``,
   ``halc.py:1041-1111``): JSD_ij over the 4 FOV distributions (``kl_div(..., "batchmean")``);
   the ``k_candidates``/2 = 2 largest entries of the upper triangle; for each pair (i, j):
   ℓ^(j) − w·ℓ^(i) and ℓ^(i) − w·ℓ^(j) (``contrast_weight`` w = 0.05) → k = 4 candidate tokens
   (argmax each).
6. **Bi-adaptive selection** (``clip_score_selection``, ``halc.py:1113-1208``; the beam loop
   utils.py L4829-4900; :class:`HalcBeams` on the engine's search protocol): every beam puts k
   entries in a pool — its k candidates when it fired, else k copies of y. Before the request's
   first grounding the survivors are ``random.seed(8); random.sample(range(n), beam_size)``; after
   it the pool's texts (beam ids + entry, decoded) are scored by the image–text scorer against the
   original image (softmax of ``logits_per_image``) and the ``beam_size`` best distinct texts
   survive (fewer: the best repeated). Output: beam 0. ``beam_size`` 1: the best candidate is
   emitted (no search object; the plain chooser).
7. **Not-detected removal** (utils.py L4912-4950): if the box was not detected, the chosen word
   equals / contains / is contained in the original word, at least ``min_length`` 8 tokens are
   generated with it and the word is not exempt → the tokenizer's unk token is emitted instead
   (HALC writes id 0 = LLaMA's ``<unk>``). ``Output.text`` is decoded with
   ``skip_special_tokens``, so the unk token drops out of the text, as in HALC's own decode
   (``get_sequence_text``, ``halc.py:167-175``); HALC's caption script then also drops every
   sentence containing "unk" (``caption_generation.py:537-542``): :func:`drop_unk_sentences`,
   not applied by the decoder. ``Output.meta["halc_events"]`` (beam 1 only) records every trigger
   check. Off with ``unk_not_detected: false``; a tokenizer without an unk token never applies it.

Parameters: ``detector``, ``scorer``, ``tagger`` (below); ``beam_size`` 3; ``premature_layers``
(None: 0, 2, …); ``relative_top`` 0.1; ``k_candidates`` 4; ``context_window`` 4; ``expand_ratio``
0.6; ``contrast_weight`` 0.05; ``box_threshold`` 0.45; ``max_boxes`` 3; ``skip_rate`` 0.3;
``min_length`` 8; ``unk_not_detected`` True; ``exempt_words`` / ``add_words`` (None: the
official lists, ``halc.py:23-30``).

The auxiliary models (E18, :mod:`vcdflow.aux_models`): ``detector`` (GroundingDINO / OWLv2
folder), ``scorer`` (BLIP ``BlipModel`` / CLIP folder), ``tagger`` (spaCy model folder), each a
local path or a name registered with ``vcdflow.aux_models.register``; fetched by
``workflow/rules/halc.smk``. Missing ones fail the item naming the parameter.

**Divergences (honest list).**

* **Beams without rollback.** The official beams verify a word after it is complete and, when
  BLIP picks a corrected word, **roll back** the tokens generated for the old one (cache reset to
  the word start, utils.py L4897-4990); finished beams keep their position. Here no rollback is
  needed (next point); a beam other than beam 0 that picks EOS takes beam 0's entry, and the
  request ends when beam 0 ends (the official loop: when all beams finish or beam 0 reaches the
  length). The official starts from ``beam_size`` identical beams, we from one that is copied at
  the first selection (identical until the first grounding, so the same hypotheses).
* **Token-level, pre-emission trigger.** HALC verifies a word after it is complete (when the
  next word starts) and replaces its first token, discarding the rest. Here the word-start token
  y is verified before it is emitted (no rollback needed); a word of several tokens is tagged and
  grounded by its first piece only. Exact for single-token words (most COCO nouns in LLaMA's
  vocabulary).
* **Skip draws.** The official 30 % skip uses Python's global ``random``, which its selection
  re-seeds to 8 at every ungrounded step (``halc.py:1122``), so its skips follow that stream; here
  they come from the request's own generator (seed, item), drawn per hypothesis in beam order.
* Mature logits: HALC takes every layer from one ``early_exit_layers`` forward; identical here.
  HF logits processors (none in HALC's caption script) are not applied; HALC's LLaVA-only
  repetition stop (utils.py L5047-5066) is not built.
* GroundingDINO through transformers' port instead of the original CUDA build (see
  :mod:`vcdflow.aux_models`).

Mode: **greedy only** (HALC's DoLa token choice is an argmax; its ``--sample`` flag does not reach
the HALC path); ``generate(num_beams=…)`` is refused: the beams are ``beam_size`` (``-b`` 3,
``caption_generation.py:111``). ``random_draw``: the 30 % trigger skip draws from the request's stream, so the
greedy output depends on the seed. Families: all (the FOV crops are ordinary image branches).
Defaults: ``caption_generation.py:111-175,406-418`` (``-k`` 4, ``-e`` 0.6, ``--box_threshold``
0.45, ``context_window`` 4, ``contrast_weight`` 0.05, ``context_domain`` "upper", score
"BLIP"), ``halc.py:78-79`` (``max_handle_box`` 3, ``skip_rate`` 0.3), utils.py L4528
(``min_length`` = prompt + 8).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType

import torch
import torch.nn.functional as F

from ..hooks import LayerCapture
from ..spawn import spawn_logits
from ..types import Branch, InputError
from .base import Method

#: ``halc.py:23-27``
EXEMPT_WORDS = ("image", "side", "background", "feature", "features", "center", "left", "right", "scene", "view",
                "s", "Birthday", "detail", "red", "white", "cat", "horse", "bus", "group", "manner", "her", "birds",
                "teddy", "stack", "cell", "toaster", "mirror", "toilet", "captures", "boat", "bench")
#: ``halc.py:29-30``
ADD_WORDS = ("sink", "microwave", "toaster", "puppy", "bottle", "table", "oven", "orange", "toothbrush", "cars")
CENTRE_BOX = (0.2, 0.2, 0.8, 0.8)
VALID_POS = ("NOUN", "PROPN", "ADD")


def drop_unk_sentences(text: str) -> str:
    """``caption_generation.py:537-542``: split at ".", drop the pieces containing "unk", re-join."""
    return ".".join(x for x in text.split(".") if "unk" not in x)


# --- pieces (each one formula of the official code) ----------------------------------------------
def default_premature(n_layers: int) -> list[int]:
    """HF hidden-state indices 0, 2, … below L (official: 0…30 for LLaMA-7B's 32 layers)."""
    return list(range(0, n_layers, 2))


def relative_top_filter(scores: torch.Tensor, relative_top: float) -> torch.Tensor:
    """log-softmax; entries below max + log(relative_top) → −inf (min_tokens_to_keep 1)."""
    import math

    s = scores.log_softmax(-1)
    thresh = s.max(-1, keepdim=True).values + math.log(relative_top)   # ≤ the top-1 value: 1 token kept
    return s.masked_fill(s < thresh, -float("inf"))


def dola_scores(mature: torch.Tensor, early: torch.Tensor, relative_top: float) -> tuple[torch.Tensor, torch.Tensor]:
    """mature [R, V], early [R, C, V] → (DoLa scores [R, V], chosen candidate index [R])."""
    p_m = mature.softmax(-1).unsqueeze(1)
    p_e = early.softmax(-1)
    M = 0.5 * (p_m + p_e)
    kl1 = F.kl_div(mature.log_softmax(-1).unsqueeze(1).expand_as(M), M, reduction="none").mean(-1)
    kl2 = F.kl_div(early.log_softmax(-1), M, reduction="none").mean(-1)
    js = 0.5 * (kl1 + kl2)                                    # [R, C]
    pick = js.argmax(-1)
    base = early[torch.arange(early.shape[0]), pick].log_softmax(-1)
    final = relative_top_filter(mature, relative_top) if relative_top > 0 else mature
    if relative_top > 0:
        base = base.masked_fill(final < -1e3, -1e3)
    return final - base, pick


def clean_entity(word: str) -> str:
    """``halc.py:245-248``: strip . , ' ] [ ) in that order, then one trailing "s"."""
    for ch in ".,'][)":
        word = word.strip(ch)
    return word[:-1] if word.endswith("s") else word


def expand_box(b, f: float) -> list[float]:
    """``halc.py:188-202``: each side moves by f·size/2, clipped to [0, 1]."""
    w, h = b[2] - b[0], b[3] - b[1]
    return [max(0.0, b[0] - w * f / 2), max(0.0, b[1] - h * f / 2), min(1.0, b[2] + w * f / 2),
            min(1.0, b[3] + h * f / 2)]


def fov_boxes(target, context_window: int, expand_ratio: float) -> list[list[float]]:
    """``halc.py:369-400``: [shrunk, target, grown, grown twice, …] (``context_window`` boxes)."""
    if context_window == 1:
        return [list(target)]
    boxes = [expand_box(target, -(0.8 if expand_ratio > 0.8 else expand_ratio)), list(target)]
    for _ in range(1, context_window - 1):
        boxes.append(expand_box(boxes[-1], expand_ratio))
    return boxes


def crop(image, box):
    W, H = image.size
    x0, y0, x1, y1 = box[0] * W, box[1] * H, box[2] * W, box[3] * H
    # a crop of at least one pixel (ours: HALC would hand an empty crop to the processor)
    x1, y1 = max(x1, x0 + 1), max(y1, y0 + 1)
    return image.convert("RGB").crop((x0, y0, x1, y1))


def fov_candidates(fov: torch.Tensor, k: int, weight: float) -> list[int]:
    """``halc.py:1041-1111``: fov [n, V] raw logits → k candidate tokens from the k/2 most
    JS-divergent pairs, both directions."""
    n = fov.shape[0]
    logp = fov.log_softmax(-1)
    p = fov.softmax(-1)
    jsd = torch.zeros(n, n)
    for i in range(n):
        for j in range(i + 1, n):
            M = 0.5 * (p[i] + p[j])
            kl1 = F.kl_div(logp[i:i + 1], M[None], reduction="batchmean")
            kl2 = F.kl_div(logp[j:j + 1], M[None], reduction="batchmean")
            jsd[i, j] = jsd[j, i] = 0.5 * (kl1 + kl2)
    top = torch.topk(jsd.triu(diagonal=1).flatten(), k // 2).indices
    out = []
    for flat in top.tolist():
        i, j = flat // n, flat % n
        for base, final in ((fov[i], fov[j]), (fov[j], fov[i])):
            base = base.masked_fill(final < -1e3, -1e3)
            out.append(int((final - weight * base).argmax()))
    return out


def is_word_level(tokenizer) -> bool:
    bt = getattr(tokenizer, "backend_tokenizer", None)
    return bt is not None and type(bt.model).__name__ == "WordLevel"


def starts_word(tokenizer, token_id: int) -> bool:
    """``check_word_complete`` (``halc.py:143-157``) generalised: SentencePiece "▁", byte-BPE
    "Ġ", or "." in the piece; every token of a word-level tokenizer."""
    if is_word_level(tokenizer):
        return True
    piece = tokenizer.convert_ids_to_tokens(int(token_id)) or ""
    return piece.startswith("▁") or piece.startswith("Ġ") or "." in piece


@dataclass
class HalcHooks(LayerCapture):
    """Decoder-layer outputs for the DoLa early exits (HF index l ≥ 1 = decoder layer l − 1).
    With beams, the search sets ``row_tokens`` (row → that beam's generated ids) before each
    ``combine``, which leaves each row's proposal (DoLa token, FOV candidates, event, context)
    in ``proposals``."""

    dola: tuple = ()
    beam: bool = False
    row_tokens: dict = field(default_factory=dict)
    proposals: dict = field(default_factory=dict)


def unk_rule(tok, chosen: int, y: int, event: dict, n_generated: int, p, exempt) -> tuple[int, bool]:
    """utils.py L4912-4950: a not-detected word that the focal contrast kept (equal, contained or
    containing) becomes the unk token once ``min_length`` tokens are generated with it."""
    if (event.get("status") != "not-detected" or not p["unk_not_detected"] or tok.unk_token_id is None
            or n_generated + 1 < int(p["min_length"])):
        return chosen, False
    new = tok.decode([chosen], skip_special_tokens=True).split(" ")[-1]
    cur = tok.decode([y], skip_special_tokens=True).split(" ")[-1]
    if (new == cur or new in cur or cur in new) and new not in exempt:
        return int(tok.unk_token_id), True
    return chosen, False


class HalcBeams:
    """HALC's bi-adaptive beams (``halc_dola_beam_search`` L4829-4900, ``clip_score_selection``
    ``halc.py:1113-1208``) on the engine's search protocol (:mod:`vcdflow.decoding.beams`):
    every beam (slot) proposes k entries — its k FOV-contrast candidates when its trigger fired,
    else k copies of its DoLa token —; before the request's first grounding the survivors are
    ``random.seed(8); random.sample(range(n), beam_size)`` (as the official code), after it the
    pool's texts (beam ids + entry, decoded) are ranked by the scorer's softmax against the
    original image and the top ``beam_size`` distinct texts survive (too few: the best one
    repeated). The request's output is beam 0 (the official returns beam 0 too). A beam other
    than beam 0 that picks EOS is replaced by beam 0's entry (ours: the official keeps finished
    beams in fixed positions)."""

    def __init__(self, score, hooks: HalcHooks, beam_size: int, k: int):
        self.score = score
        self.hooks = hooks
        self.B = int(beam_size)
        self.k = int(k)
        self.slot_tokens: dict = {}
        self.grounded: dict = {}

    def step(self, step: int, logits: torch.Tensor, layout):
        import random

        from ..beams import _choice

        spans = layout.spans()
        h = self.hooks
        h.row_tokens = {sp[2]: list(self.slot_tokens.get((sp[0], sp[1]), [])) for sp in spans}
        h.proposals = {}
        self.score(step, logits, spans)
        by_req: dict[int, list] = {}
        for sp in spans:
            by_req.setdefault(sp[0], []).append(sp)
        picks, feed, tokens, done = [], [], {}, {}
        new_tokens: dict = {}
        for r, sps in by_req.items():
            pool = []   # (source slot, token, proposal)
            for sp in sps:
                y, cands, event, ctx = h.proposals[sp[2]]
                for t in (cands if cands is not None else [y] * self.k):
                    pool.append((sp[1], int(t), (y, event, ctx)))
                if event and event.get("status") in ("activated", "not-detected"):
                    self.grounded[r] = True
            ctx = pool[0][2][2]
            tok = ctx.adapter.processor.tokenizer
            p = ctx.params
            exempt = list(p["exempt_words"]) if p["exempt_words"] is not None else list(EXEMPT_WORDS)
            gen = {sp[1]: list(self.slot_tokens.get((r, sp[1]), [])) for sp in sps}
            if not self.grounded.get(r):
                rnd = random.Random(8)
                sel = rnd.sample(range(len(pool)), min(self.B, len(pool)))
            else:
                texts = [tok.decode(gen[s] + [t], skip_special_tokens=True) for s, t, _ in pool]
                probs = ctx.prepared["halc_aux"]["scorer"].similarity(ctx.prepared["halc_request"].image,
                                                                     texts).softmax(-1).tolist()
                sel, seen = [], set()
                for i in sorted(range(len(pool)), key=lambda i: (-probs[i], i)):
                    if texts[i] not in seen:
                        seen.add(texts[i])
                        sel.append(i)
                    if len(sel) == self.B:
                        break
            sel += [sel[0]] * (self.B - len(sel))
            entries = []
            for i in sel:
                s, t, (y, event, _) = pool[i]
                t, fired = unk_rule(tok, t, y, event or {}, len(gen[s]), p, exempt)
                entries.append((s, t))
            if entries[0][1] in layout.eos:
                tokens[r], done[r] = gen[entries[0][0]], "eos"
                continue
            if len(gen[entries[0][0]]) + 1 >= layout.limits[r]:
                tokens[r], done[r] = gen[entries[0][0]] + [entries[0][1]], "length"
                continue
            entries = [e if e[1] not in layout.eos else entries[0] for e in entries]
            for j, (s, t) in enumerate(entries):
                picks.append((r, s, j))
                feed.append(t)
                new_tokens[(r, j)] = gen[s] + [t]
            tokens[r] = new_tokens[(r, 0)]
        self.slot_tokens = new_tokens
        return _choice(layout, picks, feed, tokens, done)


@dataclass(frozen=True)
class HALC(Method):
    name = "halc"
    mode = "greedy"
    random_draw = True  # the 30 % trigger skip
    defaults = MappingProxyType({
        "detector": None, "scorer": None, "tagger": None,
        "premature_layers": None, "relative_top": 0.1,
        "beam_size": 3, "k_candidates": 4, "context_window": 4, "expand_ratio": 0.6, "contrast_weight": 0.05,
        "box_threshold": 0.45, "max_boxes": 3, "skip_rate": 0.3, "min_length": 8, "unk_not_detected": True,
        "exempt_words": None, "add_words": None,
    })
    nullable = frozenset({"detector", "scorer", "tagger", "premature_layers", "exempt_words", "add_words"})
    param_types = MappingProxyType({"detector": str, "scorer": str, "tagger": str, "premature_layers": list,
                                    "exempt_words": list, "add_words": list})

    def validate(self, p):
        super().validate(p)
        k = p["k_candidates"]
        if not isinstance(k, int) or k < 2 or k % 2:
            raise ValueError(f"parameter 'k_candidates' of method 'halc' must be an even integer >= 2, got {k!r}")
        if not isinstance(p["beam_size"], int) or p["beam_size"] < 1:
            raise ValueError(f"parameter 'beam_size' of method 'halc' must be a positive integer, got {p['beam_size']!r}")
        if not isinstance(p["context_window"], int) or p["context_window"] < 2:
            raise ValueError(f"parameter 'context_window' of method 'halc' must be an integer >= 2, "
                             f"got {p['context_window']!r}")
        pairs = p["context_window"] * (p["context_window"] - 1) // 2
        if k // 2 > pairs:
            raise ValueError(f"parameter 'k_candidates' of method 'halc': {k} needs {k // 2} FOV pairs, "
                             f"context_window {p['context_window']} has {pairs}")
        if not 0 < float(p["relative_top"]) <= 1:
            raise ValueError(f"parameter 'relative_top' of method 'halc' must be in (0, 1], got {p['relative_top']}")
        if not 0 <= float(p["skip_rate"]) <= 1:
            raise ValueError(f"parameter 'skip_rate' of method 'halc' must be in [0, 1], got {p['skip_rate']}")
        if p["premature_layers"] is not None and (
                not p["premature_layers"] or not all(isinstance(x, int) and x >= 0 for x in p["premature_layers"])):
            raise ValueError("parameter 'premature_layers' of method 'halc' must be a non-empty list of "
                             f"hidden-state indices >= 0, got {p['premature_layers']!r}")

    # --- layers ------------------------------------------------------------------------------
    def dola_layers(self, adapter, params) -> list[int]:
        L = len(adapter.decoder_layers())
        layers = params["premature_layers"]
        layers = default_premature(L) if layers is None else [int(x) for x in layers]
        bad = [x for x in layers if x >= L]
        if bad:
            raise InputError(f"parameter 'premature_layers' of method 'halc': {bad} not below the model's "
                             f"{L} layers (the mature layer)")
        return layers

    def forward_hooks(self, adapter, params):
        dola = tuple(self.dola_layers(adapter, params))
        return HalcHooks(layers=sorted({x - 1 for x in dola if x > 0}), dola=dola)

    # --- per item ------------------------------------------------------------------------------
    def prepare(self, items, runner):
        from ... import aux_models

        p = items[0].ctx.params if items else {}
        aux = {}
        try:
            for kind in aux_models.KINDS:
                if p.get(kind) is None:
                    raise InputError(f"method 'halc' needs parameter {kind!r} (a local model folder or a name "
                                     f"registered with vcdflow.aux_models.register)")
                aux[kind] = aux_models.resolve(kind, p[kind])
                model = getattr(aux[kind], "model", None)
                if isinstance(model, torch.nn.Module):   # detector/scorer beside the VLM (CUDA when it is)
                    model.to(runner.adapter.device)
        except Exception as e:  # noqa: BLE001 - every item fails with the same line
            for it in items:
                it.fail(str(e))
            return
        for it in self.usable(items, runner.adapter):
            it.ctx.prepared.update(halc_aux=aux, halc_request=it.request)

    def branches(self, request, ctx):
        self.require_image(request)
        return [self.original(request)]

    def plausibility(self, logits, step, state):
        return None

    # --- the step --------------------------------------------------------------------------------
    def search(self, score, params, hooks, opts):
        if opts.get("num_beams", 1) > 1:
            raise ValueError("method 'halc' sets its beams with parameter 'beam_size'")
        if int(params["beam_size"]) == 1:
            return None   # beam 1: the plain chooser picks combine's one-hot choice
        hooks.beam = True
        return HalcBeams(score, hooks, int(params["beam_size"]), int(params["k_candidates"]))

    def combine(self, logits, step, state):
        p = state.params
        hooks = state.hooks
        ad = state.contexts[0].adapter
        rows = state.rows[:, 0]
        mature = logits[:, 0].float()
        gens = [list(hooks.row_tokens.get(row, [])) if hooks.beam else list(hooks.tokens[r])
                for row, r in zip(rows.tolist(), state.requests)]
        last_ids = [int(g[-1]) if g else int(hooks.seqs[r][0].input_ids[-1]) for g, r in zip(gens, state.requests)]
        early = []
        for layer in hooks.dola:
            if layer == 0:
                h = ad.embed_tokens(torch.tensor(last_ids, device=mature.device))
            else:
                h = hooks.last[layer - 1].index_select(0, rows.to(hooks.last[layer - 1].device))
            early.append(ad.lm_head()(h).float())
        scores, _ = dola_scores(mature, torch.stack(early, 1).to(mature.device), float(p["relative_top"]))
        picks = scores.argmax(-1).tolist()
        events, cands = self.propose(picks, gens, state)
        if hooks.beam:
            for k, row in enumerate(rows.tolist()):
                hooks.proposals[row] = (picks[k], cands[k], events[k], state.contexts[k])
            return scores
        tok = ad.processor.tokenizer
        exempt = list(p["exempt_words"]) if p["exempt_words"] is not None else list(EXEMPT_WORDS)
        for k, c in enumerate(cands):
            if c is None:
                continue
            ctx = state.contexts[k]
            texts = [tok.decode(gens[k] + [t], skip_special_tokens=True) for t in c]
            sim = ctx.prepared["halc_aux"]["scorer"].similarity(ctx.prepared["halc_request"].image, texts).softmax(-1)
            chosen = c[int(sim.argmax())]
            events[k]["chosen"] = chosen
            chosen, fired = unk_rule(tok, chosen, picks[k], events[k], len(gens[k]), p, exempt)
            if fired:
                events[k]["unk"] = True
            picks[k] = chosen
        out = torch.full_like(mature, -float("inf"))
        out[torch.arange(len(picks)), torch.tensor(picks)] = 0.0
        return out

    def propose(self, picks, gens, state):
        """Steps 2-5 for each member: (events [dict | None], candidate tokens [list | None]); the
        FOV views of every member that fires go into one spawned forward."""
        p = state.params
        ad = state.contexts[0].adapter
        tok = ad.processor.tokenizer
        eos = set(ad.eos_token_ids)
        exempt = list(p["exempt_words"]) if p["exempt_words"] is not None else list(EXEMPT_WORDS)
        add = list(p["add_words"]) if p["add_words"] is not None else list(ADD_WORDS)
        log = not state.hooks.beam
        events: list = [None] * len(picks)
        cands: list = [None] * len(picks)
        fire = []   # (member, FOV boxes)
        for k, y in enumerate(picks):
            ctx = state.contexts[k]
            if y in eos or not starts_word(tok, y):
                continue
            aux = ctx.prepared["halc_aux"]
            word = clean_entity(tok.decode([y], skip_special_tokens=True).strip())
            pos = aux["tagger"].pos(word) if word else "PUNC"
            if "." in word or "," in word or word in exempt:
                pos = "SKIP"
            if float(torch.rand(1, generator=ctx.rng)) < float(p["skip_rate"]):
                pos = "SKIP"
            if word in add:
                pos = "ADD"
            event = {"step": len(gens[k]), "token": y, "word": word, "pos": pos}
            events[k] = event
            if log:
                ctx.meta.setdefault("halc_events", []).append(event)
            if pos not in VALID_POS:
                event["status"] = "invalid"
                continue
            boxes = aux["detector"].detect(ctx.prepared["halc_request"].image, word, float(p["box_threshold"]))
            if len(boxes) > int(p["max_boxes"]):
                event.update(status="invalid", n_boxes=len(boxes))
                continue
            if boxes:
                areas = [(b[2] - b[0]) * (b[3] - b[1]) for b in boxes]
                target, status = boxes[areas.index(min(areas))], "activated"
            else:
                target, status = list(CENTRE_BOX), "not-detected"
            event.update(status=status, box=[round(float(v), 6) for v in target])
            fire.append((k, fov_boxes(target, int(p["context_window"]), float(p["expand_ratio"]))))
        if not fire:
            return events, cands
        branches, prefixes = [], []
        for k, fboxes in fire:
            req = state.contexts[k].prepared["halc_request"]
            for b in fboxes:
                branches.append(Branch(prompt=req.prompt, image=crop(req.image, b), system=req.system, name="fov"))
                prefixes.append(gens[k])
        fov = spawn_logits(ad, branches, prefixes, hooks=state.hooks).float().cpu()
        n = int(p["context_window"])
        for c, (k, _) in enumerate(fire):
            cands[k] = fov_candidates(fov[c * n:(c + 1) * n], int(p["k_candidates"]), float(p["contrast_weight"]))
            events[k]["candidates"] = cands[k]
        return events, cands
