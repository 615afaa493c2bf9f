"""Plain reference for ``halc`` and the tiny auxiliary stand-ins its tests use.

The stand-ins are real transformers models at tiny sizes with random weights, saved to folders
and loaded through :mod:`vcdflow.aux_models`' own loaders: OWLv2 (``Owlv2ForObjectDetection``,
its box and class heads re-drawn wider so that boxes vary), BLIP (``BlipModel``) and CLIP
(``CLIPModel``) over the tests' word-level tokenizer. Only the POS tagger is rule-based
(:class:`RuleTagger`: spaCy weights cannot be fetched here).

The reference decodes one request with no KV cache and no batching, written as the official loop
(``BillChan226/HALC@12ea8b5``, vendored ``generation/utils.py`` ``halc_dola_beam_search``
L4545-5100, with its per-beam lists: ``intermediate`` I, ``last_tokens`` W, the cache contents
``context`` F and the snapshot ``snapshot`` S as plain id lists) without importing the method's
helpers: every DoLa step recomputes prompt + F through the Hugging Face model with
``output_hidden_states`` (early exits straight from ``hidden_states[l]``, no final norm), every
FOV view is a full forward of prompt + crop + I, and a rolled-back word's re-decode is a full
forward of prompt + its new context (``reference_methods.forward``).
"""

from __future__ import annotations

import math

import torch

from reference_methods import Result, forward, inputs
from vcdflow.decoding.sampling import make_generator

#: methods this module covers (tests/test_methods_halc.py), for test_decoding's reference dispatch
COVERED = ("halc",)

_AUX: dict = {}

FUNCTION_WORDS = {
    "a",
    "an",
    "the",
    "is",
    "are",
    "there",
    "any",
    "in",
    "on",
    "of",
    "to",
    "and",
    "with",
    "this",
    "that",
    "what",
    "how",
    "yes",
    "no",
    "please",
    "you",
    "user",
    "assistant",
}


class RuleTagger:
    """Test stand-in for spaCy (the ONLY rule-based auxiliary model): an alphabetic word that is
    not a function word is a NOUN."""

    def pos(self, word: str) -> str:
        if not word:
            return "PUNC"
        w = word.split()[0]
        if not w.isalpha():
            return "PUNCT"
        return "DET" if w.lower() in FUNCTION_WORDS else "NOUN"

    def nouns(self, text: str) -> list[str]:
        return [w for w in text.split() if self.pos(w) == "NOUN"]


def build_aux(root) -> dict:
    """{"detector", "scorer", "clip", "tagger", "paths"}: loaded once per test process."""
    if _AUX:
        return _AUX
    from pathlib import Path

    from tiny_models import _word_tokenizer
    from transformers import (
        BlipConfig,
        BlipImageProcessorPil,
        BlipModel,
        BlipProcessor,
        CLIPConfig,
        CLIPImageProcessorPil,
        CLIPModel,
        CLIPProcessor,
        Owlv2Config,
        Owlv2ForObjectDetection,
        Owlv2ImageProcessorPil,
        Owlv2Processor,
    )
    from vcdflow.aux_models import Detector, ImageTextScorer

    root = Path(root)
    tok = _word_tokenizer()
    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    torch.manual_seed(0)
    owl = Owlv2ForObjectDetection(
        Owlv2Config(
            text_config=dict(vocab_size=len(tok), max_position_embeddings=16, **small),
            vision_config=dict(image_size=64, patch_size=16, **small),
            projection_dim=32,
        )
    ).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, prm in owl.named_parameters():
            if n.startswith("box_head"):
                prm.copy_(torch.randn(prm.shape, generator=g) * 0.3)
            elif n.startswith("class_head"):
                prm.copy_(torch.randn(prm.shape, generator=g) * 0.5)
    owl.save_pretrained(root / "owlv2")
    Owlv2Processor(
        image_processor=Owlv2ImageProcessorPil(size={"height": 64, "width": 64}), tokenizer=tok
    ).save_pretrained(root / "owlv2")
    BlipModel(
        BlipConfig(
            text_config=dict(
                vocab_size=len(tok), max_position_embeddings=64, encoder_hidden_size=32, **small
            ),
            vision_config=dict(image_size=32, patch_size=16, **small),
            projection_dim=16,
        )
    ).save_pretrained(root / "blip")
    BlipProcessor(
        image_processor=BlipImageProcessorPil(size={"height": 32, "width": 32}), tokenizer=tok
    ).save_pretrained(root / "blip")
    CLIPModel(
        CLIPConfig(
            text_config=dict(vocab_size=len(tok), max_position_embeddings=64, **small),
            vision_config=dict(image_size=32, patch_size=16, **small),
            projection_dim=16,
        )
    ).save_pretrained(root / "clip")
    CLIPProcessor(
        image_processor=CLIPImageProcessorPil(
            size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
        ),
        tokenizer=tok,
    ).save_pretrained(root / "clip")
    _AUX.update(
        detector=Detector.from_dir(root / "owlv2"),
        scorer=ImageTextScorer.from_dir(root / "blip"),
        clip=ImageTextScorer.from_dir(root / "clip"),
        tagger=RuleTagger(),
        paths={k: root / k for k in ("owlv2", "blip", "clip")},
    )
    return _AUX


