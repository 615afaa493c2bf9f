"""Decode shards: per-batch checkpoints, resume, config invalidation, error rows, sharding."""

import json

import pytest
from PIL import Image

from vcdflow.decoding import Output
from vcdflow.io import read_jsonl
from vcdflow.runner import Checkpoint, build_prompt, merge_shards, result_hash, run_shard, shard_slice


def make_items(tmp_path, n=7, bad=()):
    items = []
    for i in range(n):
        path = tmp_path / f"img{i}.png"
        if i in bad:
            path.write_bytes(b"not a png")
        else:
            Image.new("RGB", (8, 8), (i * 30 % 255, 0, 0)).save(path)
        items.append(
            {
                "item_id": f"pope/random/{i + 1}",
                "image": path.name,
                "image_path": str(path),
                "image_id": i,
                "question_id": i + 1,
                "question": f"Is there a cup {i}?",
                "label": "yes" if i % 2 == 0 else "no",
            }
        )
    return items


def make_run(**method):
    m = {
        "label": "greedy",
        "method": "greedy",
        "mode": "greedy",
        "do_sample": False,
        "temperature": 1.0,
        "top_p": 1.0,
        "top_k": None,
        "params": {},
        "prompt_suffix": {},
    }
    m.update(method)
    return {
        "benchmark": {
            "name": "pope",
            "split": "random",
            "prompt": "{question} One word.",
            "max_new_tokens": 3,
        },
        "model": {"name": "m", "path": "unused", "dtype": "float32", "batch_size": 3, "prompt_suffix": {}},
        "method": m,
        "seed": 0,
        "device": "cpu",
        "threads": 1,
        "gpu_lock_dir": "x",
    }


class FakeGenerate:
    """Deterministic stand-in for the engine: answer depends only on the request."""

    def __init__(self, fail_after_calls=None):
        self.calls = []
        self.fail_after_calls = fail_after_calls

    def __call__(self, vlm, requests, **kw):
        if self.fail_after_calls is not None and len(self.calls) >= self.fail_after_calls:
            raise KeyboardInterrupt("simulated kill")
        self.calls.append([r.item_id for r in requests])
        return [
            Output(
                item_id=r.item_id,
                text=("yes" if "0" in r.item_id or "2" in r.item_id else "no"),
                token_ids=[1, 2],
                meta={"n": len(r.prompt)},
            )
            for r in requests
        ]


def strip_timing(records):
    return [{k: v for k, v in r.items() if k != "timing"} for r in records]


def test_prompt_template_and_suffix_precedence():
    run = make_run(prompt_suffix={"pope": " [method]"})
    run["model"]["prompt_suffix"] = {"pope": " [model]"}
    assert build_prompt(run, {"question": "Q?"}) == "Q? One word. [method]"
    run["method"]["prompt_suffix"] = {}
    assert build_prompt(run, {"question": "Q?"}) == "Q? One word. [model]"


def test_shard_slices_partition_the_items():
    items = list(range(10))
    parts = [shard_slice(items, s, 3) for s in range(3)]
    assert sum(parts, []) == items and [len(p) for p in parts] == [3, 3, 4]
    with pytest.raises(ValueError, match="shard 3 out of range for 3 shards"):
        shard_slice(items, 3, 3)


def test_bad_image_becomes_error_row_and_others_survive(tmp_path):
    items = make_items(tmp_path, n=4, bad=(1,))
    out = tmp_path / "r.jsonl"
    run_shard(make_run(), out, items=items, vlm=object(), generate_fn=FakeGenerate(), progress=False)
    recs = read_jsonl(out)
    assert [r["item_id"] for r in recs] == [it["item_id"] for it in items]
    assert recs[1]["error"].startswith(f"image {items[1]['image_path']}: UnidentifiedImageError")
    assert recs[1]["answer"] == ""
    assert all(r["error"] is None for i, r in enumerate(recs) if i != 1)
    assert recs[0]["prompt"] == "Is there a cup 0? One word."
    assert not (tmp_path / "r.jsonl.partial").exists()


