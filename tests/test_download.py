"""Downloads, offline checks, extraction, registry and NLTK installer - all against a local HTTP
server on 127.0.0.1 started here (no test touches the internet)."""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import io
import json
import re
import socket
import threading
import zipfile
from pathlib import Path

import pytest

from vcdflow.data import download as dl
from vcdflow.data import nltk_packages as nk
from vcdflow.data import registry
from vcdflow.data.download import (
    ChecksumMismatch,
    DownloadError,
    OfflineCheckError,
    SizeMismatch,
    check_offline,
    download,
    extract,
    hf_snapshot,
)


def _shared_root() -> Path:
    cand = Path(__file__).resolve().parents[2] / "shared"
    return cand if cand.is_dir() else Path("/work/shared")


SHARED_POPE = _shared_root() / "data" / "pope"


def payload(n: int, seed: int = 0) -> bytes:
    """Deterministic, non-repeating bytes (so an offset error changes the checksum)."""
    out = bytearray()
    i = 0
    while len(out) < n:
        out += hashlib.sha256(f"{seed}:{i}".encode()).digest()
        i += 1
    return bytes(out[:n])


# ----------------------------------------------------------------------------- test server
class Server:
    """Serves in-memory files with byte-range support and scripted misbehaviour."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.ignore_range: set[str] = set()
        self.no_length: set[str] = set()  # send no Content-Length (HTTP/1.0 close)
        self.cut: dict[str, list[int]] = {}  # path -> byte counts to cut at, one per request
        self.status: dict[str, list[int]] = {}  # path -> statuses to answer first
        self.probe: dict[str, callable] = {}  # path -> called half-way through the body
        self.requests: list[dict] = []
        srv = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):  # silence
                pass

            def do_GET(self):
                path = self.path.split("?")[0]
                srv.requests.append(
                    {
                        "path": path,
                        "range": self.headers.get("Range"),
                        "accept_encoding": self.headers.get("Accept-Encoding"),
                    }
                )
                if srv.status.get(path):
                    code = srv.status[path].pop(0)
                    self.send_response(code)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if path not in srv.files:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = srv.files[path]
                rng = self.headers.get("Range")
                start = 0
                if rng and path not in srv.ignore_range:
                    start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1))
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                if path not in srv.no_length:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                cuts = srv.cut.get(path)
                if cuts:
                    n = cuts.pop(0)
                    self.wfile.write(body[:n])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                if path in srv.probe:
                    half = len(body) // 2
                    self.wfile.write(body[:half])
                    self.wfile.flush()
                    srv.probe[path]()
                    self.wfile.write(body[half:])
                else:
                    self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def add(self, path: str, data: bytes) -> str:
        self.files[path] = data
        return self.base + path

    def hits(self, path: str) -> list[dict]:
        return [r for r in self.requests if r["path"] == path]

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def digests(b: bytes) -> dict:
    return {
        "md5": hashlib.md5(b).hexdigest(),
        "sha1": hashlib.sha1(b).hexdigest(),
        "sha256": hashlib.sha256(b).hexdigest(),
    }


# ----------------------------------------------------------------------------- download
def test_full_download_verifies_all_checksums(server, tmp_path):
    data = payload(300_000)
    url = server.add("/f.bin", data)
    dest = tmp_path / "sub" / "f.bin"
    out = download(url, dest, size=len(data), progress=True, **digests(data))
    assert out == dest and dest.read_bytes() == data
    assert not (tmp_path / "sub" / "f.bin.part").exists()
    [req] = server.hits("/f.bin")
    assert req["range"] is None
    assert req["accept_encoding"] == "identity"  # bytes on the wire == bytes of the file


def test_resume_after_cut_connection_on_second_call(server, tmp_path):
    data = payload(1_000_000, seed=1)
    url = server.add("/big.bin", data)
    server.cut["/big.bin"] = [300_000]
    dest = tmp_path / "big.bin"
    part = tmp_path / "big.bin.part"
    with pytest.raises(DownloadError, match="run again to resume") as ei:
        download(url, dest, md5=digests(data)["md5"], size=len(data), retries=0, progress=False)
    assert "big.bin.part" in str(ei.value)
    assert not dest.exists()
    kept = part.stat().st_size  # whole network chunks received before the cut
    assert 300_000 - dl.NET_CHUNK < kept <= 300_000
    assert part.read_bytes() == data[:kept]

    download(url, dest, md5=digests(data)["md5"], size=len(data), retries=0, progress=False)
    assert dest.read_bytes() == data
    assert not part.exists()
    assert [r["range"] for r in server.hits("/big.bin")] == [None, f"bytes={kept}-"]


def test_resume_within_one_call_after_repeated_cuts(server, tmp_path):
    data = payload(600_000, seed=2)
    url = server.add("/r.bin", data)
    server.cut["/r.bin"] = [100_000, 250_000]  # first two responses die mid-body
    dest = tmp_path / "r.bin"
    download(
        url, dest, sha256=digests(data)["sha256"], retries=3, backoff=0, progress=False, chunk_size=10_000
    )
    assert dest.read_bytes() == data
    assert [r["range"] for r in server.hits("/r.bin")] == [None, "bytes=100000-", "bytes=350000-"]


def test_server_ignoring_range_restarts_cleanly(server, tmp_path):
    data = payload(200_000, seed=3)
    url = server.add("/ign.bin", data)
    server.ignore_range.add("/ign.bin")
    dest = tmp_path / "ign.bin"
    # a stale .part whose bytes are NOT a prefix of the file: appending would corrupt it
    (tmp_path / "ign.bin.part").write_bytes(b"\xff" * 50_000)
    download(url, dest, md5=digests(data)["md5"], size=len(data), progress=False)
    assert dest.read_bytes() == data
    [req] = server.hits("/ign.bin")
    assert req["range"] == "bytes=50000-"  # asked to resume, got 200, rewrote from byte 0


def test_416_on_complete_part_and_on_stale_part(server, tmp_path):
    data = payload(50_000, seed=4)
    url = server.add("/c.bin", data)
    dest = tmp_path / "c.bin"
    (tmp_path / "c.bin.part").write_bytes(data)  # complete, size unknown to the caller
    download(url, dest, md5=digests(data)["md5"], progress=False)
    assert dest.read_bytes() == data
    assert [r["range"] for r in server.hits("/c.bin")] == ["bytes=50000-"]

    # a .part longer than the server's file: 416 with another total -> restart from byte 0
    dest2 = tmp_path / "c2.bin"
    (tmp_path / "c2.bin.part").write_bytes(payload(60_000, seed=9))
    download(url, dest2, md5=digests(data)["md5"], progress=False)
    assert dest2.read_bytes() == data
    assert [r["range"] for r in server.hits("/c.bin")][1:] == ["bytes=60000-", None]


def test_checksum_mismatch_names_file_expected_actual_and_places_nothing(server, tmp_path):
    data = payload(10_000, seed=5)
    url = server.add("/m.json", data)
    dest = tmp_path / "m.json"
    wrong = "0" * 32
    with pytest.raises(ChecksumMismatch) as ei:
        download(url, dest, md5=wrong, progress=False)
    msg = str(ei.value)
    actual = hashlib.md5(data).hexdigest()
    assert "m.json" in msg and wrong in msg and actual in msg and url in msg
    assert ei.value.expected == wrong and ei.value.actual == actual
    assert not dest.exists()
    assert not (tmp_path / "m.json.part").exists()  # never resumed from
    assert (tmp_path / "m.json.bad").read_bytes() == data  # kept for inspection only
    # the next call starts from scratch (no Range), and succeeds with the right checksum
    download(url, dest, md5=actual, progress=False)
    assert dest.read_bytes() == data and server.hits("/m.json")[-1]["range"] is None


def test_sha256_mismatch_when_md5_matches(server, tmp_path):
    data = payload(5_000, seed=6)
    url = server.add("/s.bin", data)
    with pytest.raises(ChecksumMismatch, match="sha256") as ei:
        download(url, tmp_path / "s.bin", md5=hashlib.md5(data).hexdigest(), sha256="a" * 64, progress=False)
    assert ei.value.actual == hashlib.sha256(data).hexdigest()
    assert not (tmp_path / "s.bin").exists()


def test_size_mismatch_announced_by_server(server, tmp_path):
    data = payload(8_000, seed=7)
    url = server.add("/z.bin", data)
    dest = tmp_path / "z.bin"
    with pytest.raises(SizeMismatch) as ei:
        download(url, dest, size=8_005, progress=False)
    assert "z.bin" in str(ei.value) and "8005" in str(ei.value) and "8000" in str(ei.value)
    assert not dest.exists() and not (tmp_path / "z.bin.part").exists()


def test_size_mismatch_of_finished_transfer(server, tmp_path):
    # no Content-Length (HTTP/1.0 body until close): the size is only known after the
    # transfer, so a too-long file is a verification failure - bytes parked, nothing placed
    data = payload(4_000, seed=8)
    url = server.add("/n.bin", data)
    server.no_length.add("/n.bin")
    dest = tmp_path / "n.bin"
    with pytest.raises(SizeMismatch) as ei:
        download(url, dest, size=3_990, retries=0, progress=False)
    assert "expected 3990 bytes, actual 4000 bytes" in str(ei.value) and "n.bin" in str(ei.value)
    assert not dest.exists() and not (tmp_path / "n.bin.part").exists()
    assert (tmp_path / "n.bin.bad").read_bytes() == data
    # too short (the connection just ended): incomplete, kept for resumption, not placed
    with pytest.raises(DownloadError, match="ended after 4000 of 4010 bytes"):
        download(url, dest, size=4_010, retries=0, progress=False)
    assert not dest.exists() and (tmp_path / "n.bin.part").stat().st_size == 4_000


def test_stale_part_longer_than_expected_is_discarded(server, tmp_path):
    data = payload(4_000, seed=15)
    url = server.add("/l.bin", data)
    dest = tmp_path / "l.bin"
    (tmp_path / "l.bin.part").write_bytes(data + b"extra")
    download(url, dest, size=4_000, md5=digests(data)["md5"], progress=False)
    assert dest.read_bytes() == data
    assert [r["range"] for r in server.hits("/l.bin")] == [None]


def test_dest_never_exists_while_downloading(server, tmp_path):
    data = payload(400_000, seed=10)
    url = server.add("/a.bin", data)
    dest = tmp_path / "a.bin"
    seen = []
    server.probe["/a.bin"] = lambda: seen.append(dest.exists())
    download(url, dest, md5=digests(data)["md5"], progress=False)
    assert seen == [False]
    assert dest.read_bytes() == data


def test_existing_valid_dest_is_not_downloaded_again(server, tmp_path):
    data = payload(1000, seed=11)
    url = server.add("/e.bin", data)
    dest = tmp_path / "e.bin"
    dest.write_bytes(data)
    download(url, dest, md5=digests(data)["md5"], progress=False)
    assert server.hits("/e.bin") == []


def test_existing_corrupt_dest_is_replaced_after_verification(server, tmp_path):
    data = payload(1000, seed=12)
    url = server.add("/x.bin", data)
    dest = tmp_path / "x.bin"
    dest.write_bytes(b"corrupt")
    download(url, dest, md5=digests(data)["md5"], progress=False)
    assert dest.read_bytes() == data


def test_http_404_fails_at_once_naming_url(server, tmp_path):
    url = server.base + "/missing.bin"
    with pytest.raises(DownloadError, match="404") as ei:
        download(url, tmp_path / "missing.bin", retries=3, backoff=0, progress=False)
    assert url in str(ei.value)
    assert len(server.hits("/missing.bin")) == 1
    assert not (tmp_path / "missing.bin").exists()


def test_http_503_is_retried(server, tmp_path):
    data = payload(2000, seed=13)
    url = server.add("/t.bin", data)
    server.status["/t.bin"] = [503, 503]
    download(url, tmp_path / "t.bin", md5=digests(data)["md5"], retries=2, backoff=0, progress=False)
    assert (tmp_path / "t.bin").read_bytes() == data
    assert len(server.hits("/t.bin")) == 3


# ----------------------------------------------------------------------------- offline
class NoNetwork:
    def get(self, *a, **k):
        raise AssertionError("network used in offline mode")


def test_offline_missing_file_names_it_without_network(server, tmp_path):
    url = server.add("/o.bin", b"x")
    dest = tmp_path / "deep" / "o.bin"
    with pytest.raises(FileNotFoundError) as ei:
        download(url, dest, md5="0" * 32, offline=True, session=NoNetwork())
    assert str(dest) in str(ei.value)
    assert server.requests == []


def test_offline_preplaced_correct_file_succeeds_without_network(tmp_path):
    data = payload(3000, seed=14)
    dest = tmp_path / "p.bin"
    dest.write_bytes(data)
    out = download(
        "http://127.0.0.1:9/unreachable",
        dest,
        sha256=digests(data)["sha256"],
        size=3000,
        offline=True,
        session=NoNetwork(),
        progress=False,
    )
    assert out == dest


def test_offline_preplaced_bad_file_is_an_error_and_left_alone(tmp_path):
    dest = tmp_path / "q.bin"
    dest.write_bytes(b"wrong bytes")
    with pytest.raises(ChecksumMismatch, match="q.bin"):
        download("http://127.0.0.1:9/x", dest, md5="0" * 32, offline=True, session=NoNetwork())
    assert dest.read_bytes() == b"wrong bytes"


def test_check_offline_names_each_missing_and_bad_file(tmp_path):
    good = tmp_path / "good.txt"
    good.write_bytes(b"hello")
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"hullo")
    miss1, miss2 = tmp_path / "a" / "missing1.json", tmp_path / "missing2.zip"
    md5_hello = hashlib.md5(b"hello").hexdigest()
    with pytest.raises(OfflineCheckError) as ei:
        check_offline(
            [(good, f"md5:{md5_hello}"), (miss1, None), (bad, md5_hello), (miss2, "sha256:" + "0" * 64)]
        )
    msg = str(ei.value)
    assert str(miss1) in msg and str(miss2) in msg and str(bad) in msg
    assert hashlib.md5(b"hullo").hexdigest() in msg and md5_hello in msg
    assert str(good) not in msg
    assert ei.value.missing == [miss1, miss2]
    assert isinstance(ei.value, FileNotFoundError)
    check_offline([(good, md5_hello), (good, None)])  # all fine -> no error


def test_parse_checksum():
    assert dl.parse_checksum("MD5:" + "A" * 32) == ("md5", "a" * 32)
    assert dl.parse_checksum("b" * 40) == ("sha1", "b" * 40)
    with pytest.raises(ValueError, match="not a checksum"):
        dl.parse_checksum("md5:1234")


# ----------------------------------------------------------------------------- extract
def make_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


ANN = {
    f"annotations/{k}_{s}2014.json": json.dumps({"k": k, "s": s}).encode()
    for k in ("captions", "instances", "person_keypoints")
    for s in ("train", "val")
}


def test_extract_selected_members_only(tmp_path):
    z = make_zip(tmp_path / "ann.zip", ANN)
    want = [
        "annotations/instances_val2014.json",
        "annotations/captions_val2014.json",
        "annotations/instances_train2014.json",
        "annotations/captions_train2014.json",
    ]
    out_dir = tmp_path / "coco"
    (out_dir / "val2014").mkdir(parents=True)  # an existing sibling folder is kept
    placed = extract(z, out_dir, members=want, progress=False)
    assert placed == sorted(out_dir / w for w in want)
    for w in want:
        assert (out_dir / w).read_bytes() == ANN[w]
    assert not (out_dir / "annotations" / "person_keypoints_val2014.json").exists()
    assert sorted(p.name for p in out_dir.iterdir()) == ["annotations", "val2014"]  # no temp left

    # a second extraction merges into the existing folder
    extract(z, out_dir, members=["annotations/person_keypoints_val2014.json"], progress=False)
    assert len(list((out_dir / "annotations").iterdir())) == 5


def test_extract_folder_prefix_and_missing_member(tmp_path):
    z = make_zip(tmp_path / "imgs.zip", {"val2014/a.jpg": b"A", "val2014/b.jpg": b"B", "other/c.txt": b"C"})
    placed = extract(z, tmp_path / "out", members=["val2014/"], progress=False)
    assert [p.name for p in placed] == ["a.jpg", "b.jpg"]
    assert not (tmp_path / "out" / "other").exists()
    with pytest.raises(KeyError, match="val2014/zzz.jpg") as ei:
        extract(z, tmp_path / "out2", members=["val2014/zzz.jpg"], progress=False)
    assert "imgs.zip" in str(ei.value)
    assert not (tmp_path / "out2").exists()


def test_extract_refuses_path_traversal_and_bad_zip(tmp_path):
    z = make_zip(tmp_path / "evil.zip", {"../evil.txt": b"x"})
    with pytest.raises(ValueError, match="unsafe"):
        extract(z, tmp_path / "out", progress=False)
    assert not (tmp_path / "evil.txt").exists()
    notzip = tmp_path / "page.zip"
    notzip.write_text("<html>Google Drive - virus scan warning</html>")
    with pytest.raises(ValueError, match="page.zip"):
        extract(notzip, tmp_path / "out", progress=False)


# ----------------------------------------------------------------------------- registry
POPE_LOCAL = {  # (version, dataset) -> folder in /work/shared/data/pope
    ("109985c", "coco"): "coco",
    ("109985c", "aokvqa"): "aokvqa",
    ("109985c", "gqa"): "gqa",
    ("e3e3926", "coco"): "coco-e3e3926",
}


@pytest.mark.skipif(not SHARED_POPE.is_dir(), reason=f"{SHARED_POPE} not present")
@pytest.mark.parametrize("version,dataset", sorted(POPE_LOCAL))
def test_registry_pope_md5_and_size_match_shared_files(version, dataset):
    entries = registry.pope_files(dataset, version)
    assert sorted(entries) == ["adversarial", "popular", "random"]
    for split, e in entries.items():
        f = SHARED_POPE / POPE_LOCAL[(version, dataset)] / e.filename
        assert split in e.filename
        data = f.read_bytes()
        assert e.size == len(data), f
        assert e.md5 == hashlib.md5(data).hexdigest(), f
        assert e.checksum_status == "verified"
        commit = registry.POPE_COMMITS[version]
        assert e.url == (
            f"https://raw.githubusercontent.com/AoiDragon/POPE/{commit}/"
            + ("output/coco/" if dataset == "coco" else f"output/seem/{dataset}/")
            + e.filename
        )


@pytest.mark.skipif(not SHARED_POPE.is_dir(), reason=f"{SHARED_POPE} not present")
def test_registry_pope_question_counts_match_notes():
    """109985c: 3000 questions per split; e3e3926 random: 2910 (spec section 1)."""

    def count(path: Path) -> int:
        text = path.read_text()
        return (
            len(json.loads(text))
            if text.lstrip().startswith("[")
            else sum(1 for line in text.splitlines() if line.strip())
        )

    for split in registry.POPE_SPLITS:
        for ds in registry.POPE_DATASETS:
            e = registry.pope_files(ds)[split]
            assert count(SHARED_POPE / ds / e.filename) == 3000
    assert count(SHARED_POPE / "coco-e3e3926" / "coco_pope_random.json") == 2910


@pytest.mark.skipif(not SHARED_POPE.is_dir(), reason=f"{SHARED_POPE} not present")
def test_registry_entry_fetch_through_local_mirror(server, tmp_path):
    e = registry.pope_files("coco", "llava-1.5")["random"]
    data = (SHARED_POPE / "coco-e3e3926" / e.filename).read_bytes()
    local = dataclasses.replace(e, url=server.add("/pope/" + e.filename, data))
    out = local.fetch(tmp_path / "pope" / e.filename, progress=False)
    assert out.read_bytes() == data
    # the same bytes under the HEAD version's checksum fail and are not placed
    head = registry.pope_files("coco")["random"]
    wrong = dataclasses.replace(head, url=local.url)
    with pytest.raises(SizeMismatch):
        wrong.fetch(tmp_path / "head" / e.filename, progress=False)
    assert not (tmp_path / "head" / e.filename).exists()


def test_spacy_model_wheel_unpacks_to_a_loadable_folder(server, tmp_path, monkeypatch):
    """Rule download_spacy_model: the en_core_web_lg wheel is fetched (verified) and its model
    folder (the one spacy.load takes) is extracted; the wheel's other files are left out."""
    import io
    import zipfile

    from vcdflow.data import fetch

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("en_core_web_lg/__init__.py", "")
        z.writestr("en_core_web_lg/en_core_web_lg-3.8.0/config.cfg", '[nlp]\nlang = "en"\n')
        z.writestr("en_core_web_lg/en_core_web_lg-3.8.0/vocab/strings.json", "[]")
        z.writestr("en_core_web_lg-3.8.0.dist-info/METADATA", "Name: en_core_web_lg")
    data = buf.getvalue()
    real = registry.get("spacy/en_core_web_lg")
    fake = dataclasses.replace(
        real, url=server.add("/" + real.filename, data), sha256=digests(data)["sha256"]
    )
    monkeypatch.setattr(fetch.registry, "get", lambda name: fake if name == real.name else registry.get(name))
    dest = tmp_path / "resources/spacy/en_core_web_lg"
    fetch.fetch_zip_members(
        real.name,
        dest,
        cache_dir=tmp_path / "downloads",
        progress=False,
        strip="en_core_web_lg/en_core_web_lg-3.8.0",
    )
    assert sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file()) == [
        "config.cfg",
        "vocab/strings.json",
    ]
    # a wheel with another checksum is refused and nothing is placed
    other = tmp_path / "other"
    monkeypatch.setattr(fetch.registry, "get", lambda name: dataclasses.replace(fake, sha256="0" * 64))
    with pytest.raises(ChecksumMismatch):
        fetch.fetch_zip_members(
            real.name,
            other,
            cache_dir=tmp_path / "downloads2",
            progress=False,
            strip="en_core_web_lg/en_core_web_lg-3.8.0",
        )
    assert not other.exists()


