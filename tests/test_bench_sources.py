"""Download rules of the extra benchmarks (vcdflow.benchmarks.sources): a verified file must match
its sha256, an UNVERIFIED one is accepted with the sha256 it had recorded in SHA256SUMS, zips are
extracted, offline mode only checks; and the workflow wires each rule to its benchmark's inputs."""

import hashlib
import io
import subprocess
import sys
import threading
import zipfile
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from vcdflow.benchmarks import sources
from vcdflow.benchmarks.sources import File, fetch_benchmark

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def server(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "q.json").write_text('[{"x": 1}]')
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("images/a.png", b"png-bytes")
    (site / "d.zip").write_bytes(buf.getvalue())

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *a):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=str(site)))
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}", site
    srv.shutdown()
    srv.server_close()


def test_verified_unverified_zip_and_offline(server, tmp_path, monkeypatch):
    url, site = server
    good = hashlib.sha256((site / "q.json").read_bytes()).hexdigest()
    monkeypatch.setitem(
        sources.SOURCES,
        "fake",
        (File("q.json", f"{url}/q.json", sha256=good), File("downloads/d.zip", f"{url}/d.zip", unzip=True)),
    )
    dest = tmp_path / "fake"
    fetch_benchmark("fake", dest)
    assert (dest / "q.json").read_text() == '[{"x": 1}]' and (
        dest / "images" / "a.png"
    ).read_bytes() == b"png-bytes"
    zsha = hashlib.sha256((site / "d.zip").read_bytes()).hexdigest()
    assert (
        dest / "SHA256SUMS"
    ).read_text() == f"{good}  q.json  verified\n{zsha}  downloads/d.zip  UNVERIFIED\n"
    # offline: the placed files pass; a missing one is named
    fetch_benchmark("fake", dest, offline=True)
    (dest / "q.json").unlink()
    with pytest.raises(Exception, match="q.json"):
        fetch_benchmark("fake", dest, offline=True)
    # a wrong checksum is refused and nothing is placed
    monkeypatch.setitem(sources.SOURCES, "bad", (File("q.json", f"{url}/q.json", sha256="0" * 64),))
    with pytest.raises(Exception, match="sha256"):
        fetch_benchmark("bad", tmp_path / "bad")
    assert not (tmp_path / "bad" / "q.json").exists()
    with pytest.raises(ValueError, match="no download sources for benchmark 'nope'"):
        fetch_benchmark("nope", tmp_path)


def test_source_table_is_complete():
    assert set(sources.SOURCES) == {"mmvp", "hallusionbench", "llavabench", "mmhal"}
    mmvp = [f.path for f in sources.SOURCES["mmvp"]]
    assert mmvp[0] == "Questions.csv" and len(mmvp) == 301 and mmvp[-1] == "MMVP Images/300.jpg"
    assert sources.SOURCES["mmvp"][1].url.endswith("/MMVP%20Images/1.jpg")
    assert [f.path for f in sources.SOURCES["llavabench"]][-1] == "images/024.jpg"
    hb = sources.SOURCES["hallusionbench"][0]
    assert hb.sha256 and sources.HB_COMMIT in hb.url  # the one verified file


def test_workflow_plans_the_download_rules(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    cfg = {
        "world": "real",
        "offline": True,
        "seeds": [0],
        "device": "cpu",
        "models": {"m": {"path": str(model), "family": "llava"}},
        "benchmarks": {
            "mmvp": {"root": "resources/mmvp"},
            "hallusionbench": {"questions": "resources/hallusionbench/HallusionBench.json"},
            "llavabench": {
                "root": "resources/llavabench",
                "judge": {"url": "http://127.0.0.1:9/v1", "model": "j"},
            },
            "mmhal": {
                "questions": "resources/mmhal/response_template.json",
                "images": "resources/mmhal/images",
                "judge": {"url": "http://127.0.0.1:9/v1", "model": "j"},
            },
        },
        "protocol": "unified",
        "methods": {"greedy": {"method": "greedy"}},
    }
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(cfg))
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "--snakefile",
            str(ROOT / "Snakefile"),
            "--configfile",
            str(config),
            "--directory",
            str(tmp_path / "w"),
            "-n",
            "--cores",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    for rule in ("download_mmvp", "download_hallusionbench", "download_llavabench", "download_mmhal"):
        assert f"rule {rule}:" in out.stdout or f"localrule {rule}:" in out.stdout, rule
    # a judged benchmark without a judge fails at scoring naming the key (checked in the library here)
    from vcdflow.benchmarks import get_benchmark

    with pytest.raises(
        ValueError, match=r"config benchmarks.llavabench.judge: LLaVA-Bench \(in the wild\) needs"
    ):
        get_benchmark("llavabench").score({"name": "llavabench", "root": str(tmp_path)}, [])
