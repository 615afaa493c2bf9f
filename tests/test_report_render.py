"""Render the report from a fixture and check its numbers against independent computations.

The fixture (tests/fixtures/report, made by make_fixture.py) is a small results tree in the
formats of docs/design.md. Every expected number here is recomputed from those files with
plain Python (csv/json/statistics/random), not with vcdflow.report.
"""

from __future__ import annotations

import csv
import json
import math
import random
import re
import shutil
import statistics
from pathlib import Path

import pytest

from vcdflow.report import build_report
from vcdflow.report.provenance import collect_provenance
from vcdflow.report.render import highlight

FIX = Path(__file__).parent / "fixtures" / "report"
PAPER = Path(__file__).parents[1] / "resources" / "paper_results.csv"
MODEL = "llava-1.5-7b"
RUNS = json.loads((FIX / "runs.json").read_text())
CONFIG = {
    "benchmarks": {"pope": {}, "chair": {}, "mme": {}, "amber": {}},
    "models": {MODEL: {}, "qwen-vl": {}},
    "report": {"title": "fixture report", "n_examples": 3},
}


def file_maps(root: Path = FIX):
    res, sco = {}, {}
    for p in sorted((root / "results").glob("*/*/*/*/seed*.jsonl")):
        if p.name.endswith(".scored.jsonl"):
            continue
        bench, split, model, label = p.parts[-5:-1]
        key = (bench, split, model, label, int(p.name[len("seed") : -len(".jsonl")]))
        res[key] = p
        sco[key] = p.with_name(p.name.replace(".jsonl", ".scored.jsonl"))
    return res, sco


def metric_values(path: Path = FIX / "metrics.csv") -> dict[tuple, dict[int, float]]:
    out: dict[tuple, dict[int, float]] = {}
    with open(path, newline="") as fh:
        for r in csv.DictReader(fh):
            out.setdefault((r["benchmark"], r["split"], r["model"], r["method"], r["metric"]), {})[
                int(r["seed"])
            ] = float(r["value"])
    return out


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def cell(html: str, key: str) -> dict:
    """The visible numbers of one table cell (data-cell attribute = bench/split/model/label/metric)."""
    m = re.search(r'<td class="cell" data-cell="' + re.escape(key) + r'"[^>]*>(.*?)</td>', html, re.S)
    assert m, f"cell {key} not in the report"
    body = m.group(1)
    out = {}
    for cls in ("mean", "stdv", "ci-lo", "ci-hi", "dv", "pv", "refused", "why"):
        mm = re.search(r'<span class="' + cls + r'[^"]*"[^>]*>([^<]*)</span>', body)
        if mm:
            out[cls] = mm.group(1).strip()
    out["body"] = body
    return out


def f2(x: float) -> str:
    return f"{x:.2f}"


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> str:
    res, sco = file_maps()
    out = tmp_path_factory.mktemp("rep") / "reports" / "index.html"
    path = build_report(
        FIX / "metrics.csv",
        out,
        result_files=res,
        scored_files=sco,
        runs=RUNS,
        paper_results=PAPER,
        config=CONFIG,
        image_root=FIX / "images",
        extra_images={("vcd", "chair-7"): [FIX / "images" / "img_1.png", FIX / "images" / "img_2.png"]},
    )
    assert path == out
    assert [p.name for p in out.parent.iterdir()] == ["index.html"]  # atomic: no temp file left
    return out.read_text(encoding="utf-8")


# ----------------------------------------------------------------------------- numbers


def test_means_stds_and_deltas_match_metrics_csv(report):
    vals = metric_values()
    checked = 0
    for bench, split, metrics in (
        ("pope", "random", ("accuracy", "yes_ratio", "f1")),
        ("chair", "all", ("chair_s", "chair_i", "recall")),
        ("mme", "all", ("hallucination", "perception")),
    ):
        for label in RUNS:
            for metric in metrics:
                seeds = vals.get((bench, split, MODEL, label, metric))
                if seeds is None:
                    continue
                c = cell(report, f"{bench}/{split}/{MODEL}/{label}/{metric}")
                mean = statistics.fmean(seeds.values())
                assert c["mean"] == f2(mean), (bench, label, metric)
                if len(seeds) > 1:
                    assert c["stdv"] == f2(statistics.stdev(seeds.values()))
                else:
                    assert "stdv" not in c
                base = "greedy" if RUNS[label]["mode"] == "greedy" else "sample"
                if label != base and (bench, split, MODEL, base, metric) in vals:
                    delta = mean - statistics.fmean(vals[(bench, split, MODEL, base, metric)].values())
                    assert c["dv"] == f"{delta:+.2f}"
                checked += 1
    assert checked >= 25


def test_mcnemar_p_on_known_case(report):
    """vcd differs from greedy on exactly 10 POPE items, all right for vcd: p = 2·0.5^10."""
    d = FIX / "results" / "pope" / "random" / MODEL
    g = {r["item_id"]: r["correct"] for r in read_jsonl(d / "greedy" / "seed0.scored.jsonl")}
    v = {r["item_id"]: r["correct"] for r in read_jsonl(d / "vcd" / "seed0.scored.jsonl")}
    only_v = sum(1 for i in g if v[i] and not g[i])
    only_g = sum(1 for i in g if g[i] and not v[i])
    assert (only_v, only_g) == (10, 0)
    p = 2 * 0.5**10
    c = cell(report, f"pope/random/{MODEL}/vcd/accuracy")
    assert c["pv"] == f"{p:.3g}" == "0.00195"
    assert "only vcd right 10, only greedy right 0" in c["body"]


