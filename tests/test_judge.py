"""Chat judges (vcdflow.metrics.judge) against a fake OpenAI-compatible server on 127.0.0.1 that
the test starts (and that stops itself), and the two judged benchmarks, LLaVA-Bench (in the wild)
and MMHal-Bench, against their official scoring code (file:line cited per function)."""

import json
import logging
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from vcdflow.metrics import llavabench, mmhal
from vcdflow.metrics.judge import JudgeError, LocalJudge, OpenAIJudge, judged_by, make_judge

KEY = "sk-test-NEVER-LOG-THIS-0123456789"


class FakeOpenAI:
    """A chat-completions server on loopback. ``reply(body) -> str`` makes the answer;
    ``fail_first`` answers that many requests with HTTP 500 first. Stops after ``lifetime`` s."""

    def __init__(self, reply, fail_first=0, status=None, lifetime=60.0, fail_after=None, failure="500"):
        """``fail_after``: after that many good replies every request fails as ``failure`` says:
        ``500``, ``malformed`` (200 with a body that is not JSON), ``hang`` (no reply for 2 s),
        ``close`` (the connection closed without a reply: a server dying mid-scoring)."""
        self.requests, self.reply, self.fail_first, self.status = [], reply, fail_first, status
        self.fail_after, self.failure, self.good = fail_after, failure, 0
        outer = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append(
                    {"path": self.path, "auth": self.headers.get("Authorization"), "body": body}
                )
                if outer.fail_after is not None and outer.good >= outer.fail_after:
                    if outer.failure == "hang":
                        import time

                        time.sleep(2.0)
                        return
                    if outer.failure == "close":
                        self.close_connection = True
                        self.connection.close()
                        return
                    if outer.failure == "malformed":
                        self.send_response(200)
                        self.send_header("Content-Length", "12")
                        self.end_headers()
                        self.wfile.write(b'{"choices": ')
                        return
                    self.send_response(500)
                    self.end_headers()
                    return
                if outer.status or outer.fail_first > 0:
                    outer.fail_first -= 1
                    self.send_response(outer.status or 500)
                    self.end_headers()
                    self.wfile.write(b'{"error": "boom"}')
                    return
                out = json.dumps(
                    {
                        "id": "x",
                        "object": "chat.completion",
                        "model": body["model"] + "-served",
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": outer.reply(body)},
                                "finish_reason": "stop",
                            }
                        ],
                    }
                ).encode()
                outer.good += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.timer = threading.Timer(lifetime, self.server.shutdown)  # bounded even if a test hangs
        self.timer.daemon = True

    def __enter__(self):
        self.thread.start()
        self.timer.start()
        return self

    def __exit__(self, *exc):
        self.timer.cancel()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def _user(body):
    return [m for m in body["messages"] if m["role"] == "user"][0]["content"]


def test_openai_judge_sends_key_only_in_header_and_never_logs_it(monkeypatch, caplog, capsys):
    monkeypatch.setenv("VCDFLOW_TEST_JUDGE_KEY", KEY)
    caplog.set_level(logging.DEBUG)
    with FakeOpenAI(lambda b: "yes", fail_first=1) as srv:
        j = make_judge(
            {
                "kind": "openai",
                "url": srv.url,
                "model": "gpt-fake",
                "api_key_env": "VCDFLOW_TEST_JUDGE_KEY",
                "retry_sleep": 0,
            }
        )
        rep = j.chat([{"role": "user", "content": "hi"}], temperature=0.2, max_tokens=5)
    assert rep.text == "yes" and rep.reported_model == "gpt-fake-served"
    assert len(srv.requests) == 2  # the HTTP 500 was retried
    r = srv.requests[-1]
    assert r["path"] == "/v1/chat/completions" and r["auth"] == f"Bearer {KEY}"
    assert r["body"] == {
        "model": "gpt-fake",
        "messages": [{"role": "user", "content": "hi"}],
        "temperature": 0.2,
        "max_tokens": 5,
    }
    assert j.describe() == {
        "kind": "openai",
        "name": "openai:gpt-fake",
        "model": "gpt-fake",
        "url": srv.url + "/chat/completions",
        "api_key_env": "VCDFLOW_TEST_JUDGE_KEY",
    }
    out = capsys.readouterr()
    assert KEY not in caplog.text + out.out + out.err + json.dumps(j.describe()) + repr(j.__dict__)


