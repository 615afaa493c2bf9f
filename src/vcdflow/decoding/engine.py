"""The one batched generation loop, shared by every method.

Per batch of requests:

1. load images, run the method's optional batched ``prepare`` stage (Self-Aug's SAS query, CODE's
   self-description, AvisC's attention probe) with :class:`Runner`'s helpers;
2. ``method.branches(request, ctx)`` → branches; the family adapter encodes each one;
3. **prefill**: every branch of every request, left-padded, in one forward with one
   ``DynamicCache`` holding all rows (its layers :class:`~vcdflow.models.adapters` ``ReservedLayer``:
   room for the new tokens, no whole-cache copy per step). With ``share_prefix`` (default), rows
   whose system text + image are identical (the questions of one image, a contrast input fixed
   per image) prefill that prefix once — the vision tower runs once per distinct image input —,
   its KV rows are copied to every row that has it, and only the question suffixes are prefilled
   on top (:func:`share_plan`, :func:`shared_prefill`);
4. **per step**: one forward of all live rows; per request, ``combine`` its rows' logits
   (requests with the same branch count are combined together), apply the plausibility
   constraint from the ORIGINAL branch, then temperature/top-k/top-p and argmax or a draw from
   the request's own generator; the chosen token is appended to all branches of the request;
5. a request stops at EOS or ``max_new_tokens`` and its rows leave the batch (KV-cache rows are
   dropped with ``batch_select_indices``; left padding no row needs any more is cut off).

Searches (:mod:`vcdflow.decoding.beams`) plug into the same loop: a chooser with
``step(step, logits, layout) -> Choice`` may repeat, reorder and drop rows (beam search —
``generate(num_beams=…)`` for any method —, look-ahead candidates for contrastive search and
OPERA) and roll rows back (a row forgets its generated columns and re-feeds ids from its
prompt); an amateur model (:mod:`vcdflow.decoding.amateur`) decodes the same tokens in
lockstep on its own cache and its logits reach ``combine`` as ``state.amateur``. A method
declares what it needs: ``Method.search(score, params, hooks, opts)`` (its own search),
``Method.amateur_stream(adapter, params)`` (an amateur), ``forward_hooks`` (captures).

A request's output does not depend on its batch companions: greedy exactly up to float
round-off ties, sampling via per-request generators (see :mod:`vcdflow.decoding.sampling`).
Failing requests get ``Output.error``; the others decode normally.
"""

from __future__ import annotations

import contextlib
import logging
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from .methods import get_method
from .hooks import DecodeHooks, Rows
from .methods.base import Method
from .plausibility import apc
from .processors import apply_processors
from .sampling import image_identity, make_generator, sample_tokens, warp
from .types import Branch, BranchContext, InputError, Output, Request, State

log = logging.getLogger(__name__)


# --- helpers -------------------------------------------------------------------------------------
def _load_image(x, what: str):
    if x is None:
        return None
    from PIL import Image

    try:
        if isinstance(x, (str, Path)):
            with Image.open(x) as im:
                im.load()
                return im.convert("RGB")
        if isinstance(x, Image.Image):
            x.load()
            return x if x.mode == "RGB" else x.convert("RGB")
    except Exception as e:  # noqa: BLE001
        raise InputError(f"bad {what}: cannot read image {str(x)[:200]!r}: {e}") from e
    raise InputError(f"bad {what}: expected a PIL image or a file path, got {type(x).__name__}")


def _load_request(req: Request) -> Request:
    from dataclasses import replace

    imgs = None
    if req.contrast_images is not None:
        imgs = [_load_image(im, f"contrast_images[{i}]") for i, im in enumerate(req.contrast_images)]
    return replace(
        req,
        image=_load_image(req.image, "image"),
        contrast_image=_load_image(req.contrast_image, "contrast_image"),
        contrast_images=imgs,
    )


def _error_text(e: BaseException) -> str:
    if isinstance(e, InputError):
        return str(e)
    log.warning("request failed", exc_info=e)
    return f"{type(e).__name__}: {e}"


@contextlib.contextmanager
def eager_attention(model):
    """Temporarily switch ``model`` to eager attention (attention weights are returned)."""
    prev = getattr(model.config, "_attn_implementation", None)
    if prev in (None, "eager") or not hasattr(model, "set_attn_implementation"):
        yield
        return
    model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.set_attn_implementation(prev)


def _cut_left(cache, mask: torch.Tensor) -> torch.Tensor:
    """Drop leading columns that are padding for every remaining row (mask and cache alike)."""
    first = int(mask.any(0).to(torch.int8).argmax())
    if first == 0:
        return mask
    layers = getattr(cache, "layers", None)
    if not layers or not all(type(layer).__name__ in ("DynamicLayer", "ReservedLayer") for layer in layers):
        return mask
    for layer in layers:
        if hasattr(layer, "cut_left"):
            layer.cut_left(first)
        elif getattr(layer, "keys", None) is not None and layer.keys.numel():
            layer.keys = layer.keys[:, :, first:, :]
            layer.values = layer.values[:, :, first:, :]
    return mask[:, first:]


# --- shared-prefix prefill -----------------------------------------------------------------------
@dataclass
class SharePlan:
    """Rows grouped by their shareable prefix (system text + image, see
    ``FamilyAdapter.prefix_length``/``prefix_key``): ``unique[u]`` is the representative row of
    prefix ``u``, ``row_prefix[i]`` the prefix of row ``i``, ``lengths[i]`` its prefix length."""

    unique: list[int]
    row_prefix: list[int]
    lengths: list[int]


def share_plan(adapter, rows: Sequence[Any]) -> SharePlan | None:
    """Group ``rows`` by shareable prefix; None when sharing saves nothing (no two rows share a
    prefix, a row has nothing to split off, or padding would make the split cost more tokens).

    Text-only rows (M3ID's, VDD's branch) share their longest common head (the system text) when
    that does not widen the prefix batch more than it saves, else just their first token."""
    if len(rows) < 2:
        return None
    base = [adapter.prefix_length(e) for e in rows]
    if min(base) < 1:
        return None
    candidates = [base]
    text_only = [i for i, e in enumerate(rows) if e.pixel_values is None]
    if len(text_only) > 1:
        head = _common_head([rows[i].input_ids for i in text_only])
        alt = list(base)
        for i in text_only:
            alt[i] = max(1, min(head, rows[i].length - 1))
        if alt != base:
            candidates.insert(0, alt)
    n_full = max(e.length for e in rows)
    best = None
    for lengths in candidates:
        keys: dict[tuple, int] = {}
        unique: list[int] = []
        row_prefix: list[int] = []
        for i, (e, p) in enumerate(zip(rows, lengths)):
            k = adapter.prefix_key(e, p)
            if k not in keys:
                keys[k] = len(unique)
                unique.append(i)
            row_prefix.append(keys[k])
        if len(unique) == len(rows):
            continue
        n_pre = max(lengths[i] for i in unique)
        n_suf = max(e.length - p for e, p in zip(rows, lengths))
        cost = len(unique) * n_pre + len(rows) * n_suf
        if cost <= len(rows) * n_full and (best is None or cost < best[0]):
            best = (cost, SharePlan(unique=unique, row_prefix=row_prefix, lengths=list(lengths)))
    return None if best is None else best[1]


