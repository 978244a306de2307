import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """The model tests use tiny tensors: one intra-op thread is fastest, and with two threads
    on a busy 2-core machine each tiny matmul can wait ~10 ms on the OpenMP barrier."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def images():
    return torch.randn(2, 3, 32, 32)
