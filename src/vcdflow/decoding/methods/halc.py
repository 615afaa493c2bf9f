"""``halc``: HALC, adaptive focal-contrast decoding (Chen et al., ICML 2024, arXiv 2403.00425;
``BillChan226/HALC@12ea8b5``) — word-level verification with rollback inside BLIP-ranked beams
(default 3, official; ``beam_size`` 1 runs the same loop with one beam). Read the divergences.

The official loop is ``halc_dola_beam_search`` in the vendored
``transformers-4.36.2/src/transformers/generation/utils.py`` (cited "utils.py L…"; HALC's
``generate`` always takes it, its greedy ``halc_dola_decode`` is behind ``if False:``, L1693);
the helpers are ``decoder_zoo/HALC/context_density/halc.py`` (cited "halc.py:…"). Per beam it
keeps the committed ids I (``beam_intermediate_token_lists``), the tokens of the word being
written W (``beam_last_tokens``; fed, not committed; I + W = ``beam_input_ids``), the model's
context F (what its KV cache holds, + the pending token) and a cache snapshot S
(``beam_last_model_kwargs``). Per step and beam (:class:`HalcBeams`, the engine's search protocol):

1. **DoLa token** y (utils.py L4587-4664): early exits ℓ_l = W_lm·h_l (HF ``hidden_states[l]``,
   **no final norm**: HALC's vendored ``models/llama/modeling_llama.py:701-706``) for the
   candidate layers (``premature_layers``; official 0, 2, …, 30 of 32 = every even index below L,
   the default here), mature = the model's logits ℓ (h_L). l* = argmax_l ½[KL_mean(M‖p_L) +
   KL_mean(M‖p_l)], M = ½(p_L + p_l); s = RT(log p_L) − log p_l*, RT keeps log p_L ≥ max +
   log(``relative_top`` 0.1) (−inf elsewhere; ``halc.py:752-768``), log p_l* set to −1e3 where
   RT(log p_L) < −1e3; y = argmax s.
2. **Word boundary** (L4672-4827): y starts a word (``check_word_complete``: its piece contains
   "▁" or ".", or y is EOS; :func:`starts_word`) → the word W just completed is judged (nothing
   when W is empty: the first token) and W is emptied; otherwise nothing is judged this step.
3. **Judgement of W** (``context_density_embedding``, ``halc.py:239-448``): current word
   w = get_last_word(W) (decode, split at " ", last, ``halc.py:159-165``); the entity is w, or,
   when W does not begin at a word start (after a re-decode), the last word of I's tail + W
   (L4699-4718). Entity cleaned of ``.,'][)`` and one trailing "s" (``halc.py:245-248``);
   POS = tagger(entity) (first token); SKIP if it has "." or ",", is exempt, or a uniform draw
   < ``skip_rate`` 0.3 (``halc.py:272-277``); ADD if in the add list (``halc.py:282-283``).
   NOUN/PROPN/ADD → boxes = detector(image, entity) (``box_threshold`` 0.45); more than
   ``max_boxes`` 3 → invalid; none → the centre box [0.2, 0.2, 0.8, 0.8] ("not-detected");
   else the smallest box ("activated"). Invalid: the beam's k entries are W itself (L4729-4735).
4. **FOV contrast** (``context_window`` 4, ``expand_ratio`` e = 0.6, ``halc.py:369-400``):
   [expand(b, −e), b, expand(b, e), expand(expand(b, e), e)] (expand grows each side by f·size/2,
   clipped, ``halc.py:188-202``), each crop a **spawned branch** (:mod:`vcdflow.decoding.spawn`)
   with the **committed ids I teacher-forced** (L4743-4751, ``get_intermediate_logits``: the raw
   next-token logits at the word's first position); JSD over the 4 views, the
   ``k_candidates``/2 = 2 most divergent pairs, both directions ℓ^(j) − w·ℓ^(i) and
   ℓ^(i) − w·ℓ^(j) (``contrast_weight`` 0.05; ``context_layer_double_multi_contrastive_decoding``,
   ``halc.py:1041-1111``) → k one-token entries [c].
5. **Bi-adaptive selection** (L4829-4893, ``clip_score_selection`` ``halc.py:1113-1208``): every
   beam puts k entries in a pool (beam order): its candidates, or "nothing" (mid-word, first
   token, finished beam: the text is I alone). Until the request's first grounding
   (activated/not-detected) the survivors are ``random.seed(8); random.sample(range(B·k), B)``;
   afterwards every step the texts decode(I + entry) are scored by the image-text scorer
   (softmax of ``logits_per_image``) and the B best distinct texts survive (ties: the later
   entry first, a stable ``argsort()[::-1]``; fewer than B: the best repeated). Each survivor
   copies its source beam's whole state.
6. **Commit and rollback** (L4895-5009): an entry is appended to I. Its last word w' =
   get_last_word(entry). **Not-detected removal** (L4912-4950): if the word was not detected,
   w' equals / is contained in / contains w, at least ``min_length`` 8 ids are committed
   (``min_length`` = prompt + 8, L4528) and w' is not exempt, the word's ids in I (back to its
   word start) become the tokenizer's unk token (HALC writes id 0 = LLaMA's ``<unk>``) and
   w' := "EOS". **If w' ≠ w the word is rolled back and re-decoded** (L4952-4990): the beam's
   context becomes its snapshot S + [I's last id] (``rollback_context: snapshot``, the official
   cache, L4958) or I (``committed``), one forward there gives the DoLa token y' (with the
   premature layer the loop last chose, i.e. the last beam's — the official reuses the variable
   ``premature_layer``, L4968), W = [y'] and the engine row **replays** the new context + y'
   (the engine's rollback, :class:`~vcdflow.decoding.beams.Choice` ``replay``; the re-decode forward is a
   spawned branch). Otherwise W = [y] and the row feeds y. Snapshot (L5021-5032): S := F minus
   the pending token whenever the pending token starts a word, or at the first mid-word token
   after a word start (``beam_once_flag``). So for a word of ≥ 2 ids the official snapshot
   already holds the word's first id and the re-decode context is [… first id, new id]
   (``rollback_context: committed`` re-decodes from I, the evident intent).
7. **End** (L4562-4570, L5066-5070): a beam whose pending token is EOS, or whose I + W reaches
   ``max_new_tokens`` + 1 ids, is finished (frozen; it stays in the pool with its text); the
   request ends when every beam is finished or beam 0 has ``max_new_tokens`` − 1 committed ids.
   Output: beam 0's ids I + W (a finished beam: all its ids), cut to ``max_new_tokens`` (so a
   "length" finish has ``max_new_tokens`` ids, as for every method; the official returns I only,
   dropping the last, unjudged word, L4566 — the last word is judged in neither);
   ``finish_reason`` "eos" when beam 0 finished at EOS. ``Output.text`` is decoded with
   ``skip_special_tokens``, so unk tokens drop out of the text, as in HALC's own decode (``get_sequence_text``,
   ``halc.py:167-175``); HALC's caption script then also drops every sentence containing "unk"
   (``caption_generation.py:537-542``): :func:`drop_unk_sentences`, not applied by the decoder.
   ``Output.meta["halc_events"]``: every judgement (step = len(I), beam, word, its ids, pos,
   status, box, candidates); ``meta["halc_commits"]``: every committed entry (step, beam, source
   beam, ids, corrected, unk, the re-decoded token). The unk removal is off with
   ``unk_not_detected: false``; a tokenizer without an unk token never applies it.

Parameters: ``detector``, ``scorer``, ``tagger`` (below); ``beam_size`` 3; ``premature_layers``
(None: 0, 2, …); ``relative_top`` 0.1; ``k_candidates`` 4; ``context_window`` 4; ``expand_ratio``
0.6; ``contrast_weight`` 0.05; ``box_threshold`` 0.45; ``max_boxes`` 3; ``skip_rate`` 0.3;
``min_length`` 8; ``unk_not_detected`` True; ``rollback_context`` "snapshot" (official) |
"committed"; ``exempt_words`` / ``add_words`` (None: the official lists, ``halc.py:23-30``).

The auxiliary models (:mod:`vcdflow.aux_models`): ``detector`` (GroundingDINO / OWLv2
folder), ``scorer`` (BLIP ``BlipModel`` / CLIP folder), ``tagger`` (spaCy model folder), each a
local path or a name registered with ``vcdflow.aux_models.register``. In the workflow they are
the decode input ``halc_aux`` (:data:`vcdflow.config.METHOD_INPUTS`: the folders
``resources/halc/{grounding_dino_tiny,blip_large,spacy_sm}`` of rule ``download_halc_aux``,
``workflow/rules/halc.smk``, attached as these three parameters by ``vcdflow.runner``, their
weights' digests in the run hash; a config entry may not set them). Missing ones fail the item
naming the parameter.

**Divergences (honest list).**

* **Finished beams.** The official keeps ``beam_finished`` per beam *position* while the
  selection copies every other state between positions (L4875-4893), so a running position can
  receive a finished beam's ids (and then decodes on after its EOS with pad tokens), and a
  finished position can receive a running one's; here a finished beam is frozen as a whole (it
  stays a pool member with its text; a position that selects it is finished with those ids) and
  does not forward. The re-decode's premature layer is the last *running* beam's (the official's
  last beam also forwards when finished). HALC's LLaVA-only repetition stop (L5047-5066) is not
  built. The output keeps the unk ids (the official strips id 0 from the returned ids, L4570).
* **Same text, other ids.** When the committed entry's last word equals w but its ids differ
  from W (no rollback), the official cache keeps W while I records the entry; so here (the row's
  context F is tracked apart from I).
* **Skip draws.** The official 30 % skip uses Python's global ``random``, which its selection
  re-seeds to 8 at every ungrounded step (``halc.py:1122``), so its skips follow that stream;
  here they come from the request's own generator (seed, item), one draw per judgement in beam
  order.
* **Start.** The official starts from B identical beams, we from one row copied at the first
  selection (no word is judged at the first token, so the same hypotheses).
* Mature logits: HALC takes every layer from one ``early_exit_layers`` forward; identical here.
* **Logits processors.** The loop applies transformers' ``logits_processor`` to the DoLa token's
  scores (over ``beam_input_ids`` = I + W), the FOV candidates' contrast logits and the re-decoded
  token's (over ``beam_intermediate_token_lists`` = I) (vendored ``transformers-4.36.2/.../generation/utils.py``
  L4662, L4809, L4980). For LLaVA-1.5 it holds only ``min_length`` (modelled above: prompt + 8,
  L4528); for **InstructBLIP** it also holds LAVIS's ``generate`` default ``repetition_penalty=1.5``
  (``minigpt4/models/blip2_vicuna_instruct.py:331,485-496``; no script sets it), over one BOS and
  those ids. Parameters ``repetition_penalty`` (θ = 1.0: off) and ``repetition_context``
  (``"generated"``: one BOS + the ids, LAVIS; ``"prompt"``: the prompt's ids first) apply it at the
  same three places over the same ids (protocol ``halc`` sets θ = 1.5 for InstructBLIP); the
  engine's generic processors are not used (their history is the request's, not a beam's).
* GroundingDINO through transformers' port instead of the original CUDA build (see
  :mod:`vcdflow.aux_models`). The word-start test of a non-LLaMA tokenizer is generalised
  (:func:`starts_word`; HALC reads LLaMA's vocabulary file, ``halc.py:89-100``).

Mode: **greedy only** (HALC's DoLa token choice is an argmax; its ``--sample`` flag does not reach
the HALC path); ``generate(num_beams=…)`` is refused: the beams are ``beam_size`` (``-b`` 3,
``caption_generation.py:111``). ``random_draw``: the 30 % skip draws from the request's stream,
so the greedy output depends on the seed. Families: all (the FOV crops are ordinary image
branches). Defaults: ``caption_generation.py:111-175,406-418`` (``-k`` 4, ``-e`` 0.6,
``--box_threshold`` 0.45, ``context_window`` 4, ``contrast_weight`` 0.05, ``context_domain``
"upper", score "BLIP"), ``halc.py:78-79`` (``max_handle_box`` 3, ``skip_rate`` 0.3), utils.py
L4528 (``min_length`` = prompt + 8).
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass, field
from types import MappingProxyType

import torch
import torch.nn.functional as F

from ..hooks import LayerCapture
from ..spawn import spawn_logits
from ..types import Branch, InputError
from ..processors import check_processor_params
from .base import Method

#: ``halc.py:23-27``
EXEMPT_WORDS = (
    "image",
    "side",
    "background",
    "feature",
    "features",
    "center",
    "left",
    "right",
    "scene",
    "view",
    "s",
    "Birthday",
    "detail",
    "red",
    "white",
    "cat",
    "horse",
    "bus",
    "group",
    "manner",
    "her",
    "birds",
    "teddy",
    "stack",
    "cell",
    "toaster",
    "mirror",
    "toilet",
    "captures",
    "boat",
    "bench",
)
#: ``halc.py:29-30``
ADD_WORDS = (
    "sink",
    "microwave",
    "toaster",
    "puppy",
    "bottle",
    "table",
    "oven",
    "orange",
    "toothbrush",
    "cars",
)
CENTRE_BOX = (0.2, 0.2, 0.8, 0.8)
VALID_POS = ("NOUN", "PROPN", "ADD")
ROLLBACK_CONTEXTS = ("snapshot", "committed")


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
    thresh = s.max(-1, keepdim=True).values + math.log(relative_top)  # ≤ the top-1 value: 1 token kept
    return s.masked_fill(s < thresh, -float("inf"))


def dola_scores(
    mature: torch.Tensor, early: torch.Tensor, relative_top: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """mature [R, V], early [R, C, V] → (DoLa scores [R, V], chosen candidate index [R])."""
    p_m = mature.softmax(-1).unsqueeze(1)
    p_e = early.softmax(-1)
    M = 0.5 * (p_m + p_e)
    kl1 = F.kl_div(mature.log_softmax(-1).unsqueeze(1).expand_as(M), M, reduction="none").mean(-1)
    kl2 = F.kl_div(early.log_softmax(-1), M, reduction="none").mean(-1)
    js = 0.5 * (kl1 + kl2)  # [R, C]
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
    return [
        max(0.0, b[0] - w * f / 2),
        max(0.0, b[1] - h * f / 2),
        min(1.0, b[2] + w * f / 2),
        min(1.0, b[3] + h * f / 2),
    ]


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


def fov_candidates(fov: torch.Tensor, k: int, weight: float, process=None) -> list[int]:
    """``halc.py:1041-1111``: fov [n, V] raw logits → k candidate tokens from the k/2 most
    JS-divergent pairs, both directions. ``process`` (optional): the logits processors on each
    contrast before its argmax (vendored ``utils.py`` L4809)."""
    n = fov.shape[0]
    logp = fov.log_softmax(-1)
    p = fov.softmax(-1)
    jsd = torch.zeros(n, n)
    for i in range(n):
        for j in range(i + 1, n):
            M = 0.5 * (p[i] + p[j])
            kl1 = F.kl_div(logp[i : i + 1], M[None], reduction="batchmean")
            kl2 = F.kl_div(logp[j : j + 1], M[None], reduction="batchmean")
            jsd[i, j] = jsd[j, i] = 0.5 * (kl1 + kl2)
    top = torch.topk(jsd.triu(diagonal=1).flatten(), k // 2).indices
    out = []
    for flat in top.tolist():
        i, j = flat // n, flat % n
        for base, final in ((fov[i], fov[j]), (fov[j], fov[i])):
            base = base.masked_fill(final < -1e3, -1e3)
            c = final - weight * base
            out.append(int((process(c[None])[0] if process is not None else c).argmax()))
    return out


def is_word_level(tokenizer) -> bool:
    bt = getattr(tokenizer, "backend_tokenizer", None)
    return bt is not None and type(bt.model).__name__ == "WordLevel"


def starts_word(tokenizer, token_id: int, eos=()) -> bool:
    """``check_word_complete`` (``halc.py:143-157``) generalised: the piece contains "▁"
    (SentencePiece) or ".", or starts with "Ġ" (byte BPE), or the token is EOS (HALC: id 2); every
    token of a word-level tokenizer."""
    if int(token_id) in eos or is_word_level(tokenizer):
        return True
    piece = tokenizer.convert_ids_to_tokens(int(token_id)) or ""
    return "▁" in piece or piece.startswith("Ġ") or "." in piece


def last_word(tokenizer, ids) -> str:
    """``get_last_word`` (``halc.py:159-165``): decode (special tokens skipped), split at " ", last."""
    return tokenizer.decode([int(t) for t in ids], skip_special_tokens=True).split(" ")[-1]


@dataclass
class HalcHooks(LayerCapture):
    """Decoder-layer outputs for the DoLa early exits (HF index l ≥ 1 = decoder layer l − 1).
    The search sets ``row_last`` (row → the last id that row was fed: the layer-0 exit) before
    each ``combine``; ``combine`` leaves each row's premature-layer index (into ``dola``) in
    ``row_pick``."""

    dola: tuple = ()
    row_last: dict = field(default_factory=dict)
    row_pick: dict = field(default_factory=dict)


@dataclass
class Beam:
    """One HALC beam (the official per-beam lists, utils.py L4496-4522): ``committed`` ids I, the
    word being written ``word_ids`` W (I + W = ``beam_input_ids``), the row's context ``fed`` F
    (what its cache holds + the pending token), the ``snapshot`` S (``beam_last_model_kwargs``' cache),
    ``once`` (``beam_once_flag``), ``not_detected``, ``word`` (``beam_current_word``); ``slot``:
    its engine slot (None: finished; ``committed`` then holds all its ids); per step its DoLa token ``y``,
    premature-layer index ``pick`` and pool ``entries``."""

    committed: list = field(default_factory=list)
    word_ids: list = field(default_factory=list)
    fed: list = field(default_factory=list)
    snapshot: list = field(default_factory=list)
    once: bool = False
    not_detected: bool = False
    word: str = ""
    slot: int | None = 0
    eos: bool = False
    y: int | None = None
    pick: int = 0
    entries: list = field(default_factory=list)


class HalcBeams:
    """HALC's loop (module docstring, steps 1-7) on the engine's search protocol
    (:mod:`vcdflow.decoding.beams`): per request ``beam_size`` :class:`Beam` objects; the engine
    forwards one row per running beam; a rolled-back beam's row replays its new context (rollback)."""

    def __init__(self, score, hooks: HalcHooks, params, contexts, processors: dict | None = None):
        self.score = score
        self.hooks = hooks
        self.p = params
        self.procs = processors
        self.B = int(params["beam_size"])
        self.k = int(params["k_candidates"])
        self.contexts = contexts
        self.beams: dict[int, list[Beam]] = {}
        self.grounded: dict[int, bool] = {}

    # --- helpers ------------------------------------------------------------------------------
    def _process(self, scores: torch.Tensor, r: int, ids: list[int]) -> torch.Tensor:
        """The logits processors (repetition penalty) on scores [n, V] of request ``r`` over the
        prefix (prompt ids, or one BOS for LAVIS's InstructBLIP) + ``ids``."""
        if not self.procs:
            return scores
        from ..processors import prefix_ids, process_ids

        pre = prefix_ids(self.hooks, r, self.procs["context"])
        return process_ids(
            scores, [pre + list(ids)] * scores.shape[0], self.procs["repetition"], self.procs["ngram"]
        )

    def _tok(self, r):
        return self.contexts[r].adapter.processor.tokenizer

    def _lists(self):
        p = self.p
        exempt = list(p["exempt_words"]) if p["exempt_words"] is not None else list(EXEMPT_WORDS)
        add = list(p["add_words"]) if p["add_words"] is not None else list(ADD_WORDS)
        return exempt, add

    def _judge(self, r: int, j: int, b: Beam, eos):
        """Step 3 for beam ``j``'s completed word ``b.word_ids`` → (event, FOV boxes | None)."""
        ctx = self.contexts[r]
        p = self.p
        tok = self._tok(r)
        aux = ctx.prepared["halc_aux"]
        exempt, add = self._lists()
        W = list(b.word_ids)
        b.word = last_word(tok, W)
        if starts_word(tok, W[0], eos):
            ent = b.word
        else:  # the word began before W (a re-decoded word): I's tail back to its word start
            t = 1
            while t < len(b.committed) and not starts_word(tok, b.committed[-t], eos):
                t += 1
            ent = last_word(tok, b.committed[-t:] + W)
        word = clean_entity(ent)
        pos = aux["tagger"].pos(word) if word else "PUNC"
        if "." in word or "," in word or word in exempt:
            pos = "SKIP"
        if float(torch.rand(1, generator=ctx.rng)) < float(p["skip_rate"]):
            pos = "SKIP"
        if word in add:
            pos = "ADD"
        event = {"step": len(b.committed), "beam": j, "word": word, "tokens": W, "pos": pos}
        ctx.meta.setdefault("halc_events", []).append(event)
        if pos not in VALID_POS:
            event["status"] = "invalid"
            return event, None
        boxes = aux["detector"].detect(ctx.prepared["halc_request"].image, word, float(p["box_threshold"]))
        if len(boxes) > int(p["max_boxes"]):
            event.update(status="invalid", n_boxes=len(boxes))
            return event, None
        if boxes:
            areas = [(x[2] - x[0]) * (x[3] - x[1]) for x in boxes]
            target, status = boxes[areas.index(min(areas))], "activated"
        else:
            target, status = list(CENTRE_BOX), "not-detected"
        event.update(status=status, box=[round(float(v), 6) for v in target])
        self.grounded[r] = True
        return event, fov_boxes(target, int(p["context_window"]), float(p["expand_ratio"]))

    def _redecode(self, jobs, hists=None) -> list[int]:
        """DoLa tokens after each (request, context ids, premature-layer index) job: one spawned
        forward of the original prompt + image with the context teacher-forced; ``hists[n]``: the
        ids job n's processors see after the prefix (the committed ids, utils.py L4980)."""
        h = self.hooks
        ad = self.contexts[jobs[0][0]].adapter
        layers = sorted({h.dola[pick] for _, _, pick in jobs if h.dola[pick] > 0})
        grab: dict = {}
        mods = ad.decoder_layers()
        handles = []
        for layer in layers:

            def hook(module, args, output, _l=layer):
                grab[_l] = (output[0] if isinstance(output, tuple) else output)[:, -1, :]

            handles.append(mods[layer - 1].register_forward_hook(hook))
        branches = []
        for r, _, _ in jobs:
            req = self.contexts[r].prepared["halc_request"]
            branches.append(Branch(prompt=req.prompt, image=req.image, system=req.system, name="redecode"))
        try:
            logits = spawn_logits(ad, branches, [ids for _, ids, _ in jobs], hooks=h)
        finally:
            for x in handles:
                x.remove()
        out = []
        with torch.no_grad():
            for n, (_, ids, pick) in enumerate(jobs):
                layer = h.dola[pick]
                if layer == 0:
                    e = ad.embed_tokens(torch.tensor([int(ids[-1])], device=logits.device))
                else:
                    e = grab[layer][n : n + 1]
                early = ad.lm_head()(e).float().to(logits.device)
                s, _ = dola_scores(logits[n : n + 1].float(), early[:, None], float(self.p["relative_top"]))
                if self.procs and hists is not None:
                    s = self._process(s, jobs[n][0], hists[n])
                out.append(int(s.argmax()))
        return out

    # --- the step -------------------------------------------------------------------------------
    def step(self, step: int, logits: torch.Tensor, layout):
        from ..beams import _choice

        spans = layout.spans()
        h = self.hooks
        eos = set(layout.eos)
        h.row_last, h.row_pick = {}, {}
        reqs: list[int] = []
        for r, s, first, _ in spans:
            if r not in reqs:
                reqs.append(r)
            if r not in self.beams:  # first call: B identical beams on the one prefill row
                self.beams[r] = [Beam(slot=s) for _ in range(self.B)]
            ctxt = next((b.fed for b in self.beams[r] if b.slot == s), [])
            h.row_last[first] = int(ctxt[-1]) if ctxt else int(h.seqs[r][0].input_ids[-1])
        scores = self.score(step, logits, spans)
        if self.procs:  # the DoLa token's processors over beam_input_ids = I + W (utils.py L4662)
            scores = scores.clone()
            for i, (r, s, _, _) in enumerate(spans):
                b = next((b for b in self.beams[r] if b.slot == s), None)
                if b is not None:
                    scores[i : i + 1] = self._process(scores[i : i + 1], r, b.committed + b.word_ids)
        ys = scores.argmax(-1).tolist()
        where = {(sp[0], sp[1]): (i, sp[2]) for i, sp in enumerate(spans)}
        # 1-3: DoLa token, word boundary, judgement
        fov_jobs = []  # (request, beam, boxes)
        for r in reqs:
            tok = self._tok(r)
            for j, b in enumerate(self.beams[r]):
                b.entries = [None] * self.k
                if b.slot is None:
                    continue
                i, row = where[(r, b.slot)]
                b.y, b.pick = int(ys[i]), int(h.row_pick[row])
                if not starts_word(tok, b.y, eos):
                    continue
                b.once = False
                if b.word_ids:
                    event, boxes = self._judge(r, j, b, eos)
                    b.not_detected = event.get("status") == "not-detected"
                    if boxes is None:
                        b.entries = [list(b.word_ids) for _ in range(self.k)]
                    else:
                        fov_jobs.append((r, j, boxes, event))
                b.word_ids = []
        # 4: the FOV views of every judged word in one spawned forward
        if fov_jobs:
            branches, prefixes = [], []
            for r, j, boxes, _ in fov_jobs:
                req = self.contexts[r].prepared["halc_request"]
                for box in boxes:
                    branches.append(
                        Branch(prompt=req.prompt, image=crop(req.image, box), system=req.system, name="fov")
                    )
                    prefixes.append(list(self.beams[r][j].committed))
            ad = self.contexts[fov_jobs[0][0]].adapter
            fov = spawn_logits(ad, branches, prefixes, hooks=h).float().cpu()
            n = int(self.p["context_window"])
            for c, (r, j, _, event) in enumerate(fov_jobs):
                hist = self.beams[r][j].committed  # beam_intermediate_token_lists (utils.py L4809)
                cands = fov_candidates(
                    fov[c * n : (c + 1) * n],
                    self.k,
                    float(self.p["contrast_weight"]),
                    (lambda x, _r=r, _h=hist: self._process(x, _r, _h)) if self.procs else None,
                )
                event["candidates"] = cands
                self.beams[r][j].entries = [[t] for t in cands]
        # 5-6: selection, commit, rollback
        new_beams: dict[int, list[Beam]] = {}
        redo = []  # (request, new beam index, context ids, premature-layer index, commit record)
        src_slot: dict = {}
        for r in reqs:
            ctx = self.contexts[r]
            tok = self._tok(r)
            exempt, _ = self._lists()
            bs = self.beams[r]
            pool = [(j, e) for j, b in enumerate(bs) for e in b.entries]
            if not self.grounded.get(r):
                sel = random.Random(8).sample(range(len(pool)), self.B)
            else:
                texts = [tok.decode(bs[j].committed + (e or []), skip_special_tokens=True) for j, e in pool]
                probs = (
                    ctx.prepared["halc_aux"]["scorer"]
                    .similarity(ctx.prepared["halc_request"].image, texts)
                    .softmax(-1)
                    .tolist()
                )
                sel, seen = [], set()
                for i in sorted(range(len(pool)), key=lambda i: probs[i])[::-1]:
                    if texts[i] not in seen:
                        seen.add(texts[i])
                        sel.append(i)
                    if len(sel) == self.B:
                        break
                sel += [sel[0]] * (self.B - len(sel))
            live = [b for b in bs if b.slot is not None]
            last_pick = live[-1].pick if live else 0
            unk_id = tok.unk_token_id
            out = []
            for jn, i in enumerate(sel):
                j, e = pool[i]
                nb = copy.deepcopy(bs[j])
                src_slot[(r, jn)] = bs[j].slot
                out.append(nb)
                if nb.slot is None:
                    continue
                if e is None:
                    nb.word_ids.append(nb.y)
                    nb.fed.append(nb.y)
                    continue
                nb.committed = nb.committed + list(e)
                w2 = last_word(tok, e)
                unk = False
                if (
                    nb.not_detected
                    and self.p["unk_not_detected"]
                    and unk_id is not None
                    and len(nb.committed) >= int(self.p["min_length"])
                    and (w2 == nb.word or w2 in nb.word or nb.word in w2)
                    and w2 not in exempt
                ):
                    t = 1
                    if not starts_word(tok, e[0], eos):
                        while t < len(nb.committed) and not starts_word(tok, nb.committed[-t], eos):
                            t += 1
                    nb.committed = nb.committed[:-t] + [int(unk_id)] * t
                    w2, unk = "EOS", True
                corrected = w2 != nb.word
                commit = {
                    "step": len(bs[j].committed),
                    "beam": jn,
                    "source": j,
                    "ids": list(e),
                    "corrected": corrected,
                    "unk": unk,
                }
                ctx.meta.setdefault("halc_commits", []).append(commit)
                if corrected:
                    if self.p["rollback_context"] == "snapshot":
                        back = nb.snapshot + [nb.committed[-1]]
                    else:
                        back = list(nb.committed)
                    redo.append((r, jn, back, last_pick, commit))
                else:
                    nb.word_ids.append(nb.y)
                    nb.fed.append(nb.y)
            new_beams[r] = out
        replay_ids: dict = {}
        if redo:
            hists = [new_beams[x[0]][x[1]].committed for x in redo]
            for (r, jn, back, _, commit), y2 in zip(
                redo, self._redecode([(x[0], x[2], x[3]) for x in redo], hists)
            ):
                nb = new_beams[r][jn]
                nb.word_ids, nb.fed = [y2], list(back) + [y2]
                commit["redecoded"] = y2
                replay_ids[(r, jn)] = nb.fed
        # 7: snapshots, finished beams, the end; the engine's next rows
        picks, feed, tokens, done, replay = [], [], {}, {}, {}
        for r in reqs:
            tok = self._tok(r)
            limit = int(layout.limits[r])
            for jn, nb in enumerate(new_beams[r]):
                if nb.slot is None:
                    continue
                pending = nb.fed[-1]
                if not starts_word(tok, pending, eos):
                    if not nb.once:
                        nb.once = True
                        nb.snapshot = nb.fed[:-1]
                else:
                    nb.snapshot = nb.fed[:-1]
                if pending in eos:
                    nb.committed, nb.word_ids, nb.slot, nb.eos = (
                        nb.committed + nb.word_ids[:-1],
                        [],
                        None,
                        True,
                    )
                elif len(nb.committed) + len(nb.word_ids) >= limit + 1:
                    nb.committed, nb.word_ids, nb.slot = nb.committed + nb.word_ids, [], None
            bs = new_beams[r]
            self.beams[r] = bs
            b0 = bs[0]
            if all(b.slot is None for b in bs) or len(b0.committed) >= limit - 1:
                tokens[r] = list((b0.committed + b0.word_ids)[:limit])
                done[r] = "eos" if b0.eos else "length"
                continue
            tokens[r] = list((b0.committed + b0.word_ids)[:limit])
            for jn, nb in enumerate(bs):
                if nb.slot is None:
                    continue
                if (r, jn) in replay_ids:
                    replay[len(picks)] = list(replay_ids[(r, jn)])
                picks.append((r, src_slot[(r, jn)], jn))
                feed.append(nb.fed[-1])
                nb.slot = jn
        ch = _choice(layout, picks, feed, tokens, done)
        if replay:  # one branch per beam: pick i is new row i
            ch.replay = replay
        return ch


@dataclass(frozen=True)
class HALC(Method):
    name = "halc"
    mode = "greedy"
    random_draw = True  # the 30 % skip
    extra_inputs = (
        "halc_aux",
    )  # the workflow's detector/scorer/tagger folders (vcdflow.config.METHOD_INPUTS)
    defaults = MappingProxyType(
        {
            "detector": None,
            "scorer": None,
            "tagger": None,
            "premature_layers": None,
            "relative_top": 0.1,
            "beam_size": 3,
            "k_candidates": 4,
            "context_window": 4,
            "expand_ratio": 0.6,
            "contrast_weight": 0.05,
            "box_threshold": 0.45,
            "max_boxes": 3,
            "skip_rate": 0.3,
            "min_length": 8,
            "unk_not_detected": True,
            "rollback_context": "snapshot",
            "exempt_words": None,
            "add_words": None,
            "repetition_penalty": 1.0,
            "repetition_context": "prompt",
        }
    )
    nullable = frozenset({"detector", "scorer", "tagger", "premature_layers", "exempt_words", "add_words"})
    param_types = MappingProxyType(
        {
            "detector": str,
            "scorer": str,
            "tagger": str,
            "premature_layers": list,
            "exempt_words": list,
            "add_words": list,
        }
    )

    def validate(self, p):
        super().validate(p)
        check_processor_params(self.name, p)
        k = p["k_candidates"]
        if not isinstance(k, int) or k < 2 or k % 2:
            raise ValueError(
                f"parameter 'k_candidates' of method 'halc' must be an even integer >= 2, got {k!r}"
            )
        if not isinstance(p["beam_size"], int) or p["beam_size"] < 1:
            raise ValueError(
                f"parameter 'beam_size' of method 'halc' must be a positive integer, got {p['beam_size']!r}"
            )
        if not isinstance(p["context_window"], int) or p["context_window"] < 2:
            raise ValueError(
                f"parameter 'context_window' of method 'halc' must be an integer >= 2, "
                f"got {p['context_window']!r}"
            )
        pairs = p["context_window"] * (p["context_window"] - 1) // 2
        if k // 2 > pairs:
            raise ValueError(
                f"parameter 'k_candidates' of method 'halc': {k} needs {k // 2} FOV pairs, "
                f"context_window {p['context_window']} has {pairs}"
            )
        if not 0 < float(p["relative_top"]) <= 1:
            raise ValueError(
                f"parameter 'relative_top' of method 'halc' must be in (0, 1], got {p['relative_top']}"
            )
        if not 0 <= float(p["skip_rate"]) <= 1:
            raise ValueError(
                f"parameter 'skip_rate' of method 'halc' must be in [0, 1], got {p['skip_rate']}"
            )
        if p["rollback_context"] not in ROLLBACK_CONTEXTS:
            raise ValueError(
                f"parameter 'rollback_context' of method 'halc' must be one of "
                f"{', '.join(ROLLBACK_CONTEXTS)}, got {p['rollback_context']!r}"
            )
        if p["premature_layers"] is not None and (
            not p["premature_layers"] or not all(isinstance(x, int) and x >= 0 for x in p["premature_layers"])
        ):
            raise ValueError(
                "parameter 'premature_layers' of method 'halc' must be a non-empty list of "
                f"hidden-state indices >= 0, got {p['premature_layers']!r}"
            )

    # --- layers ------------------------------------------------------------------------------
    def dola_layers(self, adapter, params) -> list[int]:
        L = len(adapter.decoder_layers())
        layers = params["premature_layers"]
        layers = default_premature(L) if layers is None else [int(x) for x in layers]
        bad = [x for x in layers if x >= L]
        if bad:
            raise InputError(
                f"parameter 'premature_layers' of method 'halc': {bad} not below the model's "
                f"{L} layers (the mature layer)"
            )
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
                    raise InputError(
                        f"method 'halc' needs parameter {kind!r} (a local model folder or a name "
                        f"registered with vcdflow.aux_models.register)"
                    )
                aux[kind] = aux_models.resolve(kind, p[kind])
                model = getattr(aux[kind], "model", None)
                if isinstance(model, torch.nn.Module):  # detector/scorer beside the VLM (CUDA when it is)
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
        return HalcBeams(score, hooks, params, opts["contexts"], super().processors(params))

    def processors(self, p):
        """None: HALC applies its processors itself, at the three official places, each over its
        own ids (the engine's per-request history is not a beam's)."""
        return None

    def combine(self, logits, step, state):
        """DoLa scores of every row (step 1); the search reads the argmax and ``row_pick``."""
        p = state.params
        hooks = state.hooks
        ad = state.contexts[0].adapter
        rows = state.rows[:, 0]
        mature = logits[:, 0].float()
        last_ids = [int(hooks.row_last[row]) for row in rows.tolist()]
        early = []
        for layer in hooks.dola:
            if layer == 0:
                h = ad.embed_tokens(torch.tensor(last_ids, device=mature.device))
            else:
                h = hooks.last[layer - 1].index_select(0, rows.to(hooks.last[layer - 1].device))
            early.append(ad.lm_head()(h).float())
        scores, pick = dola_scores(mature, torch.stack(early, 1).to(mature.device), float(p["relative_top"]))
        for k, row in enumerate(rows.tolist()):
            hooks.row_pick[row] = int(pick[k])
        return scores
