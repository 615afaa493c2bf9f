"""Chat-model judges for the benchmarks whose official scoring asks GPT-4 (LLaVA-Bench in the
wild, MMHal-Bench; optionally MMVP's and HallusionBench's official GPT graders).

A judge turns chat ``messages`` into one reply text. Two kinds, chosen by a config mapping
(:func:`make_judge`):

* ``{"kind": "openai", "url": ..., "model": ..., "api_key_env": "OPENAI_API_KEY"}`` — any
  OpenAI-compatible ``/chat/completions`` endpoint (OpenAI, Azure-style gateways, vLLM, a local
  server). ``url`` is the base (``https://api.openai.com/v1``) or the full
  ``.../chat/completions`` address. The API key is read **only** from the environment variable
  named by ``api_key_env`` at request time; a config holding a key (``api_key``, ``key``,
  ``token``) is refused, and the key is never part of :meth:`describe`, of an error message or
  of any record. ``api_key_env: null`` sends no ``Authorization`` header (local servers).
* ``{"kind": "local", "model": DIR, "device": "cpu", "dtype": "float32"}`` — a local model:
  a vcdflow-loadable VLM (``vcdflow.models.load_vlm`` + ``vcdflow.decoding.generate``, greedy,
  text only), or, when ``load_vlm`` cannot read ``DIR``, a Hugging Face causal text LM with a
  chat template.

Every judged number must say who judged it: :meth:`Judge.describe` gives
``{"kind", "name", "model", ...}`` (no secret), and :func:`judge_label` the short
``"<kind>:<model>"`` label the scorers write beside every judged score (``judge`` key of each
per-item row, ``judge_model`` of the score dict). An OpenAI-compatible reply's own ``model``
field (the exact version the server ran) is kept per call as ``reported_model``.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import http.client
import json
import logging
import os
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Sequence

from ..errors import UserError

log = logging.getLogger(__name__)

__all__ = [
    "JudgeError",
    "JudgeReply",
    "Judge",
    "OpenAIJudge",
    "LocalJudge",
    "CallableJudge",
    "make_judge",
    "judge_label",
    "judged_by",
    "judge_rows",
    "single_judge",
    "judgement_checkpoint",
    "check_key_env",
]

_SECRET_KEYS = ("api_key", "key", "token", "apikey", "secret", "password", "authorization")


class JudgeError(UserError, RuntimeError):
    """A judge request failed (after its retries); one line naming the judge (model and endpoint)
    and the cause, never a key. A :class:`vcdflow.errors.UserError`: the scoring scripts and the
    CLI print it as that one line (exit status 1); the judgements already made are checkpointed
    (:func:`judgement_checkpoint`)."""


@dataclass(frozen=True)
class JudgeReply:
    """One judge answer: the reply ``text`` and the model the server says it ran."""

    text: str
    reported_model: str | None = None


class Judge:
    """Base class: ``chat(messages, temperature=, max_tokens=) -> JudgeReply``."""

    kind = "judge"
    model = ""

    def chat(
        self,
        messages: Sequence[Mapping[str, str]],
        *,
        temperature: float | None = None,
        max_tokens: int | None = None,
    ) -> JudgeReply:  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": judge_label(self), "model": self.model}


def judge_label(judge: Judge) -> str:
    """``"<kind>:<model>"``, e.g. ``"openai:gpt-4-0314"`` — written beside every judged score."""
    return f"{judge.kind}:{judge.model}"


def _chat_url(url: str) -> str:
    u = url.rstrip("/")
    return u if u.endswith("/chat/completions") else u + "/chat/completions"


class OpenAIJudge(Judge):
    """OpenAI-compatible chat-completions client (stdlib ``urllib``; no SDK needed).

    ``retries`` attempts per request with ``retry_sleep`` seconds between them (HTTP 429/5xx and
    network errors are retried; other HTTP errors fail at once). The key is looked up in
    ``os.environ[api_key_env]`` for each request and is sent only in the ``Authorization``
    header; if the variable is unset the request is refused with a message naming the variable.
    """

    kind = "openai"

    def __init__(
        self,
        url: str,
        model: str,
        *,
        api_key_env: str | None = "OPENAI_API_KEY",
        timeout: float = 60.0,
        retries: int = 3,
        retry_sleep: float = 5.0,
        extra_body: Mapping[str, Any] | None = None,
    ):
        if not url or not isinstance(url, str):
            raise ValueError("judge: 'url' (an OpenAI-compatible endpoint) is required")
        if not model or not isinstance(model, str):
            raise ValueError("judge: 'model' is required (it is written beside every judged score)")
        self.url = _chat_url(url)
        self.model = model
        self.api_key_env = api_key_env
        self.timeout = float(timeout)
        self.retries = max(1, int(retries))
        self.retry_sleep = float(retry_sleep)
        self.extra_body = dict(extra_body or {})

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update({"url": self.url, "api_key_env": self.api_key_env})
        return d

    def _headers(self) -> dict[str, str]:
        h = {"Content-Type": "application/json"}
        if self.api_key_env:
            key = os.environ.get(self.api_key_env)
            if not key:
                raise JudgeError(
                    f"judge {self.model} at {self.url}: environment variable {self.api_key_env} is "
                    "not set (the API key is read only from the environment)"
                )
            h["Authorization"] = f"Bearer {key}"
        return h

    def _reply(self, raw: bytes) -> JudgeReply:
        """The reply of a 200 answer; ``ValueError`` (retried) when it is not a chat completion."""
        try:
            payload = json.loads(raw.decode("utf-8"))
            text = payload["choices"][0]["message"]["content"]
        except (ValueError, UnicodeDecodeError) as e:
            raise ValueError(f"malformed JSON reply ({type(e).__name__}) starting {raw[:60]!r}") from None
        except (KeyError, IndexError, TypeError):
            raise ValueError("reply has no choices[0].message.content") from None
        return JudgeReply(text=text if isinstance(text, str) else "", reported_model=payload.get("model"))

    def chat(self, messages, *, temperature=None, max_tokens=None) -> JudgeReply:
        body: dict[str, Any] = {"model": self.model, "messages": [dict(m) for m in messages]}
        if temperature is not None:
            body["temperature"] = temperature
        if max_tokens is not None:
            body["max_tokens"] = int(max_tokens)
        body.update(self.extra_body)
        data = json.dumps(body).encode("utf-8")
        last = ""
        # transient (retried): HTTP 408/409/429/5xx, refused or dropped connections, timeouts, a
        # reply that is not a chat completion (malformed JSON); other HTTP errors fail at once
        for attempt in range(1, self.retries + 1):
            req = urllib.request.Request(self.url, data=data, headers=self._headers(), method="POST")
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    return self._reply(resp.read())
            except urllib.error.HTTPError as e:
                last = f"HTTP {e.code} {e.reason}"
                if e.code not in (408, 409, 429) and e.code < 500:
                    break
            except (urllib.error.URLError, TimeoutError, OSError, http.client.HTTPException, ValueError) as e:
                reason = getattr(e, "reason", None) or e
                last = str(reason) if isinstance(e, ValueError) else f"{type(e).__name__}: {reason}"
                if isinstance(reason, TimeoutError) or isinstance(e, TimeoutError):
                    last = f"no reply within {self.timeout:g} s (timeout)"
            if attempt < self.retries:
                log.info(
                    "judge %s at %s: attempt %d/%d failed (%s); retrying",
                    self.model,
                    self.url,
                    attempt,
                    self.retries,
                    last,
                )
                time.sleep(self.retry_sleep)
        raise JudgeError(f"judge {self.model} at {self.url}: {last} (after {attempt} attempt(s))")


class LocalJudge(Judge):
    """A local model as judge, greedy and text only.

    ``model`` is a directory (or hub id): first tried with :func:`vcdflow.models.load_vlm`
    (then :func:`vcdflow.decoding.generate` with ``image=None``), else loaded as a Hugging Face
    causal LM (``AutoModelForCausalLM`` + the tokenizer's chat template). ``max_tokens`` caps the
    reply (``default_max_tokens`` when the caller gives none). Temperatures are ignored: a local
    judge is always greedy, so its verdicts are deterministic.
    """

    kind = "local"

    def __init__(
        self,
        model: str | os.PathLike,
        *,
        device: str = "cpu",
        dtype: str = "float32",
        default_max_tokens: int = 256,
        name: str | None = None,
    ):
        self.path = str(model)
        self.model = name or os.path.basename(os.path.normpath(self.path)) or self.path
        self.device, self.dtype = device, dtype
        self.default_max_tokens = int(default_max_tokens)
        self._vlm = None
        self._lm = None

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update({"path": self.path, "device": self.device, "dtype": self.dtype, "decoding": "greedy"})
        return d

    def _load(self):
        if self._vlm is not None or self._lm is not None:
            return
        try:
            from vcdflow.models import load_vlm

            self._vlm = load_vlm(self.path, device=self.device, dtype=self.dtype)
            return
        except Exception as e:  # noqa: BLE001 - fall back to a text LM
            vlm_error = f"{type(e).__name__}: {e}"
        try:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer

            tok = AutoTokenizer.from_pretrained(self.path)
            lm = (
                AutoModelForCausalLM.from_pretrained(self.path, dtype=getattr(torch, self.dtype))
                .to(self.device)
                .eval()
            )
            self._lm = (tok, lm)
        except Exception as e:  # noqa: BLE001
            raise JudgeError(
                f"local judge {self.path}: not loadable as a vcdflow VLM ({vlm_error}) "
                f"nor as a causal LM ({type(e).__name__}: {e})"
            ) from None

    @staticmethod
    def _split(messages):
        system = "\n".join(m["content"] for m in messages if m.get("role") == "system") or None
        user = "\n\n".join(m["content"] for m in messages if m.get("role") != "system")
        return system, user

    def chat(self, messages, *, temperature=None, max_tokens=None) -> JudgeReply:
        self._load()
        n = int(max_tokens or self.default_max_tokens)
        if self._vlm is not None:
            from vcdflow.decoding import Request, generate

            system, user = self._split(messages)
            out = generate(
                self._vlm,
                [Request(image=None, prompt=user, system=system, item_id="judge")],
                method="greedy",
                max_new_tokens=n,
                batch_size=1,
            )[0]
            if out.error:
                raise JudgeError(f"local judge {self.path}: {out.error}")
            return JudgeReply(text=out.text, reported_model=self.model)
        import torch

        tok, lm = self._lm
        ids = tok.apply_chat_template(
            [dict(m) for m in messages], add_generation_prompt=True, return_tensors="pt"
        )
        if not isinstance(ids, torch.Tensor):
            ids = ids["input_ids"]
        with torch.inference_mode():
            gen = lm.generate(ids.to(lm.device), max_new_tokens=n, do_sample=False)
        return JudgeReply(
            text=tok.decode(gen[0, ids.shape[1] :], skip_special_tokens=True), reported_model=self.model
        )


class CallableJudge(Judge):
    """Wrap ``fn(messages) -> str`` (tests, custom judges). ``kind`` defaults to ``"callable"``."""

    def __init__(self, fn: Callable[[Sequence[Mapping[str, str]]], str], model: str, kind: str = "callable"):
        self.fn, self.model, self.kind = fn, model, kind

    def chat(self, messages, *, temperature=None, max_tokens=None) -> JudgeReply:
        return JudgeReply(text=str(self.fn(messages)), reported_model=self.model)


def make_judge(config: Mapping[str, Any] | Judge) -> Judge:
    """A judge from its config mapping (see the module docstring); a :class:`Judge` passes through.

    Keys: ``kind`` (``openai`` | ``local``); openai: ``url``, ``model``, ``api_key_env``
    (default ``OPENAI_API_KEY``; null for none), ``timeout``, ``retries``, ``retry_sleep``;
    local: ``model`` (directory or hub id), ``device``, ``dtype``, ``max_tokens``. A key that
    looks like a secret is refused, naming the key, so that no key ever lands in a config,
    params file, log or report.
    """
    if isinstance(config, Judge):
        return config
    if not isinstance(config, Mapping):
        raise TypeError(f"judge config must be a mapping, got {type(config).__name__}")
    cfg = dict(config)
    for k in cfg:
        if str(k).lower() in _SECRET_KEYS:
            raise ValueError(
                f"judge config key {k!r} is not allowed: put the key in the environment and name "
                "the variable with 'api_key_env' (keys never go into configs, logs or the report)"
            )
    kind = cfg.pop("kind", "openai")
    if kind == "openai":
        allowed = {"url", "model", "api_key_env", "timeout", "retries", "retry_sleep", "extra_body"}
        bad = sorted(set(cfg) - allowed)
        if bad:
            raise ValueError(f"judge config (openai): unknown key(s) {bad}; allowed: {sorted(allowed)}")
        if "url" not in cfg or "model" not in cfg:
            raise ValueError("judge config (openai): 'url' and 'model' are required")
        return OpenAIJudge(cfg.pop("url"), cfg.pop("model"), **cfg)
    if kind == "local":
        allowed = {"model", "device", "dtype", "max_tokens", "name"}
        bad = sorted(set(cfg) - allowed)
        if bad:
            raise ValueError(f"judge config (local): unknown key(s) {bad}; allowed: {sorted(allowed)}")
        if "model" not in cfg:
            raise ValueError("judge config (local): 'model' (a model directory) is required")
        return LocalJudge(
            cfg["model"],
            device=cfg.get("device", "cpu"),
            dtype=cfg.get("dtype", "float32"),
            default_max_tokens=cfg.get("max_tokens", 256),
            name=cfg.get("name"),
        )
    raise ValueError(f"judge config: unknown kind {kind!r}; use 'openai' or 'local'")


def check_key_env(config: Mapping[str, Any], where: str) -> None:
    """An OpenAI-compatible judge's ``api_key_env`` is set in the environment (checked before any
    decoding, so a missing key does not surface only at scoring); ``JudgeError`` naming ``where``
    (the config key) and the variable, never a value."""
    if isinstance(config, Mapping) and config.get("kind", "openai") == "openai":
        var = config.get("api_key_env", "OPENAI_API_KEY")
        if var and not os.environ.get(var):
            raise JudgeError(
                f"config {where}.api_key_env: environment variable {var} is not set; export the "
                f"judge's API key there before the run (it is read only from the environment)"
            )


_CHECKPOINT: contextvars.ContextVar = contextvars.ContextVar("judgement_checkpoint", default=None)


@contextlib.contextmanager
def judgement_checkpoint(path: str | os.PathLike | None) -> Iterator[None]:
    """Within the block, :func:`judge_rows` keeps every judgement in ``path`` (JSON lines, appended
    and flushed as each reply arrives) keyed by item, judge label and the exact messages (with
    temperature and max_tokens), and takes a kept one instead of asking again: a judge that dies
    after 15 of 20 rows costs 5 calls on the rerun. ``None``: no checkpoint."""
    token = _CHECKPOINT.set(None if path is None else os.fspath(path))
    try:
        yield
    finally:
        _CHECKPOINT.reset(token)


def _judgement_key(item_id, label: str, messages, temperature, max_tokens) -> str:
    text = json.dumps(
        [str(item_id), label, [dict(m) for m in messages], temperature, max_tokens], sort_keys=True
    )
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _read_judgements(path: str) -> dict[str, dict]:
    kept: dict[str, dict] = {}
    if not os.path.exists(path):
        return kept
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            try:
                rec = json.loads(line)
                kept[rec["key"]] = rec
            except (ValueError, KeyError, TypeError):
                continue  # the torn last line of a killed scoring
    return kept


def judged_by(rows) -> str:
    """The judge label(s) of judged rows (their ``judge`` key), ``", "``-joined in first-seen
    order — one label when a single judge scored them all. Write it beside every judged number."""
    seen: list[str] = []
    for r in rows:
        j = r.get("judge")
        if j and j not in seen:
            seen.append(j)
    return ", ".join(seen)


def judge_rows(
    rows,
    judge: Judge | Mapping[str, Any],
    build: Callable[[dict], Sequence[Mapping[str, str]]],
    *,
    workers: int = 1,
    temperature: float | None = None,
    max_tokens: int | None = None,
) -> list[dict]:
    """Judge every row without ``error``: ``build(row)`` gives the chat messages; each such row
    comes back (a copy, order kept) with ``judge_reply`` (the reply text), ``judge`` (the label)
    and ``judge_reported_model``. A row that already has a ``judge_reply`` from the same judge
    label is kept as it is (resuming a half-judged file costs no second call). ``workers`` > 1
    sends that many requests at a time (threads)."""
    judge = make_judge(judge)
    label = judge_label(judge)
    out = [dict(r) for r in rows]
    todo = [r for r in out if not r.get("error") and not (r.get("judge") == label and "judge_reply" in r)]
    path = _CHECKPOINT.get()
    kept = _read_judgements(path) if path else {}
    lock = threading.Lock()
    fh = None
    if path and todo:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        fh = open(path, "a", encoding="utf-8")

    def one(row):
        messages = build(row)
        key = _judgement_key(row.get("item_id"), label, messages, temperature, max_tokens)
        if key in kept:
            rep = JudgeReply(kept[key]["reply"], kept[key].get("reported_model"))
        else:
            rep = judge.chat(messages, temperature=temperature, max_tokens=max_tokens)
            if fh is not None:
                line = json.dumps(
                    {
                        "key": key,
                        "item_id": row.get("item_id"),
                        "judge": label,
                        "reply": rep.text,
                        "reported_model": rep.reported_model,
                    },
                    sort_keys=True,
                )
                with lock:
                    fh.write(line + "\n")
                    fh.flush()
                    os.fsync(fh.fileno())
        row["judge_reply"], row["judge"], row["judge_reported_model"] = rep.text, label, rep.reported_model

    try:
        if int(workers) > 1 and len(todo) > 1:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(max_workers=int(workers)) as ex:
                list(ex.map(one, todo))
        else:
            for row in todo:
                one(row)
    finally:
        if fh is not None:
            fh.close()
    return out


def single_judge(rows, where: str) -> str:
    """The one judge label of judged ``rows``; a number judged by several judges (or by none)
    is refused, naming them."""
    label = judged_by(rows)
    if not label:
        raise ValueError(f"{where}: no judged rows (run judge_items first)")
    if ", " in label:
        raise ValueError(f"{where}: rows were judged by several judges ({label}); one number needs one judge")
    return label


#: record fields that override the item's when records are joined to their items
RECORD_FIELDS = ("answer", "error", "judge_reply", "judge", "judge_reported_model")


def join_records(records, items, *, bench: str, title: str, required: Sequence[str]) -> list[dict]:
    """Each record joined to its item by ``item_id`` (the record's answer, error and judge fields
    on top of the item's); ``items`` None: the records must carry the item fields themselves.
    Every row needs the ``required`` fields; a record of another benchmark or a missing field
    raises ``KeyError`` naming the item."""
    by_id = {it["item_id"]: it for it in items} if items is not None else None
    out = []
    for r in records:
        it = r
        if by_id is not None:
            if r["item_id"] not in by_id:
                raise KeyError(f"{bench}: record {r['item_id']!r} is not {title} item")
            it = {**by_id[r["item_id"]], **{k: v for k, v in r.items() if k in RECORD_FIELDS}}
        missing = [k for k in required if it.get(k) is None]
        if missing:
            raise KeyError(
                f"{bench}: record {r.get('item_id')!r} has no {', '.join(map(repr, missing))} "
                "(pass items=load_items(...))"
            )
        out.append(it)
    return out
