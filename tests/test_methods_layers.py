"""Layer-contrast methods — ``dola``, ``deco``, ``revisit`` — and their engine capabilities:

* Early-exit logits at the last position (``vcdflow.decoding.layers.HiddenStates.last`` +
  ``early_exit``) equal W_lm·[N_f](output_hidden_states[l]) of a batch-1 full recompute, at every
  step, with rows retiring, a text-only branch, shared-prefix prefill on and off;
* Prefill hidden states at image positions (``HiddenStates.image``) equal output_hidden_states at
  the image positions, kept per row for the whole decode, under shared prefix and rows retiring;
* Repetition penalty / no-repeat-n-gram (``vcdflow.decoding.processors``) equal transformers'
  processors on the same ids;
* each method equals its plain reference (tests/reference_layers.py) token for token in greedy
  mode on the tiny model of every family and the demo LLaVA; sampling is seeded and
  batch-size-invariant.
"""

from __future__ import annotations

import pytest
import torch

from reference_layers import final_norm, forward_hidden, lm_head, ref_generate
from reference_methods import assert_same_as_reference, build_vlms, image, inputs
from vcdflow.decoding import METHODS, Request, generate
from vcdflow.decoding.engine import decode_rows, greedy_chooser
from vcdflow.decoding.layers import HiddenStates, early_exit, n_layers
from vcdflow.decoding.processors import no_repeat_ngram, repetition_penalty
from vcdflow.decoding.types import Branch

FAMILIES = ["llava", "qwen2_5_vl", "instructblip", "demo"]
N_NEW = 5


@pytest.fixture(scope="module")
def vlms(tmp_path_factory):
    torch.set_num_threads(1)
    return build_vlms(tmp_path_factory.mktemp("layers"))


REQS = [
    Request(image=image(1, 80, 100), prompt="Is there a cup in the image?", item_id="a"),
    Request(image=image(1, 80, 100), prompt="Is there a dog?", item_id="b"),
    Request(
        image=image(3, 120, 70),
        prompt="what is this red dog on the table with a cat?",
        item_id="c",
        system="You are an expert.",
    ),
]


# --- early exits / image-position states --------------------------------------------------------------------------------------
class Recorder(HiddenStates):
    """Records, after every forward that yields next-token logits, each row's early exits and
    its kept image-position states, keyed by (request, branch, step)."""

    def start(self, adapter, seqs, tokens):
        super().start(adapter, seqs, tokens)
        self.early, self.images, self.by_request = {}, {}, {}
        self.phases = set()

    def after_forward(self, phase, rows, logits):
        super().after_forward(phase, rows, logits)
        self.phases.add(phase)
        if phase == "prefix":
            return
        t = 0 if phase in ("prefill", "suffix") else rows.step
        for k, (r, b) in enumerate(zip(rows.request, rows.branch)):
            self.early[(r, b, t)] = {
                (l, nf): early_exit(self.adapter, self.last[l][k : k + 1], nf)[0]
                for l in self.layers
                for nf in (False, True)
            }
            self.images[(r, b, t)] = self.image[k]
            self.by_request[(r, b, t)] = self.image_of(r, b)


def encode_rows(vlm):
    ad = vlm.adapter
    rows = []
    for i, r in enumerate(REQS):
        bs = [Branch(prompt=r.prompt, image=r.image, system=r.system)]
        if i == 0:
            bs.append(Branch(prompt=r.prompt, image=None, system=r.system, name="text"))
        rows.append((bs, [ad.encode(b) for b in bs]))
    return rows