def build_tiny_grounding_dino(root):
    """A tiny GroundingDINO (Swin backbone, BERT text encoder over a 14-word vocab.txt, random
    weights) saved with its processor: the loader's default detector path."""
    from pathlib import Path

    from transformers import (
        BertConfig,
        BertTokenizer,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessorPil,
        GroundingDinoProcessor,
        SwinConfig,
    )

    root = Path(root) / "grounding_dino"
    root.mkdir(parents=True, exist_ok=True)
    words = [
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
        ".",
        "a",
        "dog",
        "cat",
        "cup",
        "table",
        "person",
        "car",
        "red",
    ]
    (root / "vocab.txt").write_text("\n".join(words) + "\n")
    cfg = GroundingDinoConfig(
        backbone_config=SwinConfig(
            embed_dim=16,
            depths=[1, 1, 1, 1],
            num_heads=[1, 1, 1, 1],
            window_size=4,
            image_size=64,
            out_features=["stage2", "stage3", "stage4"],
        ),
        text_config=BertConfig(
            vocab_size=len(words),
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
        ),
        d_model=32,
        encoder_layers=1,
        decoder_layers=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        num_queries=20,
        num_feature_levels=4,
        encoder_n_points=2,
        decoder_n_points=2,
        max_text_len=32,
        use_timm_backbone=False,
        use_pretrained_backbone=False,
    )
    torch.manual_seed(0)
    GroundingDinoForObjectDetection(cfg).eval().save_pretrained(root)
    GroundingDinoProcessor(
        image_processor=GroundingDinoImageProcessorPil(size={"shortest_edge": 64, "longest_edge": 96}),
        tokenizer=BertTokenizer(str(root / "vocab.txt")),
    ).save_pretrained(root)
    return root


def halc_params(root, **kw) -> dict:
    """``halc`` params over the tiny stand-ins (folders built under ``root`` once per process; the
    rule-based tagger registered as "test-rules"): for generic all-method tests."""
    from vcdflow import aux_models

    aux = build_aux(root)
    aux_models.register("tagger", "test-rules", aux["tagger"])
    return {
        "detector": str(aux["paths"]["owlv2"]),
        "scorer": str(aux["paths"]["blip"]),
        "tagger": "test-rules",
        **kw,
    }


# --- the reference decoder -----------------------------------------------------------------------
def forward_hidden(vlm, inp, generated):
    return forward(vlm, inp, generated, hidden=True)


def _word_level(tok) -> bool:
    bt = getattr(tok, "backend_tokenizer", None)
    return bt is not None and type(bt.model).__name__ == "WordLevel"


