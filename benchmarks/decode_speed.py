"""Decoding speed: the batched engine vs greedy vs the official two-pass loop, on one model.

One run, same model, same prompts, same number of new tokens per request (EOS ignored):

* ``greedy``        engine, method ``greedy``, batch 1 (one request at a time);
* ``two_pass``      the official style for a 2-branch method (VCD): two forwards per token,
                    batch 1, a separate KV cache per branch, a Python loop over requests;
* ``engine_b1``     engine, 2-branch method (VCD), batch 1 (both branches in one forward);
* ``engine_b16``    engine, same method, 16 requests per batch (32 rows);
* ``greedy_b16``    engine greedy, 16 requests per batch (for reference).

Prints tokens/s per phase, the ratios the engine is judged by (``engine_b1 / greedy`` wall time,
``two_pass / engine_b1`` and ``two_pass / engine_b16`` speed-ups) and peak memory per phase (CPU:
the process RSS sampled every 5 ms; GPU: ``torch.cuda.max_memory_allocated``).

Models (random weights, nothing downloaded):

* ``--arch small`` (default): a ~60 M-parameter LLaVA (CLIP 112 px / 64 image tokens, 8-layer
  Llama, 32 064-token vocabulary) that runs on a laptop CPU;
* ``--arch llava-1.5-7b``: ``LlavaForConditionalGeneration`` with the real llava-1.5-7b config
  values (CLIP ViT-L/14-336, 576 image tokens, Llama-2-7B: 32 layers, 4096 hidden, 11008 MLP,
  32 heads, vocab 32 064) — for a GPU (bf16: ~14 GB).

    python benchmarks/decode_speed.py --arch small --requests 16 --new-tokens 32 --out speed.json
    python benchmarks/decode_speed.py --arch llava-1.5-7b --device cuda --dtype bfloat16 --out speed_7b.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from vcdflow.decoding import Request, generate  # noqa: E402
from vcdflow.decoding.plausibility import apc  # noqa: E402
from vcdflow.decoding.methods import get_method  # noqa: E402
from vcdflow.decoding.sampling import image_identity, make_generator  # noqa: E402
from vcdflow.decoding.types import BranchContext, State  # noqa: E402
from vcdflow.models.adapters import adapter_for  # noqa: E402
from vcdflow.models.loading import VLM, parse_dtype  # noqa: E402

LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' %}"
    "{% for c in message['content'] | selectattr('type', 'equalto', 'text') %}{{ c['text'] + ' ' }}{% endfor %}"
    "{% else %}{{ message['role'].upper() + ': ' }}"
    "{% for c in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for c in message['content'] | selectattr('type', 'equalto', 'text') %}{{ c['text'] + ' ' }}{% endfor %}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

ARCHS = {
    # the values of llava-hf/llava-1.5-7b-hf's config.json
    "llava-1.5-7b": dict(
        vision=dict(
            hidden_size=1024,
            intermediate_size=4096,
            num_hidden_layers=24,
            num_attention_heads=16,
            image_size=336,
            patch_size=14,
            projection_dim=768,
            hidden_act="quick_gelu",
        ),
        text=dict(
            vocab_size=32064,
            hidden_size=4096,
            intermediate_size=11008,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=32,
            max_position_embeddings=4096,
            rms_norm_eps=1e-5,
            rope_theta=10000.0,
        ),
        image_token_id=32000,
        vision_feature_layer=-2,
        projector_hidden_act="gelu",
    ),
    "small": dict(
        vision=dict(
            hidden_size=256,
            intermediate_size=1024,
            num_hidden_layers=4,
            num_attention_heads=4,
            image_size=112,
            patch_size=14,
            projection_dim=256,
            hidden_act="quick_gelu",
        ),
        text=dict(
            vocab_size=32064,
            hidden_size=512,
            intermediate_size=1376,
            num_hidden_layers=8,
            num_attention_heads=8,
            num_key_value_heads=8,
            max_position_embeddings=4096,
            rms_norm_eps=1e-5,
            rope_theta=10000.0,
        ),
        image_token_id=32000,
        vision_feature_layer=-2,
        projector_hidden_act="gelu",
    ),
}


def build_vlm(arch: str, device: str, dtype: torch.dtype, seed: int = 0) -> VLM:
    """A randomly initialised LLaVA of ``arch`` with a synthetic word-level tokenizer."""
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers.models import WordLevel
    from transformers import (
        CLIPImageProcessorPil,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        PreTrainedTokenizerFast,
    )

    a = ARCHS[arch]
    V = a["text"]["vocab_size"]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "USER": 3, "ASSISTANT": 4, ":": 5, "?": 6}
    for i in range(7, 32000):
        vocab[f"w{i}"] = i
    vocab["<image>"] = 32000
    vocab["<pad>"] = 32001
    for i in range(32002, V):
        vocab[f"x{i}"] = i
    tk = Tokenizer(WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    cfg = LlavaConfig(
        vision_config=CLIPVisionConfig(**a["vision"]),
        text_config=LlamaConfig(**a["text"], bos_token_id=1, eos_token_id=2, pad_token_id=32001),
        image_token_id=a["image_token_id"],
        vision_feature_layer=a["vision_feature_layer"],
        vision_feature_select_strategy="default",
        projector_hidden_act=a["projector_hidden_act"],
    )
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlavaForConditionalGeneration(cfg)
    finally:
        torch.set_default_dtype(prev)
    model = model.to(device=device, dtype=dtype).eval()
    with torch.no_grad():  # some inits may be skipped on direct construction: give every matrix values
        for p in model.parameters():
            if p.ndim >= 2:
                p.normal_(0.0, 0.02)
    size = a["vision"]["image_size"]
    ip = CLIPImageProcessorPil(
        size={"shortest_edge": size},
        crop_size={"height": size, "width": size},
        image_mean=[0.48145466, 0.4578275, 0.40821073],
        image_std=[0.26862954, 0.26130258, 0.27577711],
    )
    proc = LlavaProcessor(
        image_processor=ip,
        tokenizer=tok,
        patch_size=a["vision"]["patch_size"],
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA_CHAT_TEMPLATE,
    )
    return VLM(
        model=model,
        processor=proc,
        family="llava",
        adapter=adapter_for("llava", model, proc),
        device=torch.device(device),
        dtype=dtype,
        source=f"random:{arch}",
    )


def make_requests(n: int, seed: int = 0) -> list[Request]:
    rng = np.random.RandomState(seed)
    reqs = []
    for i in range(n):
        w, h = int(rng.randint(200, 640)), int(rng.randint(200, 640))
        img = Image.fromarray((rng.rand(h, w, 3) * 255).astype("uint8"))
        words = " ".join(f"w{int(t)}" for t in rng.randint(100, 30000, size=int(rng.randint(8, 40))))
        reqs.append(Request(image=img, prompt=words + " ?", item_id=f"bench/{i}"))
    return reqs


# --- memory --------------------------------------------------------------------------------------
class PeakMemory:
    """Peak CPU RSS (sampled every 5 ms from /proc/self/statm) or CUDA max allocated, in MiB."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")
        self.peak = 0
        self._stop = threading.Event()

    def _rss(self) -> int:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(0.005)

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            self.peak = self._rss()
            self._t = threading.Thread(target=self._run, daemon=True)
            self._t.start()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            self._t.join()
        self.mib = self.peak / 2**20


