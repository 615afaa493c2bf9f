"""HALC and its two engine capabilities: auxiliary models (tiny OWLv2 / BLIP / CLIP from real
configs, loaded through vcdflow.aux_models' loaders; a rule-based POS stand-in) and mid-decode branch spawning
mid-decode branch spawning (against a plain no-cache forward); ``halc`` (word-level judgement,
rollback + re-decode through the engine's rollback replay) against the plain reference
(tests/reference_halc.py) on the tiny model of every family, the demo LLaVA and a tiny LLaVA with
a SentencePiece-style subword tokenizer (words of several ids: the rollback case)."""

from __future__ import annotations

import pytest
import torch

from reference_halc import RuleTagger, build_aux, build_tiny_grounding_dino, ref_halc
from reference_methods import build_vlms, image, inputs, last_logits
from vcdflow import aux_models
from vcdflow.decoding import Request, generate
from vcdflow.decoding.hooks import LayerCapture
from vcdflow.decoding.spawn import spawn_logits
from vcdflow.decoding.types import Branch

FAMILIES = ["llava", "qwen2_5_vl", "instructblip", "demo"]
N_NEW = 8


def build_subword_llava(root):
    """The tiny LLaVA with a Unigram tokenizer over SentencePiece-style pieces ("▁word" starts a
    word, a bare piece continues it; Metaspace pre-tokenizer and decoder, lower-casing), the same
    vocabulary size and special ids: random greedy text then has words of 2+ ids."""
    from tiny_models import FILLER_WORDS, _word_tokenizer, build_tiny_llava
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import Unigram
    from transformers import PreTrainedTokenizerFast

    path = build_tiny_llava(root / "llava_sp", seed=1)
    n = len(_word_tokenizer())
    specials = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]
    pieces = [(t, 0.0) for t in specials]
    seen = set(specials)

    def add(piece, score):
        if piece not in seen and len(pieces) < n:
            seen.add(piece)
            pieces.append((piece, score))

    for c in list("abcdefghijklmnopqrstuvwxyz") + ["▁", ":", "?", ".", ",", "\n", "!", "-"]:
        add(c, -12.0)
    for w in [
        "user",
        "assistant",
        "is",
        "there",
        "a",
        "the",
        "in",
        "image",
        "describe",
        "detail",
        "what",
        "this",
        "dog",
        "cup",
        "cat",
        "table",
        "red",
        "with",
        "on",
        "you",
        "are",
        "an",
        "expert",
    ]:
        add("▁" + w, -2.0)
    tails = ["ing", "ella", "er", "ed", "ly", "on", "ta", "ble", "ra", "ket", "ol", "ish", "en", "ar", "um"]
    for i, w in enumerate(FILLER_WORDS):
        add(("▁" if i % 2 else "") + w, -3.0)
        add(tails[i % len(tails)] if i % 3 else "▁" + tails[i % len(tails)], -4.0)
    assert len(pieces) == n, (len(pieces), n)
    tok = Tokenizer(Unigram(pieces, unk_id=0))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    fast.add_special_tokens({"additional_special_tokens": ["<image>"]})
    assert len(fast) == n and fast.convert_tokens_to_ids("<image>") == 4 and fast.eos_token_id == 2
    fast.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def vlms(tmp_path_factory):
    from vcdflow.models import load_vlm

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("halc_vlms")
    out = dict(build_vlms(root))
    out["llava_sp"] = load_vlm(build_subword_llava(root))
    return out


@pytest.fixture(scope="module")
def aux(tmp_path_factory):
    a = build_aux(tmp_path_factory.mktemp("halc_aux"))
    aux_models.register("tagger", "test-rules", a["tagger"])
    return a


REQS = [
    Request(image=image(1, 80, 100), prompt="Is there a cup in the image?", item_id="a"),
    Request(
        image=image(2, 96, 64),
        prompt="describe the image in detail",
        item_id="b",
        system="You are an expert.",
    ),
    Request(image=image(3, 120, 70), prompt="what is this red dog on the table with a cat?", item_id="c"),
    Request(image=image(1, 80, 100), prompt="Is there a dog?", item_id="d"),  # shares a's prefix
]


