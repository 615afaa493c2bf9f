"""Plain reference for ``halc`` and the tiny auxiliary stand-ins (E18) its tests use.

The stand-ins are real transformers models at tiny sizes with random weights, saved to folders
and loaded through :mod:`vcdflow.aux_models`' own loaders: OWLv2 (``Owlv2ForObjectDetection``,
its box and class heads re-drawn wider so that boxes vary), BLIP (``BlipModel``) and CLIP
(``CLIPModel``) over the tests' word-level tokenizer. Only the POS tagger is rule-based
(:class:`RuleTagger`: spaCy weights cannot be fetched here).

The reference decodes one request with no KV cache and no batching: every step recomputes the
whole sequence through the Hugging Face model with ``output_hidden_states`` (DoLa's early exits
straight from ``hidden_states[l]``, no final norm), and every FOV view is a separate full forward
of prompt + crop + generated ids (``reference_methods.forward``). Each step of the official
control flow (``BillChan226/HALC@12ea8b5``: ``halc.py``, vendored ``generation/utils.py``) is
written out again here, without importing the method's helpers.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from reference_methods import Result, forward, inputs
from vcdflow.decoding.sampling import make_generator

#: methods this module covers (tests/test_methods_halc.py), for test_decoding's reference dispatch
COVERED = ("halc",)

_AUX: dict = {}

FUNCTION_WORDS = {"a", "an", "the", "is", "are", "there", "any", "in", "on", "of", "to", "and", "with", "this",
                  "that", "what", "how", "yes", "no", "please", "you", "user", "assistant"}


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
    from transformers import (BlipConfig, BlipImageProcessorPil, BlipModel, BlipProcessor, CLIPConfig,
                              CLIPImageProcessorPil, CLIPModel, CLIPProcessor, Owlv2Config, Owlv2ForObjectDetection,
                              Owlv2ImageProcessorPil, Owlv2Processor)
    from vcdflow.aux_models import Detector, ImageTextScorer

    root = Path(root)
    tok = _word_tokenizer()
    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    torch.manual_seed(0)
    owl = Owlv2ForObjectDetection(Owlv2Config(
        text_config=dict(vocab_size=len(tok), max_position_embeddings=16, **small),
        vision_config=dict(image_size=64, patch_size=16, **small), projection_dim=32)).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, prm in owl.named_parameters():
            if n.startswith("box_head"):
                prm.copy_(torch.randn(prm.shape, generator=g) * 0.3)
            elif n.startswith("class_head"):
                prm.copy_(torch.randn(prm.shape, generator=g) * 0.5)
    owl.save_pretrained(root / "owlv2")
    Owlv2Processor(image_processor=Owlv2ImageProcessorPil(size={"height": 64, "width": 64}),
                   tokenizer=tok).save_pretrained(root / "owlv2")
    BlipModel(BlipConfig(
        text_config=dict(vocab_size=len(tok), max_position_embeddings=64, encoder_hidden_size=32, **small),
        vision_config=dict(image_size=32, patch_size=16, **small), projection_dim=16)).save_pretrained(root / "blip")
    BlipProcessor(image_processor=BlipImageProcessorPil(size={"height": 32, "width": 32}),
                  tokenizer=tok).save_pretrained(root / "blip")
    CLIPModel(CLIPConfig(
        text_config=dict(vocab_size=len(tok), max_position_embeddings=64, **small),
        vision_config=dict(image_size=32, patch_size=16, **small), projection_dim=16)).save_pretrained(root / "clip")
    CLIPProcessor(image_processor=CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
                  tokenizer=tok).save_pretrained(root / "clip")
    _AUX.update(detector=Detector.from_dir(root / "owlv2"), scorer=ImageTextScorer.from_dir(root / "blip"),
                clip=ImageTextScorer.from_dir(root / "clip"), tagger=RuleTagger(),
                paths={k: root / k for k in ("owlv2", "blip", "clip")})
    return _AUX


def build_tiny_grounding_dino(root):
    """A tiny GroundingDINO (Swin backbone, BERT text encoder over a 14-word vocab.txt, random
    weights) saved with its processor: the loader's default detector path."""
    from pathlib import Path

    from transformers import (BertConfig, BertTokenizer, GroundingDinoConfig, GroundingDinoForObjectDetection,
                              GroundingDinoImageProcessorPil, GroundingDinoProcessor, SwinConfig)

    root = Path(root) / "grounding_dino"
    root.mkdir(parents=True, exist_ok=True)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "a", "dog", "cat", "cup", "table", "person", "car",
             "red"]
    (root / "vocab.txt").write_text("\n".join(words) + "\n")
    cfg = GroundingDinoConfig(
        backbone_config=SwinConfig(embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1], window_size=4,
                                   image_size=64, out_features=["stage2", "stage3", "stage4"]),
        text_config=BertConfig(vocab_size=len(words), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=64, max_position_embeddings=64),
        d_model=32, encoder_layers=1, decoder_layers=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
        encoder_attention_heads=2, decoder_attention_heads=2, num_queries=20, num_feature_levels=4,
        encoder_n_points=2, decoder_n_points=2, max_text_len=32, use_timm_backbone=False,
        use_pretrained_backbone=False)
    torch.manual_seed(0)
    GroundingDinoForObjectDetection(cfg).eval().save_pretrained(root)
    GroundingDinoProcessor(image_processor=GroundingDinoImageProcessorPil(size={"shortest_edge": 64, "longest_edge": 96}),
                           tokenizer=BertTokenizer(str(root / "vocab.txt"))).save_pretrained(root)
    return root


