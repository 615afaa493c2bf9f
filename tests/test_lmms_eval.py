"""``lmms-eval --model vcdflow``: the lmms-eval CLI runs a local task (data files this test writes)
with the demo-architecture model for two methods; its numbers equal vcdflow's own MMVP scorer on
the same items, and its answers equal vcdflow's ``generate`` run directly.

lmms-eval 0.7.x declares ``torchvision`` as a hard dependency, and PyPI's torchvision does not
import beside the CPU torch 2.13 wheel this project pins (``operator torchvision::nms does not
exist``); installing ``.[lmms]`` into the project venv therefore breaks transformers' image
processors. So when ``lmms_eval`` is not importable here, :func:`test_lmms_eval_in_overlay_venv`
builds (once, ~1 min, needs PyPI) an **overlay venv** ``<sys.prefix>/lmms-overlay``: a venv whose
``.pth`` adds this interpreter's site-packages (torch, transformers, vcdflow's deps), plus
``lmms-eval==0.7.3 --no-deps`` and the few modules its CLI imports (:data:`OVERLAY_PINS`; no
torchvision: the code paths used here never import it) and vcdflow itself (``--no-deps -e``, for
the ``lmms_eval.models`` entry point), then runs this file inside it and requires every test
there to pass. By hand::

    python -m venv .venv/lmms-overlay
    echo "import site; site.addsitedir('$PWD/.venv/lib/python3.11/site-packages')" \
        > .venv/lmms-overlay/lib/python3.11/site-packages/vcdflow_base.pth
    .venv/lmms-overlay/bin/pip install --no-deps lmms-eval==0.7.3
    .venv/lmms-overlay/bin/pip install loguru==0.7.3 sacrebleu==2.6.0 evaluate==0.4.6 pytz pytablewriter==1.2.1 'filelock<4'
    .venv/lmms-overlay/bin/pip install --no-deps -e .
    .venv/lmms-overlay/bin/lmms-eval --model vcdflow --model_args pretrained=DIR,method=vcd ... --tasks ...
"""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vcdflow.decoding import Request, generate  # noqa: E402
from vcdflow.metrics import mmvp  # noqa: E402
from vcdflow.models import load_vlm  # noqa: E402

try:
    import lmms_eval  # noqa: F401

    HAVE_LMMS = True
except ImportError:
    HAVE_LMMS = False
needs_lmms = pytest.mark.skipif(
    not HAVE_LMMS,
    reason="lmms-eval not importable here: "
    "test_lmms_eval_in_overlay_venv runs these tests in an overlay venv",
)

REPO = Path(__file__).resolve().parents[1]
OVERLAY = Path(os.environ.get("VCDFLOW_LMMS_OVERLAY") or Path(sys.prefix) / "lmms-overlay")
#: what the overlay installs besides lmms-eval (--no-deps): the modules lmms-eval 0.7.3's CLI and
#: evaluator import on this path (found by running it), at the versions this test was run with
OVERLAY_PINS = (
    "loguru==0.7.3",
    "sacrebleu==2.6.0",
    "evaluate==0.4.6",
    "pytz",
    "pytablewriter==1.2.1",
    "filelock<4",
)  # lmms-eval 0.7.3 imports filelock._api, which filelock 4 removed
LMMS_EVAL_PIN = "lmms-eval==0.7.3"

# The untrained demo model (seed 6) answers e.g. "assistant fork" or "apple apple" (letter A by
# lmms-eval's first-character fallback) on some items and nothing parseable on others, differently
# for greedy and vcd; the answers below make each method get some questions and one pair right.
ROWS = [
    (i + 1, f"Is the {obj} {a} or {b}?", f"(a) {a.capitalize()} (b) {b.capitalize()}", ans)
    for i, (obj, a, b, ans) in enumerate(
        [
            ("door", "open", "closed", "(a)"),
            ("door", "open", "closed", "(a)"),
            ("cup", "full", "empty", "(a)"),
            ("cup", "full", "empty", "(a)"),
            ("dog", "left", "right", "(b)"),
            ("dog", "left", "right", "(a)"),
            ("car", "red", "blue", "(a)"),
            ("car", "red", "blue", "(b)"),
        ]
    )
]


