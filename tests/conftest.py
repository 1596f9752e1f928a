"""Shared pytest set-up: float64 physics, deterministic seeds, one thread per xdist worker."""

import os

if os.environ.get("PYTEST_XDIST_WORKER"):  # the README's command runs 2 workers on 2 cores: no oversubscription
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # also for the subprocesses tests start

import numpy as np
import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _float64_and_seed():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(0)
    np.random.seed(0)
    yield
    torch.set_default_dtype(previous)