def _common_head(seqs: Sequence[torch.Tensor]) -> int:
    """Length of the longest common prefix of the 1-D id tensors ``seqs``."""
    n = min(int(x.shape[0]) for x in seqs)
    first = seqs[0][:n]
    same = torch.ones(n, dtype=torch.bool)
    for x in seqs[1:]:
        same &= x[:n] == first
    diff = (~same).nonzero()
    return int(diff[0]) if diff.numel() else n


def _right_aligned(pos: torch.Tensor, n_rows: int, width: int, parts) -> torch.Tensor:
    """Position ids [..., n_rows, width]: ``parts`` = (target row, source row, start, stop) copies
    ``pos[..., source, start:stop]`` right-aligned into the target row; padding positions are 0."""
    out = pos.new_zeros(pos.shape[:-2] + (n_rows, width))
    for t, src, a, b in parts:
        out[..., t, width - (b - a) :] = pos[..., src, a:b]
    return out


def shared_prefill(
    adapter,
    rows: Sequence[Any],
    plan: SharePlan,
    mask: torch.Tensor,
    pos: torch.Tensor,
    cache,
    hooks: DecodeHooks | None = None,
    row_req: Sequence[int] = (),
    row_branch: Sequence[int] = (),
):
    """Prefill ``rows`` with each unique prefix computed once (its image encoded once), its KV
    rows copied to every row that has it, then only the suffixes prefilled on top.

    ``mask``/``pos`` are the rows' unshared left-padded attention mask and prefill positions
    (``adapter.prefill_positions``): every token gets the position it has unshared. The returned
    mask [R, P + S] is laid out as [prefix padding | prefix | suffix padding | suffix]; padding in
    the middle is masked out like left padding. Returns (last-position logits [R, V], mask).
    ``hooks`` (optional :class:`~vcdflow.decoding.hooks.DecodeHooks`) see the ``"prefix"`` and
    ``"suffix"`` forwards and the prefix rows' expansion (``select``)."""
    L = mask.shape[1]
    dev = mask.device
    suf_len = [e.length - p for e, p in zip(rows, plan.lengths)]
    S = max(suf_len)
    reserved = [layer for layer in getattr(cache, "layers", []) if hasattr(layer, "reserve")]
    for layer in reserved:  # the prefix buffers get room for the suffix too: no regrowth copy
        layer.reserve += S
    pre = [adapter.truncate(rows[i], plan.lengths[i]) for i in plan.unique]
    p_ids, p_mask = adapter.collate(pre)
    p_embeds = adapter.prefill_embeds(p_ids, pre)
    P = p_ids.shape[1]
    p_pos = _right_aligned(
        pos,
        len(pre),
        P,
        [(u, i, L - rows[i].length, L - rows[i].length + plan.lengths[i]) for u, i in enumerate(plan.unique)],
    )
    del p_ids
    if hooks is not None:
        p_rows = Rows(
            request=[row_req[i] for i in plan.unique],
            branch=[row_branch[i] for i in plan.unique],
            source=list(plan.unique),
        )
        hooks.before_forward("prefix", p_rows)
    p_logits, _ = adapter.forward(p_embeds, p_mask, p_pos, cache)
    if hooks is not None:
        hooks.after_forward("prefix", p_rows, p_logits)
    del p_embeds, p_pos, p_logits
    idx = torch.tensor(plan.row_prefix, device=dev)
    cache.batch_select_indices(idx)
    if hooks is not None:
        hooks.select(idx)
    for layer in reserved:
        layer.reserve -= S
    s_ids = torch.full((len(rows), S), int(adapter.pad_token_id), dtype=torch.long)
    s_mask = torch.zeros((len(rows), S), dtype=mask.dtype)
    for i, (e, p) in enumerate(zip(rows, plan.lengths)):
        s_ids[i, S - suf_len[i] :] = e.input_ids[p:]
        s_mask[i, S - suf_len[i] :] = 1
    s_pos = _right_aligned(pos, len(rows), S, [(i, i, L - n, L) for i, n in enumerate(suf_len)])
    full_mask = torch.cat([p_mask.index_select(0, idx), s_mask.to(dev)], dim=1)
    s_rows = Rows(request=list(row_req), branch=list(row_branch))
    if hooks is not None:
        hooks.before_forward("suffix", s_rows)
    logits, _ = adapter.forward(adapter.embed_tokens(s_ids.to(dev)), full_mask, s_pos, cache)
    if hooks is not None:
        hooks.after_forward("suffix", s_rows, logits)
    return logits, full_mask


# --- the core loop -------------------------------------------------------------------------------
Chooser = Callable[[int, torch.Tensor, list[int]], dict[int, int]]


def decode_rows(
    adapter,
    seqs: Sequence[Sequence[Any]],
    choose: Chooser,
    max_new_tokens: int | Sequence[int],
    eos_ids: Sequence[int],
    contrast_steps: int | None = None,
    share_prefix: bool = True,
    hooks: DecodeHooks | None = None,
    amateur=None,
    compile: str = "off",
) -> list[tuple[list[int], str]]:
    """Decode ``len(seqs)`` requests, request i with encoded branches ``seqs[i]`` (original first).

    ``choose(step, logits[R, V], row_req)`` returns {request index: token} for the live
    requests; or ``choose`` is a *search* (an object with ``step(step, logits, layout) ->
    Choice``, :mod:`vcdflow.decoding.beams`: beam search, look-ahead candidates, rollback) that may
    repeat, reorder and drop rows (a request then has several *slots*, each with all its
    branches) and keeps each request's generated ids itself. ``max_new_tokens``: one limit for
    all or one per request. ``share_prefix``: rows with the same system text + image prefill that
    prefix once (:func:`shared_prefill`) when :func:`share_plan` finds it saves work. ``hooks``
    (a method's :class:`~vcdflow.decoding.hooks.DecodeHooks`) are called around every forward and
    on every re-indexing of the rows. ``amateur`` (:class:`vcdflow.decoding.amateur.AmateurStream`):
    a second model decoding the same tokens in lockstep on its own rows and cache (prefilled after
    the main prefill, stepped after every main step, re-indexed with the main rows). ``compile``
    (:data:`COMPILE_SETTINGS`): ``"off"`` the eager step; ``"static"`` / ``"on"`` the static step
    (:func:`_static_steps`, without / with ``torch.compile``) where :func:`static_refusal` allows
    it, else eager. Returns per request (generated ids without EOS, finish reason "eos"|"length").
    """
    if compile not in COMPILE_SETTINGS:
        raise ValueError(f"compile must be one of {', '.join(COMPILE_SETTINGS)}, got {compile!r}")
    if hooks is None:
        return _decode_rows(
            adapter,
            seqs,
            choose,
            max_new_tokens,
            eos_ids,
            contrast_steps,
            share_prefix,
            None,
            amateur,
            compile,
        )
    try:
        return _decode_rows(
            adapter,
            seqs,
            choose,
            max_new_tokens,
            eos_ids,
            contrast_steps,
            share_prefix,
            hooks,
            amateur,
            compile,
        )
    finally:
        hooks.finish()


