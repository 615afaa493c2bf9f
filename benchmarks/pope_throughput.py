"""POPE throughput: questions/s of the official-style loop vs the engine, on one model, in one run.

POPE-shaped work: ``--images`` images × ``--questions`` questions per image (POPE asks 6), a
short answer (``--new-tokens``, EOS ignored), greedy. Per method, four phases on the same
questions:

* ``two_pass``       the official style: one request at a time, every branch its own batch-1
                     prefill and KV cache, one forward per branch per token (VCD's, ICD's loops);
* ``engine_b1``      ``generate(batch_size=1)``: a request's branches in one batch;
* ``engine_batched`` ``generate(batch_size=B, share_prefix=False)``;
* ``engine_shared``  ``generate(batch_size=B)`` with the shared-prefix prefill (default): the
                     questions of one image prefill system text + image once (vision tower once).

Methods (``--methods``): ``greedy``; ``vcd`` (noise drawn per question, the official default);
``vcd_img`` (``vcd`` with ``draw: per_image``); ``icd`` (disturbance instruction: the contrast
input is fixed per image); ``contrast`` (a given contrast image per image). The questions of one
image sit next to each other (as the runner orders a shard), so a batch of B = 2 × 6 holds two
images' questions.

Warm-up first, then ``--repeats`` rounds, every phase once per round in interleaved order (a drift
in machine load hits all phases alike); per phase the median and the spread (min, max) of the
wall time are reported, and the ratios of medians. Token agreement between the phases is checked
(float32: identical up to round-off ties).

Models (random weights, nothing downloaded): ``--arch demo`` (the demo LLaVA: the trained one
from ``resources/demo/model`` when present, else its architecture freshly initialised; 16 image
tokens); ``--arch llava-576`` (LLaVA-shaped: CLIP 336 px / patch 14 → 576 image tokens, a small
4-layer/256 vision tower and an 8-layer/512 Llama; ~650-token rows as LLaVA-1.5's POPE prompts);
``--arch small`` (the 62 M LLaVA of ``decode_speed.py``, 64 image tokens); ``--arch
llava-1.5-7b`` (the real architecture, for a GPU in bf16).

    python benchmarks/pope_throughput.py --arch llava-576 --out benchmarks/results/pope_llava576_cpu.json
    python benchmarks/pope_throughput.py --arch llava-1.5-7b --device cuda --images 8 --batch 48 --out x.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from decode_speed import ARCHS, build_vlm, load_average, two_pass  # noqa: E402
from vcdflow.decoding import Request, generate  # noqa: E402
from vcdflow.decoding.methods import get_method  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

#: benchmark method label → (method, params)
METHODS = {
    "greedy": ("greedy", None),
    "vcd": ("vcd", None),
    "vcd_img": ("vcd", {"draw": "per_image"}),
    "icd": ("icd", None),
    "contrast": ("contrast", None),
}
PHASES = ("two_pass", "engine_b1", "engine_batched", "engine_shared")

ARCHS.setdefault(
    "llava-576",
    dict(
        vision=dict(
            hidden_size=256,
            intermediate_size=1024,
            num_hidden_layers=4,
            num_attention_heads=4,
            image_size=336,
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
)


def load_demo():
    from vcdflow.models import load_vlm
    from vcdflow.models.adapters import adapter_for
    from vcdflow.models.demo import build_demo_vlm
    from vcdflow.models.loading import VLM

    trained = ROOT / "resources" / "demo" / "model"
    if (trained / "config.json").exists():
        return load_vlm(trained, device="cpu"), f"trained demo model ({trained.relative_to(ROOT)})"
    model, proc = build_demo_vlm(seed=0)
    return (
        VLM(
            model=model,
            processor=proc,
            family="llava",
            adapter=adapter_for("llava", model, proc),
            device=torch.device("cpu"),
            dtype=torch.float32,
            source="random:demo",
        ),
        "demo architecture, random weights (resources/demo/model not built)",
    )


def pope_requests(arch: str, n_images: int, n_questions: int, seed: int = 0) -> list[Request]:
    """``n_images`` × ``n_questions`` POPE-style requests, the questions of an image adjacent."""
    rng = np.random.RandomState(seed)
    reqs = []
    if arch == "demo":
        objects = ["red", "blue", "circle", "square", "cup", "dog", "tree", "car", "cat", "bird"]
        system, suffix = None, " Please answer this question with one word."
    else:  # the random-vocabulary LLaVA: LLaVA-1.5's system prompt is ~35 tokens
        objects = None
        system = " ".join(f"w{int(t)}" for t in rng.randint(100, 30000, size=34)) + " ."
        suffix = " w21 w22 w23 w24 w25 w26 w27 ."
    for i in range(n_images):
        w, h = int(rng.randint(300, 640)), int(rng.randint(300, 640))
        img = Image.fromarray((rng.rand(h, w, 3) * 255).astype("uint8"))
        other = Image.fromarray((rng.rand(h, w, 3) * 255).astype("uint8"))
        for k in range(n_questions):
            if objects is not None:
                obj = objects[int(rng.randint(len(objects)))]
                q = f"Is there a {obj} in the image?"
            else:
                q = "w11 w12 w13 w" + str(int(rng.randint(100, 30000))) + " w14 w15 ?"
            reqs.append(
                Request(
                    image=img, prompt=q + suffix, item_id=f"pope/{i}/{k}", system=system, contrast_image=other
                )
            )
    return reqs


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", choices=["demo"] + sorted(ARCHS), default="llava-576")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default=None, help="default: float32 on CPU, bfloat16 on GPU")
    ap.add_argument("--images", type=int, default=2)
    ap.add_argument("--questions", type=int, default=6, help="questions per image (POPE: 6)")
    ap.add_argument("--new-tokens", type=int, default=4)
    ap.add_argument("--batch", type=int, default=12, help="requests per engine batch (batched phases)")
    ap.add_argument("--methods", default="greedy,vcd,vcd_img,icd")
    ap.add_argument("--phases", default=",".join(PHASES))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from vcdflow.models.loading import parse_dtype

    dtype = parse_dtype(args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32"))
    cuda = args.device.startswith("cuda")
    t0 = time.perf_counter()
    if args.arch == "demo":
        vlm, model_note = load_demo()
    else:
        vlm, model_note = build_vlm(args.arch, args.device, dtype, seed=args.seed), "random weights"
    n_params = sum(p.numel() for p in vlm.model.parameters())
    reqs = pope_requests(args.arch, args.images, args.questions, args.seed)
    row_len = vlm.adapter.encode(get_method("greedy").original(reqs[0])).length
    print(
        f"model {args.arch} ({model_note}): {n_params / 1e6:.1f} M parameters, {dtype}, {args.device}, "
        f"built in {time.perf_counter() - t0:.1f} s; threads {torch.get_num_threads()}; "
        f"{len(reqs)} questions, {row_len}-token rows",
        flush=True,
    )
    N = args.new_tokens
    kw = dict(max_new_tokens=N, eos_token_id=[], seed=args.seed)

    def phase_fn(label, phase):
        method, params = METHODS[label]
        if phase == "two_pass":
            return lambda: [two_pass(vlm, method, params, r, N, args.seed) for r in reqs]
        if phase == "engine_b1":
            return lambda: [
                generate(vlm, [r], method=method, params=params, batch_size=1, **kw)[0].token_ids
                for r in reqs
            ]
        share = phase == "engine_shared"
        return lambda: [
            o.token_ids
            for o in generate(
                vlm, reqs, method=method, params=params, batch_size=args.batch, share_prefix=share, **kw
            )
        ]

    labels = args.methods.split(",")
    phases = args.phases.split(",")

    def sync():
        if cuda:
            torch.cuda.synchronize()

    # warm-up: every phase once on a short slice (kernels, allocator, processor caches)
    small = reqs[: min(len(reqs), args.questions + 1)]
    for label in labels:
        method, params = METHODS[label]
        two_pass(vlm, method, params, small[0], 2, args.seed)
        generate(
            vlm, small, method=method, params=params, batch_size=len(small), max_new_tokens=2, eos_token_id=[]
        )
        generate(
            vlm,
            small,
            method=method,
            params=params,
            batch_size=len(small),
            max_new_tokens=2,
            eos_token_id=[],
            share_prefix=False,
        )
    load_before = load_average()
    runs = {(lab, ph): [] for lab in labels for ph in phases}
    tokens = {}
    for rep in range(args.repeats):
        for lab in labels:
            for ph in phases if rep % 2 == 0 else phases[::-1]:  # interleaved, alternating order
                fn = phase_fn(lab, ph)
                sync()
                t = time.perf_counter()
                toks = fn()
                sync()
                runs[(lab, ph)].append(time.perf_counter() - t)
                tokens[(lab, ph)] = toks
        print(f"round {rep + 1}/{args.repeats} done", flush=True)
    load_after = load_average()
    results: dict = {}
    for lab in labels:
        res = {}
        for ph in phases:
            w = sorted(runs[(lab, ph)])
            med = float(np.median(w))
            res[ph] = {
                "seconds_median": round(med, 4),
                "seconds_min": round(w[0], 4),
                "seconds_max": round(w[-1], 4),
                "seconds_all": [round(x, 4) for x in runs[(lab, ph)]],
                "questions_per_s": round(len(reqs) / med, 3),
                "questions_per_s_spread": [round(len(reqs) / w[-1], 3), round(len(reqs) / w[0], 3)],
            }
        base = res.get("two_pass", {}).get("seconds_median")
        ratios = {
            f"{ph}_over_two_pass_speed": round(base / res[ph]["seconds_median"], 3)
            for ph in phases
            if base and ph != "two_pass"
        }
        if "engine_batched" in res and "engine_shared" in res:
            ratios["shared_over_batched_speed"] = round(
                res["engine_batched"]["seconds_median"] / res["engine_shared"]["seconds_median"], 3
            )
        ref = tokens.get((lab, "two_pass")) or tokens[(lab, phases[0])]
        agree = {ph: sum(a == b for a, b in zip(tokens[(lab, ph)], ref)) for ph in phases}
        results[lab] = {
            "method": METHODS[lab][0],
            "params": METHODS[lab][1],
            "phases": res,
            "ratios": ratios,
            "identical_to_first_phase": agree,
        }
        line = "  ".join(f"{ph} {res[ph]['questions_per_s']:8.2f} q/s" for ph in phases)
        print(f"{lab:>9}: {line}  | {json.dumps(ratios)}  agree {agree}", flush=True)
    report = {
        "arch": args.arch,
        "model": model_note,
        "parameters_m": round(n_params / 1e6, 2),
        "device": args.device,
        "dtype": str(dtype),
        "images": args.images,
        "questions_per_image": args.questions,
        "questions": len(reqs),
        "row_tokens": row_len,
        "new_tokens": N,
        "batch": args.batch,
        "repeats": args.repeats,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "gpu": torch.cuda.get_device_name() if cuda else None,
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "load_before": load_before,
        "load_after": load_after,
        "results": results,
    }
    if args.out:
        from vcdflow.io import write_json

        write_json(args.out, report)
    return report


if __name__ == "__main__":
    main()