def _bootstrap(columns: list[list[float]], n_boot: int = 2000, seed: int = 99) -> tuple[float, float]:
    """Independent percentile bootstrap: resample item indices, mean per seed column, average."""
    r = random.Random(seed)
    n = len(columns[0])
    reps = []
    for _ in range(n_boot):
        idx = [r.randrange(n) for _ in range(n)]
        reps.append(statistics.fmean(sum(col[i] for i in idx) / n for col in columns))
    reps.sort()
    return 100 * reps[int(0.025 * n_boot)], 100 * reps[int(0.975 * n_boot) - 1]


def test_item_bootstrap_ci_single_seed(report):
    d = FIX / "results" / "pope" / "random" / MODEL / "greedy"
    correct = [r["correct"] for r in read_jsonl(d / "seed0.scored.jsonl")]
    lo, hi = _bootstrap([correct])
    c = cell(report, f"pope/random/{MODEL}/greedy/accuracy")
    # Two independent Monte Carlo bootstraps: agree to within ~a lattice step (100/300).
    assert float(c["ci-lo"]) == pytest.approx(lo, abs=0.7)
    assert float(c["ci-hi"]) == pytest.approx(hi, abs=0.7)
    p, n = statistics.fmean(correct), len(correct)
    half = 196 * math.sqrt(p * (1 - p) / n)
    assert float(c["ci-lo"]) == pytest.approx(100 * p - half, abs=1.0)
    assert float(c["ci-hi"]) == pytest.approx(100 * p + half, abs=1.0)


def test_item_bootstrap_ci_three_seeds_resamples_items_jointly(report):
    d = FIX / "results" / "pope" / "random" / MODEL / "sample"
    cols = [[r["correct"] for r in read_jsonl(d / f"seed{s}.scored.jsonl")] for s in (0, 1, 2)]
    lo, hi = _bootstrap(cols)
    c = cell(report, f"pope/random/{MODEL}/sample/accuracy")
    assert float(c["ci-lo"]) == pytest.approx(lo, abs=0.5)
    assert float(c["ci-hi"]) == pytest.approx(hi, abs=0.5)
    # the interval reflects item sampling (≈ ±2.6 points), far wider than the seed spread alone
    assert float(c["ci-hi"]) - float(c["ci-lo"]) > 3.5


def test_seed_bootstrap_ci_without_item_outcomes(report):
    """MME has no per-item files: CI over 3 seed values = [min, max] (each has mass 1/27 > 2.5%)."""
    vals = metric_values()[("mme", "all", MODEL, "vcd_sample", "hallucination")]
    c = cell(report, f"mme/all/{MODEL}/vcd_sample/hallucination")
    assert (c["ci-lo"], c["ci-hi"]) == (f2(min(vals.values())), f2(max(vals.values())))
    one = cell(report, f"mme/all/{MODEL}/greedy/hallucination")
    assert "ci-lo" not in one and "no CI" in one["body"]


def _paired_boot_p(a: list[float], b: list[float], n_boot: int, seed: int) -> float:
    r = random.Random(seed)
    n = len(a)
    d = (sum(a) - sum(b)) / n
    hits = 0
    for _ in range(n_boot):
        idx = [r.randrange(n) for _ in range(n)]
        ds = sum(a[i] - b[i] for i in idx) / n
        hits += abs(ds - d) >= abs(d) - 1e-12
    return (1 + hits) / (1 + n_boot)


def test_chair_paired_bootstrap_p(report):
    d = FIX / "results" / "chair" / "all" / MODEL
    # vcd vs greedy (one seed each): huge effect, the minimum p = 1/(B+1) with B = 10000.
    g = [r["hallucinated"] for r in read_jsonl(d / "greedy" / "seed0.scored.jsonl")]
    v = [r["hallucinated"] for r in read_jsonl(d / "vcd" / "seed0.scored.jsonl")]
    assert _paired_boot_p(v, g, 2000, 1) == 1 / 2001
    assert cell(report, f"chair/all/{MODEL}/vcd/chair_s")["pv"] == f"{1 / 10001:.2e}"
    # vcd_sample vs sample, 3 seed pairs: the report shows the largest per-seed p.
    ps = []
    for s in (0, 1, 2):
        a = [r["hallucinated"] for r in read_jsonl(d / "vcd_sample" / f"seed{s}.scored.jsonl")]
        b = [r["hallucinated"] for r in read_jsonl(d / "sample" / f"seed{s}.scored.jsonl")]
        ps.append(_paired_boot_p(a, b, 4000, 2))
    c = cell(report, f"chair/all/{MODEL}/vcd_sample/chair_s")
    assert float(c["pv"]) == pytest.approx(max(ps), abs=0.03)
    assert c["body"].count("seed ") >= 3  # every seed listed in the tooltip


def test_pope_table_puts_yes_ratio_beside_accuracy_and_modes_side_by_side(report):
    table = re.search(r'<table class="results" data-table="pope/random">(.*?)</table>', report, re.S).group(1)
    heads = re.findall(r"<th[^>]*>([^<]*)", table)
    assert heads.count("greedy ") == 1 and heads.count("sample ") == 1
    cols = [h.strip() for h in heads if h.strip() in ("Accuracy ↑", "Yes-ratio", "F1 ↑")]
    assert cols == ["Accuracy ↑", "Yes-ratio", "F1 ↑"] * 2
    # one row holds vcd (greedy) and vcd_sample (sampling)
    row = re.search(r"<b>vcd</b>.*?</tr>", table, re.S).group(0)
    assert f"pope/random/{MODEL}/vcd/accuracy" in row and f"pope/random/{MODEL}/vcd_sample/accuracy" in row


def test_models_without_item_files_still_get_means_and_deltas(report):
    c = cell(report, "pope/random/qwen-vl/vcd/accuracy")
    assert c["mean"] == "87.90" and c["dv"] == "+1.40"
    assert c["pv"] == "—" and "no per-item outcomes" in c["body"]  # no test, and why


# ----------------------------------------------------------------------------- papers


