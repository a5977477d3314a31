import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Eight CPU devices for the multi-device tests (tests/test_sharding.py); the other tests use device 0 as before.
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

# One compilation cache for the run's processes (the xdist workers and the CLIs they start): many tests build
# the same small programs, and XLA's CPU compiles are most of the suite's time. Keyed by the program, jax and its
# flags, so it never serves a stale executable.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    import tempfile

    os.environ["JAX_COMPILATION_CACHE_DIR"] = os.path.join(tempfile.gettempdir(), f"jaxgpt-tests-xla-cache-{os.getuid()}")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

# Several test processes (pytest-xdist, the README's `-n auto`) on one GPU: each takes memory as it needs it
# instead of preallocating most of the card.
if "PYTEST_XDIST_WORKER" in os.environ:
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from jaxgpt import GPTConfig, random_state_dict, save_safetensors  # noqa: E402

ON_GPU = jax.default_backend() == "gpu"


def pytest_addoption(parser):
    parser.addoption("--full", action="store_true",
                     help="also run the tests marked slow: costlier variants of paths the default run covers once")


def _thin_dtype_variants(items) -> None:
    """Kernel tests run every shape in float32; each other dtype on its first shape only, the rest with --full (in
    the interpreter a dtype changes the rounding, not the code path; a GPU run takes --full)."""
    seen = set()
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        dtype = params.get("dtype")
        if not item.module.__name__.startswith("tests.test_kernels_") or dtype is None or str(dtype) == "float32":
            continue
        key = (item.module.__name__, item.originalname, str(dtype))
        if key in seen:
            item.add_marker(pytest.mark.slow)
        seen.add(key)


def pytest_collection_modifyitems(config, items):
    _thin_dtype_variants(items)
    # the long xdist groups (one worker runs each whole) first: the other workers balance the rest around them
    items.sort(key=lambda item: not any(m.name == "xdist_group" for m in item.iter_markers()))
    if not config.getoption("--full"):  # the default run: every public path once; --full adds the variants
        quick = [item for item in items if "slow" not in item.keywords]
        if len(quick) < len(items):
            config.hook.pytest_deselected(items=[item for item in items if "slow" in item.keywords])
            items[:] = quick
    if ON_GPU:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


# Small random-weight configs with the awkward features that matter: odd head counts (5, 25), widths that are
# not powers of two, a single head, GPT-2's real width and head_dim.
PARITY_CONFIGS = {
    "h5_c80": GPTConfig(n_layer=2, n_head=5, n_embd=80, n_ctx=64, vocab_size=503),
    "h25_c200": GPTConfig(n_layer=2, n_head=25, n_embd=200, n_ctx=32, vocab_size=300),
    "h1_c48": GPTConfig(n_layer=1, n_head=1, n_embd=48, n_ctx=16, vocab_size=97),
    "gpt2_width": GPTConfig(n_layer=1, n_head=12, n_embd=768, n_ctx=128, vocab_size=1024),
}

# Full GPT-2 vocabulary (so real prompts tokenize) on a tiny body: for CLI and predict tests.
TINY = GPTConfig(n_layer=2, n_head=2, n_embd=32, n_ctx=64)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """An HF-style model directory (model.safetensors + config.json) with random weights."""
    d = tmp_path_factory.mktemp("tiny_ckpt")
    save_safetensors(random_state_dict(TINY, seed=1), d, TINY)
    return d


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
