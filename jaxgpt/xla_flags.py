"""XLA flags jaxgpt asks for before JAX starts its GPU backend (XLA reads ``XLA_FLAGS`` once, at that start).

Command buffers (CUDA graphs) for the decode loop: by default XLA records fusions, library calls and custom calls
(our Pallas kernels) into CUDA graphs but leaves ``while`` and ``conditional`` to the host, so every step of the
compiled decode loop returns to the CPU to test the loop condition and launch the next step's kernels. With
``WHILE`` and ``CONDITIONAL`` the whole loop runs as one graph on the device (measured: gpt2 B=1 bf16 decode
0.482 → 0.450 ms/token; bench/NOTES.md). A user's own ``--xla_gpu_enable_command_buffer`` wins;
``JAXGPT_COMMAND_BUFFERS=0`` leaves XLA's default. Importing jaxgpt after JAX has already started its backend
changes nothing.
"""

from __future__ import annotations

import os

COMMAND_BUFFERS = "--xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,WHILE,CONDITIONAL"


def apply() -> None:
    """Add jaxgpt's XLA flags to ``XLA_FLAGS`` unless the user set them or opted out."""
    if os.environ.get("JAXGPT_COMMAND_BUFFERS", "1") == "0":
        return
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_gpu_enable_command_buffer" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {COMMAND_BUFFERS}".strip()