def _decode_rows(
    adapter,
    seqs,
    choose,
    max_new_tokens,
    eos_ids,
    contrast_steps,
    share_prefix,
    hooks,
    amateur=None,
    compile: str = "off",
):
    from .beams import Choice, Layout

    n = len(seqs)
    limits = (
        [int(max_new_tokens)] * n if isinstance(max_new_tokens, int) else [int(m) for m in max_new_tokens]
    )
    flat = [e for s in seqs for e in s]
    row_req = [i for i, s in enumerate(seqs) for _ in s]
    row_branch = [j for s in seqs for j in range(len(s))]
    row_slot = [0] * len(flat)
    tokens: list[list[int]] = [[] for _ in range(n)]
    search = choose if hasattr(choose, "step") else None
    if search is not None and contrast_steps is not None:
        raise ValueError("contrast_steps cannot be combined with a search (beams, look-ahead)")
    if hooks is not None:
        hooks.start(adapter, seqs, tokens)
    ids, mask = adapter.collate(flat)
    pos, next_pos = adapter.prefill_positions(ids, mask, flat)
    # a search's rows grow by its width; the cache reserve only has to cover the new tokens
    static = compile != "off" and static_refusal(search, hooks, amateur, contrast_steps, adapter) is None
    cache = adapter.new_cache(reserve=0 if static else max(limits) + 1)
    plan = share_plan(adapter, flat) if share_prefix else None
    if plan is None:
        embeds = adapter.prefill_embeds(ids, flat)
        del ids
        if hooks is not None:
            rows = Rows(request=list(row_req), branch=list(row_branch))
            hooks.before_forward("prefill", rows)
        logits, _ = adapter.forward(embeds, mask, pos, cache)
        if hooks is not None:
            hooks.after_forward("prefill", rows, logits)
        del embeds
    else:
        del ids
        logits, mask = shared_prefill(adapter, flat, plan, mask, pos, cache, hooks, row_req, row_branch)
    del pos
    if amateur is not None:
        amateur.prefill(row_req, row_branch)
    eos = set(int(e) for e in eos_ids)
    finish: list[str | None] = [None] * n
    device = mask.device
    prompt_len = [int(s[0].length) for s in seqs]
    for r in range(n):
        if limits[r] <= 0:
            finish[r] = "length"
    if static:
        _static_steps(
            adapter,
            choose,
            logits,
            mask,
            next_pos,
            cache,
            row_req,
            limits,
            eos,
            finish,
            tokens,
            compiled=compile == "on",
        )
        return [(tokens[r], finish[r] or "length") for r in range(n)]
    step = 0
    n_fed = 0  # columns the step forwards added after the prefill (a rollback crops them)
    # an all-ones mask is passed as None: transformers would otherwise check it on the host
    # every step (a device sync) to find the same thing out; known once here, kept by the loop
    # (dropping rows or appending ones keeps it all ones; a rollback's padding clears it).
    # Forward hooks may read the mask (an attention hook rebuilds its own): they always get it.
    full_mask = hooks is None and bool(mask.all())
    # with padding, an SDPA model gets the mask in the 4-D form transformers would build from it
    # for a one-token step ([R, 1, 1, columns], True = attend): transformers takes a 4-D mask as
    # given instead of checking the 2-D one on the host every step (same values, same kernel)
    # (not for a decoder with sliding-window layers, Gemma 3: each attention type builds its own
    # mask, which one 4-D mask over every column cannot stand in for)
    sdpa = hooks is None and _attn_impl(adapter) == "sdpa" and not getattr(adapter, "mixed_attention", False)
    feed_index = _FeedIndex()
    while any(f is None for f in finish):
        if search is None:
            _record_picks(choose(step, logits, row_req), tokens, finish, eos, limits)
            retire = contrast_steps is not None and step + 1 >= contrast_steps
            keep = [
                k
                for k, (r, b) in enumerate(zip(row_req, row_branch))
                if finish[r] is None and not (retire and b > 0)
            ]
            new_slot = [row_slot[k] for k in keep]
            feed = [tokens[row_req[k]][-1] if tokens[row_req[k]] else 0 for k in keep]
            chosen = getattr(choose, "chosen", None)  # the picks still on the device
            feed_ids = feed_index.gather(chosen, [row_req[k] for k in keep]) if chosen is not None else None
        else:
            layout = Layout(
                request=list(row_req),
                branch=list(row_branch),
                slot=list(row_slot),
                tokens=tokens,
                limits=limits,
                eos=eos,
                prompt_len=prompt_len,
            )
            ch: Choice = search.step(step, logits, layout)
            for r, toks in ch.tokens.items():
                tokens[r][:] = list(toks)
            for r, why in ch.done.items():
                finish[r] = why
            keep, new_slot, feed = list(ch.rows), list(ch.slot), list(ch.next_ids)
            if any(finish[row_req[k]] is not None for k in keep):
                raise RuntimeError("a search kept rows of a finished request")
            replay = dict(ch.replay or {})
            feed_ids = None
        if not keep or (search is None and step + 1 >= max(limits)):
            break
        if keep != list(range(len(row_req))):
            idx = torch.tensor(keep, device=device)
            cache.batch_select_indices(idx)
            if hooks is not None:
                hooks.select(idx)
            if amateur is not None:
                amateur.select(idx)
            mask = mask.index_select(0, idx)
            next_pos = next_pos.index_select(0, idx)
            row_req = [row_req[k] for k in keep]
            row_branch = [row_branch[k] for k in keep]
            mask = _cut_left(cache, mask)
        row_slot = new_slot
        if search is None or not replay:
            step_ids = (
                feed_ids.view(-1, 1)
                if feed_ids is not None
                else torch.tensor([[t] for t in feed], device=device)
            )
            mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
            pos = adapter.step_positions(next_pos)
            next_pos = next_pos + 1
            n_fed += 1
        else:
            step_ids, mask, pos, next_pos = _replay_inputs(adapter, feed, replay, mask, next_pos, n_fed)
            n_fed += step_ids.shape[1]
            full_mask = False
        if hooks is not None:
            rows = Rows(request=list(row_req), branch=list(row_branch), step=step + 1)
            hooks.before_forward("step", rows)
        step_mask = (
            None
            if full_mask
            else (mask[:, None, None, :].bool() if sdpa and step_ids.shape[1] == 1 else mask)
        )
        logits, _ = adapter.forward(adapter.embed_tokens(step_ids), step_mask, pos, cache)
        if hooks is not None:
            hooks.after_forward("step", rows, logits)
        if amateur is not None:
            amateur.step(step_ids)
        step += 1
    for r in range(n):
        if finish[r] is None:
            finish[r] = "length"
    return [(tokens[r], finish[r]) for r in range(n)]


# --- the static step --------------------------------------------------------------------------
#: ``compile`` settings of :func:`decode_rows` / :func:`generate` (how a run executes, never what
#: it records): the eager step, the static step, the static step under ``torch.compile``
COMPILE_SETTINGS = ("off", "static", "on")
#: the static KV cache's length is the prefill plus the new tokens rounded up to this many
#: columns: prompts of similar length share one compiled step (a POPE split compiles a handful of
#: times, not once per prompt length)
STATIC_BUCKET = 64
_COMPILED: weakref.WeakKeyDictionary | None = None  # adapter -> its compiled step function


