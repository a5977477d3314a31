"""Split-K partial products as a value that the next kernel finishes.

A decode-sized matmul (M = batch, 1..16 rows) splits K over programs to fill the GPU; its float32 partials must then
be summed, biased and activated. Instead of a separate epilogue kernel, the next kernel of the layer does it as
its prologue: the LayerNorm after ``c_proj``, the MLP's second matmul after ``c_fc``, decode attention after
``c_attn``. ``SplitK`` carries the partials with the epilogue still to apply; ``resolve`` applies it in jnp for
anything that wants a plain array.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

ACTIVATIONS = ("none", "gelu_tanh")


def gelu_tanh(x):
    """GPT-2's GELU: 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))."""
    return 0.5 * x * (1.0 + jnp.tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)))


@functools.partial(jax.tree_util.register_dataclass, data_fields=["parts", "bias"],
                   meta_fields=["activation", "dtype", "view"])
@dataclasses.dataclass(frozen=True)
class SplitK:
    """``act(parts.sum(0) + bias)`` rounded to ``dtype``, not yet computed: parts (S, M, N) float32, bias (N,).

    A pytree (the arrays are leaves, the epilogue is static), so it passes through ``jax.jit`` boundaries.
    """

    parts: jax.Array
    bias: jax.Array
    activation: str
    dtype: jnp.dtype
    view: tuple[int, ...] | None = None  # the shape ``resolve`` gives (default (M, N))

    @property
    def shape(self) -> tuple[int, int]:
        return self.parts.shape[1:]


def finish(acc: jax.Array, bias: jax.Array, activation: str, dtype) -> jax.Array:
    """The epilogue on a float32 tile, rounded to ``dtype`` exactly as an unsplit matmul's store would."""
    y = acc + bias.astype(jnp.float32)
    return (gelu_tanh(y) if activation == "gelu_tanh" else y).astype(dtype)


def resolve(x: "SplitK | jax.Array") -> jax.Array:
    """The finished (M, N) array (XLA fuses the sum, bias and activation into one kernel)."""
    if isinstance(x, SplitK):
        y = finish(x.parts.sum(0), x.bias, x.activation, x.dtype)
        return y if x.view is None else y.reshape(x.view)
    return x
