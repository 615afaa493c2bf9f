"""Open the rendered report in headless Chromium: no console errors, every image loads, screenshot.

Needs the system browser (Debian package ``chromium``). Skipped when no browser is
installed, except under ``CI=true`` where a missing browser is a failure.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from vcdflow.report import build_report

FIX = Path(__file__).parent / "fixtures" / "report"
PAPER = Path(__file__).parents[1] / "resources" / "paper_results.csv"
RUNS = json.loads((FIX / "runs.json").read_text())
CONFIG = {"benchmarks": {"pope": {}, "chair": {}, "mme": {}, "amber": {}}, "models": {"llava-1.5-7b": {}}}


def file_maps():
    res, sco = {}, {}
    for p in sorted((FIX / "results").glob("*/*/*/*/seed*.jsonl")):
        if not p.name.endswith(".scored.jsonl"):
            bench, split, model, label = p.parts[-5:-1]
            key = (bench, split, model, label, int(p.name[len("seed") : -len(".jsonl")]))
            res[key] = p
            sco[key] = p.with_name(p.name.replace(".jsonl", ".scored.jsonl"))
    return res, sco


pytestmark = pytest.mark.browser

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--enable-logging=stderr",
    "--v=0",
]

# Injected first in <head>: records script errors, failed resource loads and console.error
# calls, then (after load) writes a JSON verdict on every <img> into the DOM.
PROBE = """<script>
window.__probe = {errors: [], console: []};
window.addEventListener('error', function (e) {
  var t = e.target;
  window.__probe.errors.push(t && t !== window ? ('resource ' + (t.tagName || '') + ' ' + String(t.src || t.href || '').slice(0, 80)) : String(e.message));
}, true);
var __ce = console.error;
console.error = function () { window.__probe.console.push(Array.prototype.join.call(arguments, ' ')); __ce.apply(console, arguments); };
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var bad = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); }).map(function (i) { return i.alt; });
  var out = {n_images: imgs.length, broken: bad, errors: window.__probe.errors, console: window.__probe.console,
             sections: Array.prototype.map.call(document.querySelectorAll('section[id]'), function (s) { return s.id; })};
  var pre = document.createElement('pre'); pre.id = '__probe'; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


def find_browser() -> str | None:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.fixture(scope="module")
def browser() -> str:
    path = find_browser()
    if path is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("CI=true but no Chromium found (install the Debian package 'chromium')")
        pytest.skip("no Chromium/Chrome installed (Debian: apt-get install -y chromium)")
    return path