def _complete(tok, t: int, eos) -> bool:
    """check_word_complete (halc.py:143-157): "▁" or "." in the piece, or EOS; generalised: "Ġ"
    at the start, every word-level token."""
    if int(t) in eos or _word_level(tok):
        return True
    s = tok.convert_ids_to_tokens(int(t)) or ""
    return "▁" in s or s.startswith("Ġ") or "." in s


def _last_word(tok, ids) -> str:
    return tok.decode(list(ids), skip_special_tokens=True).split(" ")[-1]


def _jsd(a: torch.Tensor, b: torch.Tensor) -> float:
    """½ KL(p_a ‖ m) + ½ KL(p_b ‖ m), m = ½(p_a + p_b), summed over the vocabulary."""
    pa, pb = a.softmax(-1), b.softmax(-1)
    m = 0.5 * (pa + pb)
    return float(
        0.5 * (m * (m.log() - a.log_softmax(-1))).sum() + 0.5 * (m * (m.log() - b.log_softmax(-1))).sum()
    )


def _grow(b, f):
    w, h = b[2] - b[0], b[3] - b[1]
    return [
        max(0.0, b[0] - f * w / 2),
        max(0.0, b[1] - f * h / 2),
        min(1.0, b[2] + f * w / 2),
        min(1.0, b[3] + f * h / 2),
    ]


def _penalised(vlm, inp, scores, p, hist):
    """HF's RepetitionPenaltyLogitsProcessor(θ) on scores [V] over the prefix (one BOS for
    ``repetition_context: generated``, LAVIS; else the prompt ids) + ``hist`` (utils.py L4662,
    L4809, L4980)."""
    theta = p.get("repetition_penalty", 1.0)
    if theta == 1.0 or hist is None:
        return scores
    from transformers import RepetitionPenaltyLogitsProcessor

    tok = vlm.adapter.tokenizer
    pre = [tok.bos_token_id] if p.get("repetition_context") == "generated" else inp["input_ids"][0].tolist()
    return RepetitionPenaltyLogitsProcessor(theta)(torch.tensor([pre + list(hist)]), scores[None])[0]


def _dola(vlm, inp, ids, p, layer=None, hist=None):
    """(DoLa token after prompt + ids, the premature layer used); ``layer`` forces it; ``hist``:
    the ids its logits processors see after the prefix."""
    lm = vlm.model.language_model if vlm.family == "instructblip" else vlm.model
    head = lm.get_output_embeddings()
    out = forward_hidden(vlm, inp, ids)
    hs = out.hidden_states
    L = len(hs) - 1
    mature = out.logits[0, -1].float()
    if layer is None:
        best_js = -1.0
        for cand in p["premature_layers"] or list(range(0, L, 2)):
            e = head(hs[cand][0, -1]).float()
            m = 0.5 * (mature.softmax(-1) + e.softmax(-1))
            js = 0.5 * (
                (m * (m.log() - mature.log_softmax(-1))).mean() + (m * (m.log() - e.log_softmax(-1))).mean()
            )
            if float(js) > best_js:
                layer, best_js = cand, float(js)
    base = head(hs[layer][0, -1]).float().log_softmax(-1)
    lp = mature.log_softmax(-1)
    final = torch.where(lp < float(lp.max()) + math.log(p["relative_top"]), torch.tensor(-math.inf), lp)
    base = torch.where(final < -1e3, torch.tensor(-1e3), base)
    return int(_penalised(vlm, inp, final - base, p, hist).argmax()), layer


def _judge(vlm, req, entity, p, aux, rng, exempt, add, ev):
    """context_density_embedding (halc.py:239-448) → (status, FOV boxes | None)."""
    for ch in (".", ",", "'", "]", "[", ")"):
        entity = entity.strip(ch)
    if entity.endswith("s"):
        entity = entity[:-1]
    pos = aux["tagger"].pos(entity) if entity else "PUNC"
    if "." in entity or "," in entity or entity in exempt:
        pos = "SKIP"
    if float(torch.rand(1, generator=rng)) < p["skip_rate"]:
        pos = "SKIP"
    if entity in add:
        pos = "ADD"
    ev.update(word=entity, pos=pos)
    if pos not in ("NOUN", "PROPN", "ADD"):
        return "invalid", None
    boxes = aux["detector"].detect(req.image, entity, p["box_threshold"])
    if len(boxes) > p["max_boxes"]:
        return "invalid", None
    if not boxes:
        target, status = [0.2, 0.2, 0.8, 0.8], "not-detected"
    else:
        areas = [(b[2] - b[0]) * (b[3] - b[1]) for b in boxes]
        target, status = boxes[areas.index(min(areas))], "activated"
    e = p["expand_ratio"]
    views = [_grow(target, -e), list(target)]
    while len(views) < p["context_window"]:
        views.append(_grow(views[-1], e))
    return status, views


