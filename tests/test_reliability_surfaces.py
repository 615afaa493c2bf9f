"""Bad input on the newer surfaces through the real command line (subprocesses): methods with
extra inputs (text_cd's amateur, VTI's directions, HALC's helper folders), contrast images, a
full disk, result files edited by hand, duplicate config keys, the library's keyword checks.

Every failure must be ONE line on stderr naming the culprit, the documented exit status, no
traceback, no result file left for later steps, and nothing already computed lost. One demo
model and 4 POPE questions serve every case; independent failing commands run concurrently
(each is mostly the interpreter's start-up)."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vcdflow.io import read_jsonl

VCDFLOW = str(Path(sys.executable).with_name("vcdflow"))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from vcdflow.models.demo import build_demo_vlm

    root = tmp_path_factory.mktemp("surfaces")
    model, processor = build_demo_vlm(seed=0)
    model.save_pretrained(root / "model")
    processor.save_pretrained(root / "model")
    (root / "images").mkdir()
    rng = np.random.RandomState(0)
    for i in range(2):
        Image.fromarray((rng.rand(32, 32, 3) * 255).astype("uint8")).save(root / "images" / f"im{i}.png")
    qs = [
        {
            "question_id": i,
            "image": f"im{i % 2}.png",
            "text": "Is there a cup in the image?",
            "label": "yes" if i % 2 else "no",
            "contrast_question": "Is there a fork in the image?",
            "contrast_image": f"gone{i}.png",
        }
        for i in range(4)
    ]
    (root / "q_pope_random.json").write_text("".join(json.dumps(q) + "\n" for q in qs))
    args = [
        "decode",
        "--model",
        str(root / "model"),
        "--questions",
        str(root / "q_pope_random.json"),
        "--images",
        str(root / "images"),
        "--device",
        "cpu",
        "--max-new-tokens",
        "2",
        "--batch-size",
        "1",
    ]
    return {"root": root, "args": args}


def _env(extra=None):
    e = {k: v for k, v in os.environ.items() if k != "VCDFLOW_DEBUG"}
    e.update(extra or {})
    return e


def run_all(cases, *, preexec=None):
    """Run the command lines of ``cases`` concurrently; their CompletedProcess-like results."""
    procs = [
        subprocess.Popen(
            [VCDFLOW, *c],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
            preexec_fn=preexec,
        )
        for c in cases
    ]
    out = []
    for p in procs:
        so, se = p.communicate(timeout=300)
        out.append(subprocess.CompletedProcess(p.args, p.returncode, so, se))
    return out


def one_line(res, rc, *needles):
    assert res.returncode == rc, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("vcdflow")]
    assert "Traceback" not in res.stderr and len(lines) == 1, res.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def test_method_inputs_as_the_user_gives_them_and_whole_run_inputs_checked_first(world, tmp_path, capsys):
    """text_cd / VTI / HALC take their inputs from --params (not the workflow's paths); a missing
    or corrupt one, or contrast images all missing, fails before decoding: one line naming it,
    exit 1 (2: a parameter not given), no result file and no checkpoint. In-process through
    ``vcdflow.cli.main`` (the console script's entry; the subprocess cases below cover the
    interpreter boundary)."""
    from vcdflow.cli import main

    root, args = world["root"], world["args"]
    bad_amateur = tmp_path / "amateur_bad"
    shutil.copytree(root / "model", bad_amateur)
    (bad_amateur / "config.json").write_text('{"architectures": ["Llava')
    (tmp_path / "bad.pt").write_bytes(b"not a torch file")
    out = lambda name: ["--out", str(tmp_path / f"{name}.jsonl")]  # noqa: E731
    cases = [
        (args + ["--method", "text_cd"] + out("a"), 2, "'amateur'", "--params"),
        (
            args + ["--method", "text_cd", "--params", json.dumps({"amateur": str(bad_amateur)})] + out("b"),
            1,
            f"{bad_amateur / 'config.json'}: not valid JSON",
        ),
        (
            args
            + ["--method", "text_cd", "--params", json.dumps({"amateur": str(tmp_path / "no")})]
            + out("c"),
            1,
            f"amateur model folder {tmp_path / 'no'} does not exist",
        ),
        (
            args
            + ["--method", "vti", "--params", json.dumps({"directions": str(tmp_path / "bad.pt")})]
            + out("d"),
            1,
            f"VTI directions file {tmp_path / 'bad.pt'}: torch.load cannot read it",
        ),
        (
            args
            + [
                "--method",
                "halc",
                "--params",
                json.dumps(
                    {"detector": str(tmp_path / "det"), "scorer": str(tmp_path), "tagger": str(tmp_path)}
                ),
            ]
            + out("e"),
            1,
            f"HALC detector folder {tmp_path / 'det'} does not exist",
        ),
        (
            args + ["--method", "halc", "--params", json.dumps({"detector": "x"})] + out("f"),
            2,
            "'scorer', 'tagger'",
        ),
        (
            args + ["--method", "cid"] + out("g"),
            1,
            "none of the 4 contrast image files",
            str(root / "images" / "gone0.png"),
        ),
        (
            args + ["--method", "contrastive_search", "--top-k", "8"] + out("h"),
            2,
            "top_k=8 is a sampling setting, unused by method 'contrastive_search'",
        ),
        (
            args + ["--method", "dola", "--params", json.dumps({"layers": [40, 41]})] + out("i"),
            1,
            "method 'dola' does not fit model",
            "none of the layers [40, 41]",
            "nothing was decoded",
        ),
    ]
    for argv, rc, *needles in cases:
        capsys.readouterr()
        assert main(argv) == rc, argv
        one_line(subprocess.CompletedProcess(argv, rc, "", capsys.readouterr().err), rc, *needles)
    assert not list(tmp_path.glob("*.jsonl*"))  # no result, no checkpoint: nothing for a later step
    # the user's amateur (the model itself: same tokenizer) runs and is hashed into the provenance
    assert (
        main(
            args
            + ["--method", "text_cd", "--params", json.dumps({"amateur": str(root / "model")})]
            + out("ok")
        )
        == 0
    )
    recs = read_jsonl(tmp_path / "ok.jsonl")
    assert len(recs) == 4 and all(r["error"] is None and r["meta"]["method"] == "text_cd" for r in recs)
    side = json.loads((tmp_path / "ok.meta.json").read_text())
    assert side["run"]["method"]["params"]["amateur"] == str(root / "model") and side["run"]["amateur_digest"]


def _fsize_limit(nbytes):
    def pre():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))

    return pre


def test_full_disk_one_line_naming_the_file_and_the_rerun_resumes(world, tmp_path, capsys):
    """A file-size limit stands in for a full disk (root ignores a read-only folder's mode): the
    checkpoint write fails after some records; one line names the checkpoint and says nothing is
    lost; the rerun resumes and equals an uninterrupted decode."""
    args = world["args"] + ["--out", str(tmp_path / "r.jsonl")]
    (res,) = run_all([args], preexec=_fsize_limit(1500))
    partial = tmp_path / "r.jsonl.partial"
    one_line(res, 1, f"cannot write {partial}", "nothing is lost", "rerun")
    kept = partial.read_text().count("\n") - 1
    assert 1 <= kept < 4 and not (tmp_path / "r.jsonl").exists()
    from vcdflow.cli import main

    assert main(args) == 0  # the rerun (in-process) resumes
    assert f"{kept} of 4 items already decoded" in capsys.readouterr().err
    ref = tmp_path / "ref.jsonl"
    assert main([*world["args"], "--out", str(ref)]) == 0  # in-process: no second interpreter start
    strip = lambda rs: [{k: v for k, v in r.items() if k != "timing"} for r in rs]  # noqa: E731
    assert strip(read_jsonl(tmp_path / "r.jsonl")) == strip(read_jsonl(ref))


def test_generate_refuses_keywords_a_method_ignores_and_checks_params_before_the_first_forward(
    world, monkeypatch
):
    """contrastive search's k is its parameter, not the sampling top_k; do_sample=True is not
    silently dropped by a greedy-only method; a DoLa layer list with no layer of the model fails
    before any forward pass (counted on the model's forward)."""
    from vcdflow.decoding import Request, generate
    from vcdflow.models import load_vlm

    vlm = load_vlm(world["root"] / "model")
    req = [
        Request(
            image=Image.open(world["root"] / "images" / "im0.png").convert("RGB"),
            prompt="Is there a cup?",
            item_id="q0",
        )
    ]
    with pytest.raises(
        ValueError,
        match=r"top_k=8 is a sampling setting, unused by method 'contrastive_search' in "
        r"greedy mode .*params=\{'top_k': 8\}",
    ):
        generate(vlm, req, method="contrastive_search", top_k=8, max_new_tokens=2)
    with pytest.raises(
        ValueError, match="method 'contrastive_search' is greedy only: do_sample=True would be ignored"
    ):
        generate(vlm, req, method="contrastive_search", do_sample=True, max_new_tokens=2)
    with pytest.raises(ValueError, match="temperature=0.5 is a sampling setting, unused by method 'vcd'"):
        generate(vlm, req, method="vcd", temperature=0.5, max_new_tokens=2)
    calls = []
    monkeypatch.setattr(
        type(vlm.model), "forward", lambda *a, **k: calls.append(1) or pytest.fail("forward ran")
    )
    with pytest.raises(
        ValueError, match=r"parameter 'layers': none of the layers \[40, 41\] is below the model's"
    ):
        generate(vlm, req, method="dola", params={"layers": [40, 41]}, max_new_tokens=2)
    assert not calls
    # the workflow's greedy runs record warpers they do not use: the runner does not pass them on
    from vcdflow.runner import decode_batch

    seen = {}

    def spy(vlm_, reqs, **kw):
        seen.update(kw)
        return generate(vlm_, reqs, **{**kw, "max_new_tokens": 1})

    monkeypatch.undo()
    run = {
        "benchmark": {"name": "pope", "max_new_tokens": 1},
        "model": {},
        "seed": 0,
        "method": {
            "label": "cs",
            "method": "contrastive_search",
            "do_sample": False,
            "temperature": 0.7,
            "top_p": 0.9,
            "top_k": 8,
            "params": {},
        },
    }
    item = {
        "item_id": "pope/random/0",
        "image_path": str(world["root"] / "images" / "im0.png"),
        "question": "Cup?",
    }
    (rec,) = decode_batch(vlm, run, [item], generate_fn=spy)
    assert rec["error"] is None and (seen["temperature"], seen["top_p"], seen["top_k"]) == (1.0, 1.0, None)


def test_score_validates_results_and_a_duplicate_config_key_is_named(world, tmp_path):
    """`vcdflow score` refuses an item twice and a label outside POPE's yes/no (one line naming the
    file, line and item; no metrics written); a method label written twice in a workflow config
    fails naming the file and both lines (Snakemake dry run)."""
    recs = [
        {
            "item_id": f"pope/random/{i}",
            "answer": "yes",
            "label": "yes" if i % 2 else "no",
            "error": None,
            "seed": 0,
        }
        for i in range(4)
    ]
    dup = tmp_path / "dup.jsonl"
    dup.write_text("".join(json.dumps(r) + "\n" for r in recs + [recs[1]]))
    maybe = tmp_path / "maybe.jsonl"
    maybe.write_text(
        "".join(json.dumps({**r, "label": "maybe"} if i == 2 else r) + "\n" for i, r in enumerate(recs))
    )
    cfg = tmp_path / "config.yaml"
    cfg.write_text(
        "world: demo\nmethods:\n  vcd: {method: vcd}\n  greedy: {method: greedy}\n"
        "  vcd: {method: vcd, params: {alpha: 2.0}}\n"
    )
    procs = run_all(
        [
            ["score", "--results", str(dup), "--metrics", str(tmp_path / "m1.csv")],
            ["score", "--results", str(maybe), "--metrics", str(tmp_path / "m2.csv")],
        ]
    )
    one_line(procs[0], 1, f"{dup}: line 5: item 'pope/random/1' appears twice (also line 2)")
    one_line(
        procs[1], 1, f"{maybe}: line 3: item 'pope/random/2' has label 'maybe', expected one of 'yes', 'no'"
    )
    assert not list(tmp_path.glob("m*.csv"))
    root = Path(__file__).resolve().parents[1]
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "-n",
            "--snakefile",
            str(root / "Snakefile"),
            "--configfile",
            str(cfg),
            "--directory",
            str(tmp_path / "work"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=_env(),
    )
    assert res.returncode != 0
    assert (
        f"{cfg}: line 5: key 'vcd' is written twice in one mapping (also line 3)" in res.stdout + res.stderr
    )
    assert "Traceback" not in res.stdout + res.stderr


def test_lmms_eval_model_imports_without_lmms_eval_and_names_a_bad_argument():
    """The lmms-eval model module imports without lmms-eval (its argument parsing is usable) and
    names a bad argument (HALC's helper download: tests/test_workflow_halc.py's missing-BLIP test)."""
    from vcdflow import lmms_eval_model as lm

    assert lm.parse_overrides(num_beams="3", top_k="None", temperature="0.5") == {
        "do_sample": None,
        "temperature": 0.5,
        "top_p": None,
        "top_k": None,
        "num_beams": 3,
    }
    with pytest.raises(ValueError, match=r"^vcdflow model_args: num_beams must be an integer, got 'three'$"):
        lm.parse_overrides(num_beams="three")
    with pytest.raises(ValueError, match=r"do_sample must be true or false, got 'maybe'"):
        lm.parse_overrides(do_sample="maybe")
    if lm._MISSING is not None:  # without the extra: the class says what to install
        with pytest.raises(ImportError, match=r"needs lmms-eval 0\.7\.x"):
            lm.VcdflowLMM("model")