def test_missing_contrast_image_becomes_error_row_naming_it(tmp_path):
    """A ConVis reconstruction that is gone is an error row naming that file, not a dead shard."""
    items = make_items(tmp_path, n=3)
    gone = tmp_path / "renders" / "gone.png"
    for it in items:
        it["contrast_images"] = [it["image_path"]]
    items[2]["contrast_images"] = [items[0]["image_path"], str(gone)]
    out = tmp_path / "r.jsonl"
    fake = FakeGenerate()
    run_shard(make_run(), out, items=items, vlm=object(), generate_fn=fake, progress=False)
    recs = read_jsonl(out)
    assert (
        recs[2]["error"] == f"image {gone}: FileNotFoundError: [Errno 2] No such file or directory: '{gone}'"
    )
    assert [r["error"] for r in recs[:2]] == [None, None]
    assert fake.calls == [["pope/random/1", "pope/random/2"]]


def test_pope_dataset_keys_use_the_pope_loader_and_suffixes(tmp_path):
    """pope_<dataset> benchmarks (kind pope): POPE items; a suffix keyed by the dataset wins over 'pope'."""
    from vcdflow.runner import load_items

    (tmp_path / "q.json").write_text(
        json.dumps({"question_id": 7, "image": "a.jpg", "text": "Is there a dog?", "label": "no"}) + "\n"
    )
    bench = {
        "name": "pope_gqa",
        "kind": "pope",
        "split": "random",
        "questions": str(tmp_path / "q.json"),
        "images": str(tmp_path),
    }
    items = load_items(bench, {})
    assert [(i["item_id"], i["question"], i["label"]) for i in items] == [
        ("pope/random/7", "Is there a dog?", "no")
    ]
    run = make_run(prompt_suffix={"pope": " [pope]"})
    run["benchmark"] = dict(bench, prompt="{question}")
    assert build_prompt(run, items[0]) == "Is there a dog? [pope]"
    run["method"]["prompt_suffix"]["pope_gqa"] = " [gqa]"
    assert build_prompt(run, items[0]) == "Is there a dog? [gqa]"


def test_seeded_subsets_keep_file_order_groups_and_are_stable(tmp_path):
    """n_questions (POPE), n_images (MME, per subtask, both questions of an image) and n_items (AMBER)."""
    import random

    from vcdflow.runner import load_items, seeded_subset

    items = [{"item_id": f"q{i}"} for i in range(20)]
    sub = seeded_subset(items, 5, label="pope-subset-random")
    # the documented rule, written out: 5 indices of random.Random(label).sample, in file order
    want = sorted(random.Random("pope-subset-random").sample(range(20), 5))
    assert [it["item_id"] for it in sub] == [f"q{i}" for i in want]
    assert seeded_subset(items, None, label="x") == items and seeded_subset(items, 50, label="x") == items

    mme = [
        {"item_id": f"mme/{s}/{im}/{k}", "subtask": s, "image_id": f"{s}/{im}", "pair_index": k}
        for s in ("existence", "count")
        for im in range(6)
        for k in (0, 1)
    ]
    (tmp_path / "items.jsonl").write_text("".join(json.dumps(it) + "\n" for it in mme))
    got = load_items({"name": "mme", "split": "all", "root": str(tmp_path), "n_images": 2}, {})
    assert len(got) == 8
    for s in ("existence", "count"):
        ids = [it["image_id"] for it in got if it["subtask"] == s]
        assert len(ids) == 4 and ids[0::2] == ids[1::2]  # 2 images, each with both questions, adjacent
    order = [it["item_id"] for it in mme]
    assert [order.index(it["item_id"]) for it in got] == sorted(order.index(it["item_id"]) for it in got)
    assert got == load_items({"name": "mme", "split": "all", "root": str(tmp_path), "n_images": 2}, {})


