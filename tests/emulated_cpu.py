"""ONNX Runtime on an emulated CPU: `qemu-x86_64 -cpu Haswell` reports AVX2 without AVX-512 or VNNI.

ONNX Runtime picks its int8 kernels from CPUID, which qemu's user-mode emulator answers for the CPU
model it is given, so a model can be checked here against the kernels an AVX2-only machine runs,
whatever this machine has. Timing under emulation means nothing; outputs are exact.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import numpy.typing as npt

from tests.fixtures.models import export_python

QEMU = "qemu-x86_64"
AVX2_ONLY_CPU = "Haswell"
RUN_TIMEOUT_S = 300
# Runs inside the (emulated) interpreter: one intra-op thread so both runs reduce in one order.
_SCRIPT = """
import sys
import numpy as np
import onnxruntime
options = onnxruntime.SessionOptions()
options.intra_op_num_threads = 1
options.log_severity_level = 3
session = onnxruntime.InferenceSession(sys.argv[1], options, providers=["CPUExecutionProvider"])
batch = np.load(sys.argv[2])
np.save(sys.argv[3], session.run(None, {session.get_inputs()[0].name: batch})[0])
"""


def qemu_path() -> str | None:
    """Where qemu-x86_64 is (Debian's qemu-user, installed by scripts/install-system-deps.sh)."""
    return shutil.which(QEMU)


def onnx_logits(
    model: Path, batch: npt.NDArray[np.float32], scratch: Path, emulate: str | None = None
) -> npt.NDArray[np.float32]:
    """The model's outputs for `batch`, natively or (emulate='Haswell') on an emulated CPU."""
    scratch.mkdir(parents=True, exist_ok=True)
    tag = emulate or "native"
    batch_file, out_file = scratch / f"batch-{tag}.npy", scratch / f"logits-{tag}.npy"
    np.save(batch_file, batch)
    command = [export_python(), "-c", _SCRIPT, str(model), str(batch_file), str(out_file)]
    if emulate is not None:
        qemu = qemu_path()
        assert qemu is not None, f"{QEMU} is missing: run `make system-deps` (Debian qemu-user)"
        command = [qemu, "-cpu", emulate, *command]
    # Every path is absolute and the script imports only numpy and onnxruntime: no cwd needed.
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    logits: npt.NDArray[np.float32] = np.load(out_file)
    return logits