def test_key_problems_fail_with_one_clear_line(monkeypatch):
    monkeypatch.delenv("VCDFLOW_TEST_JUDGE_KEY", raising=False)
    with pytest.raises(ValueError, match="'api_key' is not allowed"):
        make_judge({"kind": "openai", "url": "http://127.0.0.1:1", "model": "m", "api_key": KEY})
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['modle'\]"):
        make_judge({"kind": "openai", "url": "http://127.0.0.1:1", "modle": "m"})
    j = OpenAIJudge("http://127.0.0.1:1/v1", "m", api_key_env="VCDFLOW_TEST_JUDGE_KEY")
    with pytest.raises(JudgeError, match="environment variable VCDFLOW_TEST_JUDGE_KEY is not set"):
        j.chat([{"role": "user", "content": "x"}])
    monkeypatch.setenv("VCDFLOW_TEST_JUDGE_KEY", KEY)
    with FakeOpenAI(lambda b: "never", status=401) as srv:
        j = OpenAIJudge(srv.url, "m", api_key_env="VCDFLOW_TEST_JUDGE_KEY", retries=3, retry_sleep=0)
        with pytest.raises(JudgeError) as e:
            j.chat([{"role": "user", "content": "x"}])
    assert "HTTP 401" in str(e.value) and KEY not in str(e.value)
    assert len(srv.requests) == 1  # a 401 is not retried


@pytest.mark.parametrize(
    "failure,cause",
    [
        ("500", "HTTP 500"),
        ("malformed", "malformed JSON reply"),
        ("hang", "no reply within 0.5 s (timeout)"),
        ("close", "RemoteDisconnected"),
        ("down", "Connection refused"),
    ],
)
def test_every_judge_failure_is_retried_then_one_line_naming_the_judge_and_kept_judgements_resume(
    failure, cause, tmp_path, monkeypatch
):
    """Endpoint down, HTTP 500, timeout, malformed JSON, a server dying after 2 replies: each is
    retried (``retries`` attempts), then one line naming the judge's model and URL and the cause;
    the 2 judgements made are checkpointed and a rerun asks only the rest."""
    from vcdflow.metrics.judge import judge_rows, judgement_checkpoint

    monkeypatch.setenv("VCDFLOW_TEST_JUDGE_KEY", KEY)
    rows = [{"item_id": f"i{i}", "answer": f"a{i}"} for i in range(4)]
    build = lambda r: [{"role": "user", "content": r["answer"]}]  # noqa: E731
    ckpt = tmp_path / "x.judgements.jsonl"
    with FakeOpenAI(lambda b: "ok", fail_after=2, failure=failure) as srv:
        url = srv.url if failure != "down" else "http://127.0.0.1:9/v1"  # discard port: refused
        cfg = {
            "kind": "openai",
            "url": url,
            "model": "fake-judge-9",
            "api_key_env": "VCDFLOW_TEST_JUDGE_KEY",
            "retries": 2,
            "retry_sleep": 0,
            "timeout": 0.5,
        }
        with judgement_checkpoint(ckpt), pytest.raises(JudgeError) as e:
            judge_rows(rows, cfg, build)
        n_req = len(srv.requests)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("judge fake-judge-9 at http://127.0.0.1:") and cause in msg, msg
    assert "(after 2 attempt(s))" in msg and KEY not in msg
    kept = 0 if failure == "down" else 2
    assert n_req == (0 if failure == "down" else 2 + 2)  # two good, then the failing one twice
    assert len(ckpt.read_text().splitlines()) == kept
    with FakeOpenAI(lambda b: "ok") as srv:
        with judgement_checkpoint(ckpt):
            out = judge_rows(rows, {**cfg, "url": srv.url}, build)
    assert [r["judge_reply"] for r in out] == ["ok"] * 4 and len(srv.requests) == 4 - kept
    assert KEY not in ckpt.read_text()


def test_unset_key_variable_found_before_any_decoding(monkeypatch):
    from vcdflow.benchmarks.judged import check_judge_keys

    monkeypatch.delenv("VCDFLOW_TEST_UNSET_KEY", raising=False)
    judge = {
        "kind": "openai",
        "url": "http://127.0.0.1:9",
        "model": "m",
        "api_key_env": "VCDFLOW_TEST_UNSET_KEY",
    }
    with pytest.raises(
        JudgeError,
        match=r"config benchmarks\.llavabench\.judge\.api_key_env: environment "
        r"variable VCDFLOW_TEST_UNSET_KEY is not set",
    ):
        check_judge_keys({"benchmarks": {"llavabench": {"judge": judge}}})
    check_judge_keys(
        {"benchmarks": {"mmvp": {"judge": judge, "parser": "lmms"}}}
    )  # that parser asks no judge
    check_judge_keys({"benchmarks": {"llavabench": {"judge": {**judge, "api_key_env": None}}}})


# ---- LLaVA-Bench (in the wild) -------------------------------------------------------------