def test_kill_then_resume_loses_nothing_and_duplicates_nothing(tmp_path):
    items = make_items(tmp_path, n=7)
    ref = tmp_path / "ref.jsonl"
    run_shard(make_run(), ref, items=items, vlm=object(), generate_fn=FakeGenerate(), progress=False)

    out = tmp_path / "r.jsonl"
    killed = FakeGenerate(fail_after_calls=2)  # dies while decoding the third batch
    with pytest.raises(KeyboardInterrupt):
        run_shard(make_run(), out, items=items, vlm=object(), generate_fn=killed, progress=False)
    assert not out.exists()
    partial = (tmp_path / "r.jsonl.partial").read_text().splitlines()
    assert len(partial) == 1 + 6  # header + two batches of 3
    # a torn line from a kill mid-write is dropped and recomputed
    with open(tmp_path / "r.jsonl.partial", "a") as fh:
        fh.write('{"item_id": "pope/random/7", "answ')
    resumed = FakeGenerate()
    run_shard(make_run(), out, items=items, vlm=object(), generate_fn=resumed, progress=False)
    assert resumed.calls == [["pope/random/7"]]  # only the unfinished batch
    assert strip_timing(read_jsonl(out)) == strip_timing(read_jsonl(ref))
    assert out.read_text().count("pope/random/3") == 1


def test_changed_config_discards_the_partial_file(tmp_path):
    items = make_items(tmp_path, n=6)
    out = tmp_path / "r.jsonl"
    with pytest.raises(KeyboardInterrupt):
        run_shard(
            make_run(),
            out,
            items=items,
            vlm=object(),
            generate_fn=FakeGenerate(fail_after_calls=1),
            progress=False,
        )
    changed = make_run(params={"beta": 0.2})
    assert result_hash(changed) != result_hash(make_run())
    again = FakeGenerate()
    run_shard(changed, out, items=items, vlm=object(), generate_fn=again, progress=False)
    assert sum(len(c) for c in again.calls) == 6  # nothing reused from the other config


def test_hash_ignores_execution_only_settings():
    a, b = make_run(), make_run()
    b["device"], b["threads"], b["model"]["batch_size"] = "cuda", 8, 64
    assert result_hash(a) == result_hash(b)
    b["seed"] = 1
    assert result_hash(a) != result_hash(b)


def test_checkpoint_header_mismatch(tmp_path):
    p = tmp_path / "x.partial"
    p.write_text(json.dumps({"config_hash": "old"}) + "\n" + json.dumps({"item_id": "a"}) + "\n")
    assert Checkpoint(p, "new").load() == {}
    assert not p.exists()