def static_refusal(search, hooks, amateur, contrast_steps, adapter=None) -> str | None:
    """Why a decode runs the eager step although the static one was asked for (None: it can run
    static). The static step keeps every row in place for the whole decode and compiles only the
    model's forward; ``combine``/plausibility/choice stay eager Python, so any combine runs
    static. What needs the eager step is what changes the rows or the forward: a search (beams,
    look-ahead, rollback: rows repeat, reorder and roll back), forward hooks (captures and
    attention changes read the eager forward's tensors: DoLa's layers, OPERA, PAI, HALC…), an
    amateur model stepped in lockstep, contrast branches that retire after ``contrast_steps``, and
    a decoder with sliding-window layers (``adapter.mixed_attention``: each attention type builds
    its own mask from the 2-D one; one static 4-D mask would be wrong for the windowed layers)."""
    if search is not None:
        return "a search (beams, look-ahead or rollback) reorders rows"
    if hooks is not None:
        return "forward hooks read or change the eager forward"
    if amateur is not None:
        return "an amateur model decodes in lockstep"
    if contrast_steps is not None:
        return "contrast branches retire after contrast_steps"
    if getattr(adapter, "mixed_attention", False):
        return "the decoder has sliding-window attention layers"
    return None


def _attn_impl(adapter) -> str | None:
    """The language model's attention implementation (``"sdpa"``, ``"eager"``…)."""
    return getattr(adapter.text_model().config, "_attn_implementation", None)


def _static_cache(adapter, cache, width: int):
    """A transformers ``StaticCache`` of ``width`` columns holding ``cache``'s prefill keys/values
    in its first columns (the next write goes right after them)."""
    from transformers import StaticCache

    static = StaticCache(config=adapter._forward_module().config, max_cache_len=width)
    for src, dst in zip(cache.layers, static.layers):
        n = src.keys.shape[-2]
        dst.lazy_initialization(src.keys, src.values)
        dst.keys[:, :, :n].copy_(src.keys)
        dst.values[:, :, :n].copy_(src.values)
        dst.cumulative_length.fill_(n)
    return static


def _step_function(adapter, compiled: bool, fused=None, nb: int = 1):
    """One decoder step: ``f(ids [R, 1], mask [R, 1, 1, W], positions, cache) -> logits [R, V]``;
    with ``fused`` = (key, ``choice(logits, nb) -> picks [n]``) instead ``f(previous picks [n],
    mask, positions, cache) -> picks [n]`` (each pick fed to its request's ``nb`` rows, the choice
    made inside). Under ``torch.compile`` when ``compiled`` (CUDA: ``reduce-overhead``, i.e. CUDA
    graphs; elsewhere the default mode), kept per adapter and per (fused key, ``nb``) so a later
    decode with the same method and parameters reuses the compiled graphs."""
    global _COMPILED

    if fused is None:

        def step(ids, mask, positions, cache):
            return adapter.forward(adapter.embed_tokens(ids), mask, positions, cache)[0]
    else:
        choice = fused[1]

        def step(prev, mask, positions, cache):
            ids = prev.repeat_interleave(nb).view(-1, 1)
            return choice(adapter.forward(adapter.embed_tokens(ids), mask, positions, cache)[0], nb)

    if not compiled:
        return step
    if _COMPILED is None:
        _COMPILED = weakref.WeakKeyDictionary()
    per_adapter = _COMPILED.setdefault(adapter, {})
    key = None if fused is None else (fused[0], nb)
    fn = per_adapter.get(key)
    if fn is None:
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
        mode = "reduce-overhead" if adapter.device.type == "cuda" else None
        fn = per_adapter[key] = torch.compile(step, dynamic=False, mode=mode)
    return fn


