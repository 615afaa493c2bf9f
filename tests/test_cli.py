"""The ``vcdflow`` command line: methods list, POPE builder, decode and score without Snakemake."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from vcdflow.cli import main
from vcdflow.decoding import METHODS
from vcdflow.io import read_jsonl
from vcdflow.metrics import pope

ROOT = Path(__file__).resolve().parents[1]


def test_methods_lists_every_method_with_defaults(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    for name, m in METHODS.items():
        assert f"{name}: " in out
        assert json.dumps(dict(m.defaults), sort_keys=True) in out


def test_console_script_is_installed():
    exe = Path(sys.executable).with_name("vcdflow")
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "decode" in out.stdout and "score" in out.stdout


def test_build_pope_delegates_to_the_builder(tmp_path, capsys):
    assert (
        main(
            [
                "build-pope",
                str(ROOT / "tests/fixtures/demo/pope_mini_instances.json"),
                str(tmp_path),
                "--n-images",
                "2",
                "--stats",
                "all",
                "--prefix",
                "mini",
            ]
        )
        == 0
    )
    files = sorted(p.name for p in tmp_path.glob("*.json"))
    assert files == ["mini_pope_adversarial.json", "mini_pope_popular.json", "mini_pope_random.json"]
    assert len(read_jsonl(tmp_path / "mini_pope_random.json")) == 12  # 2 images x (3 yes + 3 no)


def test_decode_then_score(tmp_path, capsys):
    from vcdflow.models.demo import build_demo_vlm

    model, processor = build_demo_vlm(seed=0)
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.RandomState(0)
    qs = []
    for i in range(3):
        Image.fromarray((rng.rand(32, 32, 3) * 255).astype("uint8")).save(images / f"im{i}.png")
        for j, (obj, label) in enumerate((("cup", "yes"), ("fork", "no"))):
            qs.append(
                {
                    "question_id": 2 * i + j,
                    "image": f"im{i}.png",
                    "text": f"Is there a {obj} in the image?",
                    "label": label,
                }
            )
    qfile = tmp_path / "mine_pope_random.json"
    qfile.write_text("".join(json.dumps(q) + "\n" for q in qs))
    out = tmp_path / "res.jsonl"
    assert (
        main(
            [
                "decode",
                "--model",
                str(tmp_path / "model"),
                "--questions",
                str(qfile),
                "--images",
                str(images),
                "--method",
                "vcd",
                "--params",
                '{"noise_step": 999}',
                "--max-new-tokens",
                "2",
                "--device",
                "cpu",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    recs = read_jsonl(out)
    assert [r["question_id"] for r in recs] == list(range(6)) and all(r["error"] is None for r in recs)
    assert recs[0]["prompt"] == "Is there a cup in the image? Please answer this question with one word."
    metrics = tmp_path / "m.csv"
    assert (
        main(
            [
                "score",
                "--results",
                str(out),
                "--metrics",
                str(metrics),
                "--model-name",
                "demo",
                "--method-name",
                "vcd",
            ]
        )
        == 0
    )
    df = pd.read_csv(metrics)
    assert list(df.columns) == [
        "benchmark",
        "split",
        "model",
        "protocol",
        "method",
        "mode",
        "seed",
        "metric",
        "value",
    ]
    assert set(df.protocol) == {"unified"} and set(df["mode"]) == {"greedy"}
    assert set(df.split) == {"random"} and set(df.seed) == {0}  # taken from the records
    got = df.set_index("metric").value
    want = pope.score(recs, parser="official")
    for k in ("accuracy", "precision", "recall", "f1", "yes_ratio"):
        if want[k] is not None:
            assert got[k] == want[k], k
    assert (tmp_path / "res.scored.jsonl").exists()


def test_decode_rejects_bad_params_before_loading_the_model(tmp_path, capsys):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    (tmp_path / "q.json").write_text("")
    args = [
        "decode",
        "--model",
        str(tmp_path / "m"),
        "--questions",
        str(tmp_path / "q.json"),
        "--images",
        str(tmp_path),
        "--out",
        str(tmp_path / "r.jsonl"),
        "--method",
        "vcd",
    ]
    for params, message in (
        (
            '{"alpah": 1}',
            "--params: unknown parameter 'alpah' for method 'vcd'; valid parameters: "
            "alpha, beta, draw, noise_step",
        ),
        (
            "{alpha: 1}",
            "--params: not valid JSON (Expecting property name enclosed in double quotes: line 1 "
            "column 2 (char 1)) in '{alpha: 1}'; expected a JSON object such as '{\"alpha\": 1.0}'",
        ),
        ("1", "--params: expected a JSON object, got '1'; e.g. '{\"alpha\": 1.0}'"),
    ):
        assert main(args + ["--params", params]) == 2
        assert capsys.readouterr().err == f"vcdflow decode: error: {message}\n"
    assert main(args[:-1] + ["vcdd"]) == 2
    assert capsys.readouterr().err.startswith("vcdflow decode: error: unknown method 'vcdd'; valid: ")
    assert not (tmp_path / "r.jsonl.partial").exists() and not (tmp_path / "r.jsonl.lock").exists()


def test_decode_protocol_flag(tmp_path, capsys):
    """--protocol picks the run's protocol: a paper's POPE prompt replaces --prompt, and the
    records and metrics carry its name; a misspelt protocol fails before the model loads."""
    from vcdflow.models.demo import build_demo_vlm

    model, processor = build_demo_vlm(seed=0)
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray((np.random.RandomState(1).rand(32, 32, 3) * 255).astype("uint8")).save(images / "im0.png")
    qfile = tmp_path / "mine_pope_random.json"
    qfile.write_text(
        json.dumps(
            {"question_id": 0, "image": "im0.png", "text": "Is there a cup in the image?", "label": "yes"}
        )
        + "\n"
    )
    args = [
        "decode",
        "--model",
        str(tmp_path / "model"),
        "--questions",
        str(qfile),
        "--images",
        str(images),
        "--max-new-tokens",
        "2",
        "--device",
        "cpu",
    ]
    capsys.readouterr()  # drop save_pretrained's progress bar
    assert main(args + ["--protocol", "convsi", "--out", str(tmp_path / "bad.jsonl")]) == 2
    err = capsys.readouterr().err
    from vcdflow.protocols import PROTOCOLS

    assert err == (
        "vcdflow decode: error: --protocol: unknown protocol 'convsi'; valid: unified, paper, "
        + ", ".join(sorted(set(PROTOCOLS) - {"unified"}))
        + "\n"
    ), err
    assert "avisc, carve, cd_rethink, code, convis" in err  # every protocol is listed, sorted
    assert not (tmp_path / "bad.jsonl.partial").exists()
    out = tmp_path / "res.jsonl"
    assert main(args + ["--protocol", "convis", "--out", str(out)]) == 0
    rec = read_jsonl(out)[0]
    # ConVis' POPE suffix (the convis protocol's prompt), not the --prompt default
    assert rec["prompt"] == "Is there a cup in the image? Please answer yes or no.", rec["prompt"]
    side = json.loads((tmp_path / "res.meta.json").read_text())
    assert side["protocol_name"] == "convis"