def test_merge_shards_concatenates_in_order(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text('{"item_id": "1"}\n{"item_id": "2"}\n')
    b.write_text('{"item_id": "3"}')
    merge_shards([a, b], tmp_path / "m.jsonl")
    assert [r["item_id"] for r in read_jsonl(tmp_path / "m.jsonl")] == ["1", "2", "3"]


def test_an_item_without_image_is_a_text_only_request(tmp_path):
    """image_path None (HallusionBench's no-image questions): decoded without an image; a method
    that needs one fails that item alone, naming the method."""
    from vcdflow.models.demo import build_demo_vlm
    from vcdflow.models.loading import VLM
    import torch

    from vcdflow.runner import decode_batch

    model, processor = build_demo_vlm(seed=0)
    from vcdflow.models.adapters import adapter_for

    vlm = VLM(
        model=model,
        processor=processor,
        family="llava",
        adapter=adapter_for("llava", model, processor),
        device=torch.device("cpu"),
        dtype=torch.float32,
    )
    items = [{"item_id": "t/0", "image_path": None, "question": "Is there a cup?"}]
    run = {
        "benchmark": {"name": "pope", "split": "x", "max_new_tokens": 2, "prompt": "{question}"},
        "model": {},
        "method": {"method": "greedy", "do_sample": False, "params": {}},
        "seed": 0,
    }
    rec = decode_batch(vlm, run, items)[0]
    assert rec["error"] is None and rec["answer"] != "" and rec["meta"]["n_branches"] == 1
    rec = decode_batch(vlm, dict(run, method={"method": "vcd", "do_sample": False, "params": {}}), items)[0]
    assert rec["error"] == "method 'vcd' needs an image (Request.image is None)"


def test_method_item_prompts_fill_request_fields():
    """LQCD on the leading-query POPE: the runner sends the item's neutral question as the prompt
    and its leading question as Request.contrast_prompt (LQCD.item_prompts), each through the
    benchmark's template; other methods are asked the leading question; items without the key
    keep the plain prompt."""
    from vcdflow.runner import decode_batch

    seen = []

    def fake_generate(vlm, requests, **kw):
        from vcdflow.decoding import Output

        seen.extend(requests)
        return [Output(item_id=r.item_id, text="yes", meta={"finish_reason": "eos"}) for r in requests]

    items = [
        {
            "item_id": "a",
            "image_path": None,
            "question": "Is there a cup? I think there is.",
            "neutral_question": "Is there a cup?",
        },
        {"item_id": "b", "image_path": None, "question": "Is there a dog?"},
    ]
    run = {
        "benchmark": {
            "name": "leading_pope",
            "kind": "leading_pope",
            "split": "x",
            "max_new_tokens": 2,
            "prompt": "{question} Answer yes or no.",
        },
        "model": {},
        "method": {"method": "lqcd", "do_sample": False, "params": {}},
        "seed": 0,
    }
    recs = decode_batch(None, run, items, fake_generate)
    assert seen[0].prompt == "Is there a cup? Answer yes or no."
    assert seen[0].contrast_prompt == "Is there a cup? I think there is. Answer yes or no."
    assert recs[0]["prompt"] == "Is there a cup? Answer yes or no."
    assert seen[1].prompt == "Is there a dog? Answer yes or no." and seen[1].contrast_prompt is None
    seen.clear()
    decode_batch(
        None, dict(run, method={"method": "vcd", "do_sample": False, "params": {}}), items, fake_generate
    )
    assert (
        seen[0].prompt == "Is there a cup? I think there is. Answer yes or no."
        and seen[0].contrast_prompt is None
    )


def test_stable_file_digest_is_file_digest_and_follows_a_changed_file(tmp_path, monkeypatch):
    """Weights attached to every result are hashed once per process; a rewritten file is rehashed."""
    import os

    from vcdflow import io as vio

    f = tmp_path / "model.safetensors"
    f.write_bytes(b"a" * 1000)
    calls = []
    real = vio.file_digest
    monkeypatch.setattr(vio, "file_digest", lambda *a, **k: calls.append(a) or real(*a, **k))
    first = real(f)
    assert vio.stable_file_digest(f) == first and vio.stable_file_digest(f) == first
    assert len(calls) == 1
    f.write_bytes(b"b" * 1001)
    os.utime(f, ns=(1, 1))
    assert vio.stable_file_digest(f) == real(f) != first and len(calls) == 2


def test_compile_setting_reaches_generate_only_when_set(tmp_path):
    """The execution setting ``compile`` (the decode step) is passed to ``generate``; unset or
    "off", nothing is passed (engines and stand-ins without the keyword keep working)."""
    seen = []

    def fake(vlm, requests, **kw):
        seen.append(kw.get("compile", "<absent>"))
        return [Output(item_id=r.item_id, text="yes", token_ids=[1]) for r in requests]

    items = make_items(tmp_path, n=2)
    for i, ex in enumerate([None, {"compile": "off"}, {"compile": "on"}]):
        run = make_run()
        if ex is not None:
            run["execution"] = ex
        run_shard(run, tmp_path / f"r{i}.jsonl", items=items, vlm=object(), generate_fn=fake, progress=False)
    assert seen == ["<absent>", "<absent>", "on"]
