"""jaxgpt.xla_flags: the command-buffer flags go into XLA_FLAGS only before the backend starts, never over the
user's own setting (each case in a fresh interpreter: the flags are process-wide)."""

import os
import subprocess
import sys

import pytest

SCRIPT = """
import os, jax
from jaxgpt.xla_flags import use_command_buffers
if {started}:
    jax.numpy.ones(1).block_until_ready()
print(use_command_buffers(), repr(os.environ.get("XLA_FLAGS", "")))
jax.numpy.ones(1).block_until_ready()  # the backend accepts what was set
"""


@pytest.mark.parametrize("env,started,added,needle", [
    ({}, False, True, "WHILE,CONDITIONAL"),
    ({}, True, False, "''"),
    ({"XLA_FLAGS": "--xla_gpu_enable_command_buffer="}, False, False, "'--xla_gpu_enable_command_buffer='"),
], ids=["added", "too-late", "user-setting-stands"])
def test_use_command_buffers(env, started, added, needle):
    clean = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    out = subprocess.run([sys.executable, "-c", SCRIPT.format(started=started)], env={**clean, **env},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-500:]
    got = out.stdout.strip().splitlines()[-1]
    assert got.startswith(str(added)) and needle in got, got
