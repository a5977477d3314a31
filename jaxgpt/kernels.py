"""Which kernel runs for each op of the Pallas backend: the one place that decides.

The Pallas backend (``jaxgpt.ops_pallas``) asks one ``choose_*`` function per op and shape. Each applies the rule
measured on Hopper GPUs (``docs/experiments/``) unless the caller forced a kernel through a ``Kernels`` value:
``load_model(..., backend="pallas", kernels="decode=block,attention=triton")`` from Python, ``--kernels`` on the
CLI. A forced kernel that cannot run a shape (the Mosaic GPU attention at head_dim 128, the block kernel for int4
weights) falls back to what ``auto`` picks there. The XLA backend has no choices: XLA and cuDNN pick its kernels.

| op | choices | ``auto`` picks |
|---|---|---|
| ``attention``: prefill attention | ``mosaic``, ``triton``, ``xla`` (cuDNN) | ``mosaic`` on Hopper at head_dim 64 in bf16/f16 (faster than Triton at every GPT-2 shape), else ``triton`` |
| ``matmul``: prefill projections | ``xla`` (cuBLAS), ``mosaic``, ``triton`` | on Hopper ``xla`` (cuBLAS beat both of ours at every GPT-2 shape), except GELU projections (c_fc) from ``OURS_GELU_ROWS`` rows, which take ``mosaic`` (its epilogue applies the GELU that cuBLAS leaves to an extra pass) where its tiles fit, else ``triton``; off Hopper ``triton`` |
| ``decode``: the decode step (at most ``DECODE_ROWS`` rows) | ``block`` (one kernel a block), ``fused`` (8 kernels a layer, split-K partials finished by the next kernel), ``unfused`` (each op its own kernel, XLA scatter into the cache) | ``block`` for one row on a GPU (float or int8 weights); else ``fused`` for several rows or a width of 1024 or more; else ``unfused`` |
| ``head``: ln_f + LM head after the block kernels | ``fused`` (one kernel), ``xla`` (LayerNorm kernel, then cuBLAS) | ``fused`` |

Measured on the H100 (bf16): attention Mosaic 52.0 µs vs Triton 56.6 at B8 T1024 H12; c_attn at 8192 rows cuBLAS
42.9 µs vs Mosaic 55.5; decode gpt2-xl B=1 block 2.323 vs per-op 2.444 ms/token, B=8 block 4.332 vs fused 2.835;
gpt2 B=1 fused 0.573 vs unfused 0.484 ms/token. The full record: ``docs/experiments/``.
"""

from __future__ import annotations

import dataclasses
import functools

from jaxgpt.errors import UsageError

DECODE_ROWS = 16  # decode steps with at most this many rows run the decode kernels (block, fused)
# GELU projections (c_fc) from this many rows take our Mosaic GPU matmul on Hopper: measured at 8192 rows (ours
# win: the GELU pass cuBLAS leaves costs 83 µs a gpt2-xl layer) and 128 (cuBLAS wins); between them not measured.
OURS_GELU_ROWS = 4096

CHOICES: dict[str, tuple[str, ...]] = {
    "attention": ("auto", "mosaic", "triton", "xla"),
    "matmul": ("auto", "xla", "mosaic", "triton"),
    "decode": ("auto", "block", "fused", "unfused"),
    "head": ("auto", "fused", "xla"),
}