def params(aux, **kw):
    p = {
        "detector": str(aux["paths"]["owlv2"]),
        "scorer": str(aux["paths"]["blip"]),
        "tagger": "test-rules",
        "min_length": 3,
        "beam_size": 1,
    }
    p.update(kw)
    return p


# --- auxiliary models ------------------------------------------------------------------------------------
def test_aux_models_load_and_score(aux):
    det, blip, clip = aux["detector"], aux["scorer"], aux["clip"]
    im = image(7, 90, 70)
    raw = det.raw_boxes(im, "dog", 0.05)
    kept = det.detect(im, "dog", 0.05)
    assert raw and kept and len(kept) < len(raw)  # the filters act on these random boxes
    for b in kept:
        assert all(0 <= v <= 1 for v in b) and (b[2] - b[0]) * (b[3] - b[1]) >= 0.01
    for i, a in enumerate(kept):
        assert all(aux_models.box_iou(a, b) <= 0.6 for b in kept[:i])
    # filter_boxes by hand: clip, round, area, IoU against the kept ones in order
    want = []
    for b in raw:
        nb = [round(min(1.0, max(0.0, v)), 3) for v in b]
        if (nb[2] - nb[0]) * (nb[3] - nb[1]) >= 0.01 and all(aux_models.box_iou(nb, k) <= 0.6 for k in want):
            want.append(nb)
    assert kept == want
    # a higher threshold keeps a subset of the raw boxes
    assert len(det.raw_boxes(im, "dog", 0.5)) <= len(raw)
    texts = ["a dog on the table", "a cat", "two red cup"]
    for scorer in (blip, clip):
        s = scorer.similarity(im, texts)
        enc = scorer.processor(text=texts, images=im, return_tensors="pt", padding=True, truncation=True)
        with torch.no_grad():
            ref = scorer.model(
                input_ids=enc["input_ids"],
                attention_mask=enc["attention_mask"],
                pixel_values=enc["pixel_values"],
            ).logits_per_image[0]
        assert s.shape == (3,) and torch.allclose(s, ref)
    assert len(set(blip.similarity(im, texts).tolist())) == 3
    # resolution: folders load once, registered names and objects pass through, bad specs say why
    assert aux_models.resolve("detector", str(aux["paths"]["owlv2"])) is aux_models.resolve(
        "detector", str(aux["paths"]["owlv2"])
    )
    assert aux_models.resolve("tagger", "test-rules") is aux["tagger"]
    with pytest.raises(FileNotFoundError, match="detector weights not found"):
        aux_models.resolve("detector", "/nonexistent/owl")
    with pytest.raises(ValueError, match="unknown auxiliary model kind"):
        aux_models.resolve("ocr", "x")
    assert RuleTagger().nouns("a dog on the table") == ["dog", "table"]


def test_grounding_dino_through_the_loader(tmp_path):
    """HALC's default detector kind: a tiny GroundingDINO folder loads through
    AutoModelForZeroShotObjectDetection and its grounded post-processing (box and text thresholds);
    boxes come back normalised to the image and filtered like HALC's wrapper."""
    det = aux_models.Detector.from_dir(build_tiny_grounding_dino(tmp_path), text_threshold=0.0)
    assert det.model_type == "grounding-dino"
    im = image(8, 80, 60)
    raw = det.raw_boxes(im, "a dog", 0.0)
    assert len(raw) == 20 and all(-1e-6 <= v <= 1 + 1e-6 for b in raw for v in b)
    assert det.detect(im, "a dog", 0.0) == aux_models.filter_boxes(raw)
    assert det.raw_boxes(im, "a dog", 1.0) == []