def test_entry_without_checksum_is_fetched_with_a_warning(server, tmp_path, monkeypatch, caplog):
    import logging

    from vcdflow.data import fetch

    real = registry.get("amber/images")
    assert real.checksum() is None
    fake = dataclasses.replace(real, url=server.add("/amber.zip", b"bytes"), kind="http")
    monkeypatch.setattr(fetch.registry, "get", lambda name: fake)
    dest = tmp_path / "amber.zip"
    with caplog.at_level(logging.WARNING, logger="vcdflow.data.fetch"):
        fetch.fetch_entry("amber/images", dest, progress=False)
    assert dest.read_bytes() == b"bytes"
    assert f"amber/images: no published checksum; {dest} is used unverified" in caplog.text


def test_registry_table_is_well_formed():
    names = registry.names()
    for required in (
        "coco/val2014",
        "coco/annotations_trainval2014",
        "gqa/images",
        "mme/lmms-lab",
        "mme/original-zip",
        "mme/eval_tool",
        "amber/annotations",
        "amber/query_all",
        "amber/images",
        "spacy/en_core_web_lg",
        "nltk/punkt_tab",
        "nltk/averaged_perceptron_tagger_eng",
        "nltk/wordnet",
    ):
        assert required in names
    for n in names:
        e = registry.get(n)
        assert e.name == n and e.checksum_status in ("verified", "third-party", "none")
        for algo, val in e.checksums().items():
            assert dl.parse_checksum(f"{algo}:{val}") == (algo, val)
        if e.checksum_status == "verified":
            assert e.size and (e.md5 or e.sha256), n
        if e.checksum_status == "none":
            assert e.checksum() is None
        if e.kind == "http":
            assert e.url.startswith(("http://", "https://")), n
        if e.url and "raw.githubusercontent.com" in e.url:
            assert re.search(r"/[0-9a-f]{40}/", e.url), f"{n} not pinned by commit: {e.url}"
    coco = registry.get("coco/val2014")
    assert coco.size == 6_645_013_297 and coco.md5 == "a3d79f5ed8d289b7a7554ce06a5782b3"
    assert coco.checksum_status == "third-party"
    ann = registry.get("coco/annotations_trainval2014")
    assert ann.size == 252_872_794 and ann.md5 == "d3e24dc9f5bda3e7887a1e6a5ff34c0c"
    assert len(ann.members) == 4
    mme = registry.get("mme/lmms-lab")
    assert mme.kind == "hf" and re.fullmatch(r"[0-9a-f]{40}", mme.hf["revision"])


