"""Seeding and RNG state capture (Python, numpy, torch CPU and CUDA) for bit-exact resume."""

from __future__ import annotations

import contextlib
import random

import numpy as np
import torch


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, numpy and torch (CPU and every CUDA device). ``deterministic=True`` also asks torch for
    deterministic kernels (set ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` in the environment on GPU)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device
    if deterministic:
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


def get_rng_state() -> dict:
    """All global RNG states, picklable (for ``checkpoint.pt``)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def seeded(seed: int, device=None):
    """Python's, numpy's and torch's CPU generators (and ``device``'s, when it is a CUDA device) seeded with
    ``seed`` inside the block and restored after, so seeded draws leave the run's own random stream alone."""
    states = (random.getstate(), np.random.get_state(), torch.default_generator.get_state())
    cuda = device is not None and torch.device(device).type == "cuda"
    gen = torch.cuda.default_generators[torch.device(device).index or 0] if cuda else None
    cuda_state = gen.get_state() if cuda else None
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.default_generator.manual_seed(seed)
    if cuda:
        gen.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.default_generator.set_state(states[2])
        if cuda:
            gen.set_state(cuda_state)