def _fov_tokens(vlm, req, views, committed, p):
    """The k contrast candidates (halc.py:1041-1111) from full forwards of prompt + crop + I."""
    W, H = req.image.size
    fov = []
    for b in views:
        x0, y0, x1, y1 = b[0] * W, b[1] * H, b[2] * W, b[3] * H
        im = req.image.convert("RGB").crop((x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)))
        fov.append(forward(vlm, inputs(vlm, req.prompt, im, req.system), committed).logits[0, -1].float())
    n = len(fov)
    pairs = sorted(
        ((_jsd(fov[i], fov[j]), i * n + j) for i in range(n) for j in range(i + 1, n)), key=lambda x: -x[0]
    )[: p["k_candidates"] // 2]
    cands = []
    for _, flat in pairs:
        i, j = divmod(flat, n)
        main = inputs(vlm, req.prompt, req.image, req.system)
        cands.append(
            int(_penalised(vlm, main, fov[j] - p["contrast_weight"] * fov[i], p, committed).argmax())
        )
        cands.append(
            int(_penalised(vlm, main, fov[i] - p["contrast_weight"] * fov[j], p, committed).argmax())
        )
    return cands


def ref_halc(vlm, req, params: dict, aux: dict, *, seed: int, key: str, max_new_tokens: int, eos) -> Result:
    """HALC's beam loop for ``beam_size`` B (1 included). ``Result.meta``: "events" (every
    judgement: step, beam, word, tokens, pos, status, candidates), "commits" (every committed
    entry: step, beam, source, ids, corrected, unk, redecoded)."""
    import copy
    import random

    from vcdflow.decoding.methods.halc import ADD_WORDS, EXEMPT_WORDS, HALC

    p = {**HALC.defaults, **(params or {})}
    rng = make_generator(seed, key, "branches")
    exempt = list(p["exempt_words"] or EXEMPT_WORDS)
    add = list(p["add_words"] or ADD_WORDS)
    inp = inputs(vlm, req.prompt, req.image, req.system)
    tok = vlm.processor.tokenizer
    eos = set(eos)
    B, k = p["beam_size"], p["k_candidates"]
    res = Result(meta={"events": [], "commits": []})

    def new():
        return {
            "intermediate": [],
            "last_tokens": [],
            "context": [],
            "snapshot": [],
            "once": False,
            "not_detected": False,
            "current_word": "",
            "finished": False,
            "eos": False,
        }

    beams = [new() for _ in range(B)]
    grounded = False
    while True:
        b0 = beams[0]
        if all(b["finished"] for b in beams) or len(b0["intermediate"]) >= max_new_tokens - 1:
            res.tokens = (b0["intermediate"] + b0["last_tokens"])[
                :max_new_tokens
            ]  # I + W (the engine's length contract)
            res.finish = "eos" if b0["eos"] else "length"
            return res
        nxt, layer_used, cand_lists = [], None, []
        for bs, b in enumerate(beams):
            cands = [None] * k
            y = None
            if not b["finished"]:
                y, layer_used = _dola(vlm, inp, b["context"], p, hist=b["intermediate"] + b["last_tokens"])
                if _complete(tok, y, eos):
                    b["once"] = False
                    if b["last_tokens"]:
                        W = b["last_tokens"]
                        b["current_word"] = _last_word(tok, W)
                        if _complete(tok, W[0], eos):
                            entity = b["current_word"]
                        else:
                            t = 1
                            while t < len(b["intermediate"]) and not _complete(
                                tok, b["intermediate"][-t], eos
                            ):
                                t += 1
                            entity = _last_word(tok, b["intermediate"][-t:] + W)
                        ev = {"step": len(b["intermediate"]), "beam": bs, "tokens": list(W)}
                        res.meta["events"].append(ev)
                        status, views = _judge(vlm, req, entity, p, aux, rng, exempt, add, ev)
                        ev["status"] = status
                        b["not_detected"] = status == "not-detected"
                        if views is None:
                            cands = [list(W)] * k
                        else:
                            grounded = True
                            c = _fov_tokens(vlm, req, views, b["intermediate"], p)
                            ev["candidates"] = c
                            cands = [[t] for t in c]
                    b["last_tokens"] = []
            nxt.append(y)
            cand_lists.append(cands)
        pool = [(bs, c) for bs in range(B) for c in cand_lists[bs]]
        if not grounded:
            random.seed(8)
            chosen = random.sample(range(len(pool)), B)
        else:
            texts = [
                tok.decode(beams[bs]["intermediate"] + (c or []), skip_special_tokens=True) for bs, c in pool
            ]
            probs = aux["scorer"].similarity(req.image, texts).softmax(-1).tolist()
            order = list(range(len(pool)))
            order.sort(key=lambda i: probs[i])
            chosen, seen = [], set()
            for i in reversed(order):
                if texts[i] not in seen:
                    seen.add(texts[i])
                    chosen.append(i)
                if len(chosen) == B:
                    break
            while len(chosen) < B:
                chosen.append(chosen[0])
        old = beams
        beams = []
        for pos_new, i in enumerate(chosen):
            src, c = pool[i]
            b = copy.deepcopy(old[src])
            beams.append(b)
            if b["finished"]:
                continue
            y = nxt[src]
            if c is not None:
                b["intermediate"] = b["intermediate"] + list(c)
                lw = _last_word(tok, c)
                cw = b["current_word"]
                unk = False
                if (
                    (lw == cw or lw in cw or cw in lw)
                    and b["not_detected"]
                    and p["unk_not_detected"]
                    and tok.unk_token_id is not None
                    and len(b["intermediate"]) >= p["min_length"]
                    and lw not in exempt
                ):
                    t = 1
                    if not _complete(tok, c[0], eos):
                        while t < len(b["intermediate"]) and not _complete(tok, b["intermediate"][-t], eos):
                            t += 1
                    b["intermediate"] = b["intermediate"][:-t] + [tok.unk_token_id] * t
                    lw, unk = "EOS", True
                rec = {
                    "step": len(old[src]["intermediate"]),
                    "beam": pos_new,
                    "source": src,
                    "ids": list(c),
                    "corrected": lw != cw,
                    "unk": unk,
                }
                res.meta["commits"].append(rec)
                if lw != cw:  # rolled back: re-decode after the new context with the loop's last layer
                    ctx = (
                        b["snapshot"] + [b["intermediate"][-1]]
                        if p["rollback_context"] == "snapshot"
                        else list(b["intermediate"])
                    )
                    y, _ = _dola(vlm, inp, ctx, p, layer=layer_used, hist=b["intermediate"])
                    rec["redecoded"] = y
                    b["context"] = list(ctx)
                    b["last_tokens"] = []
            b["last_tokens"].append(y)
            b["context"].append(y)
            if not _complete(tok, y, eos):
                if not b["once"]:
                    b["once"] = True
                    b["snapshot"] = b["context"][:-1]
            else:
                b["snapshot"] = b["context"][:-1]
            if y in eos:
                b["intermediate"] = b["intermediate"] + b["last_tokens"][:-1]
                b["last_tokens"], b["finished"], b["eos"] = [], True, True
            elif len(b["intermediate"]) + len(b["last_tokens"]) >= max_new_tokens + 1:
                b["intermediate"] = b["intermediate"] + b["last_tokens"]
                b["last_tokens"], b["finished"] = [], True