def test_reproduced_vs_reported(report):
    paper = list(csv.DictReader(open(PAPER, newline="")))
    rows = re.findall(r'<tr data-compare="([^"]+)">(.*?)</tr>', report, re.S)
    assert rows
    n_pope_greedy = 0
    for key, body in rows:
        bench, split, model, label, metric = key.split("/")
        ours = float(re.search(r'<span class="ours">([^<]+)', body).group(1))
        lo, hi = map(float, re.search(r'<span class="ci">\[([^,]+), ([^\]]+)\]', body).groups())
        pv = float(re.search(r'<td class="num paper">([^<]+)', body).group(1))
        diff = re.search(r'<td class="num diff">([^<]+)', body).group(1)
        flag = re.search(r'<td class="flag[^"]*">([^<]+)', body).group(1)
        spec = RUNS[label]
        # only the numbers of the paper whose protocol the run used (the fixture runs: VCD's)
        match = [
            p
            for p in paper
            if p["benchmark"] == bench
            and p["split"] in (split, "")
            and p["model"] == model
            and p["method"] == spec["method"]
            and p["mode"] == spec["mode"]
            and p["metric"] == metric
            and p["source"].startswith("VCD (")
        ]
        assert any(abs(float(p["value"]) - pv) < 1e-9 for p in match), key
        assert diff == f"{ours - pv:+.2f}"
        assert flag == ("outside CI" if not lo <= pv <= hi else "within CI")
        n_pope_greedy += (bench, split, label, metric) == ("pope", "random", "greedy", "accuracy")
    # greedy POPE-random accuracy of llava-1.5-7b is reported by the VCD appendix and cd_rethink;
    # under VCD's protocol only the VCD number is a like-for-like comparison
    assert n_pope_greedy == 1
    assert "cd_rethink (arXiv" not in "".join(body for _, body in rows)
    assert "outside CI" in report and "within CI" in report
    assert all(" protocol vcd)" in body for _, body in rows)


def test_unified_runs_are_never_set_beside_a_paper(tmp_path):
    """The same numbers labelled unified: no paper comparison, every row says its protocol."""
    res, sco = file_maps()
    runs = {k: dict(v, protocol="unified") for k, v in RUNS.items()}
    html = build_report(
        FIX / "metrics.csv",
        tmp_path / "u.html",
        result_files=res,
        scored_files=sco,
        runs=runs,
        paper_results=PAPER,
        config=CONFIG,
        figures=False,
    ).read_text(encoding="utf-8")
    assert not re.findall(r'<tr data-compare="', html)
    assert html.count('<span class="protocol" title="protocol">[unified]</span>') >= len(RUNS)
    assert "[vcd]" not in html


def test_paper_results_file_holds_the_spec_tables():
    rows = list(csv.DictReader(open(PAPER, newline="")))
    assert list(rows[0]) == [
        "benchmark",
        "split",
        "model",
        "method",
        "mode",
        "metric",
        "value",
        "source",
        "table",
        "setting",
    ]

    def get(**kw):
        hits = [r for r in rows if all(r[k] == v for k, v in kw.items())]
        assert len(hits) == 1, kw
        return float(hits[0]["value"])

    assert (
        get(
            benchmark="pope",
            split="random",
            model="llava-1.5-7b",
            method="vcd",
            mode="sample",
            metric="accuracy",
            table="Table 1",
        )
        == 87.73
    )
    assert (
        get(benchmark="pope", split="adversarial", model="instructblip-7b", method="avisc", metric="f1")
        == 81.92
    )
    assert (
        get(
            benchmark="pope",
            split="adversarial",
            model="llava-1.5-7b",
            method="vcd",
            mode="greedy",
            metric="accuracy",
        )
        == 81.9
    )
    assert get(benchmark="chair", model="instructblip-7b", method="ritual", metric="chair_i") == 8.8
    # MME totals are the sums of the four subtasks (RITUAL table)
    for method in ("sample", "vcd", "m3id", "ritual"):
        parts = [
            r
            for r in rows
            if r["benchmark"] == "mme" and r["method"] == method and r["source"].startswith("RITUAL")
        ]
        sub = sum(float(r["value"]) for r in parts if r["metric"] != "hallucination")
        total = next(float(r["value"]) for r in parts if r["metric"] == "hallucination")
        assert sub == pytest.approx(total, abs=0.02), method
    models = {r["model"] for r in rows}  # the papers' own models, named as the papers name them
    assert (
        {"llava-1.5-7b", "instructblip-7b", "qwen-vl"}
        <= models
        <= {
            "llava-1.5-7b",
            "llava-1.5-13b",
            "instructblip-7b",
            "qwen-vl",
            "qwen-vl-chat-7b",
            "qwen2.5-vl-3b",
            "qwen2.5-vl-7b",
        }
    )
    assert {r["mode"] for r in rows} <= {"greedy", "sample", "beam"}


# ----------------------------------------------------------------------------- other sections


def test_speed_table_from_timing_fields(report):
    rows = re.findall(
        r"<tr><td>(pope|chair)</td><td>" + re.escape(MODEL) + r"</td><td><code>(\w+)</code></td>(.*?)</tr>",
        report,
        re.S,
    )
    got = {(b, l): re.findall(r'<td class="num">([^<]*)</td>', rest) for b, l, rest in rows}
    # fixture: greedy/sample 0.1 s per item, vcd/vcd_sample 0.2 s; POPE 1 token, CHAIR 12 tokens
    assert got[("pope", "greedy")][3] == "10.00"  # tokens/s
    assert got[("pope", "vcd")][3] == "5.00"
    assert got[("pope", "vcd")][5] == "2.00×"  # overhead vs greedy
    assert got[("chair", "vcd_sample")][3] == "60.00"
    assert got[("chair", "greedy")][0] == "40"  # items
    # the errored item of vcd_sample seed 2 is excluded: 3·300 − 1 items
    assert got[("pope", "vcd_sample")][0] == "899"