def official_parse_score(review):  # haotian-liu/LLaVA llava/eval/eval_gpt_review_bench.py:36-49
    try:
        score_pair = review.split("\n")[0]
        score_pair = score_pair.replace(",", " ")
        sp = score_pair.split(" ")
        if len(sp) == 2:
            return [float(sp[0]), float(sp[1])]
        return [-1, -1]
    except Exception:
        return [-1, -1]


def official_summarize(reviews):  # llava/eval/summarize_gpt_review.py:40-59
    from collections import defaultdict

    scores = defaultdict(list)
    for review in reviews:
        scores[review["category"]].append(review["tuple"])
        scores["all"].append(review["tuple"])
    out = {}
    for k, v in sorted(scores.items()):
        stats = np.asarray(v).mean(0).tolist()
        stats = [round(x, 3) for x in stats]
        out[k] = (round(stats[1] / stats[0] * 100, 1), round(stats[0] * 10, 1), round(stats[1] * 10, 1))
    return out


def write_llavabench(root):
    (root / "images").mkdir(parents=True)
    qs = [
        {"question_id": i, "image": f"{i // 2:03d}.jpg", "text": f"Question {i}?", "category": c}
        for i, c in enumerate(["conv", "detail", "complex", "conv", "detail", "complex"])
    ]
    ctx = [
        {"image": f"{k:03d}.jpg", "caption": [f"caption {k} a", f"caption {k} b"] if k else "one caption"}
        for k in range(3)
    ]
    refs = [{"question_id": i, "text": f"reference answer {i}"} for i in range(6)]
    for name, rows in (("questions.jsonl", qs), ("context.jsonl", ctx), ("answers_gpt4.jsonl", refs)):
        (root / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


# first line -> official tuple: "8 6"; "9,7"; "10 10"; "Score: 8 5" (3 fields -> [-1,-1]); "7  4" (two
# spaces -> 3 fields -> [-1,-1]); "6 3"
LLAVA_REPLIES = ["8 6\nBecause.", "9,7\nok", "10 10", "Score: 8 5\nx", "7  4", "6 3"]


def test_llavabench_through_fake_server_equals_official(tmp_path, monkeypatch):
    monkeypatch.setenv("VCDFLOW_TEST_JUDGE_KEY", KEY)
    items = llavabench.load_items(write_llavabench(tmp_path / "lb"))
    assert items[2]["caption"] == "caption 1 a\ncaption 1 b" and items[0]["caption"] == "one caption"
    recs = [
        {"item_id": it["item_id"], "answer": f"model answer {i}", "error": None} for i, it in enumerate(items)
    ]
    with FakeOpenAI(lambda b: LLAVA_REPLIES[int(re.search(r"Question (\d)\?", _user(b)).group(1))]) as srv:
        judge = make_judge(
            {"kind": "openai", "url": srv.url, "model": "gpt-4-0314", "api_key_env": "VCDFLOW_TEST_JUDGE_KEY"}
        )
        judged = llavabench.judge_items(recs, items, judge)
        n_calls = len(srv.requests)
        assert (
            llavabench.judge_items(judged, items, judge) == judged and len(srv.requests) == n_calls
        )  # resumed
        parallel = llavabench.judge_items(recs, items, judge, workers=3)
        assert [r["judge_reply"] for r in parallel] == [r["judge_reply"] for r in judged]
    body = srv.requests[1]["body"]
    assert body["temperature"] == 0.2 and body["max_tokens"] == 1024 and body["model"] == "gpt-4-0314"
    assert body["messages"][0] == {
        "role": "system",
        "content": "You are a helpful and precise assistant for checking the quality of the answer.",
    }
    assert body["messages"][1]["content"] == (
        "[Context]\none caption\n\n[Question]\nQuestion 1?\n\n[Assistant 1]\nreference answer 1\n\n"
        "[End of Assistant 1]\n\n[Assistant 2]\nmodel answer 1\n\n[End of Assistant 2]\n\n[System]\n"
        + llavabench.RULE_PROMPT
        + "\n\n"
    )
    got = llavabench.score(judged, items)
    want = official_summarize(
        [
            {"category": "llava_bench_" + it["category"], "tuple": official_parse_score(r)}
            for it, r in zip(items, LLAVA_REPLIES)
        ]
    )
    assert got["relative"] == want["all"][0] and got["reference_score"] == want["all"][1]
    assert got["model_score"] == want["all"][2]
    for c in ("conv", "detail", "complex"):
        assert got[f"relative_{c}"] == want[f"llava_bench_{c}"][0], c
    # by hand: tuples (8,6) (9,7) (10,10) (-1,-1) (-1,-1) (6,3): all means 5.167, 4.0 -> 77.4
    assert got["relative"] == 77.4 and got["n_parse_failures"] == 2 and got["n"] == 6
    assert judged_by(judged) == "openai:gpt-4-0314"
    assert KEY not in json.dumps(judged) + json.dumps(got)
    # lmms-eval's parser reads "Score: 8 5" and "7  4" (utils.py:40-58)
    assert llavabench.score(judged, items, parser="lmms")["n_parse_failures"] == 0


# ---- MMHal-Bench ---------------------------------------------------------------------------


def official_mmhal(replies):  # llava-rlhf/LLaVA-RLHF Eval/eval_gpt_mmhal.py:125-154 (96 -> len)
    scores = []
    for response in replies:
        found = [s for s in range(7) if f"rating: {s}" in response.lower()]
        scores.append(found[0] if len(found) == 1 else 0)
    hallucination = [0 if s >= 3 else 1 for s in scores]
    each = [[] for _ in range(8)]
    for i in range(len(scores)):
        each[i % 8].append(scores[i])
    return sum(scores) / len(scores), sum(hallucination) / len(hallucination), [sum(e) / len(e) for e in each]


def test_mmhal_through_fake_server_equals_official(tmp_path, monkeypatch):
    monkeypatch.setenv("VCDFLOW_TEST_JUDGE_KEY", KEY)
    types = list(mmhal.QUESTION_TYPES)
    recs_json = [
        {
            "question_type": types[i % 8],
            "question_topic": "t",
            "image_id": f"id{i}",
            "image_src": f"https://x/img{i}.jpg",
            "image_content": ["Cat", "Dog"],
            "question": f"Q{i}?",
            "gt_answer": f"gt {i}",
            "model_answer": "",
        }
        for i in range(16)
    ]
    f = tmp_path / "response_template.json"
    f.write_text(json.dumps(recs_json))
    items = mmhal.load_items(f)
    assert items[3]["image"] == "img3.jpg" and items[3]["image_path"].endswith("images/img3.jpg")
    replies = [f"Explanation.\nRating: {i % 7}" for i in range(14)] + ["Rating: 5 or rating: 6", "no rating"]
    recs = [{"item_id": it["item_id"], "answer": f"ans {i}", "error": None} for i, it in enumerate(items)]
    with FakeOpenAI(lambda b: replies[int(re.search(r"### Question\nQ(\d+)\?", _user(b)).group(1))]) as srv:
        judged = mmhal.judge_items(
            recs,
            items,
            {
                "kind": "openai",
                "url": srv.url,
                "model": "gpt-4-0314",
                "api_key_env": "VCDFLOW_TEST_JUDGE_KEY",
            },
        )
    body = srv.requests[0]["body"]
    assert body["temperature"] == 0.0 and len(body["messages"]) == 1
    assert body["messages"][0]["content"] == mmhal.TEMPLATE.format("Cat, Dog", "Q0?", "gt 0", "ans 0")
    assert body["messages"][0]["content"].endswith(
        "### Standard Human-Generated Answer\ngt 0\n\n### LMM Response to Evaluate\nans 0\n"
    )
    got = mmhal.score(judged, items)
    avg, hal, each = official_mmhal(replies)
    assert got["score"] == pytest.approx(avg) and got["hallucination_rate"] == pytest.approx(100 * hal)
    for t, v in zip(types, each):
        assert got[f"score_{t}"] == pytest.approx(v), t
    # by hand: ratings 0..6,0..6 then 0,0 -> mean 42/16; hallucinating (<3): 0,1,2 twice + 2 -> 8/16
    assert got["score"] == pytest.approx(42 / 16) and got["hallucination_rate"] == pytest.approx(50.0)
    assert got["n_parse_failures"] == 2 and judged_by(judged) == "openai:gpt-4-0314"
    mixed = [dict(judged[0], judge="local:other")] + judged[1:]
    with pytest.raises(ValueError, match=r"several judges \(local:other, openai:gpt-4-0314\)"):
        mmhal.score(mixed, items)


def test_local_judge_runs_a_vlm_text_only(tmp_path):
    from tiny_models import build_tiny_llava

    path = build_tiny_llava(tmp_path / "tiny")
    j = make_judge({"kind": "local", "model": str(path), "max_tokens": 4})
    assert isinstance(j, LocalJudge) and j.describe()["name"] == "local:tiny"
    a = j.chat([{"role": "user", "content": "Rating: is this good?"}])
    b = j.chat([{"role": "user", "content": "Rating: is this good?"}])
    assert a.text == b.text and a.reported_model == "tiny"  # greedy: deterministic
    rows = mmhal.judge_items(
        [{"item_id": "mmhal/0", "answer": "x", "error": None}],
        [{"item_id": "mmhal/0", "index": 0, "image_content": ["Cat"], "question": "Q?", "gt_answer": "g"}],
        j,
    )
    assert judged_by(rows) == "local:tiny" and mmhal.score(rows)["n"] == 1