@dataclasses.dataclass(frozen=True)
class Kernels:
    """The Pallas backend's kernel per op; ``auto`` applies the measured rules (module docstring)."""

    attention: str = "auto"
    matmul: str = "auto"
    decode: str = "auto"
    head: str = "auto"

    def __post_init__(self):
        for op, allowed in CHOICES.items():
            if getattr(self, op) not in allowed:
                raise UsageError(f"--kernels {op}={getattr(self, op)!r}: choose one of {', '.join(allowed)}")

    @classmethod
    def parse(cls, spec: "Kernels | str | dict | None") -> "Kernels":
        """``None``, a ``Kernels``, a dict, or ``"op=kernel,op=kernel"`` (e.g. ``"decode=block,attention=triton"``)."""
        if spec is None or isinstance(spec, Kernels):
            return spec or cls()
        if isinstance(spec, dict):
            items = spec
        else:
            items = {}
            for part in filter(None, (p.strip() for p in str(spec).split(","))):
                op, eq, kernel = part.partition("=")
                if not eq:
                    raise UsageError(f"--kernels {part!r}: write op=kernel (ops: {', '.join(CHOICES)})")
                items[op.strip()] = kernel.strip()
        bad = [op for op in items if op not in CHOICES]
        if bad:
            raise UsageError(f"--kernels: unknown op {bad[0]!r}; choose among {', '.join(CHOICES)}")
        return cls(**items)

    def __str__(self) -> str:
        forced = [f"{op}={getattr(self, op)}" for op in CHOICES if getattr(self, op) != "auto"]
        return ",".join(forced) or "auto"


@functools.lru_cache(maxsize=1)
def hopper() -> bool:
    """Whether jax's first device is a Hopper GPU (compute capability 9.x)."""
    import jax
    dev = jax.devices()[0]
    return dev.platform == "gpu" and str(getattr(dev, "compute_capability", "")).startswith("9")


def on_gpu() -> bool:
    import jax
    return jax.default_backend() == "gpu"


def choose_attention(k: Kernels, *, head_dim: int, dtype) -> str:
    """Prefill attention's kernel: ``mosaic``, ``triton`` or ``xla``."""
    import jax.numpy as jnp
    mosaic_fits = head_dim == 64 and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16)
    if k.attention in ("triton", "xla"):
        return k.attention
    return "mosaic" if mosaic_fits and (k.attention == "mosaic" or hopper()) else "triton"


def choose_matmul(k: Kernels, *, rows: int, n: int, kdim: int, dtype, w_dtype, activation: str) -> str:
    """A float prefill projection's kernel (``act(x @ w + b)``, x (rows, kdim), w (kdim, n)): ``xla`` (cuBLAS),
    ``mosaic`` or ``triton``."""
    import jax.numpy as jnp
    if k.matmul == "xla":
        return "xla"
    if k.matmul == "auto" and hopper() and (activation == "none" or rows < OURS_GELU_ROWS):
        return "xla"
    if k.matmul != "triton" and _mosaic_matmul_fits(rows, n, kdim, jnp.dtype(dtype), jnp.dtype(w_dtype)) \
            and (k.matmul == "mosaic" or hopper()):
        return "mosaic"
    return "triton"


def _mosaic_matmul_fits(rows: int, n: int, kdim: int, dtype, w_dtype) -> bool:
    import jax.numpy as jnp

    from pallas_kernels import matmul_mgpu
    return (matmul_mgpu.plgpu is not None and dtype == w_dtype and dtype in (jnp.bfloat16, jnp.float16)
            and matmul_mgpu.plan(rows, n, kdim) is not None)


def choose_decode(k: Kernels, *, rows: int, width: int, head_dim: int, quant: str | None) -> str:
    """A decode step's form (T = 1): ``block``, ``fused`` or ``unfused``. ``quant``: None (float weights),
    ``int8`` (per channel) or ``int4``."""
    block_fits = rows <= DECODE_ROWS and head_dim >= 16 and head_dim & (head_dim - 1) == 0 and quant in (None, "int8")
    if block_fits and (k.decode == "block" or (k.decode == "auto" and on_gpu() and rows == 1)):
        return "block"
    return choose_decode_ops(k, rows=rows, width=width)


def choose_decode_ops(k: Kernels, *, rows: int, width: int) -> str:
    """The per-op decode step's form where the block kernel does not run: ``fused`` or ``unfused`` (always, past
    ``DECODE_ROWS`` rows)."""
    if rows > DECODE_ROWS:
        return "unfused"
    if k.decode in ("fused", "unfused"):
        return k.decode
    return "fused" if rows > 1 or width >= 1024 else "unfused"


def choose_head(k: Kernels) -> str:
    """After the block kernels: ln_f and the LM head as one kernel (``fused``) or two (``xla``)."""
    return "xla" if k.head == "xla" else "fused"

