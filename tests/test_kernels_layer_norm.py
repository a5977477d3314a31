import numpy as np
import pytest

from pallas_kernels.layer_norm import add_layer_norm, add_layer_norm_reference
from tests.kernel_base import DTYPES, ON_GPU, check, rand

SHAPES = [(1, 768), (7, 1600), (33, 1024), (5, 1280), (3, 80), (130, 96)] + ([(65536, 1600)] if ON_GPU else [])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,cols", SHAPES)
@pytest.mark.parametrize("residual", [True, False])
def test_add_layer_norm(rows, cols, dtype, residual):
    rng = np.random.default_rng(rows * cols)
    x = rand(rng, (rows, cols), dtype)
    r = rand(rng, (rows, cols), dtype) if residual else None
    w, b = rand(rng, (cols,), dtype), rand(rng, (cols,), dtype)
    h, y = add_layer_norm(x, r, w, b, eps=1e-5)
    # reference on the same rounded inputs, in float32
    h32, y32 = add_layer_norm_reference(x.astype("float32"), None if r is None else r.astype("float32"),
                                        w.astype("float32"), b.astype("float32"))
    check(h, h32, dtype, 1, "h")
    check(y, y32, dtype, cols, "y")


@pytest.mark.parametrize("block_rows", [1, 4, 16])
def test_row_blocks_overhanging_the_array(block_rows):
    rng = np.random.default_rng(block_rows)
    x, r = rand(rng, (2, 3, 13, 200), "float32"), rand(rng, (2, 3, 13, 200), "float32")
    w, b = rand(rng, (200,), "float32"), rand(rng, (200,), "float32")
    h, y = add_layer_norm(x, r, w, b, block_rows=block_rows)
    h2, y2 = add_layer_norm_reference(x, r, w, b)
    check(y, y2, "float32", 200, "y")
    np.testing.assert_array_equal(np.asarray(h), np.asarray(h2))


def test_validation():
    rng = np.random.default_rng(0)
    x = rand(rng, (4, 8), "float32")
    with pytest.raises(ValueError, match="residual.shape"):
        add_layer_norm(x, x[:2], x[0], x[0])
    with pytest.raises(ValueError, match="w.shape"):
        add_layer_norm(x, None, x[0, :4], x[0])
    with pytest.raises(ValueError, match="block_rows"):
        add_layer_norm(x, None, x[0], x[0], block_rows=3)