def halc_params(root, **kw) -> dict:
    """``halc`` params over the tiny stand-ins (folders built under ``root`` once per process; the
    rule-based tagger registered as "test-rules"): for generic all-method tests."""
    from vcdflow import aux_models

    aux = build_aux(root)
    aux_models.register("tagger", "test-rules", aux["tagger"])
    return {"detector": str(aux["paths"]["owlv2"]), "scorer": str(aux["paths"]["blip"]), "tagger": "test-rules", **kw}


# --- the reference decoder -----------------------------------------------------------------------
def forward_hidden(vlm, inp, generated):
    return forward(vlm, inp, generated, hidden=True)


def _word_start(tok, t: int) -> bool:
    bt = getattr(tok, "backend_tokenizer", None)
    if bt is not None and type(bt.model).__name__ == "WordLevel":
        return True
    s = tok.convert_ids_to_tokens(int(t)) or ""
    return s[:1] in ("▁", "Ġ") or "." in s


def _jsd(a: torch.Tensor, b: torch.Tensor) -> float:
    """½ KL(p_a ‖ m) + ½ KL(p_b ‖ m), m = ½(p_a + p_b), summed over the vocabulary."""
    pa, pb = a.softmax(-1), b.softmax(-1)
    m = 0.5 * (pa + pb)
    return float(0.5 * (m * (m.log() - a.log_softmax(-1))).sum() + 0.5 * (m * (m.log() - b.log_softmax(-1))).sum())


def _grow(b, f):
    w, h = b[2] - b[0], b[3] - b[1]
    return [max(0.0, b[0] - f * w / 2), max(0.0, b[1] - f * h / 2), min(1.0, b[2] + f * w / 2), min(1.0, b[3] + f * h / 2)]


