"""Plain references for the beam/look-ahead engine capabilities and methods (tests/test_beams.py,
tests/test_methods_beams.py), written separately from the engine.

Batch 1, no KV cache: every score is a full recompute of prompt + generated tokens through the
model's own forward (``reference_methods.forward``). The beam search is a literal batch-1 port of
transformers 5.24 ``GenerationMixin._beam_search`` (``_get_top_k_continuations``,
``_get_running_beams_for_next_iteration``, ``_update_finished_beams``,
``_check_early_stop_heuristic``, ``_beam_search_has_unfinished_sequences``) on tensors, with the
length of a finished hypothesis either generated (5.24) or prompt + generated without EOS (4.29
``BeamHypotheses.add``)."""

from __future__ import annotations

import math

import torch

from reference_methods import apc_mask, forward, inputs, last_logits


def hf_inputs(vlm, req) -> dict:
    inp = inputs(vlm, req.prompt, req.image, req.system)
    inp["attention_mask"] = torch.ones_like(inp["input_ids"])
    return inp


def _scores(vlm, inps, generated, contrast):
    ls = [last_logits(vlm, i, generated) for i in inps]
    if contrast is None:
        return ls[0]
    a, b = contrast["alpha"], contrast.get("beta")
    s = (1 + a) * ls[0] - a * ls[1]
    return apc_mask(s, ls[0], b)


def ref_beam_search(
    vlm,
    req,
    num_beams,
    max_new,
    eos,
    length_penalty=1.0,
    early_stopping=False,
    length_norm="generated",
    contrast=None,
    step_scores=None,
    li=None,
):
    with torch.no_grad():
        return _ref_beam_search(
            vlm,
            req,
            num_beams,
            max_new,
            eos,
            length_penalty,
            early_stopping,
            length_norm,
            contrast,
            step_scores,
            li,
        )


def entrp(lp, relative_top, min_keep):
    """Li et al.'s EntrPLogitsWarper, literally (generation_logits_process.py:235-245)."""
    srt = torch.sort(lp, descending=True).values
    thresh = min(float(srt[min_keep - 1]), float(lp.max()) + math.log(relative_top))
    out = lp.clone()
    out[out < thresh] = -float("inf")
    return out


