"""An lmms-eval model backed by vcdflow: any lmms-eval task, any vcdflow decoding method, batched.

Install the extra (``pip install -e '.[lmms]'``: lmms-eval 0.7.x) and run::

    lmms-eval --model vcdflow \\
        --model_args 'pretrained=resources/models/llava-1.5-7b,method=vcd,params={"alpha": 1.0, "beta": 0.1},protocol=unified,batch_size=16' \\
        --tasks pope --output_path out/

Registration: the package's entry point ``[project.entry-points."lmms_eval.models"] vcdflow =
"vcdflow.lmms_eval_model:manifest"`` — lmms-eval 0.7's own plugin mechanism
(``lmms_eval/models/registry_v2.py::ModelRegistryV2.load_entrypoint_manifests``, group
``lmms_eval.models``; payload: a callable returning a ``ModelManifest``). ``--model vcdflow``
then resolves to :class:`VcdflowLMM`.

Model arguments (``--model_args key=value,...``; a JSON value may hold commas):

* ``pretrained`` — a model directory or hub id for :func:`vcdflow.models.load_vlm`;
* ``method`` (default ``greedy``) and ``params`` (a JSON object of method parameters, checked
  against the method's defaults before the model loads);
* ``protocol`` — ``unified`` (default) or a vcdflow paper protocol name, with ``benchmark``
  naming the vcdflow benchmark kind (``pope``, ``chair``, ``mme``, ``amber``) to resolve it for
  through :mod:`vcdflow.protocols` (``get_protocol(name).resolve(method=, family=, benchmark=,
  mode=None)``): its ``do_sample``/``temperature``/``top_p``/``top_k``/``system`` and parameter
  overrides then apply (``params`` still win). ``unified`` without ``benchmark``: the method's
  defaults plus ``params``, the model's own chat template, the task's prompt and generation
  settings. A named protocol needs ``benchmark``. From a protocol the system text, chat template,
  decoding mode, warpers and method parameters apply: the lmms-eval task keeps its own prompt and
  ``max_new_tokens``;
* ``batch_size`` (requests per batch; a value in ``--model_args`` wins over ``--batch_size``),
  ``seed`` (default 0), ``device`` (``cpu``/``cuda``/``auto``), ``dtype``;
* ``do_sample``, ``temperature``, ``top_p``, ``top_k``, ``num_beams`` — override the task's
  generation kwargs (a task's ``num_beams`` > 1 runs the engine's beam search with any
  method that does not run its own search; beams with ``do_sample`` fail naming both);
* ``records`` — a JSONL file to which every request's record is appended in vcdflow's result
  format (``item_id, image, image_id, question_id, prompt, answer, label, seed, error, meta,
  timing``; ``meta`` adds ``task``, ``doc_id``, ``method``, ``params``, ``protocol``).

Mapping: ``generate_until`` requests → :func:`vcdflow.decoding.generate`, grouped by
generation kwargs and cut into ``batch_size`` batches (each request keeps its own random stream
— seeded from ``(seed, item_id)`` with ``item_id = "<task>/<split>/<doc_id>"`` — so results do
not depend on how requests are batched). The task's ``max_new_tokens`` (default 128) and
``until`` stop strings apply (the text is cut before the first stop string, as lmms-eval's
models do). A request with several images uses the first (vcdflow methods are single-image) and
says so in its record; a bad image becomes an empty answer with the error in the record.
``loglikelihood`` (multiple-choice tasks) and multi-round generation are refused with a message
naming the method: a contrastive method's combined score of a forced continuation is not
implemented here.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

_NEEDS = "vcdflow.lmms_eval_model needs lmms-eval 0.7.x: pip install -e '.[lmms]'"
try:
    from lmms_eval.api.instance import Instance
    from lmms_eval.api.model import lmms
    from lmms_eval import utils as _lmms_utils
except ImportError as _missing:  # the pure parts (model_args parsing) stay importable and testable
    _MISSING: ImportError | None = _missing
    Instance = Any
    _lmms_utils = None

    class lmms:  # noqa: N801 - stands in for lmms_eval.api.model.lmms
        def __init__(self, *args, **kwargs):
            raise ImportError(_NEEDS) from _MISSING
else:
    _MISSING = None

log = logging.getLogger(__name__)

__all__ = ["VcdflowLMM", "manifest", "MODEL_ID"]

MODEL_ID = "vcdflow"


def manifest():
    """Entry-point payload for lmms-eval's model registry (group ``lmms_eval.models``)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_ID, simple_class_path="vcdflow.lmms_eval_model.VcdflowLMM")