# --- branch spawning -------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_spawn_matches_plain_forward(vlms, family):
    """Spawned branches (new images, prompt + teacher-forced ids, batched with different prefix
    lengths) give the same next-token logits as a plain full forward of each; the method's hooks
    keep the state of the decode's own rows."""
    vlm = vlms[family]
    ad = vlm.adapter
    vocab = len(vlm.processor.tokenizer)
    gen = [[], [7, 9, 11], [12, 8, 8, 13, 10]]
    gen = [[t % vocab for t in g] for g in gen]
    ims = [image(4, 40, 60), image(5, 90, 30), image(6, 64, 64)]
    branches = [Branch(prompt=r.prompt, image=im, system=r.system) for r, im in zip(REQS, ims)]
    hooks = LayerCapture(layers=[0])
    hooks.start(ad, [], [])
    marker = torch.arange(6.0).view(2, 3)
    hooks.last[0] = marker
    try:
        got = spawn_logits(ad, branches, gen, hooks=hooks)
    finally:
        hooks.finish()
    assert hooks.last[0] is not None and torch.equal(hooks.last[0], marker)
    with torch.no_grad():
        for k, (r, im, g) in enumerate(zip(REQS, ims, gen)):
            ref = last_logits(vlm, inputs(vlm, r.prompt, im, r.system), g)
            assert torch.allclose(got[k], ref, atol=1e-4, rtol=1e-4), (family, k, (got[k] - ref).abs().max())
    assert not torch.allclose(got[0], got[1])


# --- halc -----------------------------------------------------------------------------------------
PARAM_SETS = {
    "grounded": {"box_threshold": 0.3, "max_boxes": 20},  # boxes found: the smallest one is the focus
    "centre": {"box_threshold": 1.5},  # nothing found: centre box, unk removal
    "defaults": {},  # official thresholds: mostly > 3 boxes → invalid
}
EVENT_KEYS = ("step", "beam", "word", "tokens", "pos", "status", "candidates")


def check(o, ref, what):
    """Token for token, the same finish, the same judgements and commits as the reference."""
    assert o.error is None, (what, o.error)
    assert o.token_ids == ref.tokens and o.meta["finish_reason"] == ref.finish, (
        what,
        o.token_ids,
        ref.tokens,
    )
    got = [{k: e[k] for k in EVENT_KEYS if k in e} for e in o.meta.get("halc_events", [])]
    want = [{k: e[k] for k in EVENT_KEYS if k in e} for e in ref.meta["events"]]
    assert got == want, what
    assert o.meta.get("halc_commits", []) == ref.meta["commits"], what


@pytest.mark.parametrize("family", FAMILIES + ["llava_sp"])
def test_greedy_matches_reference(vlms, aux, family):
    """beam_size 1: the same loop as the official with one beam (word judged once complete, a
    changed word rolled back and re-decoded)."""
    vlm = vlms[family]
    eos = vlm.adapter.eos_token_ids
    statuses, corrected = set(), 0
    for name, extra in PARAM_SETS.items():
        p = params(aux, **extra)
        outs = generate(vlm, REQS, "halc", p, max_new_tokens=N_NEW, batch_size=16, seed=3)
        for r, o in zip(REQS, outs):
            with torch.no_grad():
                ref = ref_halc(vlm, r, p, aux, seed=3, key=r.item_id, max_new_tokens=N_NEW, eos=eos)
            check(o, ref, f"halc/{family}/{name}/{r.item_id}")
            statuses |= {e["status"] for e in o.meta.get("halc_events", [])}
            corrected += sum(1 for c in o.meta.get("halc_commits", []) if c["corrected"])
    # the control flow really ran: judgements skipped, grounded and not grounded, and words the
    # focal contrast changed (rolled back + re-decoded); the random demo model's only noun is
    # "racket", which the tiny detector's vocabulary lacks: never found there
    want = {"invalid", "not-detected"} | ({"activated"} if family != "demo" else set())
    assert want <= statuses, statuses
    assert corrected > 0, corrected


