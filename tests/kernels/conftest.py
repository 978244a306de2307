"""Kernel tests run the Triton kernels under the Triton interpreter on CPU tensors.

TRITON_INTERPRET is set here, before any test module of this folder imports triton or an
``ea_zoo.kernels`` module (the kernel modules also build their ``triton.jit`` objects lazily
for the mode in force at launch, so an earlier import elsewhere in the same pytest process
does no harm). Set EA_ZOO_KERNEL_TEST_DEVICE=cuda to run the same tests compiled on a GPU.

If triton does not import, every kernel test fails with the reason (triton is a dependency
on Linux); nothing is skipped.
"""
import os

_DEVICE = os.environ.get("EA_ZOO_KERNEL_TEST_DEVICE", "cpu")
if _DEVICE == "cpu":
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

from ea_zoo.kernels import triton_import_error  # noqa: E402  (does not import triton itself)


@pytest.fixture(autouse=True)
def _require_triton():
    err = triton_import_error()
    if err is not None:
        pytest.fail(
            "triton does not import, so the Triton kernels cannot be tested: "
            f"{err}. Install triton (a dependency of ea_zoo on Linux: pip install triton).",
            pytrace=False,
        )
    if _DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.fail("TRITON_INTERPRET=1 was unset during the kernel tests; they need the interpreter on CPU",
                    pytrace=False)


@pytest.fixture
def device():
    if _DEVICE != "cpu" and not torch.cuda.is_available():
        pytest.fail(f"EA_ZOO_KERNEL_TEST_DEVICE={_DEVICE} but CUDA is not available", pytrace=False)
    return torch.device(_DEVICE)