def test_registry_aliases_and_errors():
    assert registry.get("pope/coco/llava-1.5/random") is registry.get("pope/coco/e3e3926/random")
    assert registry.get("pope/coco/head/random").md5 == "dc9b6c41ad832c48da758cfa85b37d2c"
    assert registry.pope_files("coco")["adversarial"].md5 == "3b1a278f8d61acd21b27020d0af817cb"
    assert registry.pope_files("coco", "edebdda")["adversarial"].size == 370_458
    with pytest.raises(KeyError, match="only coco"):
        registry.pope_files("gqa", "e3e3926")
    with pytest.raises(KeyError, match="unknown POPE version"):
        registry.pope_files("coco", "v9")
    with pytest.raises(KeyError, match="amber/annotations"):
        registry.get("amber/annotation")


# ----------------------------------------------------------------------------- NLTK
def test_nltk_package_table_pins():
    for pid in nk.DEFAULT_PACKAGES + nk.LEGACY_PACKAGES:
        p = nk.PACKAGES[pid]
        assert nk.NLTK_DATA_COMMIT in p.url()
        assert p.url().endswith(f"/packages/{p.subdir}/{pid}.zip")
        assert len(p.sha256) == 64 and p.size > 0
    assert {nk.PACKAGES[p].subdir for p in nk.DEFAULT_PACKAGES} == {"tokenizers", "taggers", "corpora"}
    assert nk.PACKAGES["wordnet"].unzip is False and nk.PACKAGES["punkt_tab"].unzip is True
    with pytest.raises(KeyError, match="punkt_tabb"):
        nk.install_nltk_data("/nonexistent", ["punkt_tabb"], offline=True)


