"""What the mixed-precision adversarial suites (test_mixed_precision_adversarial.py,
test_mixed_dtype_adversarial.py) share: the product-path switch, fresh leaves
of an op's arguments, and bitwise and norm comparisons of results."""
import math
import os

import pytest
import torch

import torch_ext

ENV = "TORCH_EXT_LOW_PRECISION_PRODUCTS"
BINARY_ENV = "TORCH_EXT_BINARY_INPUTS"
PATHS = ("on", "off")
LOW_DTYPES = (torch.bfloat16, torch.float16)


def dtype_id(dtype):
    return str(dtype).removeprefix("torch.")


def _low_precision_products_present():
    saved = os.environ.pop(ENV, None)  # (a bad value outside would raise here)
    try:
        return torch_ext.build_info()["cpu_low_precision_products"]
    finally:
        if saved is not None:
            os.environ[ENV] = saved


LOW = _low_precision_products_present()  # present in this build, whatever the switch
INSTRUCTIONS = torch_ext.build_info()["cpu_low_precision_instructions"]


def bfloat16_dot_products(path, dtype):
    """Whether the products run on the CPU's bfloat16 dot-product instructions
    (MKL's path for bfloat16 on a CPU with AVX512-BF16 or AMX-BF16). Those
    count subnormal bfloat16 operands as zero and round each product before
    adding it (so an overflowing +big and -big pair sums to inf - inf = NaN,
    where float32 FMAs, adding the next product exactly, give inf);
    elsewhere MKL converts the operands to float32 and its products are
    float32 products."""
    return path == "on" and dtype == torch.bfloat16 and "bfloat16" in INSTRUCTIONS


def flushed(t):
    """t with its bfloat16-subnormal values as (signed) zeros."""
    return torch.where(t.abs() < torch.finfo(torch.bfloat16).tiny, t * 0, t)


def use_path(monkeypatch, path, dtype=None):
    """Selects the product path (skipping "on" where this build has no MKL
    product for dtype) and leaves the binary-input choice at its default."""
    if path == "on" and dtype is not None and dtype_id(dtype) not in LOW:
        pytest.skip(f"no MKL low-precision products for {dtype_id(dtype)} in this build")
    monkeypatch.setenv(ENV, path)
    monkeypatch.delenv(BINARY_ENV, raising=False)


def leaf(t, dtype=None):
    if not isinstance(t, torch.Tensor):
        return t
    t = t.detach().to(dtype or t.dtype).clone()
    return t.requires_grad_(t.is_floating_point())


def rebuild(args, fn):
    """args with every tensor replaced by fn(name, tensor) (a fresh leaf)."""
    return type(args)(*[fn(name, a) if isinstance(a, torch.Tensor) else a
                        for name, a in zip(args._fields, args)])


def float64_args(args):
    return rebuild(args, lambda name, a: leaf(a, torch.float64))


def names_of(args):
    return [n for n, a in zip(args._fields, args)
            if isinstance(a, torch.Tensor) and a.requires_grad]


def inputs_of(args):
    return [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]


def spike_rate_ok(spikes):
    return 0.02 < spikes.double().mean().item() < 0.95


def nonfinite_pattern_equal(a, b):
    a, b = a.float(), b.float()
    return (torch.equal(a.isnan(), b.isnan()) and torch.equal(a == math.inf, b == math.inf)
            and torch.equal(a == -math.inf, b == -math.inf))


def same_bits(a, b):
    """Equal dtype, shape and values: NaN where NaN, inf of the same sign
    where inf, finite values equal (up to the sign of 0)."""
    if a.dtype != b.dtype or a.shape != b.shape or not nonfinite_pattern_equal(a, b):
        return False
    finite = a.isfinite()
    return torch.equal(a[finite], b[finite])


def assert_same_results(got, want, names, what=""):
    (go, gg), (wo, wg) = got, want
    assert len(go) == len(wo) and len(gg) == len(wg)
    for i, (a, b) in enumerate(zip(go, wo)):
        assert same_bits(a, b), f"{what}: output {i} differs"
    for name, a, b in zip(names, gg, wg):
        assert same_bits(a, b), f"{what}: gradient of {name} differs"


def norm_close(a, b, tol):
    """||a - b|| <= tol * ||b|| (all finite; same shape)."""
    assert a.shape == b.shape
    a, b = a.double(), b.double()
    assert a.isfinite().all() and b.isfinite().all()
    return (a - b).norm().item() <= tol * b.norm().item() + 1e-30