@pytest.mark.parametrize("family", FAMILIES)
def test_early_exit_and_image_states_match_output_hidden_states(vlms, family):
    vlm = vlms[family]
    L = n_layers(vlm.adapter)
    layers = sorted({0, 1, L - 1, L})
    rows = encode_rows(vlm)
    limits = [2, 4, 3]  # rows retire at different steps
    for share in (True, False):
        rec = Recorder(layers=layers, image_layers=layers)
        with torch.inference_mode():
            res = decode_rows(
                vlm.adapter, [e for _, e in rows], greedy_chooser, limits, [], hooks=rec, share_prefix=share
            )
        # InstructBLIP's Q-Former reads each question: no two of these rows share a prefix there
        assert ("prefix" in rec.phases) == (share and family != "instructblip"), rec.phases
        seen = set()
        for (r, b, t), early in rec.early.items():
            branch = rows[r][0][b]
            inp = inputs(vlm, branch.prompt, branch.image, branch.system)
            with torch.inference_mode():
                out = forward_hidden(vlm, inp, res[r][0][:t])
                hs = out.hidden_states
                for l in layers:
                    h = hs[l][0, -1]
                    want_raw = lm_head(vlm)(h).float() if l < L else None
                    want_nf = lm_head(vlm)(final_norm(vlm)(h)).float() if l < L else out.logits[0, -1].float()
                    if l < L:
                        torch.testing.assert_close(early[(l, False)], want_raw, atol=2e-4, rtol=1e-4)
                    torch.testing.assert_close(early[(l, True)], want_nf, atol=2e-4, rtol=1e-4)
                img = (inp["input_ids"][0] == vlm.adapter.image_token_id).nonzero().flatten()
                got = rec.images[(r, b, t)]
                assert got is rec.by_request[(r, b, t)] or torch.equal(got, rec.by_request[(r, b, t)])
                if branch.image is None:
                    assert got is None
                else:
                    # HF's hidden_states[L] is N_f(h_L); the image-position states keep the un-normed h_L
                    got = torch.stack([final_norm(vlm)(g) if l == L else g for l, g in zip(layers, got)])
                    want = torch.stack([hs[l][0, img] for l in layers])
                    assert got.shape == want.shape, (got.shape, want.shape)
                    torch.testing.assert_close(got, want, atol=2e-4, rtol=1e-4)
            seen.add((r, t))
        # every request was seen at every step it decoded
        assert seen == {(r, t) for r, lim in enumerate(limits) for t in range(lim)}, (share, sorted(seen))


# --- logits processors ------------------------------------------------------------------------------------------
def test_processors_equal_transformers():
    from transformers.generation.logits_process import (
        NoRepeatNGramLogitsProcessor,
        RepetitionPenaltyLogitsProcessor,
    )

    g = torch.Generator().manual_seed(0)
    V = 50
    ids = torch.randint(0, V, (3, 17), generator=g)
    ids[1, 5:9] = ids[1, 12:16] = torch.tensor([4, 7, 4, 7])  # repeated n-grams
    ids[2, -3:] = ids[2, 2:5]
    scores = torch.randn(3, V, generator=g) * 3
    scores[0, ids[0, 0]] = -float("inf")  # −inf stays −inf (APC-masked tokens)
    for theta in (1.2, 0.8, 1.0):
        want = RepetitionPenaltyLogitsProcessor(theta)(ids, scores.clone())
        got = repetition_penalty(scores, ids.tolist(), theta)
        assert torch.equal(got, want), theta
    assert not torch.equal(repetition_penalty(scores, ids.tolist(), 1.2), scores)
    for n in (1, 2, 3, 4):
        want = NoRepeatNGramLogitsProcessor(n)(ids, scores.clone())
        got = no_repeat_ngram(scores, ids.tolist(), n)
        assert torch.equal(got, want), n
    assert torch.isinf(no_repeat_ngram(scores, ids.tolist(), 2)).sum() > torch.isinf(scores).sum()


# --- the methods against their references ----------------------------------------------------------
def params_for(vlm, method):
    L = n_layers(vlm.adapter)
    if method == "dola":
        return {"layers": list(range(L))}  # dynamic over every premature layer the model has
    if method == "dola_static":
        return {"premature": 1, "repetition_penalty": 1.0, "relative_top": 0.0}
    if method == "deco":
        return {"layers": list(range(L)), "threshold_top_k": 5, "alpha": 2.0}
    if method == "revisit_all":
        return {"layers": "all", "relative_top": 0.01}
    if method == "revisit_nocache":
        return {"layers": "all", "cache_mb": 0}  # c_k[V] = H·W_lm[V]^T every step
    if method == "dola_ngram":
        return {"layers": "low", "no_repeat_ngram_size": 2, "repetition_penalty": 1.5}
    return None


def engine_name(case):
    return case.split("_")[0]


CASES = [(m, f) for m in ("dola", "dola_static", "deco", "revisit", "revisit_all") for f in FAMILIES] + [
    ("deco_default", "demo"),
    ("dola_ngram", "llava"),
    ("revisit_nocache", "qwen2_5_vl"),
    ("revisit_nocache", "demo"),
]