def _ref_beam_search(
    vlm, req, num_beams, max_new, eos, length_penalty, early_stopping, length_norm, contrast, step_scores, li
):
    """(generated ids without EOS, "eos" | "length"). ``contrast``: {"alpha", "beta"} → the scores
    are (1+α)·ℓ − α·ℓ(contrast_prompt / contrast_image) with APC (the ``contrast`` method).
    ``step_scores(generated) -> [V]`` replaces the per-beam score function when given. ``li``:
    {"alpha", "st_coef", "tau", "amateur": generated -> amateur logits} → Li et al.'s candidates
    and CD re-ranking (``decoder_helper.post_process_reweight``)."""
    inps = [inputs(vlm, req.prompt, req.image, req.system)]
    if contrast is not None:
        inps.append(
            inputs(vlm, req.contrast_prompt or req.prompt, req.contrast_image or req.image, req.system)
        )
    # "total_bos": transformers 4.29 given inputs_embeds only starts input_ids as one BOS (LAVIS InstructBLIP)
    prompt_len = 1 if length_norm == "total_bos" else inps[0]["input_ids"].shape[1]
    K = num_beams
    eos = list(eos)
    keep = (2 if li else max(2, 1 + len(eos))) * K  # Li's code: 2K (generation_utils.py:2647-2648)
    running = [[] for _ in range(K)]
    run_scores = torch.tensor([0.0] + [-1e9] * (K - 1))
    fin_seqs = [[] for _ in range(K)]
    fin_scores = torch.full((K,), -1e9)
    fin_flag = torch.zeros(K, dtype=torch.bool)
    fin_eos = [False] * K
    unsatisfied = True
    cur = 0
    while True:
        rows = []
        for b in range(K):
            sc = step_scores(running[b]) if step_scores else _scores(vlm, inps, running[b], contrast)
            rows.append(torch.log_softmax(sc.float(), -1))
        if li is None:
            lp = torch.stack(rows) + run_scores[:, None]
            V = lp.shape[-1]
            top_lp, top_i = torch.topk(lp.reshape(-1), k=keep)
        else:  # Li et al.: candidates from the expert's per-step log-probs, CD re-ranking
            raw = torch.stack(rows)
            V = raw.shape[-1]
            masked = torch.stack([entrp(r, li["alpha"], 2 if K > 1 else 1) for r in rows])
            acc = masked + run_scores[:, None]
            pick = acc if cur == 0 else raw
            _, idx = torch.topk(pick.reshape(-1), k=keep)
            stud = torch.stack(
                [torch.log_softmax(li["amateur"](running[b])[:V].float(), -1) / li["tau"] for b in range(K)]
            )
            stud[stud == -float("inf")] = float("inf")
            cd = acc.reshape(-1)[idx] - li["st_coef"] * stud.reshape(-1)[idx]
            order = torch.sort(cd, descending=True, stable=True).indices
            top_lp, top_i = cd[order], idx[order]
        beam, tok = (top_i // V).tolist(), (top_i % V).tolist()
        cand = [running[b] + [t] for b, t in zip(beam, tok)]
        hits = torch.tensor([(t in eos) or (cur + 1 >= max_new) for t in tok])
        # e. running beams
        r_lp = top_lp + hits.float() * -1e9
        nxt = torch.topk(r_lp, k=K).indices
        # f. finished beams
        top_mask = torch.tensor([j < K for j in range(keep)])
        just = hits & top_mask
        n_len = cur + 1
        lens = torch.tensor(
            [
                float(n_len)
                if length_norm == "generated"
                else float(prompt_len + n_len - (1 if t in eos else 0))
                for t in tok
            ]
        )
        f_lp = top_lp / lens**length_penalty
        full = bool(fin_flag.all()) and early_stopping is True
        f_lp = f_lp + (-1e9 if full else 0.0) + (0.0 if unsatisfied else -1e9)
        f_lp = f_lp + (~just).float() * -1e9
        merged = torch.cat([fin_scores, f_lp])
        sel = torch.topk(merged, k=K).indices.tolist()
        all_seqs = fin_seqs + cand
        all_flag = torch.cat([fin_flag, just])
        all_eos = fin_eos + [t in eos for t in tok]
        fin_seqs = [all_seqs[i] for i in sel]
        fin_scores = merged[sel]
        fin_flag = all_flag[sel]
        fin_eos = [all_eos[i] for i in sel]
        running = [cand[j] for j in nxt.tolist()]
        run_scores = r_lp[nxt]
        cur += 1
        # early-stop heuristic
        if early_stopping == "never" and length_penalty > 0:
            best_len = max_new
        else:
            best_len = cur
        if length_norm in ("total", "total_bos"):
            best_len += prompt_len
        best = float(run_scores[0]) / best_len**length_penalty
        worst = float(fin_scores.min()) if bool(fin_flag.all()) else -1e9
        unsatisfied = unsatisfied and best > worst
        open_beam = not (bool(fin_flag.all()) and early_stopping is True)
        if not (unsatisfied and open_beam and not bool(hits.all())):
            break
    ids = fin_seqs[0]
    if fin_eos[0]:
        return ids[:-1], "eos"
    return ids, "length"


# --- contrastive search (Su et al. 2022; HF _ranking_fast) ------------------------------------------
def forward_hidden(vlm, inp, generated):
    """(final-layer hidden states after the final norm of every position [T, D], last logits [V])
    of one full forward: the norm's output is read with a forward hook."""
    captured = {}
    norm = vlm.adapter.final_norm()
    h = norm.register_forward_hook(lambda mod, a, o: captured.__setitem__("h", o))
    try:
        out = forward(vlm, inp, generated)
    finally:
        h.remove()
    return captured["h"][0].float(), out.logits[0, -1].float()


def ref_contrastive_search(vlm, req, alpha, k, max_new, eos, score_fn=None):
    with torch.no_grad():
        return _ref_contrastive_search(vlm, req, alpha, k, max_new, eos, score_fn)


def _ref_contrastive_search(vlm, req, alpha, k, max_new, eos, score_fn=None):
    """HF contrastive search, batch 1, full recompute: top-k of softmax(scores), each candidate's
    final hidden state, (1−α)·p − α·max cos against all previous positions' final hidden states."""
    inp = inputs(vlm, req.prompt, req.image, req.system)
    gen: list[int] = []
    margins = []
    for _ in range(max_new):
        H, logits = forward_hidden(vlm, inp, gen)
        s = score_fn(gen, logits) if score_fn else logits
        p = torch.softmax(s.float(), -1)
        tp, ti = torch.topk(p, k)
        sc = []
        for j in range(k):
            Hc, _ = forward_hidden(vlm, inp, gen + [int(ti[j])])
            hc = Hc[-1]
            cos = (H / H.norm(dim=-1, keepdim=True)) @ (hc / hc.norm())
            sc.append((1 - alpha) * float(tp[j]) - alpha * float(cos.max()))
        order = sorted(sc, reverse=True)
        margins.append(order[0] - order[1] if k > 1 else math.inf)
        t = int(ti[int(torch.tensor(sc).argmax())])
        if t in eos:
            return gen, "eos", margins
        gen.append(t)
    return gen, "length", margins


# --- text CD with an amateur (Li et al. 2022; O'Brien & Lewis 2023) ---------------------------------
def amateur_logits_fn(ama, req, ignore_prefix, with_image=True):
    """generated -> the amateur's next-token logits (full recompute; ``ignore_prefix``: the
    text-only prompt's last token + the continuation)."""
    if ignore_prefix:
        ids = inputs(ama, req.prompt, None, req.system)["input_ids"][:, -1:]
        inp = {"input_ids": ids}
    else:
        inp = inputs(ama, req.prompt, req.image if with_image else None, req.system)
    return lambda gen: last_logits(ama, inp, gen)


def ref_obrien(vlm, ama, req, alpha, beta, max_new, eos, ignore_prefix=False):
    """Greedy (1+β)·s_e − β·s_a on {s_e ≥ log α + max s_e}; (tokens, finish, margins)."""
    with torch.no_grad():
        inp = inputs(vlm, req.prompt, req.image, req.system)
        am = amateur_logits_fn(ama, req, ignore_prefix)
        gen, margins = [], []
        for _ in range(max_new):
            se = last_logits(vlm, inp, gen)
            sa = am(gen)
            V = min(se.shape[-1], sa.shape[-1])
            se, sa = se[:V], sa[:V]
            s = (1 + beta) * se - beta * sa
            s = apc_mask(s, se, alpha)
            top2 = torch.topk(s, 2).values
            margins.append(float(top2[0] - top2[1]))
            t = int(s.argmax())
            if t in eos:
                return gen, "eos", margins
            gen.append(t)
        return gen, "length", margins


# --- OPERA (shikiw/OPERA opera_beam_search, without retrospection) ----------------------------------
def _eager(vlm):
    m = vlm.model
    prev = m.config._attn_implementation
    m.set_attn_implementation("eager")
    return lambda: m.set_attn_implementation(prev)


def _fp16_columns(att, P, scale):
    """OPERA's fp16 lines as an fp16 model runs them (generation/utils.py L3405-3428): the heads'
    max of fp16 attentions, ``attn_last / attn_last.sum(-1)``, ``scale_factor * attn_local`` and
    ``1e-7 * attn_local[..., j:, j].prod(-1)`` into the fp16 buffer — each result an fp16 number
    (CUDA computes half arithmetic and reductions in float32 and rounds the result); returns the
    normalised rows (float) and the column scores (float, +inf where Π overflowed fp16)."""
    h = torch.float16
    A = att.to(h).max(0).values  # [T, T] fp16
    tot = A.float().sum(-1, keepdim=True).to(h)
    A = (A.float() / tot.float()).to(h)
    W = (scale * A[P:, P:].float()).to(h)
    cols = []
    for j in range(W.shape[-1]):
        prod = W[j:, j].float().prod().to(h)  # > 65504 → inf
        cols.append(float((1e-7 * prod.float()).to(h)))
    return A.float(), cols


def opera_candidate_scores(vlm, inp, gen, n_can, scale, alpha, fp16=False):
    """The beam's logits row as OPERA's code builds it: −999 everywhere, z(c) − α·penalty(c) at the
    top-N_can candidates; every forward is a full recompute with eager attention. Also the
    candidates and, per candidate, the argmax column (loc) of the window's column scores.
    ``fp16``: the reference's float16 column scores (:func:`_fp16_columns`)."""
    P = inp["input_ids"].shape[1]
    img_pos = [i for i, t in enumerate(inp["input_ids"][0].tolist()) if t == vlm.adapter.image_token_id]
    z = forward(vlm, inp, gen).logits[0, -1].float()
    zt, zi = torch.topk(z, n_can)
    row = torch.full_like(z, -999.0)
    locs = []
    for j in range(n_can):
        att = forward(vlm, inp, gen + [int(zi[j])], attentions=True).attentions[-1][0].float()  # [H, T, T]
        if fp16:
            A, cols = _fp16_columns(att, P, scale)
            n = len(cols)
        else:
            A = att.max(0).values
            A = A / A.sum(-1, keepdim=True)
            W = scale * A[P:, P:]
            n = W.shape[-1]
            cols = [float(1e-7 * torch.prod(W[i:, i])) for i in range(n)]  # float32, as the engine
        phi = max(cols)
        locs.append(max(range(n), key=lambda i: (cols[i], -i)))
        img = float(A[-1, img_pos].sum()) if img_pos else 0.0
        if fp16:
            img = float(torch.tensor(img).to(torch.float16))
        pen = -img if n <= 10 else phi
        row[int(zi[j])] = float(zt[j]) - alpha * pen
    return row, set(zi.tolist()), locs


def _tmode(xs):
    return int(torch.tensor(xs).mode().values)


def ref_opera(
    vlm,
    req,
    num_beams,
    n_can,
    scale,
    alpha,
    max_new,
    eos,
    length_penalty=1.0,
    threshold=None,
    fp16=False,
    theta=1.0,
    prefix=None,
    prompt_len=None,
):
    """(ids, finish, positions rolled back to): beam search over OPERA's candidate scores;
    finished hypotheses Σ/(prompt + generated without EOS)^lp; only candidates continue as beams;
    with ``threshold`` the retrospection: per beam slot the mode of its candidates' locations each
    step; when every slot's history holds the beams' mode loc more than ``threshold`` times and
    loc ≥ 10, the beam state of step min(loc+1, s−1) is restored and that step re-chosen over the
    whole vocabulary (shifted so min = −999) with its earlier (beam, token) choices at −999.
    ``theta``: HF's RepetitionPenaltyLogitsProcessor on each beam's log-probs over ``prefix``
    (default: the prompt ids) + the beam's ids (OPERA's utils.py:3567); ``prompt_len``: the prompt
    part of the total length (default: the prompt's ids)."""
    restore = _eager(vlm)
    try:
        with torch.no_grad():
            return _ref_opera(
                vlm,
                req,
                num_beams,
                n_can,
                scale,
                alpha,
                max_new,
                eos,
                length_penalty,
                threshold,
                fp16,
                theta,
                prefix,
                prompt_len,
            )
    finally:
        restore()


def _ref_opera(
    vlm,
    req,
    K,
    n_can,
    scale,
    alpha,
    max_new,
    eos,
    length_penalty,
    threshold,
    fp16=False,
    theta=1.0,
    prefix=None,
    prompt_len=None,
):
    import copy

    from transformers import RepetitionPenaltyLogitsProcessor

    inp = inputs(vlm, req.prompt, req.image, req.system)
    P = inp["input_ids"].shape[1] if prompt_len is None else prompt_len
    pre = inp["input_ids"][0].tolist() if prefix is None else list(prefix)
    rep = RepetitionPenaltyLogitsProcessor(theta)
    st = {"running": [[]], "scores": [0.0], "finished": [], "open": True}
    snaps, chosen, times, rejects, back = {}, {}, {}, {}, []
    slot_locs = [[] for _ in range(K)]
    ban = None
    while True:
        s_now = len(st["running"][0])
        rows, cand_sets, modes = [], [], []
        for b, g in enumerate(st["running"]):
            if ban is None:
                row, cs, locs = opera_candidate_scores(vlm, inp, g, n_can, scale, alpha, fp16)
                modes.append(_tmode(locs))
            else:
                z = forward(vlm, inp, g).logits[0, -1].float()
                row = z - (999.0 + z.min())
                for bb, t in rejects[ban[0]]:
                    if bb == b:
                        row[t] = -999.0
                cs = set(range(row.shape[-1]))
            lp = torch.log_softmax(row, -1)
            if theta != 1.0:
                lp = rep(torch.tensor([pre + g]), lp[None])[0]
            rows.append(lp + st["scores"][b])
            cand_sets.append(cs)
        if ban is None:
            sm = [modes[b % len(modes)] for b in range(K)]
            for b in range(K):
                slot_locs[b].append(sm[b])
            snaps[s_now] = copy.deepcopy(st)
            loc = _tmode(sm)
            if (
                threshold is not None
                and all(sum(1 for x in h if x == loc) > threshold for h in slot_locs)
                and loc >= 10
            ):
                rp = loc + 1
                ok = True
                if times.get(rp, 0) >= n_can:
                    rp -= 1
                    ok = times.get(rp, 0) < n_can
                if ok:
                    times[rp] = times.get(rp, 0) + 1
                    target = min(rp, s_now - 1)
                    back.append(target)
                    st = copy.deepcopy(snaps[target])
                    for h in slot_locs:
                        del h[target + 1 :]
                    rejects[rp] = rejects.get(rp, []) + list(chosen.get(target, []))
                    rejects[rp + 1] = []
                    ban = (rp, target)
                    continue
        flat = torch.stack(rows).reshape(-1)
        V = rows[0].shape[-1]
        keep = min(max(2, 1 + len(eos)) * K, flat.numel())
        top, idx = torch.topk(flat, keep)
        conts = [(float(sc), int(i) // V, int(i) % V) for sc, i in zip(top, idx)]
        n = len(st["running"][0]) + 1
        hit = [t in eos or n >= max_new for _, _, t in conts]
        if st["open"]:
            for j in range(min(K, keep)):
                if hit[j]:
                    sc, b, t = conts[j]
                    length = P + n - (1 if t in eos else 0)
                    st["finished"].append((sc / length**length_penalty, st["running"][b] + [t], t in eos))
            st["finished"] = sorted(st["finished"], key=lambda f: -f[0])[:K]
        ok = [j for j in range(keep) if not hit[j] and conts[j][2] in cand_sets[conts[j][1]]]
        nxt = ok[:K]
        if st["open"] and len(st["finished"]) >= K and nxt:
            best = conts[nxt[0]][0] / (P + n) ** length_penalty
            st["open"] = best > min(f[0] for f in st["finished"])
        if not st["open"] or not nxt or n >= max_new:
            sc, ids, e = st["finished"][0]
            return ((ids[:-1], "eos") if e else (ids, "length")), back
        chosen[ban[1] if ban is not None else s_now] = [(conts[j][1], conts[j][2]) for j in nxt]
        st["running"] = [st["running"][conts[j][1]] + [conts[j][2]] for j in nxt]
        st["scores"] = [conts[j][0] for j in nxt]
        ban = None