# --- the official-style loop -----------------------------------------------------------------------
@torch.inference_mode()
def two_pass(vlm, method: str, params, req: Request, max_new_tokens: int, seed: int) -> list[int]:
    """The official-style loop for any method: its branches built as the engine builds them, each
    prefilled alone (batch 1, own KV cache) and stepped alone; combine → APC → argmax."""
    ad = vlm.adapter
    m = get_method(method)
    p = m.resolve(params)
    rng = make_generator(seed, req.item_id, "branches")
    if p.get("draw") == "per_image":
        rng = make_generator(seed, "image:" + image_identity(req.image), "branches")
    ctx = BranchContext(params=p, rng=rng, adapter=ad, do_sample=False)
    encs = [ad.encode(b, rng) for b in m.branches(req, ctx)]
    streams = []
    for e in encs:
        ids, mask = ad.collate([e])
        pos, nxt = ad.prefill_positions(ids, mask, [e])
        cache = ad.new_cache()
        lg, _ = ad.forward(ad.prefill_embeds(ids, [e]), mask, pos, cache)
        streams.append([lg, mask, nxt, cache])
    state = State(params=p)
    out = []
    for step in range(max_new_tokens):
        L = torch.stack([s[0][0] for s in streams]).unsqueeze(0)  # [1, n_branches, V]
        scores = m.combine(L, step, state)
        beta = m.plausibility(L, step, state)
        if beta is not None:
            scores = apc(scores, L[:, 0, :], beta)
        tok = int(scores.argmax(-1))
        out.append(tok)
        ids = torch.tensor([[tok]], device=ad.device)
        for s in streams:
            s[1] = torch.cat([s[1], s[1].new_ones((1, 1))], 1)
            pos = ad.step_positions(s[2])
            s[2] = s[2] + 1
            s[0], _ = ad.forward(ad.embed_tokens(ids), s[1], pos, s[3])
    return out


