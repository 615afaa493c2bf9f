"""Time per new token of every registered decoding method, relative to greedy.

Same model, same requests, same number of new tokens per request (EOS ignored), all requests in
one batch with the engine (:func:`vcdflow.decoding.generate`); a warm-up call of every method
(2 tokens), then ``--rounds`` rounds over all methods in interleaved order (forward in even
rounds, reversed in odd ones, so a load drift hits every method alike). Per method: median and
[min, max] wall time per token, median process-CPU time per token, the ratios of both medians to
greedy's, and the peak memory (CPU: RSS sampled every 5 ms). The model builder, request maker,
timing/peak-memory code and load-average helper are those of ``benchmarks/decode_speed.py``.

Methods: by default every entry of ``vcdflow.decoding.METHODS``. Methods that need per-request
contrast inputs (``cid``, ``contrast``: ``Request.contrast_prompt``/``contrast_image``;
``convis``: ``Request.contrast_images``) or helper models (``halc``: its detector/grounding
models) are skipped and listed with the reason. ``vti`` gets random text-only steering directions
of the model's shape (``alpha_image`` 0) and ``text_cd`` the model itself (saved to a temporary
folder) as its amateur — as ``tests/method_cases.py`` does. ``code``/``selfaug`` generate a
text in their ``prepare`` stage which, with random weights, never stops at EOS; ``--prepare-tokens``
(default 64) caps it (with their defaults, 512/768 tokens, a smoke run at 2 new tokens per request
measured them at ~100x/~160x greedy per new token). ``pai``/``sid`` run with their default
layers (the ``small`` arch has 8 decoder layers). Beam/look-ahead methods (``opera``,
``contrastive_search``, ``text_cd``'s default variant) run with their default parameters.

    python benchmarks/method_speed.py --threads 1 --requests 4 --new-tokens 16 \\
        --out benchmarks/results/method_speed_cpu.json
    python benchmarks/method_speed.py --methods greedy,vcd,dola --rounds 1     # a subset
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import decode_speed as ds  # noqa: E402

from vcdflow.decoding import METHODS, generate  # noqa: E402

#: methods that cannot run from default parameters on plain (image, prompt) requests
SKIP = {
    "cid": "needs Request.contrast_prompt and/or Request.contrast_image (per-request contrast input)",
    "contrast": "needs Request.contrast_image and/or Request.contrast_prompt (per-request contrast input)",
    "convis": "needs Request.contrast_images (images reconstructed from captions by a T2I model)",
    "halc": "needs helper models (parameters 'detector', 'scorer', 'tagger': local model folders)",
}


#: the length parameter of a method's generating ``prepare`` stage (CODE's self-description,
#: Self-Aug's SAS query): random weights never emit EOS, so the stage runs to this cap
PREPARE_TOKENS = {"code": "description_max_new_tokens", "selfaug": "sas_max_new_tokens"}


def runtime_params(method: str, vlm, tmp: Path, prepare_tokens: int | None = None) -> dict | None:
    """What ``method`` needs to run at all (see the module docstring); None = its defaults."""
    if method in PREPARE_TOKENS and prepare_tokens:
        return {PREPARE_TOKENS[method]: prepare_tokens}
    if method == "vti":
        from vcdflow.steering_fit import save_directions

        ad = vlm.adapter
        n, d = len(ad.decoder_layers()), int(ad.text_config.hidden_size)
        path = tmp / f"vti_{n}x{d}.pt"
        if not path.exists():
            g = torch.Generator().manual_seed(0)
            save_directions(
                {"text": torch.randn(n, d, generator=g), "vision": None, "meta": {"bench": True}}, path
            )
        return {"directions": str(path), "alpha_image": 0.0}
    if method == "text_cd":
        path = tmp / "amateur"
        if not path.exists():
            vlm.model.save_pretrained(path)
            vlm.processor.save_pretrained(path)
        return {"amateur": str(path)}
    return None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", choices=sorted(ds.ARCHS), default="small")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None, help="default: float32 on CPU, bfloat16 on GPU")
    ap.add_argument(
        "--methods",
        default=None,
        help="comma-separated; default: every registered method except the skipped ones "
        "(greedy is always included: it is the reference)",
    )
    ap.add_argument("--requests", type=int, default=4)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--batch", type=int, default=None, help="default: all requests in one batch")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument(
        "--prepare-tokens",
        type=int,
        default=64,
        help="cap of code's description_max_new_tokens (default 512) and selfaug's "
        "sas_max_new_tokens (768): random weights never stop at EOS, so the defaults run the "
        "full 512/768 steps per batch. 0 = the methods' defaults",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    wanted = args.methods.split(",") if args.methods else sorted(METHODS)
    unknown = [m for m in wanted if m not in METHODS]
    if unknown:
        ap.error(f"--methods: unknown method(s) {', '.join(unknown)}; known: {', '.join(sorted(METHODS))}")
    skipped = {m: SKIP[m] for m in wanted if m in SKIP}
    names = ["greedy"] + [m for m in wanted if m not in SKIP and m != "greedy"]

    dtype = ds.parse_dtype(args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32"))
    t0 = time.perf_counter()
    vlm = ds.build_vlm(args.arch, args.device, dtype, seed=args.seed)
    n_params = sum(p.numel() for p in vlm.model.parameters())
    print(
        f"model {args.arch}: {n_params / 1e6:.1f} M parameters, {dtype}, {args.device}, "
        f"built in {time.perf_counter() - t0:.1f} s; threads {torch.get_num_threads()}",
        flush=True,
    )
    reqs = ds.make_requests(args.requests, args.seed)
    N, B = args.new_tokens, args.batch or len(reqs)
    total = N * len(reqs)
    kw = dict(max_new_tokens=N, eos_token_id=[], seed=args.seed, batch_size=B)
    tmp = Path(tempfile.mkdtemp(prefix="method_speed_"))
    params = {m: runtime_params(m, vlm, tmp, args.prepare_tokens) for m in names}

    # warm-up: every method once, 2 tokens (kernels, allocator, amateur/direction loading); a method
    # that fails here is reported as skipped with its error
    for m in list(names):
        try:
            outs = generate(
                vlm, reqs[:2], method=m, params=params[m], batch_size=2, max_new_tokens=2, eos_token_id=[]
            )
            err = next((o.error for o in outs if o.error), None)
        except Exception as e:  # noqa: BLE001
            err = f"{type(e).__name__}: {e}"
        if err:
            skipped[m] = f"failed with default parameters: {str(err).splitlines()[0][:200]}"
            names.remove(m)
            print(f"skip {m}: {skipped[m]}", flush=True)
    if "greedy" not in names:
        raise SystemExit("greedy failed: no reference")

    def phase(m):
        return lambda: [o.token_ids for o in generate(vlm, reqs, method=m, params=params[m], **kw)]

    runs: dict[str, list] = {m: [] for m in names}
    load_before = ds.load_average()
    t_run = time.perf_counter()
    for rnd in range(args.rounds):  # interleaved, order alternating per round
        for m in names if rnd % 2 == 0 else names[::-1]:
            runs[m].append(ds.run_phase(phase(m), args.device))
        print(f"round {rnd + 1}/{args.rounds} done ({time.perf_counter() - t_run:.0f} s)", flush=True)
    load_after = ds.load_average()

    def per_token(xs):
        return [x / total * 1000 for x in xs]

    results = {}
    for m in names:
        walls = per_token(sorted(r[0] for r in runs[m]))
        cpus = per_token(sorted(r[1] for r in runs[m]))
        results[m] = {
            "ms_per_token": round(float(np.median(walls)), 3),
            "ms_per_token_min": round(walls[0], 3),
            "ms_per_token_max": round(walls[-1], 3),
            "ms_per_token_all": [round(w, 3) for w in walls],
            "cpu_ms_per_token": round(float(np.median(cpus)), 3),
            "peak_mem_mib": round(max(r[2] for r in runs[m]), 1),
            "params": params[m],
        }
    g, gc = results["greedy"]["ms_per_token"], results["greedy"]["cpu_ms_per_token"]
    for m in names:
        results[m]["ratio_to_greedy"] = round(results[m]["ms_per_token"] / g, 3)
        results[m]["cpu_ratio_to_greedy"] = round(results[m]["cpu_ms_per_token"] / gc, 3)

    print(
        f"\n{len(reqs)} requests x {N} new tokens (EOS ignored), batch {B}, {args.rounds} interleaved rounds; "
        f"load {load_before and load_before['loadavg']} -> {load_after and load_after['loadavg']}\n"
    )
    print("| method | ratio to greedy (wall) | ratio (CPU time) | ms/token median [min, max] | peak MiB |")
    print("|---|---|---|---|---|")
    for m in sorted(names, key=lambda m: results[m]["ratio_to_greedy"]):
        r = results[m]
        print(
            f"| {m} | {r['ratio_to_greedy']:.2f} | {r['cpu_ratio_to_greedy']:.2f} | {r['ms_per_token']:.2f} "
            f"[{r['ms_per_token_min']:.2f}, {r['ms_per_token_max']:.2f}] | {r['peak_mem_mib']:.0f} |"
        )
    if skipped:
        print("\nskipped: " + "; ".join(f"{m} ({why})" for m, why in sorted(skipped.items())))

    report = {
        "arch": args.arch,
        "parameters_m": round(n_params / 1e6, 1),
        "device": args.device,
        "dtype": str(dtype),
        "requests": len(reqs),
        "new_tokens_per_request": N,
        "batch": B,
        "rounds": args.rounds,
        "eos_ignored": True,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "load_before": load_before,
        "load_after": load_after,
        "timed_seconds": round(time.perf_counter() - t_run, 1),
        "order": names,
        "methods": results,
        "skipped": skipped,
        "prepare_tokens": args.prepare_tokens,
        "note": (
            "vti: random text-only directions (alpha_image 0); text_cd: the model itself as amateur; "
            "code/selfaug: prepare-stage generation capped at prepare_tokens (random weights never emit "
            "EOS)"
        ),
    }
    if args.out:
        from vcdflow.io import write_json

        write_json(args.out, report)
    return report


if __name__ == "__main__":
    main()