@pytest.mark.parametrize("context", ["snapshot", "committed"])
def test_rollback_of_multi_token_words(vlms, aux, context):
    """Subword tokenizer: words of several ids are judged once complete and, when the focal
    contrast changes them, rolled back to their first id and re-decoded (the row replays its new
    context, rollback); both re-decode contexts equal the reference, and the official snapshot one
    re-decodes after the word's first id (a context that differs from the committed ids)."""
    vlm = vlms["llava_sp"]
    eos = vlm.adapter.eos_token_ids
    tok = vlm.processor.tokenizer
    multi = 0
    for extra in ({"box_threshold": 1.5},):  # nothing detected: centre-box views, unk removal, re-decodes
        p = params(aux, rollback_context=context, skip_rate=0.0, **extra)
        outs = generate(vlm, REQS, "halc", p, max_new_tokens=12, batch_size=16, seed=4)
        for r, o in zip(REQS, outs):
            with torch.no_grad():
                ref = ref_halc(vlm, r, p, aux, seed=4, key=r.item_id, max_new_tokens=12, eos=eos)
            check(o, ref, f"rollback/{context}/{r.item_id}")
            words = {(e["step"], e["beam"]): e["tokens"] for e in o.meta["halc_events"]}
            for c in o.meta["halc_commits"]:
                if c["corrected"] and len(words.get((c["step"], c["source"]), [])) >= 2:
                    multi += 1
                    assert "redecoded" in c
    assert multi > 0, "no word of 2+ ids was rolled back"
    assert any(not t.startswith("▁") for t in tok.convert_ids_to_tokens(list(range(5, len(tok)))))


@pytest.mark.parametrize("family", ["llava", "instructblip"])
def test_not_detected_words_become_unk(vlms, aux, family):
    """Nothing is ever detected (box threshold 1.5): a focal word equal to the original one becomes
    the unk token once min_length ids are committed, and the word is re-decoded after it; off with
    unk_not_detected=False."""
    vlm = vlms[family]
    eos = vlm.adapter.eos_token_ids
    unk = vlm.processor.tokenizer.unk_token_id
    seen = 0
    for flag in (True, False):
        p = params(aux, box_threshold=1.5, min_length=1, skip_rate=0.0, unk_not_detected=flag)
        outs = generate(vlm, REQS[:2], "halc", p, max_new_tokens=N_NEW, seed=0)
        for r, o in zip(REQS[:2], outs):
            with torch.no_grad():
                ref = ref_halc(vlm, r, p, aux, seed=0, key=r.item_id, max_new_tokens=N_NEW, eos=eos)
            check(o, ref, f"halc-unk/{family}/{flag}/{r.item_id}")
            events = o.meta["halc_events"]
            assert all(e["status"] in ("invalid", "not-detected") for e in events)
            for c in o.meta["halc_commits"]:
                if c["unk"]:
                    assert flag and c["corrected"] and "redecoded" in c
                    if c["step"] < len(o.token_ids):
                        assert o.token_ids[c["step"]] == unk
                    seen += 1
            if not flag:
                assert not any(c["unk"] for c in o.meta["halc_commits"])
    assert seen > 0


@pytest.mark.parametrize("family", FAMILIES + ["llava_sp"])
def test_beams_match_reference(vlms, aux, family):
    """HALC's BLIP-ranked beams (beam_size 3, the official default) on the engine's search protocol
    equal the plain reference: every beam recomputed from scratch, the pool ranked again."""
    vlm = vlms[family]
    eos = vlm.adapter.eos_token_ids
    p = params(aux, beam_size=3, box_threshold=0.3, max_boxes=20)
    outs = generate(vlm, REQS, "halc", p, max_new_tokens=7, batch_size=16, seed=5)
    greedy = generate(vlm, REQS, "halc", {**p, "beam_size": 1}, max_new_tokens=7, batch_size=16, seed=5)
    for r, o in zip(REQS, outs):
        with torch.no_grad():
            ref = ref_halc(vlm, r, p, aux, seed=5, key=r.item_id, max_new_tokens=7, eos=eos)
        check(o, ref, f"beams/{family}/{r.item_id}")
        assert {e["beam"] for e in o.meta.get("halc_events", [])} <= {0, 1, 2}
    if family != "demo":
        assert any(o.token_ids != g.token_ids for o, g in zip(outs, greedy))
        assert any(c["source"] != c["beam"] for o in outs for c in o.meta.get("halc_commits", []))