def _fake_pkg(pid: str, subdir: str, unzip: bool, files: dict[str, bytes]):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(f"{pid}/", b"")
        for name, data in files.items():
            zf.writestr(f"{pid}/{name}", data)
    raw = buf.getvalue()
    pkg = nk.NltkPackage(
        id=pid,
        subdir=subdir,
        size=len(raw),
        unzip=unzip,
        sha256=hashlib.sha256(raw).hexdigest(),
        md5=hashlib.md5(raw).hexdigest(),
    )
    return pkg, raw


def test_install_nltk_data_layout_idempotence_and_offline(server, tmp_path, monkeypatch):
    import nltk

    tab, tab_zip = _fake_pkg(
        "punkt_tab",
        "tokenizers",
        True,
        {"english/collocations.tab": b"", "english/sent_starters.txt": b"x\n"},
    )
    wn, wn_zip = _fake_pkg("wordnet", "corpora", False, {"lexnames": b"00 adj.all 3\n"})
    base = server.base + "/packages"
    server.add("/packages/tokenizers/punkt_tab.zip", tab_zip)
    server.add("/packages/corpora/wordnet.zip", wn_zip)
    dest = tmp_path / "nltk_data"

    # offline before anything is there: one error naming both zips, no request
    with pytest.raises(OfflineCheckError) as ei:
        nk.install_nltk_data(dest, [tab, wn], offline=True, base_url=base, progress=False)
    assert str(dest / "tokenizers" / "punkt_tab.zip") in str(ei.value)
    assert str(dest / "corpora" / "wordnet.zip") in str(ei.value)
    assert server.requests == []

    nk.install_nltk_data(dest, [tab, wn], base_url=base, progress=False)
    assert (dest / "tokenizers" / "punkt_tab" / "english" / "sent_starters.txt").read_bytes() == b"x\n"
    assert (dest / "tokenizers" / "punkt_tab.zip").read_bytes() == tab_zip
    assert (dest / "corpora" / "wordnet.zip").is_file()
    assert not (dest / "corpora" / "wordnet").exists()  # unzip="0": read from the zip
    # NLTK >= 3.10 only reads from roots listed in nltk.data.path (its pathsec sandbox)
    monkeypatch.setattr(nltk.data, "path", [str(dest)])
    assert nltk.data.find("tokenizers/punkt_tab/english/").path.startswith(str(dest))
    with nltk.data.find("corpora/wordnet.zip/wordnet/lexnames").open() as fh:
        assert fh.read() == b"00 adj.all 3\n"
    assert nk.nltk_data_status(dest, [tab, wn]) == {"punkt_tab": True, "wordnet": True}
    assert sorted(p.name for p in (dest / "tokenizers").iterdir()) == ["punkt_tab", "punkt_tab.zip"]

    n = len(server.requests)
    nk.install_nltk_data(dest, [tab, wn], base_url=base, progress=False)  # nothing to do
    assert len(server.requests) == n
    nk.install_nltk_data(dest, [tab, wn], offline=True, progress=False)  # offline: verifies
    assert len(server.requests) == n

    # a corrupted package folder (marker of another zip) is re-extracted from the zip
    (dest / "tokenizers" / "punkt_tab" / nk.MARKER).write_text("0" * 64)
    (dest / "tokenizers" / "punkt_tab" / "english" / "sent_starters.txt").write_bytes(b"bad")
    assert nk.nltk_data_status(dest, [tab]) == {"punkt_tab": False}
    nk.install_nltk_data(dest, [tab], offline=True, progress=False)
    assert (dest / "tokenizers" / "punkt_tab" / "english" / "sent_starters.txt").read_bytes() == b"x\n"


