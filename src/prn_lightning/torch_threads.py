"""One torch intra-op thread for chains of small CPU tensor ops run beside other busy processes.

Every parallel torch op waits at a barrier for all its threads. When other processes hold the cores (DataLoader
workers preparing the next batch, other jobs), one thread of a pair is often descheduled and every op waits a
scheduler slice for it: a chain of many short ops then runs several times slower on two threads than on one.
Measured on 2 cores: the simulated-anomaly batch completion beside two loader workers ran at 17-92 images/s with two
threads and 141-143 with one; all four metrics on 200 maps took 1.2-1.5 s with two and 0.6 s with one.
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import torch

P = ParamSpec("P")
R = TypeVar("R")


def on_one_intra_op_thread(function: Callable[P, R]) -> Callable[P, R]:
    """Run `function` with one torch intra-op thread, then restore the caller's setting (CUDA work is unaffected)."""
    @functools.wraps(function)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        threads = torch.get_num_threads()
        if threads == 1:
            return function(*args, **kwargs)
        torch.set_num_threads(1)
        try:
            return function(*args, **kwargs)
        finally:
            torch.set_num_threads(threads)

    return wrapper