def run_browser(browser: str, tmp: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp / f"profile-{len(list(tmp.glob('profile-*')))}"
    return subprocess.run(
        [browser, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True, timeout=120
    )


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("browser")
    res, sco = file_maps()
    return build_report(
        FIX / "metrics.csv",
        tmp / "index.html",
        result_files=res,
        scored_files=sco,
        runs=RUNS,
        paper_results=PAPER,
        config=CONFIG,
        image_root=FIX / "images",
        extra_images={("vcd", "chair-7"): [FIX / "images" / "img_1.png"]},
    )


def probe(browser: str, html: str, tmp: Path) -> tuple[dict, subprocess.CompletedProcess]:
    """Load ``html`` with the probe injected; return the probe's verdict and the process."""
    probed = tmp / "probed.html"
    probed.write_text(html.replace("<head>", "<head>\n" + PROBE, 1), encoding="utf-8")
    proc = run_browser(browser, tmp, "--virtual-time-budget=10000", "--dump-dom", probed.as_uri())
    m = re.search(r'<pre id="__probe">(.*?)</pre>', proc.stdout, re.S)
    assert m, f"probe did not run; rc={proc.returncode}\n{proc.stderr[-2000:]}"
    text = m.group(1).replace("&quot;", '"').replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
    return json.loads(text), proc


def test_probe_detects_broken_images_and_console_errors(browser, tmp_path):
    """Negative control: the checks below can fail."""
    html = (
        '<!DOCTYPE html><html><head><meta charset="utf-8"></head><body>'
        '<img alt="ok" src="data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk'
        '+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==">'
        '<img alt="broken" src="data:image/png;base64,AAAA"><script>console.error("boom")</script></body></html>'
    )
    result, proc = probe(browser, html, tmp_path)
    assert result["n_images"] == 2 and result["broken"] == ["broken"]
    assert result["console"] == ["boom"] and result["errors"]
    assert any(":CONSOLE" in line for line in proc.stderr.splitlines())


def test_report_loads_cleanly_in_chromium(browser, page, tmp_path):
    html = page.read_text(encoding="utf-8")
    result, proc = probe(browser, html, tmp_path)
    n_img = len(re.findall(r"<img\b", html))
    assert result["n_images"] == n_img > 10
    assert result["broken"] == []
    assert result["errors"] == [] and result["console"] == []
    # console messages Chromium itself logged (e.g. CSP or parse problems reported to the console)
    console = [l for l in proc.stderr.splitlines() if ":CONSOLE" in l]
    assert console == [], console
    assert result["sections"] == [
        "overview",
        "bench-pope",
        "bench-chair",
        "bench-mme",
        "bench-amber",
        "controls",
        "protocols",
        "reproduced",
        "speed",
        "examples",
        "errors",
        "provenance",
    ]


def test_report_screenshot(browser, page, tmp_path):
    from PIL import Image

    shot = tmp_path / "shot.png"
    proc = run_browser(browser, tmp_path, "--window-size=1400,2400", f"--screenshot={shot}", page.as_uri())
    assert shot.is_file(), f"no screenshot; rc={proc.returncode}\n{proc.stderr[-2000:]}"
    keep = os.environ.get("VCDFLOW_REPORT_SCREENSHOT")
    if keep:  # to look at it: VCDFLOW_REPORT_SCREENSHOT=/tmp/report.png pytest tests/test_report_browser.py
        shutil.copy(shot, keep)
    with Image.open(shot) as im:
        assert im.size == (1400, 2400)
        gray = im.convert("L")
        hist = gray.histogram()
    # a rendered page, not a blank one: a good share of non-white pixels and many grey levels
    non_white = sum(hist[:240]) / sum(hist)
    assert 0.03 < non_white < 0.9
    assert sum(1 for h in hist if h) > 50


# Injected before </body>: after load, clicks overview headers and records the row order.
SORT_PROBE = """<script>
window.addEventListener('load', function () {
  var t = document.getElementById('glance');
  function th(col) { return t.querySelector('th[data-col="' + col + '"]'); }
  function order(idx) {
    return Array.prototype.map.call(t.tBodies[0].rows, function (r) {
      var td = r.cells[idx]; return [r.getAttribute('data-run'), td.getAttribute('data-sort') || td.textContent.trim()];
    });
  }
  var out = {initial: order(1)};
  var acc = th('pope/random/accuracy'), idx = acc.cellIndex;
  acc.click(); out.acc1 = order(idx); out.acc1_aria = acc.getAttribute('aria-sort');
  acc.click(); out.acc2 = order(idx); out.acc2_aria = acc.getAttribute('aria-sort');
  var ch = th('chair/all/chair_s'); ch.click(); out.chair = order(ch.cellIndex);
  var run = t.tHead.rows[0].cells[1]; run.click(); out.run = order(1);
  out.acc_aria_after = acc.getAttribute('aria-sort');
  var pre = document.createElement('pre'); pre.id = '__sort'; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


def test_overview_sorts_by_a_clicked_header(browser, page, tmp_path):
    html = page.read_text(encoding="utf-8")
    probed = tmp_path / "sort.html"
    probed.write_text(html.replace("</body>", SORT_PROBE + "\n</body>", 1), encoding="utf-8")
    proc = run_browser(browser, tmp_path, "--virtual-time-budget=10000", "--dump-dom", probed.as_uri())
    m = re.search(r'<pre id="__sort">(.*?)</pre>', proc.stdout, re.S)
    assert m, f"sort probe did not run; rc={proc.returncode}\n{proc.stderr[-2000:]}"
    got = json.loads(
        m.group(1).replace("&quot;", '"').replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
    )
    # the page's own row order: per model, the runs in config order (qwen-vl: metrics rows only)
    assert [r for r, _ in got["initial"]] == [f"llava-1.5-7b/{l}" for l in RUNS] + [
        "qwen-vl/greedy",
        "qwen-vl/vcd",
    ]

    def numbers(rows):
        return [float(v) for _, v in rows if v not in ("", "·")]

    def blanks_last(rows):
        kinds = [v in ("", "·") for _, v in rows]
        assert kinds == sorted(kinds), rows

    # POPE accuracy (higher is better): first click best first, second click reversed
    acc1 = numbers(got["acc1"])
    assert len(acc1) == len(RUNS) + 2 and acc1 == sorted(acc1, reverse=True) and acc1[0] > acc1[-1]
    assert got["acc1_aria"] == "descending" and got["acc2_aria"] == "ascending"
    assert numbers(got["acc2"]) == sorted(acc1)
    blanks_last(got["acc1"])
    blanks_last(got["acc2"])
    # the best POPE accuracy row is the run whose mean in metrics.csv is highest
    import csv

    acc = {}
    for r in csv.DictReader(open(FIX / "metrics.csv", newline="")):
        if (r["benchmark"], r["split"], r["metric"]) == ("pope", "random", "accuracy"):
            acc.setdefault(f"{r['model']}/{r['method']}", []).append(float(r["value"]))
    best = max(acc, key=lambda l: sum(acc[l]) / len(acc[l]))
    assert got["acc1"][0][0] == best
    # CHAIR_s (lower is better): first click lowest first; runs without CHAIR last
    chair = numbers(got["chair"])
    assert chair == sorted(chair) and len(chair) == 4
    blanks_last(got["chair"])
    # a text column sorts alphabetically and clears the other header's mark
    names = [v for _, v in got["run"]]
    assert names == sorted(names) and got["acc_aria_after"] is None