@pytest.mark.parametrize("case,family", CASES)
def test_greedy_matches_reference(vlms, case, family):
    vlm = vlms[family]
    method = engine_name(case)
    params = params_for(vlm, case)
    free = generate(vlm, REQS[:1], method=method, params=params, max_new_tokens=N_NEW, eos_token_id=[])[0]
    assert free.error is None, free.error
    eos = [free.token_ids[2]]
    outs = generate(
        vlm, REQS, method=method, params=params, max_new_tokens=N_NEW, eos_token_id=eos, batch_size=16
    )
    assert outs[0].meta["finish_reason"] == "eos"
    for i, (r, o) in enumerate(zip(REQS, outs)):
        assert o.error is None, o.error
        ref = ref_generate(vlm, r, method, params, max_new_tokens=N_NEW, eos=eos, index=i)
        assert_same_as_reference(o, ref, eos, f"{case}/{family}/{r.item_id}")
        for k, v in ref.meta.items():
            if o.token_ids == ref.tokens:
                assert o.meta[k] == v, (k, o.meta[k], v)


def test_methods_change_the_output(vlms):
    """The contrasts are not greedy in disguise: on some model each method's tokens differ from greedy."""
    for method, params in (
        ("dola", {"layers": [0, 1]}),
        ("deco", {"layers": [0, 1], "alpha": 2.0}),
        ("revisit", {"layers": "all"}),
    ):
        differs = False
        for fam in FAMILIES:
            vlm = vlms[fam]
            g = generate(vlm, REQS, "greedy", max_new_tokens=N_NEW, eos_token_id=[])
            m = generate(vlm, REQS, method, params, max_new_tokens=N_NEW, eos_token_id=[])
            differs |= any(a.token_ids != b.token_ids for a, b in zip(g, m))
        assert differs, method


def test_dola_premature_layer_is_chosen_per_row(vlms):
    """Batched DoLa equals each request decoded alone (the official code averages the layer
    choice over the batch), and the requests' chosen layers are recorded."""
    vlm = vlms["demo"]
    params = {"layers": [0, 1, 2]}
    reqs = [
        Request(image=image(k, 60 + 10 * k, 90), prompt=p, item_id=f"x{k}")
        for k, p in enumerate(
            [
                "describe the image",
                "is there a cat on the table?",
                "how many dogs are there?",
                "what color is the car?",
                "Is there a cup in the image?",
            ]
        )
    ]
    batched = generate(vlm, reqs, "dola", params, max_new_tokens=N_NEW, eos_token_id=[], batch_size=16)
    alone = [generate(vlm, [r], "dola", params, max_new_tokens=N_NEW, eos_token_id=[])[0] for r in reqs]
    assert [o.token_ids for o in batched] == [o.token_ids for o in alone]
    assert [o.meta["dola_premature"] for o in batched] == [o.meta["dola_premature"] for o in alone]
    assert all(sum(o.meta["dola_premature"].values()) == N_NEW for o in batched)
    # the rows really choose differently (else a batch-averaged choice would pass too)
    assert len({tuple(sorted(o.meta["dola_premature"].items())) for o in batched}) > 1


def test_dola_combine_selects_per_row():
    """combine on two rows whose closest/farthest premature layers are swapped: each row contrasts
    its own farthest layer (a batch-averaged choice would give both rows the same one)."""
    from types import SimpleNamespace

    from vcdflow.decoding.hooks import DecodeHooks
    from vcdflow.decoding.methods.dola import DoLa
    from vcdflow.decoding.types import BranchContext, State

    V, D = 6, 6
    eye = torch.nn.Linear(D, V, bias=False)
    eye.weight.data = torch.eye(V)
    final = torch.tensor([[4.0, 1, 0, 0, 0, 0], [0, 0, 0, 0, 1, 4.0]])
    far = torch.tensor([[0.0, 0, 0, 0, 0, 9], [9.0, 0, 0, 0, 0, 0]])
    adapter = SimpleNamespace(
        decoder_layers=lambda: [None, None],
        lm_head=lambda: eye,
        config=SimpleNamespace(tie_word_embeddings=False),
        text_config=SimpleNamespace(),
    )
    hooks = DecodeHooks()
    hooks.seqs, hooks.tokens = [], []
    hooks.last = {0: torch.stack([final[0], far[1]]), 1: torch.stack([far[0], final[1]])}
    p = DoLa().resolve({"layers": [0, 1], "repetition_penalty": 1.0})
    ctxs = tuple(
        BranchContext(params=p, rng=torch.Generator(), adapter=adapter, do_sample=False) for _ in range(2)
    )
    st = State(params=p, contexts=ctxs, rows=torch.tensor([[0], [1]]), requests=(0, 1), hooks=hooks)
    DoLa().combine(final[:, None, :], 0, st)
    assert ctxs[0].meta["dola_premature"] == {"1": 1} and ctxs[1].meta["dola_premature"] == {"0": 1}