def two_pass_vcd(vlm: VLM, req: Request, max_new_tokens: int, seed: int, alpha=1.0, beta=0.1, noise_step=500):
    """VCD as the official code runs it: per token a forward of the clean branch and one of the
    noised branch, each batch 1 with its own KV cache; greedy pick after APC."""
    return two_pass(
        vlm, "vcd", {"alpha": alpha, "beta": beta, "noise_step": noise_step}, req, max_new_tokens, seed
    )


def load_average():
    """``uptime`` output and the load averages (the machine may be shared: ratios are robust)."""
    import subprocess

    try:
        return {
            "loadavg": list(os.getloadavg()),
            "uptime": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
        }
    except OSError:
        return None


# --- phases ----------------------------------------------------------------------------------------
def run_phase(fn, device):
    """One timed run: (wall seconds, process CPU seconds, peak MiB)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    with PeakMemory(device) as mem:
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
    return dt, dc, mem.mib, out


def time_forwards(vlm: VLM, fn, device: str) -> dict:
    """Run ``fn`` with the adapter's forward timed (synchronised): prefill vs decode steps."""
    ad = vlm.adapter
    orig = ad.forward
    acc = {"prefill_s": 0.0, "prefill_calls": 0, "step_s": 0.0, "step_calls": 0}

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    def timed(embeds, *a, **k):
        sync()
        t = time.perf_counter()
        out = orig(embeds, *a, **k)
        sync()
        key = "prefill" if embeds.shape[1] > 1 else "step"
        acc[key + "_s"] += time.perf_counter() - t
        acc[key + "_calls"] += 1
        return out

    ad.forward = timed
    try:
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        acc["total_s"] = time.perf_counter() - t0
    finally:
        ad.forward = orig
    acc["other_s"] = acc["total_s"] - acc["prefill_s"] - acc["step_s"]
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in acc.items()}