def _as_bool(v) -> bool | None:
    if v is None or isinstance(v, bool):
        return v
    s = str(v).strip().lower()
    if s in ("1", "true", "yes", "on"):
        return True
    if s in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"vcdflow model_args: do_sample must be true or false, got {v!r}")


def _unset(v) -> bool:
    return v is None or str(v).strip().lower() in ("", "none", "null")


def _number(name: str, v, kind: type, unset_ok: bool = True):
    """``v`` as ``kind`` (int or float); None when unset and ``unset_ok``; else a ``ValueError``
    naming the argument (``num_beams=three`` says which argument, not just ``invalid literal``)."""
    if unset_ok and _unset(v):
        return None
    try:
        return kind(v)
    except (TypeError, ValueError):
        raise ValueError(
            f"vcdflow model_args: {name} must be {'an integer' if kind is int else 'a number'}, got {v!r}"
        ) from None


def parse_overrides(do_sample=None, temperature=None, top_p=None, top_k=None, num_beams=None) -> dict:
    """The generation settings given in ``--model_args`` (None: the task's), each checked and
    named when it is not a number of its kind."""
    return {
        "do_sample": _as_bool(do_sample),
        "temperature": _number("temperature", temperature, float),
        "top_p": _number("top_p", top_p, float),
        "top_k": _number("top_k", top_k, int),
        "num_beams": _number("num_beams", num_beams, int),
    }