TASK_YAML = """task: vcdflow_local_mmvp
dataset_path: json
dataset_kwargs:
  data_files:
    test: {docs}
test_split: test
output_type: generate_until
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text
doc_to_target: !function utils.doc_to_target
process_results: !function utils.process_results
metric_list:
  - metric: mmvp_accuracy
    aggregation: !function utils.aggregate_accuracy
    higher_is_better: true
  - metric: mmvp_pair_accuracy
    aggregation: !function utils.aggregate_pairs
    higher_is_better: true
lmms_eval_specific_kwargs:
  default:
    pre_prompt: ""
    post_prompt: "\\nAnswer with the option's letter from the given choices directly."
generation_kwargs:
  max_new_tokens: 6
  temperature: 0
  do_sample: false
  until: ["ASSISTANT:"]
metadata:
  version: 0.0
"""

# lmms-eval's own MMVP task functions (lmms_eval/tasks/mmvp/utils.py); only the image comes from a path
TASK_UTILS = """from PIL import Image
from lmms_eval.tasks.mmvp.utils import (mmvp_aggregate_pair_results as aggregate_pairs,
    mmvp_aggregate_results as aggregate_accuracy, mmvp_doc_to_target as doc_to_target,
    mmvp_doc_to_text as doc_to_text, mmvp_process_results as process_results)


def doc_to_visual(doc):
    with Image.open(doc["image_path"]) as im:
        return [im.convert("RGB")]
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from vcdflow.models.demo import build_demo_vlm

    root = tmp_path_factory.mktemp("lmms")
    model, processor = build_demo_vlm(seed=6)
    model.save_pretrained(root / "model")
    processor.save_pretrained(root / "model")
    rel = root / "mmvp"
    (rel / "MMVP Images").mkdir(parents=True)
    rng = np.random.RandomState(0)
    docs = []
    with open(rel / "Questions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Index", "Question", "Options", "Correct Answer"])
        for r in ROWS:
            w.writerow(r)
            p = rel / "MMVP Images" / f"{r[0]}.jpg"
            Image.fromarray((rng.rand(32, 32, 3) * 255).astype("uint8")).save(p)
            docs.append(
                {
                    "Index": r[0],
                    "Question": r[1],
                    "Options": r[2],
                    "Correct Answer": r[3],
                    "image_path": str(p),
                }
            )
    tasks = root / "tasks" / "vcdflow_local_mmvp"
    tasks.mkdir(parents=True)
    (tasks / "docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (tasks / "vcdflow_local_mmvp.yaml").write_text(TASK_YAML.format(docs=tasks / "docs.jsonl"))
    (tasks / "utils.py").write_text(TASK_UTILS)
    return root, docs


METHODS = {"greedy": {}, "vcd": {"noise_step": 999, "alpha": 1.0}}


@pytest.fixture(scope="module")
def cli_runs(setup):
    """One ``lmms-eval --config`` call runs both methods (lmms-eval imports once)."""
    root, _ = setup
    runs = []
    for method, params in METHODS.items():
        out = root / "out" / method
        runs.append(
            {
                "model": "vcdflow",
                "tasks": "vcdflow_local_mmvp",
                "include_path": str(root / "tasks"),
                "output_path": str(out),
                "model_args": (
                    f"pretrained={root / 'model'},method={method},params={json.dumps(params)},"
                    f"protocol=unified,batch_size=3,seed=0,device=cpu,records={out / 'records.jsonl'}"
                ),
            }
        )
    (root / "runs.yaml").write_text(json.dumps(runs))  # JSON is YAML
    exe = Path(sys.executable).with_name("lmms-eval")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "lmms_eval"]
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HOME": str(root / "hf"),
        "TOKENIZERS_PARALLELISM": "false",
    }
    proc = subprocess.run(
        cmd + ["--config", str(root / "runs.yaml")], capture_output=True, text=True, timeout=300, env=env
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    results = {}
    for method in METHODS:
        out = root / "out" / method
        found = sorted(out.rglob("*_results.json"))
        assert found, f"no results json under {out}: {proc.stderr[-2000:]}"
        results[method] = (
            json.loads(found[-1].read_text())["results"]["vcdflow_local_mmvp"],
            [json.loads(x) for x in (out / "records.jsonl").read_text().splitlines()],
        )
    return results


@needs_lmms
@pytest.mark.parametrize("method", list(METHODS))
def test_lmms_eval_cli_equals_vcdflow_scorer_and_generate(setup, cli_runs, method):
    root, docs = setup
    params = METHODS[method]
    res, recs = cli_runs[method]
    assert len(recs) == len(docs) and all(r["error"] is None and r["seed"] == 0 for r in recs)
    assert {r["meta"]["method"] for r in recs} == {method} and all(
        r["meta"]["params"] == params for r in recs
    )
    # vcdflow's own scorer on the same items (doc_id i is row i of Questions.csv)
    items = mmvp.load_items(root / "mmvp", fixes=None, prefix="vcdflow_local_mmvp/test/")
    by_doc = {str(i): it["item_id"] for i, it in enumerate(items)}
    mine = mmvp.score(
        [{"item_id": by_doc[str(r["question_id"])], "answer": r["answer"], "error": None} for r in recs],
        items,
    )
    assert res["mmvp_accuracy,none"] == pytest.approx(mine["accuracy"] / 100)
    assert res["mmvp_pair_accuracy,none"] == pytest.approx(mine["pair_accuracy"] / 100)
    # not vacuous: some answers right, and the two methods answer differently
    assert 0 < sum(cli_runs[m][0]["mmvp_accuracy,none"] for m in METHODS)
    assert [r["answer"] for r in cli_runs["greedy"][1]] != [r["answer"] for r in cli_runs["vcd"][1]]
    # the answers are vcdflow's generate on the same prompts, seed and item ids (batching does not matter)
    vlm = load_vlm(root / "model")
    reqs = [
        Request(image=Image.open(d["image_path"]).convert("RGB"), prompt=r["prompt"], item_id=r["item_id"])
        for d, r in zip(docs, sorted(recs, key=lambda r: int(r["question_id"])))
    ]
    assert reqs[0].prompt == (
        "Is the door open or closed?\nA. Open\nB. Closed\n"
        "Answer with the option's letter from the given choices directly."
    )
    outs = generate(vlm, reqs, method=method, params=params, max_new_tokens=6, seed=0, batch_size=8)
    assert [o.text.split("ASSISTANT:")[0] for o in outs] == [
        r["answer"] for r in sorted(recs, key=lambda r: int(r["question_id"]))
    ]


@needs_lmms
def test_loglikelihood_is_refused_naming_the_method(setup):
    from vcdflow.lmms_eval_model import VcdflowLMM

    root, _ = setup
    lm = VcdflowLMM.create_from_arg_string(
        f"pretrained={root / 'model'},method=vcd,batch_size=2", {"batch_size": 1}
    )
    assert lm.batch_size == 2  # model_args win over the CLI's --batch_size
    with pytest.raises(NotImplementedError, match="method 'vcd'"):
        lm.loglikelihood([])
    with pytest.raises(ValueError, match="unknown method 'vcdd'"):
        VcdflowLMM(pretrained=str(root / "model"), method="vcdd")
    # a paper protocol resolves through vcdflow.protocols for the model's family and the named benchmark kind
    from vcdflow.protocols import get_protocol

    lm = VcdflowLMM(
        pretrained=str(root / "model"),
        method="vcd",
        protocol="vcd",
        benchmark="pope",
        params='{"alpha": 0.5}',
    )
    want = get_protocol("vcd").resolve(method="vcd", family=lm.vlm.family, benchmark="pope", mode=None)
    assert lm.protocol_resolved and lm.overrides["do_sample"] == want.do_sample and lm.system == want.system
    assert lm.params == {**dict(want.params), "alpha": 0.5}  # params given in model_args win
    with pytest.raises(ValueError, match="needs benchmark="):
        VcdflowLMM(pretrained=str(root / "model"), method="vcd", protocol="vcd")


@needs_lmms
def test_num_beams_from_the_task_or_model_args_is_the_engine_beam_search(setup):
    from lmms_eval.api.instance import Instance

    from vcdflow.lmms_eval_model import VcdflowLMM

    root, docs = setup
    images = [Image.open(d["image_path"]).convert("RGB") for d in docs]
    prompts = [f"{d['Question']} {d['Options']}" for d in docs]

    def ask(lm, gen_kwargs):
        lm.task_dict = {"t": {"test": [{"image": im} for im in images]}}
        return lm.generate_until(
            [
                Instance(
                    "generate_until",
                    (p, gen_kwargs, lambda doc: [doc["image"]], i, "t", "test"),
                    i,
                    {"task": "t", "doc_id": i, "repeats": 1},
                )
                for i, p in enumerate(prompts)
            ]
        )

    vlm = load_vlm(root / "model")
    reqs = [
        Request(image=im, prompt=p, item_id=f"t/test/{i}") for i, (im, p) in enumerate(zip(images, prompts))
    ]
    want = {
        k: [
            o.text
            for o in generate(
                vlm,
                reqs,
                method="vcd",
                params=METHODS["vcd"],
                max_new_tokens=6,
                seed=0,
                num_beams=k,
                batch_size=8,
            )
        ]
        for k in (1, 3)
    }
    assert want[1] != want[3]  # the beams change some answer: the checks below can fail
    lm = VcdflowLMM(
        pretrained=str(root / "model"), method="vcd", params=json.dumps(METHODS["vcd"]), batch_size=8
    )
    assert ask(lm, {"max_new_tokens": 6, "num_beams": 3, "until": []}) == want[3]
    assert ask(lm, {"max_new_tokens": 6, "until": []}) == want[1]
    lm = VcdflowLMM(
        pretrained=str(root / "model"),
        method="vcd",
        params=json.dumps(METHODS["vcd"]),
        num_beams="3",
        batch_size=8,
    )
    assert ask(lm, {"max_new_tokens": 6, "num_beams": 1, "until": []}) == want[3]  # model_args win
    with pytest.raises(ValueError, match="num_beams=3 with do_sample=True"):
        ask(lm, {"max_new_tokens": 6, "do_sample": True, "until": []})


def _overlay_python() -> Path:
    """Build (or reuse) the overlay venv; its python. Raises CalledProcessError on a pip failure."""
    py = OVERLAY / "bin" / "python"
    stamp = OVERLAY / ".vcdflow-overlay"
    want = json.dumps({"base": sys.prefix, "repo": str(REPO), "pins": [LMMS_EVAL_PIN, *OVERLAY_PINS]})
    if py.exists() and stamp.exists() and stamp.read_text() == want:
        return py
    import site
    import venv

    venv.EnvBuilder(with_pip=True, clear=True).create(OVERLAY)
    site_dir = subprocess.check_output(
        [str(py), "-c", "import site; print(site.getsitepackages()[0])"], text=True
    ).strip()
    base = [p for p in site.getsitepackages() if Path(p).is_dir()]
    Path(site_dir, "vcdflow_base.pth").write_text(
        "".join(f"import site; site.addsitedir({p!r})\n" for p in base)
    )
    pip = [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run(pip + ["--no-deps", LMMS_EVAL_PIN], check=True, timeout=300)
    subprocess.run(pip + list(OVERLAY_PINS), check=True, timeout=300)
    subprocess.run(pip + ["--no-deps", "-e", str(REPO)], check=True, timeout=300)
    stamp.write_text(want)
    return py


@pytest.mark.skipif(HAVE_LMMS, reason="lmms-eval importable here: the tests above run directly")
@pytest.mark.skipif(os.environ.get("VCDFLOW_LMMS_INNER") == "1", reason="already inside the overlay")
def test_lmms_eval_in_overlay_venv():
    """This file's lmms-eval tests, run in the overlay venv (see the module docstring)."""
    try:
        py = _overlay_python()
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
        pytest.skip(f"could not build the lmms-eval overlay venv {OVERLAY} (needs PyPI): {exc}")
    check = subprocess.run(
        [
            str(py),
            "-c",
            "import lmms_eval, torch; from importlib.metadata import entry_points; "
            "print(torch.__version__, [e.value for e in entry_points(group='lmms_eval.models') "
            "if e.name == 'vcdflow'])",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert check.returncode == 0 and "vcdflow.lmms_eval_model:manifest" in check.stdout, check.stderr[-2000:]
    env = {**os.environ, "VCDFLOW_LMMS_INNER": "1"}
    proc = subprocess.run(
        [str(py), "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=800,
        env=env,
    )
    tail = proc.stdout[-4000:] + proc.stderr[-2000:]
    assert proc.returncode == 0, tail
    n = len(METHODS) + 2  # the CLI test per method + the loglikelihood and num_beams tests
    assert f" {n} passed" in " " + proc.stdout.strip().splitlines()[-1], tail  # none of them skipped