def test_examples_mark_hallucinated_objects_and_show_extras(report):
    examples = report.split('<section id="examples">')[1].split("</section>")[0]
    chunks = examples.split('<div class="example" data-item="')[1:]
    blocks = [tuple(c.split('">', 1)) for c in chunks if c.startswith("chair-")]
    assert blocks and len(chunks) == 6  # n_examples = 3 per benchmark with result files (POPE, CHAIR)
    scored = {}
    for label in RUNS:
        if not (FIX / "results" / "chair" / "all" / MODEL / label).is_dir():
            continue  # the control runs are POPE-only
        for r in read_jsonl(FIX / "results" / "chair" / "all" / MODEL / label / "seed0.scored.jsonl"):
            scored[(label, r["item_id"])] = set(r["hallucinated_objects"])
    n_marks = 0
    for item, body in blocks:
        for label, answer in re.findall(
            r"<td><code>(\w+)</code>.*?<td class=\"answer\">(.*?)</td>", body, re.S
        ):
            for word in re.findall(r"<mark>([^<]+)</mark>", answer):
                assert re.sub(r"e?s$", "", word) in scored[(label, item)] or word in scored[(label, item)]
                n_marks += 1
            if scored[(label, item)]:
                assert "<mark>" in answer
    assert n_marks > 0
    # the item with extra images is shown, with its two extra thumbnails and the RITUAL-style meta
    assert "chair-7" in [b[0] for b in blocks]
    body = dict(blocks)["chair-7"]
    assert body.count('alt="vcd extra image"') == 2
    assert "<b>transform</b>: hflip" in body
    assert re.search(r'<img class="thumb" alt="img_\d.png" src="data:image/png;base64,', body)


def test_error_counts_listed(report):
    row = re.search(
        r'<tr data-run="pope/random/llava-1.5-7b/vcd_sample/seed2">(.*?)</tr>', report, re.S
    ).group(1)
    assert re.findall(r'<td class="num">([^<]*)</td>', row) == ["300", "1", "0.3%"]
    assert "CUDA out of memory (synthetic)" in row and ">ok<" in row


def test_self_contained(report):
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", report, re.I)
    assert "url(" not in report and "@import" not in report
    srcs = re.findall(r'<img[^>]*\ssrc="([^"]*)"', report)
    assert len(srcs) > 10 and all(s.startswith("data:image/") for s in srcs)


def test_provenance_section(report):
    assert re.search(r"<code>[0-9a-f]{32}</code>", report)  # md5 of inputs
    assert "metrics.csv" in report and "paper_results.csv" in report
    assert "numpy" in report and "config hash" in report


# ----------------------------------------------------------------------------- variants


def test_demo_is_labelled_and_never_compared(tmp_path):
    res, sco = file_maps()
    out = build_report(
        FIX / "metrics.csv",
        tmp_path / "index.html",
        result_files=res,
        scored_files=sco,
        runs=RUNS,
        paper_results=PAPER,
        config=CONFIG,
        demo=True,
        n_examples=0,
        figures=False,
    )
    html = out.read_text()
    assert 'id="demo-banner"' in html and "DEMO WORLD" in html
    assert 'id="comparison-skipped"' in html and "data-compare" not in html
    assert html.count("(demo world)") >= 3  # every benchmark heading


def test_subsets_build_and_say_what_is_missing(tmp_path):
    """Only CHAIR greedy/vcd results and a config that expects more."""
    src = list(csv.DictReader(open(FIX / "metrics.csv", newline="")))
    keep = [r for r in src if r["benchmark"] == "chair" and r["method"] in ("greedy", "vcd")]
    metrics = tmp_path / "metrics.csv"
    with open(metrics, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(src[0]))
        w.writeheader()
        w.writerows(keep)
    res, sco = file_maps()
    res = {k: v for k, v in res.items() if k[0] == "chair" and k[3] in ("greedy", "vcd")}
    sco = {k: sco[k] for k in res}
    runs = dict(
        RUNS, ritual={"method": "ritual", "mode": "sample", "params": {"alpha": 3}, "protocol": "vcd"}
    )
    html = build_report(
        metrics,
        tmp_path / "r" / "index.html",
        result_files=res,
        scored_files=sco,
        runs=runs,
        paper_results=PAPER,
        config=CONFIG,
        figures=False,
    ).read_text()
    assert "No results for pope" in html and "No results for mme" in html
    assert "method ritual: no results" in html and "method sample: no results" in html
    assert "no sample baseline" not in html  # 'sample' is configured but absent: said above
    c = cell(html, f"chair/all/{MODEL}/vcd/chair_s")
    assert c["mean"] == f2(metric_values()[("chair", "all", MODEL, "vcd", "chair_s")][0])
    assert "data-compare" not in html or "chair" in html  # comparisons limited to what is present
    # and with nothing but a metrics table (no per-item files, no runs, no config)
    bare = build_report(metrics, tmp_path / "bare.html", paper_results=PAPER, figures=False).read_text()
    assert cell(bare, f"chair/all/{MODEL}/vcd/chair_s")["dv"]  # baseline inferred from the label 'greedy'