class VcdflowLMM(lmms):
    """lmms-eval ``simple`` model running vcdflow's batched decoder with any method."""

    is_simple = True

    def __init__(
        self,
        pretrained: str,
        method: str = "greedy",
        params: Any = None,
        protocol: str = "unified",
        batch_size: Any = 16,
        seed: Any = 0,
        device: str | None = "cpu",
        dtype: str = "float32",
        do_sample: Any = None,
        temperature: Any = None,
        top_p: Any = None,
        top_k: Any = None,
        records: str | None = None,
        benchmark: str | None = None,
        max_batch_size: Any = None,
        num_beams: Any = None,
        **unknown,
    ):
        if unknown:
            raise ValueError(
                f"vcdflow model_args: unknown key(s) {sorted(unknown)}; known: pretrained, method, params, "
                "protocol, batch_size, seed, device, dtype, do_sample, temperature, top_p, top_k, num_beams, "
                "records, benchmark"
            )
        from vcdflow.decoding import METHODS, get_method

        if method not in METHODS:
            raise ValueError(f"vcdflow model_args: unknown method {method!r}; known: {sorted(METHODS)}")
        if isinstance(params, str):
            try:
                params = json.loads(params) if params.strip() else {}
            except json.JSONDecodeError as e:
                raise ValueError(
                    f"vcdflow model_args: params must be a JSON object, got {params!r} ({e})"
                ) from None
        params = dict(params or {})
        if not isinstance(params, dict):
            raise ValueError(f"vcdflow model_args: params must be a JSON object, got {params!r}")
        self.method, self.protocol = method, str(protocol)
        self.seed = _number("seed", seed, int, unset_ok=False)
        self.batch_size_per_gpu = max(1, _number("batch_size", batch_size, int, unset_ok=False))
        self.overrides = parse_overrides(do_sample, temperature, top_p, top_k, num_beams)
        super().__init__()  # after the argument checks (without lmms-eval: ImportError here)
        self.system = None
        self.params = params
        get_method(method).resolve(params)  # unknown parameter names fail before the model loads
        self.records_path = records
        dev = device or "cpu"
        if dev == "auto":
            import torch

            dev = "cuda" if torch.cuda.is_available() else "cpu"
        from vcdflow.models import load_vlm

        self.vlm = load_vlm(pretrained, device=dev, dtype=dtype)
        self._resolve_protocol(benchmark)
        self.pretrained = str(pretrained)

    # ------------------------------------------------------------------ construction helpers
    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None):
        """Like lmms-eval's, but a key given in ``--model_args`` wins over the CLI's own
        ``--batch_size``/``--device`` (lmms-eval would pass both and fail on the duplicate)."""
        args = _lmms_utils.simple_parse_args_string(arg_string)
        for k, v in (additional_config or {}).items():
            if v is not None and k not in args:
                args[k] = v
        return cls(**args)

    def _resolve_protocol(self, benchmark: str | None) -> None:
        self.protocol_resolved = False
        if self.protocol == "unified" and not benchmark:
            return  # method defaults + params, the task's prompt and generation settings
        try:
            from vcdflow.protocols import get_protocol
        except ImportError:
            raise ValueError(
                f"vcdflow model_args: protocol {self.protocol!r} with benchmark= needs "
                "vcdflow.protocols.get_protocol, which this vcdflow does not provide; "
                "use protocol=unified without benchmark="
            ) from None
        if not benchmark:
            raise ValueError(
                f"vcdflow model_args: protocol {self.protocol!r} needs benchmark=<kind> "
                "(pope, chair, mme, amber) to resolve its settings"
            )
        mode = {True: "sample", False: "greedy"}.get(self.overrides["do_sample"])
        res = get_protocol(self.protocol).resolve(
            method=self.method, family=self.vlm.family, benchmark=benchmark, mode=mode
        )
        self.params = {**dict(res.params or {}), **self.params}
        self.system = res.system
        # the protocol's conversation template, as the workflow's runner applies it ("model": the
        # processor's own)
        self.vlm.adapter.chat_template = None if res.chat_template == "model" else res.chat_template
        for k in ("do_sample", "temperature", "top_p", "top_k"):
            if self.overrides[k] is None:
                self.overrides[k] = getattr(res, k)
        self.protocol_resolved = True

    @property
    def batch_size(self):
        return self.batch_size_per_gpu

    # ------------------------------------------------------------------ request kinds
    def loglikelihood(self, requests):
        task = requests[0].task_name if requests else "?"
        raise NotImplementedError(
            f"vcdflow model: task {task!r} asks for loglikelihood scores, which method {self.method!r} does not "
            "provide here (only generate_until tasks run through vcdflow's decoder; a contrastive method's combined "
            "score of a forced continuation is not implemented)"
        )

    def generate_until_multi_round(self, requests):
        task = requests[0].task_name if requests else "?"
        raise NotImplementedError(
            f"vcdflow model: task {task!r} is multi-round; method {self.method!r} runs "
            "single-turn generate_until requests only"
        )

    def generate_until(self, requests: list[Instance]) -> list[str]:
        from vcdflow.decoding import Request, generate, get_method

        results: list[str | None] = [None] * len(requests)
        groups: dict[str, list[int]] = {}
        for i, req in enumerate(requests):
            gk = dict(req.args[1] or {})
            key = json.dumps(
                {
                    k: gk.get(k)
                    for k in ("max_new_tokens", "do_sample", "temperature", "top_p", "top_k", "num_beams")
                },
                sort_keys=True,
                default=str,
            )
            groups.setdefault(key, []).append(i)
        records = []
        for idxs in groups.values():
            gk = dict(requests[idxs[0]].args[1] or {})
            do_sample = self.overrides["do_sample"]
            if do_sample is None:
                do_sample = bool(gk.get("do_sample", False))
            temperature = self.overrides["temperature"]
            if temperature is None:
                temperature = float(gk.get("temperature") or 1.0) if do_sample else 1.0
            top_p = (
                self.overrides["top_p"]
                if self.overrides["top_p"] is not None
                else float(gk.get("top_p") or 1.0)
            )
            top_k = self.overrides["top_k"] if self.overrides["top_k"] is not None else gk.get("top_k")
            max_new = int(gk.get("max_new_tokens") or 128)
            num_beams = self.overrides["num_beams"]
            if num_beams is None:
                num_beams = int(gk.get("num_beams") or 1)
            if num_beams > 1 and do_sample:
                raise ValueError(
                    f"vcdflow: num_beams={num_beams} with do_sample=True: beam search is a greedy mode "
                    "(set do_sample=false or num_beams=1 in --model_args or the task's generation_kwargs)"
                )
            search = {"num_beams": num_beams} if num_beams > 1 else {}
            for start in range(0, len(idxs), self.batch_size_per_gpu):
                chunk = idxs[start : start + self.batch_size_per_gpu]
                reqs, metas = [], []
                for i in chunk:
                    context, _gk, doc_to_visual, doc_id, task, split = requests[i].args
                    item_id = f"{task}/{split}/{doc_id}"
                    note = None
                    try:
                        visuals = doc_to_visual(self.task_dict[task][split][doc_id]) if doc_to_visual else []
                    except Exception as e:  # noqa: BLE001 - a bad document becomes an error row
                        visuals, note = [], f"doc_to_visual: {type(e).__name__}: {e}"
                    visuals = [v for v in (visuals or []) if v is not None]
                    image = visuals[0] if visuals else None
                    if hasattr(image, "convert"):
                        image = image.convert("RGB")
                    reqs.append(Request(image=image, prompt=context, item_id=item_id, system=self.system))
                    metas.append(
                        {
                            "task": task,
                            "split": split,
                            "doc_id": doc_id,
                            "n_visuals": len(visuals),
                            "note": note
                            or ("only the first of several images used" if len(visuals) > 1 else None),
                        }
                    )
                t0 = time.perf_counter()
                # a greedy-only method, or greedy mode: the task's warpers do not apply (generate refuses them)
                fixed = get_method(self.method).mode
                sampling = (fixed or ("sample" if do_sample else "greedy")) == "sample"
                warpers = {"temperature": temperature, "top_p": top_p, "top_k": top_k} if sampling else {}
                outs = generate(
                    self.vlm,
                    reqs,
                    method=self.method,
                    params=self.params,
                    do_sample=bool(do_sample) and fixed != "greedy",
                    **warpers,
                    max_new_tokens=max_new,
                    seed=self.seed,
                    batch_size=len(reqs),
                    **search,
                )
                per_item = (time.perf_counter() - t0) / max(1, len(reqs))
                for i, r, out, meta in zip(chunk, reqs, outs, metas):
                    until = (requests[i].args[1] or {}).get("until") or []
                    until = [until] if isinstance(until, str) else list(until)
                    text = out.text if not out.error else ""
                    for stop in until:
                        if stop:
                            text = text.split(stop)[0]
                    if out.error:
                        log.warning("vcdflow: %s: %s", r.item_id, out.error)
                    results[i] = text
                    records.append(
                        {
                            "item_id": r.item_id,
                            "image": None,
                            "image_id": None,
                            "question_id": meta["doc_id"],
                            "prompt": r.prompt,
                            "answer": text,
                            "label": None,
                            "seed": self.seed,
                            "error": out.error,
                            "meta": {
                                **dict(out.meta or {}),
                                **meta,
                                "method": self.method,
                                "params": self.params,
                                "protocol": self.protocol,
                                "protocol_resolved": self.protocol_resolved,
                                "do_sample": do_sample,
                                "max_new_tokens": max_new,
                                "num_beams": num_beams,
                            },
                            "timing": {"seconds": round(per_item, 6), "new_tokens": len(out.token_ids or [])},
                        }
                    )
                    self.cache_hook.add_partial("generate_until", (r.prompt, requests[i].args[1]), text)
        if self.records_path:
            os.makedirs(os.path.dirname(os.path.abspath(self.records_path)), exist_ok=True)
            with open(self.records_path, "a", encoding="utf-8") as f:
                for rec in records:
                    f.write(json.dumps(rec, default=str) + "\n")
                f.flush()
                os.fsync(f.fileno())
        return results  # type: ignore[return-value]
