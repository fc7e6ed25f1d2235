"""Every misuse raises before any kernel runs, with a message naming the argument."""
import math

import pytest
import torch

import torch_ext
from conftest import make_inputs

T, B, F, N = 6, 2, 5, 4


def args(**replace):
    a = make_inputs(T, B, F, N, state=True, requires_grad=False)
    names = ["x", "w_in", "w_rec", "bias", "alpha", "theta", "u0", "s0"]
    d = dict(zip(names, a))
    d.update(replace)
    return [d[n] for n in names]


CASES = [
    # (replacement, option kwargs, exception type, argument named)
    (dict(x=torch.zeros(T, B)), {}, ValueError, "x"),
    (dict(x=torch.zeros(T, B, F, 1, dtype=torch.float64)), {}, ValueError, "x"),
    (dict(x=torch.zeros(T, B, F, dtype=torch.int64)), {}, TypeError, "x"),
    (dict(x=[[[1.0]]]), {}, TypeError, "x"),
    (dict(w_in=torch.zeros(N, F + 1, dtype=torch.float64)), {}, ValueError, "w_in"),
    (dict(w_in=torch.zeros(N, F)), {}, TypeError, "w_in"),                  # float32 vs float64
    (dict(w_rec=torch.zeros(N, N + 1, dtype=torch.float64)), {}, ValueError, "w_rec"),
    (dict(w_rec=torch.zeros(N, dtype=torch.float64)), {}, ValueError, "w_rec"),
    (dict(w_in=None, w_rec=torch.zeros(N, N, dtype=torch.float64)), {}, ValueError, "w_rec"),
    (dict(bias=torch.zeros(N + 1, dtype=torch.float64)), {}, ValueError, "bias"),
    (dict(bias=torch.zeros(N, dtype=torch.float32)), {}, TypeError, "bias"),
    (dict(alpha=1.5), {}, ValueError, "alpha"),
    (dict(alpha=-0.1), {}, ValueError, "alpha"),
    (dict(alpha=math.nan), {}, ValueError, "alpha"),
    (dict(alpha="0.9"), {}, TypeError, "alpha"),
    (dict(alpha=torch.tensor([0.5, 1.2, 0.5, 0.5], dtype=torch.float64)), {}, ValueError, "alpha"),
    (dict(alpha=torch.tensor(math.nan, dtype=torch.float64)), {}, ValueError, "alpha"),
    (dict(alpha=torch.full((N + 1,), 0.5, dtype=torch.float64)), {}, ValueError, "alpha"),
    (dict(alpha=torch.full((1, N), 0.5, dtype=torch.float64)), {}, ValueError, "alpha"),
    (dict(theta=math.inf), {}, ValueError, "theta"),
    (dict(theta=math.nan), {}, ValueError, "theta"),
    (dict(theta=torch.ones(2, dtype=torch.float64)), {}, ValueError, "theta"),
    (dict(theta=torch.ones((), dtype=torch.int64)), {}, TypeError, "theta"),
    (dict(u0=torch.zeros(B + 1, N, dtype=torch.float64)), {}, ValueError, "u0"),
    (dict(s0=torch.zeros(B, N + 1, dtype=torch.float64)), {}, ValueError, "s0"),
    (dict(u0=torch.zeros(B, N, dtype=torch.float16)), {}, TypeError, "u0"),
    ({}, dict(reset="hard"), ValueError, "reset"),
    ({}, dict(surrogate="relu"), ValueError, "surrogate"),
    ({}, dict(surrogate=torch.sigmoid), ValueError, "surrogate"),
    ({}, dict(slope=0.0), ValueError, "slope"),
    ({}, dict(slope=-1.0), ValueError, "slope"),
    ({}, dict(slope=math.inf), ValueError, "slope"),
    ({}, dict(slope=math.nan), ValueError, "slope"),
    ({}, dict(slope="25"), TypeError, "slope"),
    ({}, dict(detach_reset="yes"), TypeError, "detach_reset"),
]


@pytest.mark.parametrize("replace,options,exc,name", CASES)
def test_bad_input_names_the_argument(replace, options, exc, name):
    with pytest.raises(exc, match=f"'{name}'"):
        torch_ext.recurrent_lif(*args(**replace), **options)


# The reference checks the same options (not tensor shapes: it is plain PyTorch).
OPTION_CASES = [c for c in CASES if c[3] in ("reset", "surrogate", "slope")
                or not isinstance(c[0].get(c[3], torch.zeros(())), torch.Tensor)
                and c[3] in ("alpha", "theta")]


@pytest.mark.parametrize("replace,options,exc,name", OPTION_CASES)
def test_reference_checks_the_same_options(replace, options, exc, name):
    with pytest.raises(exc, match=f"'{name}'"):
        torch_ext.recurrent_lif_ref(*args(**replace), **options)


def test_errors_from_cpp_reach_python_for_direct_op_calls():
    a = args()
    alpha, theta = torch.tensor(0.5, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64)
    forward = torch.ops.torch_ext.recurrent_lif
    for options, name in [(("hard", False, "atan", 1.0), "reset"),
                          (("zero", False, "nope", 1.0), "surrogate"),
                          (("zero", False, "atan", -1.0), "slope")]:
        with pytest.raises(ValueError, match=f"'{name}'"):
            forward(*a[:4], alpha, theta, *a[6:], *options)
    spikes, membrane = forward(*a[:4], alpha, theta, *a[6:], "zero", False, "atan", 1.0)
    common = (a[0], a[1], a[2], alpha, theta, a[6], a[7], spikes, membrane, "zero", False)
    backward = torch.ops.torch_ext._recurrent_lif_backward
    with pytest.raises(ValueError, match="'surrogate'"):
        backward(None, None, *common, "nope", 1.0, [True] * 8)
    with pytest.raises(ValueError, match="'slope'"):
        backward(None, None, *common, "atan", -1.0, [True] * 8)
    with pytest.raises(ValueError, match="'grad_spikes'"):
        backward(spikes[:1], None, *common, "atan", 1.0, [True] * 8)


def test_nan_input_propagates():
    a = args()
    a[0] = a[0].clone()
    a[0][2, 0, 0] = math.nan
    a = [t.requires_grad_() if isinstance(t, torch.Tensor) else t for t in a]
    spikes, membrane = torch_ext.recurrent_lif(*a)
    assert membrane[2:, 0].isnan().any() and not membrane[:2].isnan().any()
    assert not membrane[:, 1].isnan().any()  # other batch rows are untouched
    (g,) = torch.autograd.grad(membrane.sum(), [a[1]])
    assert g.isnan().any()


def test_module_bad_arguments():
    with pytest.raises(ValueError, match="'backend'"):
        torch_ext.RecurrentLIF(3, 4, backend="cuda")
    with pytest.raises(ValueError, match="'alpha'"):
        torch_ext.RecurrentLIF(3, 4, alpha=2.0)
    with pytest.raises(ValueError, match="'surrogate'"):
        torch_ext.RecurrentLIF(3, 4, surrogate="relu")
    with pytest.raises(ValueError, match="'hidden_size'"):
        torch_ext.RecurrentLIF(3, 0)
    with pytest.raises(ValueError, match="'x'"):
        torch_ext.RecurrentLIF(3, 4)(torch.zeros(5, 3))