def test_error_refusal(tmp_path):
    rows = list(csv.DictReader(open(FIX / "metrics.csv", newline="")))
    for r in rows:
        if (r["benchmark"], r["split"], r["method"], r["seed"], r["metric"]) == (
            "pope",
            "random",
            "vcd_sample",
            "1",
            "n_errors",
        ):
            r["n_errors"] = r["value"] = "30"  # 30/300 = 10% > 5%
    metrics = tmp_path / "metrics.csv"
    with open(metrics, "w", newline="") as fh:
        w = csv.DictWriter(
            fh,
            fieldnames=["benchmark", "split", "model", "method", "seed", "metric", "value"],
            extrasaction="ignore",
        )
        w.writeheader()
        w.writerows(rows)
    res, sco = file_maps()
    html = build_report(
        metrics,
        tmp_path / "a.html",
        result_files=res,
        scored_files=sco,
        runs=RUNS,
        paper_results=PAPER,
        n_examples=0,
        figures=False,
    ).read_text()
    for metric in ("accuracy", "yes_ratio", "f1"):
        c = cell(html, f"pope/random/{MODEL}/vcd_sample/{metric}")
        assert c["refused"] == "—" and "mean" not in c
        assert "seed 1: 30/300 items errored (10.0%) &gt; 5% allowed" in c["why"]
    assert cell(html, f"pope/random/{MODEL}/sample/accuracy")["mean"]  # other cells unaffected
    assert re.search(r'data-run="pope/random/llava-1.5-7b/vcd_sample/seed1">.*?refused', html, re.S)
    # a looser threshold accepts it
    ok = build_report(
        metrics,
        tmp_path / "b.html",
        result_files=res,
        scored_files=sco,
        runs=RUNS,
        paper_results=PAPER,
        n_examples=0,
        max_error_fraction=0.2,
        figures=False,
    ).read_text()
    assert "mean" in cell(ok, f"pope/random/{MODEL}/vcd_sample/accuracy")


def test_explicit_speed_table_with_memory(tmp_path):
    speed = tmp_path / "speed.csv"
    speed.write_text(
        "benchmark,model,method,items,seconds,new_tokens,peak_mem_mb\n"
        f"pope,{MODEL},greedy,100,10,400,14000\npope,{MODEL},vcd,100,25,400,15500\n"
    )
    html = build_report(
        FIX / "metrics.csv", tmp_path / "s.html", runs=RUNS, paper_results=PAPER, speed=speed, n_examples=0
    ).read_text()
    row = re.search(r"<td><code>vcd</code></td>(.*?)</tr>", html.split('id="speed-table"')[1], re.S).group(1)
    cells = re.findall(r'<td class="num">([^<]*)</td>', row)
    assert cells == ["100", "400", "25.00", "16.00", "0.250", "2.50×", "15500"]


def test_bad_inputs_name_the_file(tmp_path):
    bad = tmp_path / "metrics.csv"
    bad.write_text("benchmark,split,model,method,seed,value\npope,random,m,greedy,0,1\n")
    with pytest.raises(ValueError, match=r"metrics\.csv.*metric"):
        build_report(bad, tmp_path / "x.html")
    root = tmp_path / "fx"
    shutil.copytree(FIX / "results" / "chair", root / "results" / "chair")
    res, sco = file_maps(root)
    p = sco[("chair", "all", MODEL, "greedy", 0)]
    lines = p.read_text().splitlines()
    lines[2] = json.dumps(
        {"item_id": "chair-3", "hallucinated": 2, "mentions": 3, "hallucinated_mentions": 2}
    )
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=re.escape(str(p)) + r":3: field 'hallucinated' must be 0 or 1"):
        build_report(
            FIX / "metrics.csv",
            tmp_path / "y.html",
            result_files=res,
            scored_files=sco,
            runs=RUNS,
            figures=False,
        )
    assert not (tmp_path / "y.html").exists()


def test_highlight_escapes_and_marks_plurals():
    out = str(highlight("Two Dogs & a <cat>; a hot dog stand.", ["dog", "hot dog", "cat"]))
    assert out == ("Two <mark>Dogs</mark> &amp; a &lt;<mark>cat</mark>&gt;; a <mark>hot dog</mark> stand.")
    assert str(highlight("a dogma", ["dog"])) == "a dogma"


def test_figures_are_embedded_pngs(report):
    import base64
    import io

    from PIL import Image

    figs = re.findall(r'<figure><img alt="([^"]*)" src="data:image/png;base64,([^"]+)"', report)
    alts = [a for a, _ in figs]
    # one per benchmark/split (POPE random + adversarial, CHAIR, MME), the yes-ratio scatter, speed,
    # the overview's heatmap of Δ
    assert len(figs) == 7
    assert "POPE accuracy against yes-ratio" in alts and "tokens per second per method" in alts
    assert "Delta vs baseline heatmap" in alts
    for _, b64 in figs:
        with Image.open(io.BytesIO(base64.b64decode(b64))) as im:
            assert im.format == "PNG" and im.width > 300 and im.height > 200


def test_a_second_pope_dataset_gets_its_own_tables_and_figures(tmp_path):
    """A pope_<name> benchmark (here the fixture's POPE rows again as pope_gqa) is reported as
    "POPE (GQA)" with its own tables, per-split figures and yes-ratio scatter; COCO paper rows are
    not attached to it."""
    rows = list(csv.DictReader(open(FIX / "metrics.csv", newline="")))
    gqa = [dict(r, benchmark="pope_gqa") for r in rows if r["benchmark"] == "pope"]
    metrics = tmp_path / "metrics.csv"
    with open(metrics, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows + gqa)
    res, sco = file_maps()
    for (bench, split, model, label, seed), p in list(res.items()):
        if bench == "pope":
            res[("pope_gqa", split, model, label, seed)] = p
            sco[("pope_gqa", split, model, label, seed)] = sco[(bench, split, model, label, seed)]
    config = dict(CONFIG, benchmarks={**CONFIG["benchmarks"], "pope_gqa": {}})
    out = build_report(
        metrics,
        tmp_path / "index.html",
        result_files=res,
        scored_files=sco,
        runs=RUNS,
        paper_results=PAPER,
        config=config,
        image_root=FIX / "images",
    )
    html = out.read_text(encoding="utf-8")
    alts = re.findall(r'<figure><img alt="([^"]*)"', html)
    assert "POPE accuracy against yes-ratio" in alts and "POPE (GQA) accuracy against yes-ratio" in alts
    assert len(alts) == 7 + 1 + 2  # the fixture's figures, the GQA scatter, GQA random + adversarial
    assert "<h2>POPE (GQA)" in html or ">POPE (GQA)<" in html or "POPE (GQA)</h2>" in html
    # same numbers as the COCO table (same rows), different cell keys
    key = f"pope_gqa/random/{MODEL}/vcd/accuracy"
    assert cell(html, key) == cell(html, f"pope/random/{MODEL}/vcd/accuracy")


