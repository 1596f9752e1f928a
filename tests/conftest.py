"""Shared pytest set-up: float64 physics, deterministic seeds."""

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def _float64_and_seed():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(0)
    np.random.seed(0)
    yield
    torch.set_default_dtype(previous)
