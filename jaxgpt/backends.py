"""The backend registry: a backend name and a kernel choice -> the ops object the model runs on.

``xla`` (``jaxgpt.ops.XlaOps``) needs nothing beyond jax; ``pallas`` (``jaxgpt.ops_pallas.PallasOps``) imports the
kernels, so the XLA backend never loads a Pallas module.
"""

from __future__ import annotations

from jaxgpt.errors import UsageError
from jaxgpt.kernels import Kernels

BACKENDS = ("xla", "pallas")


def get_ops(backend: str, kernels: "Kernels | str | dict | None" = None):
    """The ops (an ``XlaOps``) for ``backend`` (``xla`` or ``pallas``) with the Pallas backend's ``kernels`` choice
    (``jaxgpt.kernels``: ``"decode=block,attention=triton"``, a dict or a ``Kernels``)."""
    k = Kernels.parse(kernels)
    if backend == "xla":
        if k != Kernels():
            raise UsageError(f"--kernels {k} chooses among the pallas backend's kernels; the xla backend has none "
                             "(add --backend pallas)")
        from jaxgpt.ops import XlaOps
        return XlaOps()
    if backend == "pallas":
        from jaxgpt.ops_pallas import PallasOps
        return PallasOps(k)
    raise UsageError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
