"""jaxgpt's XLA flags: added once, never over a user's own choice, and opt-out."""

import pytest

from jaxgpt import xla_flags


@pytest.mark.parametrize("before,opt_out,want", [
    (None, None, xla_flags.COMMAND_BUFFERS),
    ("--xla_dump_to=/tmp/x", None, "--xla_dump_to=/tmp/x " + xla_flags.COMMAND_BUFFERS),
    ("--xla_gpu_enable_command_buffer=", None, "--xla_gpu_enable_command_buffer="),
    ("--xla_dump_to=/tmp/x", "0", "--xla_dump_to=/tmp/x"),
])
def test_command_buffer_flag(before, opt_out, want, monkeypatch):
    for name, value in (("XLA_FLAGS", before), ("JAXGPT_COMMAND_BUFFERS", opt_out)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    xla_flags.apply()
    xla_flags.apply()  # twice: still one copy
    import os
    assert os.environ.get("XLA_FLAGS", "") == want
