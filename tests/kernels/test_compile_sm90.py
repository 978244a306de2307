"""The kernels compile for a real GPU target (sm_90) without a GPU, and do not spill.

The interpreter runs on numpy and accepts code the Triton compiler rejects; this builds the
kernels (quick set: order 6, one flash config, the decode step) down to cubins with
triton's bundled ptxas, in a subprocess with the interpreter off.
The full set: ``python -m ea_zoo.kernels.compile_check``.
"""
import os
import subprocess
import sys


def test_kernels_compile_for_sm90_without_spills():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    p = subprocess.run([sys.executable, "-m", "ea_zoo.kernels.compile_check", "--quick", "--arch", "90"],
                       capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, f"compile check failed:\n{p.stdout}\n{p.stderr[-3000:]}"
    assert "all compiled" in p.stdout
