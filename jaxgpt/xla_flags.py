"""XLA settings jaxgpt's own entry points (the CLI, the benchmarks) make before jax starts its backend.

Command buffers: XLA records a step's kernels (fusions, cuBLAS and custom calls such as our Pallas kernels, and the
decode loop's ``while`` with its body) as CUDA graphs and replays them, so the host launches one graph rather than
~50 kernels a token. H100, B=1 decode, 2026-11-26: gpt2 0.402 -> 0.385 ms/token, gpt2-xl 2.110 -> 2.086
(``docs/experiments/decode-step.md``). XLA reads these flags once, when the backend starts, for the whole process:
a library import must not change them under its host program, so ``import jaxgpt`` leaves them alone and
``use_command_buffers()`` is the opt-in (the CLI calls it unless ``--no-command-buffers``).
"""

from __future__ import annotations

import os
import sys

COMMAND_BUFFER_FLAGS = ("--xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,WHILE,CONDITIONAL",
                        "--xla_gpu_graph_min_graph_size=1")


def use_command_buffers() -> bool:
    """Add the command-buffer flags to ``XLA_FLAGS`` unless jax's backend has started (too late to take effect) or
    ``XLA_FLAGS`` already names the option (the user's setting stands). Returns whether it added them. The flags are
    GPU options that CPU builds accept and ignore."""
    flags = os.environ.get("XLA_FLAGS", "")
    if "--xla_gpu_enable_command_buffer" in flags or _backend_started():
        return False
    os.environ["XLA_FLAGS"] = " ".join([flags, *COMMAND_BUFFER_FLAGS]).strip()
    return True


def _backend_started() -> bool:
    """Whether jax's backend has started. Asks jax only if it is imported already: importing it here would cost a
    CLI call ~1 s before its arguments are even checked."""
    bridge = sys.modules.get("jax._src.xla_bridge")  # (public jax has no "has the backend started" query)
    return bridge is not None and bridge.backends_are_initialized()