def test_speed_table_reads_peak_memory_and_hardware_from_the_sidecars(tmp_path):
    """seed{n}.meta.json beside a result: its peak memory (largest over seeds) and hardware show in
    the speed table; a seed recorded from another seed's decode (decoded_seed) adds no time."""
    root = tmp_path / "fx"
    shutil.copytree(FIX, root)
    res, sco = file_maps(root)
    base = root / "results" / "pope" / "random" / MODEL / "vcd_sample"  # 3 seeds
    seeds = sorted(
        int(p.name[4:-6]) for p in base.glob("seed*.jsonl") if not p.name.endswith(".scored.jsonl")
    )
    assert len(seeds) == 3
    for i, seed in enumerate(seeds):
        (base / f"seed{seed}.meta.json").write_text(
            json.dumps(
                {
                    "peak_mem_mb": 1000.0 + i,
                    "hardware": "1x NVIDIA H200",
                    "device": "cuda",
                    "seed": seed,
                    **({"decoded_seed": seeds[0]} if i == 2 else {}),
                }
            )
        )
    html = build_report(
        root / "metrics.csv",
        tmp_path / "s.html",
        result_files=res,
        scored_files=sco,
        runs=RUNS,
        paper_results=PAPER,
        config=CONFIG,
        figures=False,
    ).read_text(encoding="utf-8")
    speed = re.search(r'<table id="speed-table">(.*?)</table>', html, re.S).group(1)
    rows = re.findall(r"<tr>(.*?)</tr>", speed, re.S)
    row = next(r for r in rows if "<td>pope</td>" in r and "<code>vcd_sample</code>" in r)
    cells = re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)
    assert cells[-2] == "1002" and cells[-1] == "1x NVIDIA H200 (cuda)"
    tokens = sum(
        r["timing"]["new_tokens"]
        for s in seeds[:2]
        for r in read_jsonl(base / f"seed{s}.jsonl")
        if not r.get("error")
    )
    assert (
        cells[3] == "vcd" and cells[6] == f"{tokens}"
    )  # protocol; the third seed was recorded from the first one's decode
    other = next(r for r in rows if "<td>pope</td>" in r and "<code>greedy</code>" in r)
    assert re.findall(r"<td[^>]*>(.*?)</td>", other, re.S)[-2:] == ["—", "—"]  # no sidecar: not recorded


# ----------------------------------------------------------------------------- overview and controls
#
# Expected numbers straight from the fixture's files with the statistics functions of
# vcdflow.report.stats (mean over seeds, item bootstrap CI with B = 2000 and seed 0, exact
# McNemar / paired bootstrap with B = 10000 and seed 0, the largest per-seed p).

from vcdflow.report import stats  # noqa: E402

HEADLINE = {"pope": "accuracy", "chair": "chair_s", "mme": "hallucination"}  # registry's first ↑/↓ column
ITEM_FIELD = {"accuracy": "correct", "chair_s": "hallucinated"}


def scored(bench: str, split: str, label: str, seed: int, model: str = MODEL) -> dict | None:
    p = FIX / "results" / bench / split / model / label / f"seed{seed}.scored.jsonl"
    return {r["item_id"]: r for r in read_jsonl(p)} if p.exists() else None


def baseline_of(label: str) -> str:
    return "greedy" if RUNS.get(label, {"mode": "greedy"})["mode"] == "greedy" else "sample"


def expected_ci(bench, split, model, label, metric, seeds: dict[int, float]):
    runs = [scored(bench, split, label, s, model) for s in seeds]
    if all(r is not None for r in runs):
        ids = list(runs[0])  # the first seed's item order (the bootstrap draws over positions)
        num = [[r[i][ITEM_FIELD[metric]] for r in runs] for i in ids]
        lo, hi = stats.bootstrap_ci(num, 2000, 0)
        return f2(100 * lo), f2(100 * hi)
    if len(seeds) >= 2:
        return tuple(f2(x) for x in stats.bootstrap_ci(list(seeds.values()), 2000, 0))
    return None


def expected_p(bench, split, model, label, base, metric, seeds, base_seeds):
    """Largest per-seed p of the paired test of ``label`` against ``base`` (None: no items)."""
    ps = []
    for s in seeds:
        sb = next(iter(base_seeds)) if len(base_seeds) == 1 else s
        a, b = scored(bench, split, label, s, model), scored(bench, split, base, sb, model)
        if a is None or b is None:
            return None
        ids = [i for i in a if i in b]
        x = [a[i][ITEM_FIELD[metric]] for i in ids]
        y = [b[i][ITEM_FIELD[metric]] for i in ids]
        ps.append(
            stats.mcnemar_exact(x, y).pvalue
            if metric == "accuracy"
            else stats.paired_bootstrap_p(x, y, 10000, 0)
        )
    return max(ps)


def glance(html: str) -> tuple[list[str], dict[str, list[str]]]:
    table = re.search(r'<table id="glance">(.*?)</table>', html, re.S).group(1)
    cols = re.findall(r'<th class="sortable" data-type="num"[^>]*data-col="([^"]+)"', table)
    rows = {}
    for run, body in re.findall(r'<tr data-run="([^"]+)">(.*?)</tr>', table, re.S):
        rows[run] = re.findall(r'<td class="cell"[^>]*>.*?</td>', body, re.S)
    return cols, rows


