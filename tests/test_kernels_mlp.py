import numpy as np
import pytest

from pallas_kernels.mlp import fused_fits, fused_mlp, mlp, mlp_reference
from tests.kernel_base import DTYPES, ON_GPU, check, rand

SHAPES = [(1, 48), (19, 80), (8, 768)] + ([(8, 1600), (64, 1280), (4096, 768), (1024, 1600)] if ON_GPU else [])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,c", SHAPES)
@pytest.mark.parametrize("variant", ["fused", "two_pass"])
def test_mlp(m, c, dtype, variant):
    if variant == "fused" and not fused_fits(c, dtype):
        pytest.skip(f"fused tiles for C={c} {dtype} exceed shared memory (mlp() picks two_pass there)")
    rng = np.random.default_rng(m + c)
    args = (rand(rng, (m, c), dtype), rand(rng, (c, 4 * c), dtype, c ** -0.5), rand(rng, (4 * c,), dtype),
            rand(rng, (4 * c, c), dtype, (4 * c) ** -0.5), rand(rng, (c,), dtype))
    got = mlp(*args, variant=variant)
    want = mlp_reference(*(a.astype("float32") for a in args))
    check(got, want, dtype, 4 * c, f"{variant} {m}x{c}")


def test_fused_block_sizes():
    rng = np.random.default_rng(1)
    c = 40
    args = (rand(rng, (2, 9, c), "float32"), rand(rng, (c, 4 * c), "float32"), rand(rng, (4 * c,), "float32"),
            rand(rng, (4 * c, c), "float32"), rand(rng, (c,), "float32"))
    for bm, bh in [(16, 16), (32, 32)]:
        check(fused_mlp(*args, block_m=bm, block_h=bh), mlp_reference(*args), "float32", 4 * c, f"{bm},{bh}")
    with pytest.raises(ValueError, match="block_h"):
        fused_mlp(*args, block_h=64)  # 64 does not divide 160
    with pytest.raises(ValueError, match="shared memory"):
        fused_mlp(*args, block_m=4096)
    with pytest.raises(ValueError, match="variant"):
        mlp(*args, variant="three_pass")