def _static_steps(
    adapter, choose, logits, mask, next_pos, cache, row_req, limits, eos, finish, tokens, compiled: bool
) -> None:
    """The static decode loop after the (eager) prefill: the prefill's keys/values move into a
    ``StaticCache`` of ``prefill + max new tokens`` columns (rounded up to :data:`STATIC_BUCKET`);
    the attention mask is one preallocated 4-D tensor (transformers uses a 4-D mask as given: no
    per-step check) whose next column is switched on in place; positions advance on the device;
    rows never leave — a finished request's rows keep decoding and their picks are ignored — so
    every step has the same shapes; the step's ids are the chooser's picks gathered on the device.
    The one host sync per step is the chooser's ``tolist`` of the picks (EOS and limits are
    decided on the host from it). Fills ``tokens``/``finish`` in place."""
    R, P = mask.shape
    width = -(-(P + max(limits)) // STATIC_BUCKET) * STATIC_BUCKET
    dev = mask.device
    static = _static_cache(adapter, cache, width)
    del cache
    attend = torch.zeros((R, 1, 1, width), dtype=torch.bool, device=dev)
    attend[:, 0, 0, :P] = mask.bool()
    impl = _attn_impl(adapter)
    if impl == "sdpa":
        mask4 = attend
    else:  # eager attention adds the mask: 0 where attended, the dtype's minimum elsewhere
        mask4 = torch.full((R, 1, 1, width), torch.finfo(adapter.dtype).min, dtype=adapter.dtype, device=dev)
        mask4.masked_fill_(attend, 0.0)
    step_fn = _step_function(adapter, compiled)
    pos = next_pos.clone()
    feed_index = _FeedIndex()
    all_rows = list(row_req)
    # a greedy chooser whose scores are a tensor function of the logits (``choose.fused``) runs
    # inside the step function (compiled with the forward) when every request has the same
    # number of consecutive rows; step 0 (the prefill's logits) goes through the chooser itself
    spans = _spans(all_rows)
    nb = spans[0][2]
    fused = getattr(choose, "fused", None)
    fused_fn = None
    if (
        fused is not None
        and all(sp[2] == nb for sp in spans)
        and [sp[0] for sp in spans] == list(range(len(spans)))
    ):
        fused_fn = _step_function(adapter, compiled, fused, nb)
    prev = None  # the last picks on the device, in request order (fused path)
    step = 0
    while True:
        if prev is None:
            picks = choose(step, logits, all_rows)
            chosen = getattr(choose, "chosen", None)
            if fused_fn is not None and chosen is not None and list(chosen[1]) == list(range(len(spans))):
                prev = chosen[0]
        else:
            picks = dict(enumerate(prev.tolist()))
        _record_picks(picks, tokens, finish, eos, limits)
        if all(f is not None for f in finish) or step + 1 >= max(limits):
            return
        chosen = getattr(choose, "chosen", None)
        ids = feed_index.gather(chosen, all_rows) if chosen is not None else None
        if ids is None:
            ids = torch.tensor([picks.get(r, 0) for r in all_rows], device=dev)
        col = P + step
        if impl == "sdpa":
            attend[:, :, :, col] = True
        else:
            mask4[:, :, :, col] = 0.0
        if prev is not None:
            prev = fused_fn(prev, mask4, adapter.step_positions(pos), static)
            pos = pos + 1
            step += 1
            continue
        logits = step_fn(ids.view(-1, 1), mask4, adapter.step_positions(pos), static)
        pos = pos + 1
        step += 1


def _replay_inputs(adapter, feed, replay: dict, mask, next_pos, n_fed: int):
    """Rollback without touching other requests: row k in ``replay`` forgets every column the
    step forwards added (its mask there → 0; its positions restart after its prompt) and re-feeds
    ``replay[k]`` (right-aligned); every other row feeds its one token ``feed[k]`` in the last
    column, the columns before it are masked padding. Returns (ids, mask, positions, next_pos)."""
    R = mask.shape[0]
    L = max(len(v) for v in replay.values())
    ids = torch.full((R, L), int(adapter.pad_token_id), dtype=torch.long)
    new = torch.zeros((R, L), dtype=mask.dtype)
    lens = torch.ones(R, dtype=torch.long)
    mask = mask.clone()
    next_pos = next_pos.clone()
    for k in range(R):
        if k in replay:
            seq = list(replay[k])
            if n_fed:
                next_pos[k] -= int(mask[k, mask.shape[1] - n_fed :].sum())
                mask[k, mask.shape[1] - n_fed :] = 0
            ids[k, L - len(seq) :] = torch.tensor(seq, dtype=torch.long)
            new[k, L - len(seq) :] = 1
            lens[k] = len(seq)
        else:
            ids[k, -1] = int(feed[k])
            new[k, -1] = 1
    dev = mask.device
    lens = lens.to(dev)
    cols = [adapter.step_positions(next_pos + (c - (L - lens)).clamp(min=0)) for c in range(L)]
    return ids.to(dev), torch.cat([mask, new.to(dev)], dim=1), torch.cat(cols, dim=-1), next_pos + lens


def _spans(row_req: list[int]) -> list[tuple[int, int, int]]:
    """Contiguous (request, first row, n rows) runs of ``row_req``."""
    out: list[tuple[int, int, int]] = []
    for k, r in enumerate(row_req):
        if out and out[-1][0] == r:
            out[-1] = (r, out[-1][1], out[-1][2] + 1)
        else:
            out.append((r, k, 1))
    return out


class _FeedIndex:
    """The next step's input ids gathered on the device from a chooser's picks: ``chosen`` =
    (picks [n] on the device, their request indices); row k of the step gets the pick of its
    request ``row_req[k]``. The index tensor is rebuilt only when the row layout changes (a
    request finished), not every step."""

    def __init__(self):
        self._key = None
        self._index = None

    def gather(self, chosen, row_req: list[int]) -> torch.Tensor | None:
        picks, reqs = chosen
        if not row_req:
            return None
        key = (tuple(reqs), tuple(row_req))
        if key != self._key:
            where = {r: i for i, r in enumerate(reqs)}
            if any(r not in where for r in row_req):
                return None
            at = [where[r] for r in row_req]
            self._index = None if at == list(range(len(reqs))) else torch.tensor(at, device=picks.device)
            self._key = key
        return picks if self._index is None else picks.index_select(0, self._index)


class _FirstRows:
    """Each request's first row of the step's logits (its original branch), with the index
    tensor kept while the row layout stays the same (rebuilt only when rows leave)."""

    def __init__(self):
        self._key = None
        self._index = None
        self.spans: list[tuple[int, int, int]] = []

    def __call__(self, logits: torch.Tensor, row_req: list[int]) -> torch.Tensor:
        key = tuple(row_req)
        if key != self._key:
            self.spans = _spans(row_req)
            first = [s[1] for s in self.spans]
            self._index = (
                None if first == list(range(len(row_req))) else torch.tensor(first, device=logits.device)
            )
            self._key = key
        return logits if self._index is None else logits.index_select(0, self._index)


def greedy_chooser(step: int, logits: torch.Tensor, row_req: list[int]) -> dict[int, int]:
    """Argmax of each request's first row (plain greedy)."""
    spans = _spans(row_req)
    first = torch.tensor([s[1] for s in spans], device=logits.device)
    toks = logits.index_select(0, first).argmax(-1).tolist()
    return {s[0]: t for s, t in zip(spans, toks)}


def plain_chooser(
    mode: str, temperature: float, top_k: int | None, top_p: float, generators: Sequence[torch.Generator]
) -> Chooser:
    """The chooser of a method without contrast (``Method.plain``: its scores are the original
    branch's logits, no plausibility constraint): argmax, or temperature/top-k/top-p and a draw
    from each request's generator, straight from the logits — the same tokens as the generic
    :func:`method_scorer` path without its per-step copies. Greedy keeps its picks on the device
    as ``choose.chosen`` (the engine feeds them back without building ids from Python lists):
    the ``tolist`` of the picks is the step's one host sync."""
    first_rows = _FirstRows()

    def choose(step: int, logits: torch.Tensor, row_req: list[int]) -> dict[int, int]:
        scores = first_rows(logits, row_req)
        spans = first_rows.spans
        if mode == "greedy":
            picks = scores.argmax(-1)
            choose.chosen = (picks, [s[0] for s in spans])
            toks = picks.tolist()
        else:
            toks = sample_tokens(warp(scores, temperature, top_k, top_p), [generators[s[0]] for s in spans])
        return {s[0]: int(t) for s, t in zip(spans, toks)}

    choose.chosen = None
    choose.fused = (("plain",), _first_row_argmax) if mode == "greedy" else None
    return choose


def _first_row_argmax(logits: torch.Tensor, nb: int) -> torch.Tensor:
    """Greedy picks of requests of ``nb`` consecutive rows each: argmax of each first row."""
    return logits.view(-1, nb, logits.shape[-1])[:, 0, :].argmax(-1)


def method_scorer(
    method: Method,
    state: State,
    mode: str,
    temperature: float,
    top_k: int | None,
    top_p: float,
    contexts: Sequence[BranchContext] | None = None,
    hooks: DecodeHooks | None = None,
    amateur=None,
    warped: bool = True,
    processed: bool = True,
):
    """``score(step, logits[R, V], spans) -> scores [len(spans), V]``: per span = (request, slot,
    first row, n rows) of consecutive rows, combine → (``processed``) the method's logits
    processors (:meth:`Method.processors`: repetition penalty, no-repeat-n-gram over each request's
    ids) → plausibility (original branch) → (sampling, ``warped``) temperature/top-k/top-p. Spans
    with the same branch count are combined together. Beam search passes ``processed=False`` and
    applies the processors to each beam's log-probs itself (transformers' order there).

    ``contexts`` (optional, one per request): each group's ``combine``/``plausibility`` then sees
    ``state.contexts`` = its requests' contexts (per-request extras). ``combine``/``plausibility`` always see
    ``state.rows`` ([n_members, n_branches] indices of the group's rows in ``logits``),
    ``state.requests`` (the members' request indices: with hooks, ``state.hooks.tokens[r]`` are
    request r's generated ids and ``state.hooks.seqs[r][0].input_ids`` its prompt ids),
    ``state.hooks`` (the method's forward hooks, or None) and, with an amateur model,
    ``state.amateur`` ([n_members, V] the amateur's logits for the same rows' original branch,
    cut to the shared vocabulary prefix; the expert's logits are cut likewise)."""
    from dataclasses import replace

    state = replace(state, temperature=None if mode == "greedy" else float(temperature))
    procs = method.processors(state.params) if processed else None
    layout: dict = {}  # the last span layout's groups and index tensors (rebuilt when rows change)

    def groups_of(spans, device):
        key = tuple(tuple(sp) for sp in spans)
        if layout.get("key") != key:
            groups: dict[int, list[int]] = {}
            for i, sp in enumerate(spans):
                groups.setdefault(sp[-1], []).append(i)
            layout["key"] = key
            layout["groups"] = [
                (
                    nb,
                    members,
                    torch.tensor([spans[i][-2] + j for i in members for j in range(nb)], device=device),
                    torch.tensor(members, device=device),
                )
                for nb, members in groups.items()
            ]
        return layout["groups"]

    def score(step: int, logits: torch.Tensor, spans) -> torch.Tensor:
        V = logits.shape[-1]
        ama = None
        if amateur is not None:
            ama = amateur.logits
            V = min(V, ama.shape[-1])
            logits = logits[:, :V]
            ama = ama[:, :V].to(logits.device)
        out = logits.new_empty((len(spans), V))
        for nb, members, rows, at in groups_of(spans, logits.device):
            L = logits.index_select(0, rows).view(len(members), nb, V)
            st = replace(
                state,
                rows=rows.view(len(members), nb),
                hooks=hooks,
                requests=tuple(spans[i][0] for i in members),
            )
            if contexts is not None:
                st = replace(st, contexts=tuple(contexts[spans[i][0]] for i in members))
            if ama is not None:
                st = replace(st, amateur=ama.index_select(0, rows.view(len(members), nb)[:, 0]))
            scores = method.combine(L, step, st)
            if procs is not None:
                scores = apply_processors(scores, st, procs["repetition"], procs["ngram"], procs["context"])
            beta = method.plausibility(L, step, st)
            if beta is not None:
                scores = apc(scores, L[:, 0, :], beta)
            if mode != "greedy" and warped:
                scores = warp(scores, temperature, top_k, top_p)
            out[at] = scores.to(out.dtype)
        return out

    return score


def method_chooser(
    method: Method,
    state: State,
    mode: str,
    temperature: float,
    top_k: int | None,
    top_p: float,
    generators: Sequence[torch.Generator],
    contexts: Sequence[BranchContext] | None = None,
    hooks: DecodeHooks | None = None,
    amateur=None,
) -> Chooser:
    """combine → plausibility (original branch) → warpers → argmax / per-request sampling (the
    scores of :func:`method_scorer`, one span per request)."""
    if method.plain and hooks is None and amateur is None:
        return plain_chooser(mode, temperature, top_k, top_p, generators)
    score = method_scorer(method, state, mode, temperature, top_k, top_p, contexts, hooks, amateur)

    def choose(step: int, logits: torch.Tensor, row_req: list[int]) -> dict[int, int]:
        spans = [(r, 0, start, nb) for r, start, nb in _spans(row_req)]
        scores = score(step, logits, spans)
        if mode == "greedy":
            picks = scores.argmax(-1)
            choose.chosen = (picks, [sp[0] for sp in spans])
            toks = picks.tolist()
        else:
            toks = sample_tokens(scores, [generators[sp[0]] for sp in spans])
        return {sp[0]: int(t) for sp, t in zip(spans, toks)}

    def fused(logits: torch.Tensor, nb: int) -> torch.Tensor:
        # the scorer's greedy path as one tensor function (requests of nb consecutive rows)
        L = logits.view(-1, nb, logits.shape[-1])
        scores = method.combine(L, 0, state)
        beta = method.plausibility(L, 0, state)
        if beta is not None:
            scores = apc(scores, L[:, 0, :], beta)
        return scores.to(logits.dtype).argmax(-1)

    choose.chosen = None
    choose.fused = None
    if mode == "greedy" and method.tensor_combine and hooks is None and amateur is None:
        choose.fused = ((method.name, repr(sorted(state.params.items()))), fused)
    return choose


# --- helpers for the methods' prepare stage ------------------------------------------------------
class Runner:
    """What a method's ``prepare`` may run: batched greedy generation and an attention probe."""

    def __init__(
        self,
        adapter,
        max_positions: int | None,
        eos_ids: Sequence[int],
        attention_chunk: int = 4,
        share_prefix: bool = True,
    ):
        self.adapter = adapter
        self.max_positions = max_positions
        self.eos_ids = list(eos_ids)
        self.attention_chunk = attention_chunk
        self.share_prefix = share_prefix

    def _encode_all(self, branches: Sequence[Branch], extra_tokens: int = 0):
        encs: list[Any] = []
        for b in branches:
            try:
                e = self.adapter.encode(b)
                if self.max_positions and e.length + extra_tokens > self.max_positions:
                    raise InputError(
                        f"prompt of {e.length} tokens plus {extra_tokens} new tokens exceeds "
                        f"the model's {self.max_positions} positions"
                    )
                encs.append(e)
            except Exception as ex:  # noqa: BLE001 - reported per item
                encs.append(ex)
        return encs

    def greedy_texts(self, branches: Sequence[Branch], max_new_tokens: int) -> list[str | Exception]:
        """Greedy single-branch generation for each branch (one batch); text or the exception.

        Generation stops at EOS, at ``max_new_tokens`` or when the model's positions run out
        (a prompt that leaves no room at all is an error)."""
        encs = self._encode_all(branches, 1)
        out: list[str | Exception] = list(encs)
        ok = [i for i, e in enumerate(encs) if not isinstance(e, Exception)]
        if not ok:
            return out
        limits = [
            min(max_new_tokens, self.max_positions - encs[i].length) if self.max_positions else max_new_tokens
            for i in ok
        ]
        res = decode_rows(
            self.adapter,
            [[encs[i]] for i in ok],
            greedy_chooser,
            limits,
            self.eos_ids,
            share_prefix=self.share_prefix,
        )
        for i, (toks, _) in zip(ok, res):
            out[i] = self.adapter.decode(toks)
        return out

    def image_attention(self, branches: Sequence[Branch]) -> list[torch.Tensor | Exception]:
        """Prefill attentions of the last position over the image tokens, heads averaged:
        per branch a tensor [n_layers, n_image_tokens] (float32, CPU)."""
        encs = self._encode_all(branches)
        out: list[torch.Tensor | Exception] = list(encs)
        ok = [i for i, e in enumerate(encs) if not isinstance(e, Exception)]
        ad = self.adapter
        with eager_attention(ad.model):
            for c in range(0, len(ok), self.attention_chunk):
                part = ok[c : c + self.attention_chunk]
                rows = [encs[i] for i in part]
                ids, mask = ad.collate(rows)
                embeds = ad.prefill_embeds(ids, rows)
                pos, _ = ad.prefill_positions(ids, mask, rows)
                _, atts = ad.forward(embeds, mask, pos, None, output_attentions=True)
                if not atts:
                    raise RuntimeError("the model returned no attention weights")
                last = torch.stack([a[:, :, -1, :].float().mean(1) for a in atts], dim=1)  # [R, n_layers, L]
                for k, i in enumerate(part):
                    img = ids[k] == ad.image_token_id
                    out[i] = last[k][:, img].cpu()
        return out


# --- the public entry point ----------------------------------------------------------------------
@dataclass
class _Item:
    index: int
    key: str
    request: Request
    ctx: BranchContext
    error: str | None = None
    encoded: list = field(default_factory=list)
    branches: list = field(default_factory=list)

    def fail(self, message: str) -> None:
        if self.error is None:
            self.error = message


def _check_args(max_new_tokens, temperature, top_p, top_k, batch_size, do_sample):
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    if do_sample and not temperature > 0:
        raise ValueError(f"temperature must be > 0 when sampling, got {temperature!r}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
    if top_k is not None and (not isinstance(top_k, int) or top_k < 0):
        raise ValueError(f"top_k must be None or a non-negative integer, got {top_k!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")


def _record_picks(picks: dict, tokens: list, finish: list, eos, limits) -> None:
    """Append each unfinished request's chosen token, or finish it on EOS or at its length limit."""
    for r, t in picks.items():
        if finish[r] is not None:
            continue
        if t in eos:
            finish[r] = "eos"
        else:
            tokens[r].append(t)
            if len(tokens[r]) >= limits[r]:
                finish[r] = "length"


def method_misfit(vlm, m: Method, params) -> str | None:
    """Why ``m`` with resolved ``params`` cannot run on ``vlm`` at all (a layer list with no layer
    of this model, a directions file that does not fit it), found by building the method's hooks
    once, unattached, before any forward pass; None when they build (or the method does not run
    on this family: that is refused per request, naming the family)."""
    families = m.applies_to()
    if families is not None and getattr(vlm.adapter, "family", None) not in families:
        return None
    try:
        m.forward_hooks(vlm.adapter, params)
    except Exception as e:  # noqa: BLE001 - any failure is the method's parameters vs this model
        return str(e) if isinstance(e, (InputError, ValueError)) else f"{type(e).__name__}: {e}"
    return None


def check_keywords(m: Method, do_sample: bool, temperature, top_p, top_k) -> None:
    """A keyword the method would ignore is an error naming it: ``do_sample=True`` for a
    greedy-only method, and the sampling warpers (``temperature``, ``top_p``, ``top_k``) away from
    their neutral values in greedy mode; a method parameter of the same name (contrastive
    search's ``top_k``) is pointed to."""
    if m.mode == "greedy" and do_sample:
        raise ValueError(f"method {m.name!r} is greedy only: do_sample=True would be ignored; drop it")
    mode = m.mode or ("sample" if do_sample else "greedy")
    if mode == "sample":
        return
    given = {
        k: v
        for k, v, neutral in (
            ("temperature", temperature, 1.0),
            ("top_p", top_p, 1.0),
            ("top_k", top_k, None),
        )
        if v != neutral
    }
    for k, v in given.items():
        own = f"; the method's own {k!r} is a parameter: params={{{k!r}: {v!r}}}" if k in m.defaults else ""
        raise ValueError(
            f"{k}={v!r} is a sampling setting, unused by method {m.name!r} in greedy mode (pass "
            f"do_sample=True to sample){own}"
        )


def generate(
    vlm,
    requests: Sequence[Request],
    method: str = "greedy",
    params: dict | None = None,
    *,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int | None = None,
    max_new_tokens: int = 64,
    seed: int = 0,
    batch_size: int = 16,
    progress: bool = False,
    eos_token_id: int | Sequence[int] | None = None,
    share_prefix: bool = True,
    num_beams: int = 1,
    length_penalty: float = 1.0,
    early_stopping: bool | str = False,
    length_norm: str = "generated",
    compile: str = "off",
) -> list[Output]:
    """Decode ``requests`` with ``method`` (see ``METHODS``); one :class:`Output` per request, in order.

    ``params`` overrides the method's defaults (unknown names → ``ValueError``). ``do_sample``
    chooses sampling (T, top-p, top-k) vs greedy (``greedy``/``sample`` fix their own mode); a
    keyword the method would ignore (a sampling warper in greedy mode, ``do_sample=True`` for a
    greedy-only method) is a ``ValueError`` naming it, and the method's layer hooks are built
    once before the first forward: a parameter that does not fit the model (:func:`method_misfit`)
    is a ``ValueError`` naming it, raised before any forward pass.
    ``batch_size`` counts requests (each brings all its branches). ``eos_token_id`` overrides the
    model's generation-config EOS. Random streams are seeded from ``(seed, item_id)``; a request
    without ``item_id`` uses ``"#<index in requests>"``. A method parameter ``draw="per_image"``
    (``vcd``, ``ritual``) seeds the branch stream from ``(seed, image content)`` instead
    (:func:`vcdflow.decoding.sampling.image_identity`), so every question about one image gets the
    same contrast input.

    ``share_prefix`` (default True): within a batch, branches whose system text + image input are
    identical (the questions of one image; a contrast input fixed per image) prefill that prefix
    and run the vision tower once; only the question suffixes are prefilled per row. Outputs equal
    the unshared ones (``share_prefix=False``) up to float round-off of the batched kernels.

    ``num_beams`` > 1 (:class:`vcdflow.decoding.beams.BeamSearch`, greedy mode only): Hugging
    Face beam search over the method's scores (``log_softmax`` of combine → APC; each beam carries
    all branches of its request), ``length_penalty``/``early_stopping`` as in transformers,
    ``length_norm`` ``"generated"`` (transformers 5.x) or ``"total"`` (4.29: prompt + generated
    length). A method may bring its own search (``Method.search``: contrastive search, OPERA,
    Li et al.'s CD beams), an amateur model (``Method.amateur_stream``) or a batch limit
    (``Method.max_batch``: OPERA's rollback runs one request per batch).

    ``compile`` (how the run executes, not what it records): ``"off"`` (default) the eager step;
    ``"static"`` a static KV cache, a preallocated mask and positions, rows kept in place, one
    host sync per step; ``"on"`` the same step under ``torch.compile`` (compiled once per model,
    batch shape and cache-length bucket). Outputs equal the eager ones up to float round-off.
    A decode that needs the eager step (a search, forward hooks, an amateur, retiring contrast
    branches: :func:`static_refusal`) runs eager; with ``compile`` set, ``Output.meta["step"]``
    says which step ran (``"eager: <why>"``, ``"static"`` or ``"compiled"``).
    """
    if compile not in COMPILE_SETTINGS:
        raise ValueError(f"compile must be one of {', '.join(COMPILE_SETTINGS)}, got {compile!r}")
    m = get_method(method)
    p = m.resolve(params)
    _check_args(max_new_tokens, temperature, top_p, top_k, batch_size, do_sample)
    check_keywords(m, do_sample, temperature, top_p, top_k)
    misfit = method_misfit(vlm, m, p)  # before the first forward, like resolve()'s checks
    if misfit is not None:
        raise ValueError(misfit)
    from .beams import check_beam_args

    check_beam_args(num_beams, length_penalty, early_stopping, length_norm)
    if num_beams > 1 and (m.mode or ("sample" if do_sample else "greedy")) != "greedy":
        raise ValueError("num_beams > 1 is beam search, a greedy mode: pass do_sample=False")
    search_opts = {
        "num_beams": int(num_beams),
        "length_penalty": float(length_penalty),
        "early_stopping": early_stopping,
        "length_norm": length_norm,
    }
    batch_size = min(batch_size, int(getattr(m, "max_batch", None) or batch_size))
    for i, r in enumerate(requests):
        if not isinstance(r, Request):
            raise TypeError(f"requests[{i}] is a {type(r).__name__}, not a vcdflow.decoding.Request")
    mode = m.mode or ("sample" if do_sample else "greedy")
    ad = vlm.adapter
    eos = (
        ad.eos_token_ids
        if eos_token_id is None
        else ([int(eos_token_id)] if isinstance(eos_token_id, int) else [int(e) for e in eos_token_id])
    )
    max_pos = ad.max_positions
    share_prefix = bool(share_prefix and m.share_prefix)
    runner = Runner(ad, max_pos, eos, share_prefix=share_prefix)
    state = State(params=p)
    outputs: list[Output] = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(requests), desc=f"decode {m.name}", unit="item")
    try:
        with torch.inference_mode():
            indexed = list(enumerate(requests))
            for start in range(0, len(indexed), batch_size):
                chunk = indexed[start : start + batch_size]
                outputs.extend(
                    _generate_batch(
                        ad,
                        m,
                        p,
                        state,
                        mode,
                        chunk,
                        runner,
                        eos,
                        max_pos,
                        max_new_tokens,
                        seed,
                        temperature,
                        top_k,
                        top_p,
                        do_sample,
                        share_prefix,
                        search_opts,
                        compile,
                    )
                )
                if bar is not None:
                    bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()
    return outputs


def _generate_batch(
    ad,
    m: Method,
    p,
    state,
    mode,
    chunk,
    runner,
    eos,
    max_pos,
    max_new_tokens,
    seed,
    temperature,
    top_k,
    top_p,
    do_sample,
    share_prefix: bool = True,
    search_opts: dict | None = None,
    compile: str = "off",
) -> list[Output]:
    items: list[_Item] = []
    # a method whose declared needs the model family lacks: every item fails with the one line
    refused = m.refusal(getattr(ad, "family", None))
    for idx, req in chunk:
        key = str(req.item_id) if req.item_id not in (None, "") else f"#{idx}"
        ctx = BranchContext(
            params=p, rng=make_generator(seed, key, "branches"), adapter=ad, do_sample=do_sample
        )
        it = _Item(index=idx, key=key, request=req, ctx=ctx)
        try:
            if refused:
                raise InputError(refused)
            it.request = _load_request(req)
            if m.requires_image and it.request.image is None:
                raise InputError(f"method {m.name!r} needs an image (Request.image is None)")
            if p.get("draw") == "per_image" and it.request.image is not None:
                # one contrast input per image: the branch stream belongs to the image, not the item
                ctx.rng = make_generator(seed, "image:" + image_identity(it.request.image), "branches")
        except Exception as e:  # noqa: BLE001
            it.fail(_error_text(e))
        items.append(it)
    live = [it for it in items if it.error is None]
    if live:
        try:
            m.prepare(live, runner)
        except Exception as e:  # noqa: BLE001
            for it in live:
                it.fail(_error_text(e))
    for it in items:
        if it.error is not None:
            continue
        try:
            branches = m.branches(it.request, it.ctx)
            it.branches = list(branches)
            it.encoded = [ad.encode(b, it.ctx.rng) for b in branches]
            longest = max(e.length for e in it.encoded)
            if max_pos and longest + max_new_tokens > max_pos:
                raise InputError(
                    f"prompt of {longest} tokens plus max_new_tokens={max_new_tokens} exceeds the "
                    f"model's {max_pos} positions"
                )
        except Exception as e:  # noqa: BLE001
            it.fail(_error_text(e))
    live = [it for it in items if it.error is None]
    results: dict[int, tuple[list[int], str]] = {}
    if live:
        results.update(
            _decode_items(
                ad,
                m,
                state,
                mode,
                live,
                max_new_tokens,
                eos,
                seed,
                temperature,
                top_k,
                top_p,
                share_prefix,
                search_opts,
                compile,
            )
        )
    outs = []
    for it in items:
        out = Output(item_id=str(it.request.item_id or ""), meta={"method": m.name, "mode": mode})
        if it.encoded:
            out.input_ids = it.encoded[0].input_ids.tolist()
        if it.error is None and it.index in results and isinstance(results[it.index], str):
            it.fail(results[it.index])
        if it.error is not None:
            out.error = it.error
            out.meta.update(it.ctx.meta)
        else:
            toks, reason = results[it.index]
            out.token_ids = toks
            out.text = ad.decode(toks)
            out.meta.update(n_branches=len(it.encoded), finish_reason=reason, **it.ctx.meta)
            if compile != "off":
                out.meta["step"] = it.ctx.meta.get("step", "eager")
        outs.append(out)
    return outs


def _decode_items(
    ad,
    m,
    state,
    mode,
    live: list[_Item],
    max_new_tokens,
    eos,
    seed,
    temperature,
    top_k,
    top_p,
    share_prefix: bool = True,
    search_opts: dict | None = None,
    compile: str = "off",
):
    from .beams import BeamSearch

    opts = dict(search_opts or {})
    gens = [make_generator(seed, it.key, "sample") for it in live]
    hooks = m.forward_hooks(ad, state.params)
    procs = m.processors(state.params)
    if hooks is None and procs is not None:
        hooks = DecodeHooks()  # the processors read each request's ids through the hook seam
    contexts = [it.ctx for it in live]
    try:
        amateur = m.amateur_stream(ad, state.params) if hasattr(m, "amateur_stream") else None
        if amateur is not None:
            amateur.encode([it.branches[0] for it in live])
        score = method_scorer(m, state, mode, temperature, top_k, top_p, contexts, hooks, amateur)
        opts.update(mode=mode, amateur=amateur, contexts=contexts)
        search = m.search(score, state.params, hooks, opts) if hasattr(m, "search") else None
        if search is None and opts.get("num_beams", 1) > 1:
            raw = method_scorer(
                m, state, mode, temperature, top_k, top_p, contexts, hooks, amateur, processed=False
            )
            search = BeamSearch(
                score=raw if procs is not None else score,
                num_beams=opts["num_beams"],
                length_penalty=opts["length_penalty"],
                early_stopping=opts["early_stopping"],
                length_norm=opts["length_norm"],
                processors=procs,
                hooks=hooks,
            )
        choose = (
            search
            if search is not None
            else method_chooser(m, state, mode, temperature, top_k, top_p, gens, contexts, hooks, amateur)
        )
        if compile != "off":
            why = static_refusal(search, hooks, amateur, m.contrast_steps, ad)
            for it in live:
                it.ctx.meta["step"] = (
                    f"eager: {why}" if why else ("compiled" if compile == "on" else "static")
                )
        res = decode_rows(
            ad,
            [it.encoded for it in live],
            choose,
            max_new_tokens,
            eos,
            m.contrast_steps,
            share_prefix=share_prefix,
            hooks=hooks,
            amateur=amateur,
            compile=compile,
        )
        return {it.index: r for it, r in zip(live, res)}
    except Exception as e:  # noqa: BLE001
        if len(live) == 1:
            return {live[0].index: _error_text(e)}
        log.warning("batched decode failed (%s); retrying the %d requests one by one", e, len(live))
        out = {}
        for it in live:
            # fresh sampling generator: the retried request starts its stream from the beginning
            out.update(
                _decode_items(
                    ad,
                    m,
                    state,
                    mode,
                    [it],
                    max_new_tokens,
                    eos,
                    seed,
                    temperature,
                    top_k,
                    top_p,
                    share_prefix,
                    search_opts,
                    compile,
                )
            )
        return out