@pytest.mark.parametrize("method", ["dola", "deco", "revisit"])
def test_sampling_seeded_and_batch_invariant(vlms, method):
    vlm = vlms["llava"]
    params = params_for(vlm, method)
    reqs = REQS * 6  # 18 requests (item ids repeat: the same streams)
    kw = dict(do_sample=True, temperature=1.0, top_p=0.9, max_new_tokens=N_NEW, eos_token_id=[])
    a = generate(vlm, reqs, method, params, seed=3, batch_size=16, **kw)
    b = generate(vlm, reqs, method, params, seed=3, batch_size=16, **kw)
    one = generate(vlm, reqs[:3], method, params, seed=3, batch_size=1, **kw)
    assert [o.token_ids for o in a] == [o.token_ids for o in b]
    assert [o.token_ids for o in a[:3]] == [o.token_ids for o in one]
    assert [o.token_ids for o in a[3:6]] == [o.token_ids for o in one]
    other = generate(vlm, reqs[:3], method, params, seed=4, batch_size=1, **kw)
    assert [o.token_ids for o in other] != [o.token_ids for o in one]
    # sampling equals the reference's draw from the same stream
    for i, r in enumerate(REQS):
        ref = ref_generate(
            vlm,
            r,
            method,
            params,
            do_sample=True,
            temperature=1.0,
            top_p=0.9,
            max_new_tokens=N_NEW,
            seed=3,
            index=i,
        )
        assert one[i].token_ids == ref.tokens, (method, r.item_id)


def test_registry_and_bad_params(vlms):
    for name in ("dola", "deco", "revisit"):
        assert name in METHODS
    with pytest.raises(ValueError, match="'layers'"):
        METHODS["dola"].resolve({"layers": "middle"})
    with pytest.raises(ValueError, match="'repetition_penalty'"):
        METHODS["dola"].resolve({"repetition_penalty": 0})
    with pytest.raises(ValueError, match="'threshold_top_p'"):
        METHODS["deco"].resolve({"threshold_top_p": 1.5})
    with pytest.raises(ValueError, match="'layers'"):
        METHODS["revisit"].resolve({"layers": "every"})
    vlm = vlms["llava"]
    with pytest.raises(ValueError, match="'premature'"):
        generate(vlm, REQS[:1], "dola", {"premature": 99}, max_new_tokens=2)
    with pytest.raises(ValueError, match="'layers'"):
        generate(vlm, REQS[:1], "dola", {"layers": [50, 60]}, max_new_tokens=2)
    o = generate(vlm, [Request(prompt="hello there", item_id="t")], "revisit", max_new_tokens=2)[0]
    assert o.error and "needs an image" in o.error
    t = generate(
        vlm, [Request(prompt="hello there", item_id="t")], "dola", {"layers": [0, 1]}, max_new_tokens=2
    )[0]
    assert t.error is None and len(t.token_ids) >= 1  # DoLa is text-only capable


def test_layer_defaults_follow_official_buckets():
    from vcdflow.decoding.layers import bucket
    from vcdflow.decoding.methods.deco import default_layers
    from vcdflow.decoding.methods.revisit import revisit_layers

    assert bucket("low", 32, 0, "layers") == list(range(0, 16, 2))
    assert bucket("high", 32, 0, "layers") == list(range(16, 32, 2))
    assert bucket("low", 28, 0, "layers") == list(range(0, 14, 2))
    assert bucket("high", 28, 0, "layers") == list(range(14, 28, 2))
    assert bucket("low", 48, 2, "layers") == list(range(2, 20, 2))
    assert bucket("high", 48, 2, "layers") == list(range(28, 48, 2))
    assert bucket("low", 2, 1, "layers") == [1]
    assert default_layers(32) == list(range(20, 29))
    assert default_layers(28) == list(range(17, 26))
    assert revisit_layers("all", 32, 0) == list(range(0, 33, 2))
    assert revisit_layers("all", 3, 0) == [0, 2, 3]
    assert revisit_layers("last", 28, 0) == [28]
    assert revisit_layers("low", 32, 0) == list(range(0, 16, 2)) + [32]