def test_overview_table_matches_metrics_csv(report):
    vals = metric_values()
    cols, rows = glance(report)
    assert cols == [
        "pope/random/accuracy",
        "pope/adversarial/accuracy",
        "chair/all/chair_s",
        "mme/all/hallucination",
    ]
    have = {(m, l) for (b, s, m, l, metric) in vals if HEADLINE.get(b) == metric}
    assert set(rows) == {f"{m}/{l}" for m, l in have}
    n_ci = n_p = n_delta = 0
    for run, tds in rows.items():
        model, label = run.split("/")
        assert len(tds) == len(cols)
        for col, td in zip(cols, tds):
            bench, split, metric = col.split("/")
            seeds = vals.get((bench, split, model, label, metric))
            if seeds is None:
                assert 'class="mean"' not in td and 'data-sort=""' in td
                continue
            got = {
                cls: (re.search(r'<span class="' + cls + r'[^"]*"[^>]*>([^<]*)</span>', td) or [None, None])[
                    1
                ]
                for cls in ("mean", "ci-lo", "ci-hi", "dv", "pv")
            }
            mean = statistics.fmean(seeds.values())
            assert got["mean"] == f2(mean), (run, col)
            assert f'data-sort="{mean!r}"' in td or float(
                re.search(r'data-sort="([^"]+)"', td).group(1)
            ) == pytest.approx(mean)
            ci = expected_ci(bench, split, model, label, metric, seeds)
            assert ((got["ci-lo"], got["ci-hi"]) == ci) if ci else got["ci-lo"] is None, (run, col, got, ci)
            n_ci += ci is not None
            base = baseline_of(label)
            base_seeds = vals.get((bench, split, model, base, metric))
            if label == base:
                assert ">baseline<" in td and got["dv"] is None
                continue
            if base_seeds is None:
                assert got["dv"] is None
                continue
            assert got["dv"] == f"{mean - statistics.fmean(base_seeds.values()):+.2f}", (run, col)
            n_delta += 1
            p = expected_p(bench, split, model, label, base, metric, seeds, base_seeds)
            if p is None:  # no per-item outcomes: no test
                assert got["pv"] in (None, "—")
            else:
                assert got["pv"] == (f"{p:.3g}" if p >= 1e-4 else f"{p:.2e}"), (run, col)
                n_p += 1
    assert n_ci >= 15 and n_delta >= 8 and n_p >= 6


def controls_table(html: str, group: str) -> dict[str, str]:
    m = re.search(r'<table class="controls" data-group="' + re.escape(group) + r'">(.*?)</table>', html, re.S)
    assert m, f"controls group {group} not in the report"
    return dict(re.findall(r'<tr data-ctrl-run="([^"]+)"[^>]*>(.*?)</tr>', m.group(1), re.S))


def td(row: str, cls: str, control: str | None = None) -> str:
    attr = f' data-control="{control}"' if control else ""
    return (
        re.search(r'<td class="num ' + cls + r'[^"]*"' + attr + r"[^>]*>([^<]*)</td>", row).group(1).strip()
    )


def fmt_p(p: float) -> str:
    return f"{p:.3g}" if p >= 1e-4 else f"{p:.2e}"


def test_controls_section_matches_metrics_csv(report):
    """Per POPE split/model/mode: each CD method's and control's gain over the baseline, yes-ratios,
    and the method's paired test against every control (cd_rethink)."""
    vals = metric_values()
    mean = lambda l, m: statistics.fmean(vals[("pope", "random", MODEL, l, m)].values())  # noqa: E731
    seeds = lambda l: vals[("pope", "random", MODEL, l, "accuracy")]  # noqa: E731
    section = report.split('<section id="controls">')[1].split("</section>")[0]
    for mode, base, ctrls, methods in (
        ("greedy", "greedy", ["pba", "olm"], ["vcd"]),
        ("sample", "sample", ["apc_sample"], ["vcd_sample"]),
    ):
        rows = controls_table(section, f"pope/random/{MODEL}/vcd/{mode}")
        assert list(rows) == [base, *ctrls, *methods]
        for label in [base, *ctrls, *methods]:
            assert td(rows[label], "m") == f2(mean(label, "accuracy"))
            assert td(rows[label], "y") == f2(mean(label, "yes_ratio"))
            if label != base:
                assert td(rows[label], "d") == f"{mean(label, 'accuracy') - mean(base, 'accuracy'):+.2f}"
                p = expected_p("pope", "random", MODEL, label, base, "accuracy", seeds(label), seeds(base))
                assert td(rows[label], "pb") == fmt_p(p)
        for label in methods:
            verdict = True
            for c in ctrls:
                diff = mean(label, "accuracy") - mean(c, "accuracy")
                p = expected_p("pope", "random", MODEL, label, c, "accuracy", seeds(label), seeds(c))
                assert td(rows[label], "vs-d", c) == f"{diff:+.2f}"
                assert td(rows[label], "vs-p", c) == fmt_p(p)
                verdict &= diff > 0 and p < 0.05
            shown = re.search(r'<td class="beats"><span class="beats-(\w+)">', rows[label]).group(1)
            assert shown == ("yes" if verdict else "no")
    # qwen-vl has a CD method but no control: said so, no verdict
    q = section.split('data-group="pope/random/qwen-vl/vcd/greedy"')[1].split("</table>")[0]
    assert "no controls" in q
    assert "adversarial" not in section  # no CD method nor control there: no group


