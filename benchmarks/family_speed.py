"""Time per new token of greedy and VCD on each model family's tiny random model (relative to
greedy on the same family), so a family whose adapter adds overhead shows up.

The models are the test suite's (``tests/tiny_models.py``: built from each family's real
transformers config and processor, saved and loaded through ``load_vlm``). Per family: the same
4 requests (images 80x100, 64x64, 120x70, 96x96 pixels: any-res and dynamic-resolution families
get rows of different lengths) in one batch, ``--new-tokens`` new tokens each (EOS ignored); one
warm-up call per (family, method), then ``--rounds`` rounds over all (family, method) pairs in
interleaved order (forward in even rounds, reversed in odd ones, so a load drift hits all alike).
Reported: median and [min, max] wall ms per new token, and VCD's median over greedy's.

    python benchmarks/family_speed.py --threads 1 --rounds 5 --out benchmarks/results/family_speed_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "src"))

from tiny_models import BUILDERS  # noqa: E402

from vcdflow.decoding import Request, generate  # noqa: E402
from vcdflow.models import load_vlm  # noqa: E402

METHODS = ("greedy", "vcd")


def _img(seed, w, h):
    return Image.fromarray((np.random.RandomState(seed).rand(h, w, 3) * 255).astype("uint8"))


def requests() -> list[Request]:
    sizes = [(80, 100), (64, 64), (120, 70), (96, 96)]
    return [
        Request(image=_img(k + 1, w, h), prompt="Is there a cup in the image?", item_id=str(k))
        for k, (w, h) in enumerate(sizes)
    ]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--families", default=",".join(BUILDERS))
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    reqs = requests()
    fams = a.families.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        vlms = {f: load_vlm(BUILDERS[f](Path(tmp) / f)) for f in fams}
        pairs = [(f, m) for f in fams for m in METHODS]

        def run(f, m, n):
            t = time.perf_counter()
            outs = generate(vlms[f], reqs, method=m, max_new_tokens=n, eos_token_id=[], batch_size=len(reqs))
            dt = time.perf_counter() - t
            assert all(o.error is None for o in outs), [o.error for o in outs]
            return 1000 * dt / (n * len(reqs))

        for f, m in pairs:  # warm-up
            run(f, m, 2)
        times: dict = {p: [] for p in pairs}
        load = [os.getloadavg()[0]]
        for r in range(a.rounds):
            for p in pairs if r % 2 == 0 else pairs[::-1]:
                times[p].append(run(*p, a.new_tokens))
        load.append(os.getloadavg()[0])
    rows = []
    for f in fams:
        g = statistics.median(times[(f, "greedy")])
        for m in METHODS:
            ts = times[(f, m)]
            rows.append(
                {
                    "family": f,
                    "method": m,
                    "ms_per_token_median": round(statistics.median(ts), 3),
                    "min": round(min(ts), 3),
                    "max": round(max(ts), 3),
                    "x_greedy": round(statistics.median(ts) / g, 3),
                }
            )
    for row in rows:
        print(
            f"{row['family']:16s} {row['method']:7s} {row['ms_per_token_median']:8.2f} ms/token "
            f"[{row['min']:.2f}, {row['max']:.2f}]  x{row['x_greedy']:.2f} greedy"
        )
    result = {
        "rows": rows,
        "requests": len(reqs),
        "new_tokens": a.new_tokens,
        "rounds": a.rounds,
        "threads": a.threads,
        "load_average_start_end": load,
        "machine": platform.platform(),
        "torch": torch.__version__,
    }
    if a.out:
        Path(a.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