def summarise(name, runs, n_tokens):
    walls = sorted(r[0] for r in runs)
    cpus = sorted(r[1] for r in runs)
    wall, cpu = float(np.median(walls)), float(np.median(cpus))
    res = {
        "seconds": round(wall, 4),
        "seconds_all": [round(w, 4) for w in walls],
        "cpu_seconds": round(cpu, 4),
        "seconds_min": round(walls[0], 4),
        "seconds_max": round(walls[-1], 4),
        "tokens_per_s_spread": [round(n_tokens / walls[-1], 3), round(n_tokens / walls[0], 3)],
        "new_tokens": n_tokens,
        "tokens_per_s": round(n_tokens / wall, 3),
        "peak_mem_mib": round(max(r[2] for r in runs), 1),
    }
    print(
        f"{name:>12}: median {wall:8.3f} s wall [{walls[0]:.3f}, {walls[-1]:.3f}] ({cpu:8.3f} s CPU)  "
        f"{n_tokens / wall:9.2f} tok/s  "
        f"peak {res['peak_mem_mib']:9.1f} MiB",
        flush=True,
    )
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", choices=sorted(ARCHS), default="small")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None, help="default: float32 on CPU, bfloat16 on GPU")
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--method", default="vcd", help="2-branch method for the engine phases")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--phases", default="greedy,two_pass,engine_b1,engine_b16,greedy_b16")
    ap.add_argument(
        "--repeats", type=int, default=3, help="rounds over all phases (median and spread reported)"
    )
    ap.add_argument(
        "--warmup",
        choices=["short", "full"],
        default=None,
        help="short: 2 tokens at batch 2; full: also one untimed full-size batched run of the engine "
        "and of greedy (grows the CUDA allocator pool first). Default: full on GPU",
    )
    ap.add_argument(
        "--breakdown",
        action="store_true",
        help="after timing, rerun the batched phases with per-forward timing (prefill vs steps)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = parse_dtype(args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32"))
    t0 = time.perf_counter()
    vlm = build_vlm(args.arch, args.device, dtype, seed=args.seed)
    n_params = sum(p.numel() for p in vlm.model.parameters())
    print(
        f"model {args.arch}: {n_params / 1e6:.1f} M parameters, {dtype}, {args.device}, "
        f"built in {time.perf_counter() - t0:.1f} s; threads {torch.get_num_threads()}",
        flush=True,
    )
    reqs = make_requests(args.requests, args.seed)
    N = args.new_tokens
    total = N * len(reqs)
    kw = dict(max_new_tokens=N, eos_token_id=[], seed=args.seed)

    # warm-up (kernels, allocator, processor caches)
    generate(vlm, reqs[:2], method=args.method, batch_size=2, max_new_tokens=2, eos_token_id=[])
    two_pass_vcd(vlm, reqs[0], 2, args.seed)
    if (args.warmup or ("full" if args.device.startswith("cuda") else "short")) == "full":
        generate(vlm, reqs, method=args.method, batch_size=args.batch, **kw)
        generate(vlm, reqs, method="greedy", batch_size=args.batch, **kw)

    phases = {
        "greedy": lambda: [
            generate(vlm, [r], method="greedy", batch_size=1, **kw)[0].token_ids for r in reqs
        ],
        "two_pass": lambda: [two_pass_vcd(vlm, r, N, args.seed) for r in reqs],
        "engine_b1": lambda: [
            generate(vlm, [r], method=args.method, batch_size=1, **kw)[0].token_ids for r in reqs
        ],
        "engine_b16": lambda: [
            o.token_ids for o in generate(vlm, reqs, method=args.method, batch_size=args.batch, **kw)
        ],
        "greedy_b16": lambda: [
            o.token_ids for o in generate(vlm, reqs, method="greedy", batch_size=args.batch, **kw)
        ],
    }
    names = args.phases.split(",")
    runs: dict[str, list] = {n: [] for n in names}
    load_before = load_average()
    for rep in range(
        args.repeats
    ):  # interleaved rounds (order alternating): load drift hits every phase alike
        for name in names if rep % 2 == 0 else names[::-1]:
            runs[name].append(run_phase(phases[name], args.device))
    load_after = load_average()
    results = {name: summarise(name, runs[name], total) for name in names}
    # do the phases decode the same tokens? (identical up to float round-off of batched kernels)
    toks = {name: runs[name][-1][3] for name in names}

    def agree(a, b):
        if a not in toks or b not in toks:
            return None
        same = [x == y for x, y in zip(toks[a], toks[b])]
        return {
            "identical_requests": sum(same),
            "requests": len(same),
            "identical_tokens_frac": round(
                float(np.mean([np.mean([u == v for u, v in zip(x, y)]) for x, y in zip(toks[a], toks[b])])), 4
            ),
        }

    agreement = {
        "engine_b1_vs_two_pass": agree("engine_b1", "two_pass"),
        "engine_b16_vs_engine_b1": agree("engine_b16", "engine_b1"),
        "greedy_b16_vs_greedy": agree("greedy_b16", "greedy"),
    }
    print("agreement:", json.dumps(agreement))

    def ratio(a, b, key="seconds"):
        if a in results and b in results:
            return round(results[a][key] / results[b][key], 3)
        return None

    breakdown = {}
    if args.breakdown:
        breakdown = {
            name: time_forwards(vlm, lambda: phases[name](), args.device)
            for name in ("engine_b16", "greedy_b16")
            if name in phases
        }
        print("breakdown:", json.dumps(breakdown))

    ratios = {
        "engine_b1_over_greedy_time": ratio("engine_b1", "greedy"),  # goal <= 1.4 on CPU
        "two_pass_over_engine_b1_time": ratio("two_pass", "engine_b1"),  # goal >= 1.3
        "two_pass_over_engine_b16_time": ratio("two_pass", "engine_b16"),
        "two_pass_over_greedy_time": ratio("two_pass", "greedy"),
        "engine_b16_over_greedy_b16_time": ratio("engine_b16", "greedy_b16"),
    }
    if not args.device.startswith("cuda"):
        ratios.update(
            {
                "cpu_time_engine_b1_over_greedy": ratio("engine_b1", "greedy", "cpu_seconds"),
                "cpu_time_two_pass_over_engine_b1": ratio("two_pass", "engine_b1", "cpu_seconds"),
                "cpu_time_two_pass_over_engine_b16": ratio("two_pass", "engine_b16", "cpu_seconds"),
            }
        )
    print(json.dumps(ratios, indent=2))
    report = {
        "arch": args.arch,
        "parameters_m": round(n_params / 1e6, 1),
        "device": args.device,
        "dtype": str(dtype),
        "method": args.method,
        "requests": len(reqs),
        "repeats": args.repeats,
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "load_before": load_before,
        "load_after": load_after,
        "new_tokens_per_request": N,
        "batch": args.batch,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "phases": results,
        "ratios": ratios,
        "agreement": agreement,
        "breakdown": breakdown,
    }
    if args.out:
        from vcdflow.io import write_json

        write_json(args.out, report)
    return report


if __name__ == "__main__":
    if sys.argv[1:2] == ["--per-method"]:
        # every registered method's time per token relative to greedy: benchmarks/method_speed.py
        # (same model builder and timing code), e.g. `decode_speed.py --per-method --threads 1`
        import method_speed

        method_speed.main(sys.argv[2:])
    else:
        main()
