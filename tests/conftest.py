import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)  # small ops: one thread is as fast and immune to oversubscription


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(1234)
