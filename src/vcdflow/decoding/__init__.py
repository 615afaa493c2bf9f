"""Contrastive decoding: one batched engine, methods as data.

from vcdflow.decoding import Request, Output, generate, METHODS
outs = generate(vlm, [Request(image=pil, prompt="Is there a cup?", item_id="pope/1")],
                method="vcd", params={"alpha": 1.0, "beta": 0.1, "noise_step": 500},
                do_sample=False, max_new_tokens=64, seed=0, batch_size=16)
"""

from .engine import Runner, decode_rows, generate
from .methods import METHODS, Method, get_method
from .sampling import make_generator, request_seed
from .types import Branch, BranchContext, InputError, Output, Request, State

__all__ = [
    "METHODS",
    "Branch",
    "BranchContext",
    "InputError",
    "Method",
    "Output",
    "Request",
    "Runner",
    "State",
    "decode_rows",
    "generate",
    "get_method",
    "make_generator",
    "request_seed",
]
