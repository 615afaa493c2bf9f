"""The host-bound decode regime: per-step time and host syncs of transformers' ``generate`` vs the engine.

On a GPU a 7B model at batch 1 is bound by the host work of a step (Python, dispatch, kernel
launches, host syncs), not by its arithmetic. The same regime is reproduced on a CPU by a LLaVA
with a 7B's depth and almost no width: ``--arch tiny32`` takes llava-hf/llava-1.5-7b's
``config.json`` values (32 decoder layers, vocabulary 32 064, RMS eps, RoPE θ, CLIP
336 px / patch 14 → 576 image tokens, vision feature layer −2) and shrinks only the widths
(text hidden 64, MLP 172, 4 heads; vision hidden 32, 1 layer): ~6 M parameters whose step is
almost all host work.

Cases (each greedy unless named ``vcd``; batch 1 and ``--batch``):

* ``hf``              ``model.generate`` with its default dynamic cache;
* ``hf_static``       ``model.generate`` with a ``StaticCache`` of a fixed length and
                      ``torch.compile`` of the forward (transformers' auto-compile,
                      ``CompileConfig(_compile_all_devices=True)`` on a CPU);
* ``engine``          :func:`vcdflow.decoding.generate`, the default eager step;
* ``engine_static``   the engine with ``compile="static"`` (static KV cache, no compilation);
* ``engine_compiled`` the engine with ``compile="on"`` (static cache + ``torch.compile``);
* ``*_vcd``           the engine cases with VCD (two branches per request in one batch).

Per-step time = (wall(N) − wall(N0)) / (N − N0): the same prompts decoded to N and to N0 new
tokens (EOS disabled), so the prefill and the first tokens cancel; both wall time and the
process's CPU time (``time.process_time``, 1 thread: robust on a machine shared with other jobs;
the ratios use CPU time on a CPU, wall time on a GPU). Every case is warmed up once
(its compile time, where it compiles, is that first call's wall time minus a timed call's: reported
separately), then ``--reps`` interleaved rounds over all cases: median and [min, max] per case.
Host syncs per step are counted in one extra untimed call per case: ``torch.Tensor.item``,
``tolist``, ``cpu``, ``numpy``, ``__bool__``, ``__int__``, ``__float__`` and ``torch.tensor(...,
device=...)`` from Python data are wrapped with a counter; (count(N) − count(N0)) / (N − N0).

    python benchmarks/host_bound.py --threads 1 --reps 3 --out benchmarks/results/host_bound_cpu.json
    python benchmarks/host_bound.py --device cuda --arch llava-1.5-7b --dtype bfloat16 \\
        --out benchmarks/results/host_bound_7b_gpu.json          # a GPU run (the real 7B widths)
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import inspect
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

import decode_speed  # noqa: E402
from decode_speed import ARCHS, build_vlm, make_requests  # noqa: E402
from vcdflow.decoding import generate  # noqa: E402

_7B = ARCHS["llava-1.5-7b"]
ARCHS["tiny32"] = decode_speed.ARCHS["tiny32"] = dict(
    vision={
        **_7B["vision"],
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "projection_dim": 32,
    },
    text={
        **_7B["text"],
        "hidden_size": 64,
        "intermediate_size": 172,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
    },
    image_token_id=_7B["image_token_id"],
    vision_feature_layer=_7B["vision_feature_layer"],
    projector_hidden_act=_7B["projector_hidden_act"],
)


# --- host-sync counter ---------------------------------------------------------------------------
class SyncCounter:
    """Counts calls that move data from a tensor to the host (or host lists to a device)."""

    METHODS = ("item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__")

    def __init__(self):
        self.n = 0
        self.on = False
        self._saved = {}

    def install(self):
        for name in self.METHODS:
            orig = getattr(torch.Tensor, name)
            self._saved[name] = orig

            def wrapped(t, *a, _orig=orig, **k):
                if self.on:
                    self.n += 1
                return _orig(t, *a, **k)

            setattr(torch.Tensor, name, functools.wraps(orig)(wrapped))
        orig_tensor = torch.tensor
        self._saved["tensor"] = orig_tensor

        def tensor(data, *a, **k):
            if self.on and not isinstance(data, torch.Tensor):
                self.n += 1
            return orig_tensor(data, *a, **k)

        torch.tensor = tensor

    @contextlib.contextmanager
    def counting(self):
        self.n, self.on = 0, True
        try:
            yield self
        finally:
            self.on = False


# --- cases ---------------------------------------------------------------------------------------
def hf_inputs(vlm, reqs):
    """Left-padded ids, mask and pixel values of the original prompts (as the engine encodes them)."""
    from vcdflow.decoding.types import Branch

    ad = vlm.adapter
    encs = [ad.encode(Branch(prompt=r.prompt, image=r.image)) for r in reqs]
    ids, mask = ad.collate(encs)
    px = torch.cat([e.pixel_values for e in encs]).to(vlm.device, vlm.dtype)
    return dict(input_ids=ids, attention_mask=mask, pixel_values=px)


def make_case(vlm, name: str, reqs, width: int):
    """A function ``run(n_new) -> token ids`` for case ``name`` (None when this engine lacks it)."""
    from transformers import GenerationConfig

    model = vlm.model
    if name.startswith("hf"):
        inputs = hf_inputs(vlm, reqs)
        gc = GenerationConfig(
            do_sample=False, eos_token_id=None, pad_token_id=int(vlm.adapter.pad_token_id), bos_token_id=1
        )
        if name == "hf":

            def run(n):
                out = model.generate(**inputs, generation_config=gc, max_new_tokens=n, min_new_tokens=n)
                return out[:, inputs["input_ids"].shape[1] :].tolist()

            return run
        from transformers import StaticCache
        from transformers.generation import CompileConfig

        gcs = copy.deepcopy(gc)
        gcs.compile_config = CompileConfig(
            fullgraph=False, dynamic=False, mode="reduce-overhead" if vlm.device.type == "cuda" else "default"
        )
        gcs.compile_config._compile_all_devices = True  # transformers' switch to compile on a CPU too

        def run(n):
            cache = StaticCache(config=model.config, max_cache_len=width)
            out = model.generate(
                **inputs, generation_config=gcs, max_new_tokens=n, min_new_tokens=n, past_key_values=cache
            )
            return out[:, inputs["input_ids"].shape[1] :].tolist()

        return run
    method = "vcd" if name.endswith("_vcd") else "greedy"
    kind = name.removesuffix("_vcd")
    setting = {"engine": None, "engine_static": "static", "engine_compiled": "on"}[kind]
    kwargs = {}
    if setting is not None:
        if "compile" not in inspect.signature(generate).parameters:
            return None
        kwargs["compile"] = setting

    def run(n):
        outs = generate(
            vlm, reqs, method, max_new_tokens=n, batch_size=len(reqs), eos_token_id=[], seed=0, **kwargs
        )
        bad = [o.error for o in outs if o.error]
        if bad:
            raise RuntimeError(bad[0])
        return [o.token_ids for o in outs]

    return run


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", choices=sorted(ARCHS), default="tiny32")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default=None, help="default: float32 on CPU, bfloat16 on GPU")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=8, help="the batched size (batch 1 always runs)")
    ap.add_argument("--new-tokens", type=int, default=24, help="N")
    ap.add_argument("--base-tokens", type=int, default=4, help="N0")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument(
        "--cases",
        default="hf,hf_static,engine,engine_vcd,engine_static,engine_static_vcd,"
        "engine_compiled,engine_compiled_vcd",
    )
    ap.add_argument("--batches", default=None, help="comma list (default: 1,--batch)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    dtype = (
        getattr(torch, a.dtype)
        if a.dtype
        else (torch.bfloat16 if a.device.startswith("cuda") else torch.float32)
    )
    torch._dynamo.config.cache_size_limit = 64
    from vcdflow.decoding import engine

    engine.STATIC_BUCKET = 256  # N and N0 decode in one cache length (768 columns), as HF's static cache
    counter = SyncCounter()
    counter.install()
    vlm = build_vlm(a.arch, a.device, dtype)
    n_params = sum(p.numel() for p in vlm.model.parameters())
    batches = [int(b) for b in (a.batches or f"1,{a.batch}").split(",")]
    names = a.cases.split(",")
    sync = torch.cuda.synchronize if a.device.startswith("cuda") else (lambda: None)

    def timed(fn, n):
        sync()
        t, c = time.perf_counter(), time.process_time()
        toks = fn(n)
        sync()
        return time.perf_counter() - t, toks, time.process_time() - c

    cases = {}
    for b in batches:
        reqs = make_requests(b, seed=1)
        width = (
            768  # prompts of 590-625 tokens + N: one static length for N and N0 (the engine's bucket below)
        )
        for name in names:
            fn = make_case(vlm, name, reqs, width)
            if fn is None:
                print(f"skip {name}: this engine has no compile setting", flush=True)
                continue
            cases[(name, b)] = dict(fn=fn, walls=[], cpus=[])
    results = {}
    for (name, b), c in cases.items():  # warm-up (compiles), then the syncs
        t_first, _, _ = timed(c["fn"], a.new_tokens)
        timed(c["fn"], a.base_tokens)
        t_second, toks, _ = timed(c["fn"], a.new_tokens)
        c["tokens"] = toks
        with counter.counting():
            c["fn"](a.new_tokens)
        n_long = counter.n
        with counter.counting():
            c["fn"](a.base_tokens)
        syncs = (n_long - counter.n) / (a.new_tokens - a.base_tokens)
        results[f"{name}/b{b}"] = dict(
            case=name,
            batch=b,
            first_call_s=round(t_first, 3),
            warm_call_s=round(t_second, 3),
            compile_s=round(max(0.0, t_first - t_second), 2),
            syncs_per_step=round(syncs, 2),
        )
        print(
            f"warm {name} b{b}: first call {t_first:.2f}s, warm {t_second:.2f}s, syncs/step {syncs:.2f}",
            flush=True,
        )
    for rep in range(a.reps):  # interleaved rounds
        for (name, b), c in cases.items():
            t_n, _, c_n = timed(c["fn"], a.new_tokens)
            t_0, _, c_0 = timed(c["fn"], a.base_tokens)
            c["walls"].append((t_n - t_0) / (a.new_tokens - a.base_tokens))
            c["cpus"].append((c_n - c_0) / (a.new_tokens - a.base_tokens))
        print(f"round {rep + 1}/{a.reps} done", flush=True)
    for (name, b), c in cases.items():
        ms = [w * 1e3 for w in c["walls"]]
        cpu = [w * 1e3 for w in c["cpus"]]
        r = results[f"{name}/b{b}"]
        r.update(
            step_ms=round(statistics.median(ms), 3),
            step_ms_min=round(min(ms), 3),
            step_ms_max=round(max(ms), 3),
            step_ms_all=[round(x, 3) for x in ms],
            step_cpu_ms=round(statistics.median(cpu), 3),
            step_cpu_ms_min=round(min(cpu), 3),
            step_cpu_ms_max=round(max(cpu), 3),
            step_cpu_ms_all=[round(x, 3) for x in cpu],
        )
        ref = cases.get(("engine_vcd" if name.endswith("_vcd") else "engine", b))
        if ref is not None and name.startswith("engine"):
            r["tokens_equal_eager_engine"] = c["tokens"] == ref["tokens"]
        if name.startswith("hf") and ("engine", b) in cases:
            r["tokens_equal_eager_engine"] = c["tokens"] == cases[("engine", b)]["tokens"]

    key = "step_ms" if a.device.startswith("cuda") else "step_cpu_ms"

    def ratio(x, y):
        if x in results and y in results:
            return round(results[x][key] / results[y][key], 3)
        return None

    ratios = {}
    for b in batches:
        for num, den in [
            ("engine", "hf"),
            ("engine_compiled", "hf"),
            ("engine_compiled", "hf_static"),
            ("hf_static", "hf"),
            ("engine_static", "engine"),
            ("engine_vcd", "engine"),
            ("engine_compiled_vcd", "engine_compiled"),
            ("engine_static_vcd", "engine_static"),
        ]:
            v = ratio(f"{num}/b{b}", f"{den}/b{b}")
            if v is not None:
                ratios[f"{num}/{den} b{b}"] = v
    report = dict(
        arch=a.arch,
        params=n_params,
        device=a.device,
        dtype=str(dtype),
        threads=a.threads,
        new_tokens=a.new_tokens,
        base_tokens=a.base_tokens,
        reps=a.reps,
        torch=torch.__version__,
        python=platform.python_version(),
        cpu=platform.processor() or platform.machine(),
        cuda=torch.cuda.get_device_name() if a.device.startswith("cuda") else None,
        ratios_of=key,
        results=results,
        ratios=ratios,
    )
    for k, r in results.items():
        print(
            f"{k:28s} step {r['step_ms']:8.3f} ms [{r['step_ms_min']:.3f}, {r['step_ms_max']:.3f}]  cpu "
            f"{r['step_cpu_ms']:8.3f} ms [{r['step_cpu_ms_min']:.3f}, {r['step_cpu_ms_max']:.3f}]  "
            f"syncs/step {r['syncs_per_step']:.2f}  compile {r['compile_s']:.1f}s  "
            f"same tokens as engine: {r.get('tokens_equal_eager_engine')}"
        )
    for k, v in ratios.items():
        print(f"{k:40s} {v:.3f}")
    if a.out:
        Path(a.out).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