def _propose(vlm, inp, req, gen, p, aux, rng, eos, exempt, add, events):
    """One step of one hypothesis: (DoLa token y, its margin, event | None, FOV candidates | None)."""
    tok = vlm.processor.tokenizer
    lm = vlm.model.language_model if vlm.family == "instructblip" else vlm.model
    head = lm.get_output_embeddings()
    out = forward_hidden(vlm, inp, gen)
    hs = out.hidden_states
    L = len(hs) - 1
    mature = out.logits[0, -1].float()
    # DoLa: the candidate layer most JS-divergent from the mature one (means over V)
    best, best_js = None, -1.0
    for layer in p["premature_layers"] or list(range(0, L, 2)):
        e = head(hs[layer][0, -1]).float()
        m = 0.5 * (mature.softmax(-1) + e.softmax(-1))
        js = 0.5 * ((m * (m.log() - mature.log_softmax(-1))).mean() + (m * (m.log() - e.log_softmax(-1))).mean())
        if float(js) > best_js:
            best, best_js = e, float(js)
    lp = mature.log_softmax(-1)
    cut = float(lp.max()) + math.log(p["relative_top"])
    final = torch.where(lp < cut, torch.tensor(-math.inf), lp)
    base = torch.where(final < -1e3, torch.tensor(-1e3), best.log_softmax(-1))
    s = final - base
    y = int(s.argmax())
    top2 = torch.topk(s, 2).values
    margin = float(top2[0] - top2[1]) if torch.isfinite(top2[1]) else math.inf
    if y in eos or not _word_start(tok, y):
        return y, margin, None, None
    word = tok.decode([y], skip_special_tokens=True).strip()
    for ch in (".", ",", "'", "]", "[", ")"):
        word = word.strip(ch)
    if word.endswith("s"):
        word = word[:-1]
    pos = aux["tagger"].pos(word) if word else "PUNC"
    if "." in word or "," in word or word in exempt:
        pos = "SKIP"
    if float(torch.rand(1, generator=rng)) < p["skip_rate"]:
        pos = "SKIP"
    if word in add:
        pos = "ADD"
    ev = {"step": len(gen), "word": word, "pos": pos}
    events.append(ev)
    if pos not in ("NOUN", "PROPN", "ADD"):
        ev["status"] = "invalid"
        return y, margin, ev, None
    boxes = aux["detector"].detect(req.image, word, p["box_threshold"])
    if len(boxes) > p["max_boxes"]:
        ev["status"] = "invalid"
        return y, margin, ev, None
    if not boxes:
        target, ev["status"] = [0.2, 0.2, 0.8, 0.8], "not-detected"
    else:
        areas = [(b[2] - b[0]) * (b[3] - b[1]) for b in boxes]
        target, ev["status"] = boxes[areas.index(min(areas))], "activated"
    e = p["expand_ratio"]
    views = [_grow(target, -e), list(target)]
    while len(views) < p["context_window"]:
        views.append(_grow(views[-1], e))
    W, H = req.image.size
    fov = []
    for b in views:
        x0, y0, x1, y1 = b[0] * W, b[1] * H, b[2] * W, b[3] * H
        im = req.image.convert("RGB").crop((x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)))
        fov.append(forward(vlm, inputs(vlm, req.prompt, im, req.system), gen).logits[0, -1].float())
    n = len(fov)
    pairs = sorted(((_jsd(fov[i], fov[j]), i * n + j) for i in range(n) for j in range(i + 1, n)),
                   key=lambda x: -x[0])[: p["k_candidates"] // 2]
    cands = []
    for _, flat in pairs:
        i, j = divmod(flat, n)
        cands.append(int((fov[j] - p["contrast_weight"] * fov[i]).argmax()))
        cands.append(int((fov[i] - p["contrast_weight"] * fov[j]).argmax()))
    ev["candidates"] = cands
    return y, margin, ev, cands


def _unk(tok, chosen, y, ev, n_gen, p, exempt):
    if (ev and ev.get("status") == "not-detected" and p["unk_not_detected"] and tok.unk_token_id is not None
            and n_gen + 1 >= p["min_length"]):
        new = tok.decode([chosen], skip_special_tokens=True).split(" ")[-1]
        cur = tok.decode([y], skip_special_tokens=True).split(" ")[-1]
        if (new == cur or new in cur or cur in new) and new not in exempt:
            return tok.unk_token_id, True
    return chosen, False


def _setup(vlm, req, params, seed, key):
    from vcdflow.decoding.methods.halc import ADD_WORDS, EXEMPT_WORDS, HALC

    p = {**HALC.defaults, **(params or {})}
    return (p, make_generator(seed, key, "branches"), list(p["exempt_words"] or EXEMPT_WORDS),
            list(p["add_words"] or ADD_WORDS), inputs(vlm, req.prompt, req.image, req.system))


def ref_halc(vlm, req, params: dict, aux: dict, *, seed: int, key: str, max_new_tokens: int, eos) -> Result:
    """Beam 1: the candidate with the highest image-text score is emitted."""
    p, rng, exempt, add, inp = _setup(vlm, req, params, seed, key)
    tok = vlm.processor.tokenizer
    res = Result()
    res.meta["events"] = []
    gen: list[int] = []
    for _ in range(max_new_tokens):
        y, margin, ev, cands = _propose(vlm, inp, req, gen, p, aux, rng, eos, exempt, add, res.meta["events"])
        chosen = y
        if cands is not None:
            texts = [tok.decode(gen + [c], skip_special_tokens=True) for c in cands]
            chosen = cands[int(aux["scorer"].similarity(req.image, texts).softmax(-1).argmax())]
            ev["chosen"] = chosen
            chosen, fired = _unk(tok, chosen, y, ev, len(gen), p, exempt)
            if fired:
                ev["unk"] = True
        res.margins.append(margin)
        if chosen in eos:
            res.finish = "eos"
            break
        gen.append(chosen)
        res.tokens.append(chosen)
    return res


def ref_halc_beams(vlm, req, params: dict, aux: dict, *, seed: int, key: str, max_new_tokens: int, eos) -> Result:
    """B beams: each proposes k entries (its FOV candidates, or k copies of its DoLa token); before
    the first grounding random.seed(8) + random.sample picks B of the pool, afterwards the top B
    distinct texts by image-text softmax (fewer: the best repeated); the output is beam 0; a
    non-first beam choosing EOS takes beam 0's entry."""
    import random

    p, rng, exempt, add, inp = _setup(vlm, req, params, seed, key)
    tok = vlm.processor.tokenizer
    B, k = p["beam_size"], p["k_candidates"]
    res = Result()
    res.meta["events"] = []
    beams: list[list[int]] = [[]]
    grounded = False
    for _ in range(max_new_tokens):
        pool = []
        for b, gen in enumerate(beams):
            y, _, ev, cands = _propose(vlm, inp, req, gen, p, aux, rng, eos, exempt, add, res.meta["events"])
            for t in (cands if cands is not None else [y] * k):
                pool.append((b, t, y, ev))
            grounded = grounded or bool(ev and ev["status"] in ("activated", "not-detected"))
        if not grounded:
            random.seed(8)
            sel = random.sample(range(len(pool)), min(B, len(pool)))
        else:
            texts = [tok.decode(beams[b] + [t], skip_special_tokens=True) for b, t, _, _ in pool]
            probs = aux["scorer"].similarity(req.image, texts).softmax(-1).tolist()
            sel, seen = [], set()
            for i in sorted(range(len(pool)), key=lambda i: (-probs[i], i)):
                if texts[i] not in seen:
                    seen.add(texts[i])
                    sel.append(i)
                if len(sel) == B:
                    break
        sel += [sel[0]] * (B - len(sel))
        entries = []
        for i in sel:
            b, t, y, ev = pool[i]
            entries.append((b, _unk(tok, t, y, ev, len(beams[b]), p, exempt)[0]))
        b0, t0 = entries[0]
        if t0 in eos:
            res.tokens, res.finish = list(beams[b0]), "eos"
            return res
        if len(beams[b0]) + 1 >= max_new_tokens:
            res.tokens, res.finish = beams[b0] + [t0], "length"
            return res
        beams = [beams[b] + [t] for b, t in (e if e[1] not in eos else entries[0] for e in entries)]
    res.tokens = beams[0]
    return res