def test_controls_verdict_yes_when_a_method_beats_every_control(tmp_path):
    """Variant: baseline = the run ``pba`` (greedy + 4 fixes), the only control = the run ``greedy``
    (engine method apc here); vcd fixes 10 of greedy's wrong answers and breaks none: beats it."""
    rows = [
        r
        for r in csv.DictReader(open(FIX / "metrics.csv", newline=""))
        if r["benchmark"] == "pope"
        and r["split"] == "random"
        and r["model"] == MODEL
        and r["method"] in ("greedy", "pba", "vcd")
    ]
    metrics = tmp_path / "metrics.csv"
    with open(metrics, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    res, sco = file_maps()
    res = {
        k: v
        for k, v in res.items()
        if k[:3] == ("pope", "random", MODEL) and k[3] in ("greedy", "pba", "vcd")
    }
    sco = {k: sco[k] for k in res}
    runs = {
        "pba": dict(RUNS["pba"], method="greedy"),
        "greedy": dict(RUNS["greedy"], method="apc"),
        "vcd": RUNS["vcd"],
    }
    html = build_report(
        metrics,
        tmp_path / "v.html",
        result_files=res,
        scored_files=sco,
        runs=runs,
        paper_results=PAPER,
        figures=False,
        n_examples=0,
    ).read_text()
    t = controls_table(html, f"pope/random/{MODEL}/vcd/greedy")
    assert list(t) == ["pba", "greedy", "vcd"]
    assert td(t["vcd"], "vs-p", "greedy") == fmt_p(2 * 0.5**10)
    assert '<span class="beats-yes">yes</span>' in t["vcd"]


def test_a_comparison_decoded_under_different_library_versions_is_flagged(tmp_path):
    """CHAIR greedy decoded with transformers 5.24.0 and model commit aaa…, vcd with 5.25.0 and bbb… (one shard of vcd
    with numpy 2.4.5): the CHAIR table's model block says which label ran with which version;
    the provenance lists each version set. The same results under one set are not flagged."""
    src = list(csv.DictReader(open(FIX / "metrics.csv", newline="")))
    metrics = tmp_path / "metrics.csv"
    with open(metrics, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(src[0]))
        w.writeheader()
        w.writerows(r for r in src if r["benchmark"] == "chair" and r["method"] in ("greedy", "vcd"))
    res, sco = file_maps()
    keys = [k for k in res if k[0] == "chair" and k[3] in ("greedy", "vcd")]
    copies = {}
    for k in keys:
        dst = tmp_path / "results" / "/".join(map(str, k[:4])) / res[k].name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(res[k], dst)
        copies[k] = dst
    base = {"python": "3.11.7", "torch": "2.13.0+cpu", "numpy": "2.4.6"}

    def write_sidecars(tf_vcd: str, numpy_shard: str | None = None, model_commits=None):
        model_commits = model_commits or {"greedy": "a" * 40, "vcd": "a" * 40}
        for k, p in copies.items():
            v = dict(base, transformers="5.24.0" if k[3] == "greedy" else tf_vcd)
            shards = (
                [{"versions": v}, {"versions": dict(v, numpy=numpy_shard)}]
                if numpy_shard and k[3:] == ("vcd", 0)
                else []
            )
            meta = {
                "versions": [s["versions"] for s in shards] if shards else v,
                "shards": shards,
                "model_source": {"commit": model_commits[k[3]]},
            }
            p.with_name(p.name.replace(".jsonl", ".meta.json")).write_text(json.dumps(meta))

    write_sidecars("5.25.0", numpy_shard="2.4.5", model_commits={"greedy": "a" * 40, "vcd": "b" * 40})
    html = build_report(
        metrics,
        tmp_path / "a.html",
        result_files=copies,
        scored_files={k: sco[k] for k in keys},
        runs=RUNS,
        paper_results=PAPER,
        config=CONFIG,
        n_examples=0,
        figures=False,
    ).read_text()
    rows = re.findall(r'<tr class="versions-conflict"><td[^>]*>([^<]*)</td>', html)
    assert rows == [
        "results decoded under different library versions or model weights — model commit "
        f"{'a' * 40}: greedy; {'b' * 40}: vcd | numpy 2.4.5: vcd; 2.4.6: greedy, vcd"
        " | transformers 5.24.0: greedy; 5.25.0: vcd"
    ]
    assert f"chair/all/{MODEL}: results decoded under different" in html
    prov = re.search(r'<td id="decode-versions">(.*?)</td>', html, re.S).group(1).split("<div")[0]
    assert prov.count("transformers 5.24.0") == 1 and prov.count("transformers 5.25.0") == 2  # 3 sets

    assert "none recorded (no hub branch or tag was downloaded)" in html

    write_sidecars("5.24.0")
    # the hub revisions lock (vcdflow.data.hub_revisions.lock_rows) shown in the provenance
    hub = [
        {
            "repo_type": "model",
            "repo": "llava-hf/llava-1.5-7b-hf",
            "revision": "main",
            "commit": "a" * 40,
            "recorded": "2026-12-08T01:00:00Z",
            "lock": "config/hub-revisions.lock",
        }
    ]
    same = build_report(
        metrics,
        tmp_path / "b.html",
        result_files=copies,
        scored_files={k: sco[k] for k in keys},
        runs=RUNS,
        paper_results=PAPER,
        config=CONFIG,
        n_examples=0,
        figures=False,
        provenance=collect_provenance(config=CONFIG, extra={"hub_revisions": hub}),
    ).read_text()
    hub_cell = re.search(r'<td id="hub-revisions">(.*?)</td>', same, re.S).group(1)
    assert re.sub(r"<[^>]+>", "", hub_cell) == (
        f"llava-hf/llava-1.5-7b-hf main → {'a' * 40} (recorded "
        "2026-12-08T01:00:00Z)from config/hub-revisions.lock"
    )
    assert "versions-conflict" not in same and "different library versions" not in same
    n = len(keys)
    assert f'transformers 5.24.0 <span class="note">({n} results)</span>' in same
