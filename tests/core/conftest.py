"""Core math tests: tiny tensors, one thread (the machine's 2 cores are shared)."""

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