def test_lavis_repetition_penalty_matches_reference(vlms, aux):
    """InstructBLIP under protocol halc: LAVIS's repetition penalty θ = 1.5 over one BOS + a beam's
    ids at the loop's three processor sites (DoLa token over I + W, FOV candidates and the re-decode
    over I; utils.py L4662, L4809, L4980) equals the reference; and it changes the output."""
    from vcdflow.protocols import get_protocol

    vlm = vlms["instructblip"]
    eos = vlm.adapter.eos_token_ids
    declared = dict(get_protocol("halc").resolve("halc", "instructblip", "chair").params)
    assert declared == {"repetition_penalty": 1.5, "repetition_context": "generated"}
    p = params(aux, beam_size=3, box_threshold=0.3, max_boxes=20, **declared)
    outs = generate(vlm, REQS, "halc", p, max_new_tokens=7, batch_size=16, seed=5)
    plain = generate(
        vlm, REQS, "halc", {**p, "repetition_penalty": 1.0}, max_new_tokens=7, batch_size=16, seed=5
    )
    for r, o in zip(REQS, outs):
        with torch.no_grad():
            ref = ref_halc(vlm, r, p, aux, seed=5, key=r.item_id, max_new_tokens=7, eos=eos)
        check(o, ref, f"penalty/{r.item_id}")
    assert any(o.token_ids != g.token_ids for o, g in zip(outs, plain))


def test_seed_and_batch(vlms, aux):
    """Batch 1 vs 16 → same output; the 30 % skip draws from the request's stream (seeded)."""
    vlm = vlms["llava_sp"]
    p = params(aux, box_threshold=0.3, max_boxes=20, beam_size=2)
    many = generate(vlm, REQS * 2, "halc", p, max_new_tokens=N_NEW, batch_size=16, seed=1)
    one = [generate(vlm, [r], "halc", p, max_new_tokens=N_NEW, batch_size=1, seed=1)[0] for r in REQS]
    n = len(REQS)
    assert [o.token_ids for o in many[:n]] == [o.token_ids for o in one]
    assert [o.token_ids for o in many[:n]] == [o.token_ids for o in many[n:]]
    assert [o.meta["halc_commits"] for o in many[:n]] == [o.meta["halc_commits"] for o in one]
    again = generate(vlm, REQS, "halc", p, max_new_tokens=N_NEW, seed=1)
    assert [o.token_ids for o in again] == [o.token_ids for o in one]
    other = generate(vlm, REQS, "halc", p, max_new_tokens=N_NEW, seed=2)
    assert [o.meta["halc_events"] for o in other] != [o.meta["halc_events"] for o in one]


def test_bad_input(vlms, aux):
    vlm = vlms["demo"]
    out = generate(vlm, REQS[:1], "halc", {"detector": str(aux["paths"]["owlv2"])}, max_new_tokens=2)[0]
    assert out.error and "needs parameter 'scorer'" in out.error
    with pytest.raises(ValueError, match="k_candidates"):
        generate(vlm, REQS[:1], "halc", params(aux, k_candidates=3), max_new_tokens=2)
    with pytest.raises(ValueError, match="premature_layers"):
        generate(vlm, REQS[:1], "halc", params(aux, premature_layers=[]), max_new_tokens=2)
    with pytest.raises(ValueError, match="rollback_context"):
        generate(vlm, REQS[:1], "halc", params(aux, rollback_context="cache"), max_new_tokens=2)
    out = generate(vlm, REQS[:1], "halc", params(aux, beam_size=2), max_new_tokens=2, num_beams=2)[0]
    assert out.error and "beam_size" in out.error
    with pytest.raises(ValueError, match="beam_size"):
        generate(vlm, REQS[:1], "halc", params(aux, beam_size=0), max_new_tokens=2)
    out = generate(vlm, [Request(prompt="hi", item_id="x")], "halc", params(aux), max_new_tokens=2)[0]
    assert out.error and "needs an image" in out.error


def test_drop_unk_sentences():
    from vcdflow.decoding.methods.halc import drop_unk_sentences

    assert drop_unk_sentences("A dog. A <unk> on it. Two cups.") == "A dog. Two cups."
    assert drop_unk_sentences("no sentence marks") == "no sentence marks"