# ----------------------------------------------------------------------------- HF hub
def test_hf_snapshot_passes_token_from_env_and_never_returns_it(monkeypatch, tmp_path):
    import huggingface_hub

    seen = {}

    def fake_snapshot_download(**kw):
        seen.update(kw)
        Path(kw["local_dir"], "data").mkdir(parents=True)
        Path(kw["local_dir"], "data", "test-00000.parquet").write_bytes(b"PAR1")
        return kw["local_dir"]

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    monkeypatch.setenv("MY_HF_TOKEN", "hf_secret_value")
    out = hf_snapshot(
        "lmms-lab/MME",
        tmp_path / "mme",
        revision="a" * 40,
        repo_type="dataset",
        allow_patterns=["data/test-*.parquet"],
        token_env="MY_HF_TOKEN",
    )
    assert out == tmp_path / "mme"
    assert seen["token"] == "hf_secret_value" and seen["revision"] == "a" * 40
    assert seen["repo_type"] == "dataset" and seen["allow_patterns"] == ["data/test-*.parquet"]
    assert "hf_secret_value" not in repr(out)
    # offline: the placed snapshot satisfies the patterns, no hub call
    monkeypatch.setattr(
        huggingface_hub, "snapshot_download", lambda **kw: pytest.fail("network used offline")
    )
    assert (
        hf_snapshot(
            "lmms-lab/MME",
            tmp_path / "mme",
            revision="a" * 40,
            repo_type="dataset",
            allow_patterns="data/test-*.parquet",
            offline=True,
        )
        == tmp_path / "mme"
    )
    with pytest.raises(FileNotFoundError) as ei:
        hf_snapshot(
            "org/model",
            tmp_path / "nomodel",
            revision="b" * 40,
            allow_patterns=["*.safetensors"],
            offline=True,
        )
    assert str(tmp_path / "nomodel") in str(ei.value) and "*.safetensors" in str(ei.value)


def test_hf_snapshot_errors_redact_token(monkeypatch, tmp_path):
    import huggingface_hub

    def boom(**kw):
        raise RuntimeError(f"401 unauthorized for token {kw['token']}")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", boom)
    monkeypatch.setenv("HF_TOKEN", "hf_topsecret")
    with pytest.raises(DownloadError) as ei:
        hf_snapshot("org/private", tmp_path / "m", revision="c" * 40)
    assert "hf_topsecret" not in str(ei.value) and "org/private" in str(ei.value)
    assert ei.value.__cause__ is None and ei.value.__suppress_context__
    with pytest.raises(ValueError, match="revision"):
        hf_snapshot("org/model", tmp_path / "m", revision="")
