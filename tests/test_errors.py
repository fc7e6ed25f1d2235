"""Every misuse raises before any kernel runs, with a message naming the argument."""
import math

import pytest
import torch

import torch_ext
from conftest import make_inputs

T, B, F, N = 6, 2, 5, 4


def args(**replace):
    return make_inputs(T, B, F, N, state=True, requires_grad=False)._replace(**replace)


CASES = [
    # (replacement, option kwargs, exception type, argument named)
    (dict(x=torch.zeros(T, B)), {}, ValueError, "x"),
    (dict(x=torch.zeros(T, B, F, 1, dtype=torch.float64)), {}, ValueError, "x"),
    (dict(x=torch.zeros(T, B, F, dtype=torch.int64)), {}, TypeError, "x"),
    (dict(x=[[[1.0]]]), {}, TypeError, "x"),
    (dict(w_in=torch.zeros(N, F + 1, dtype=torch.float64)), {}, ValueError, "w_in"),
    (dict(w_in=torch.zeros(N, F)), {}, TypeError, "w_in"),                  # float32 vs float64
    (dict(w_rec=torch.zeros(N, N + 1, dtype=torch.float64)), {}, ValueError, "w_rec"),
    (dict(w_rec=torch.zeros(N + 1, dtype=torch.float64)), {}, ValueError, "w_rec"),  # one-to-one, wrong N
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


# The cases too: lengths out of [0, T], of a non-integer dtype or of
# shape [B, 1] (the reference broadcast it into [T, B, B, N] spikes), and a [1]
# w_rec (the reference broadcast it as one shared weight).
LENGTHS_CASES = [
    (dict(lengths=torch.tensor([T + 3, 1])), {}, ValueError, "lengths"),
    (dict(lengths=torch.tensor([-2, 1])), {}, ValueError, "lengths"),
    (dict(lengths=torch.tensor([2.7, 1.0])), {}, TypeError, "lengths"),
    (dict(lengths=torch.tensor([True, False])), {}, TypeError, "lengths"),
    (dict(lengths=torch.full((B, 1), 2)), {}, ValueError, "lengths"),
    (dict(lengths=torch.tensor([2, 1, 3])), {}, ValueError, "lengths"),
    (dict(w_rec=torch.ones(1, dtype=torch.float64)), {}, ValueError, "w_rec"),
]


def with_lengths(replace):
    replace = dict(replace)
    lengths = replace.pop("lengths", None)
    return args(**replace), ({} if lengths is None else dict(lengths=lengths))


# The reference runs the op's own checks (one implementation of them), so it
# rejects every bad input the op rejects, with the same error.
@pytest.mark.parametrize("replace,options,exc,name", CASES + LENGTHS_CASES)
def test_reference_rejects_what_the_op_rejects(replace, options, exc, name):
    call_args, extra = with_lengths(replace)
    with pytest.raises(exc, match=f"'{name}'") as from_op:
        torch_ext.recurrent_lif(*call_args, **options, **extra)
    with pytest.raises(exc, match=f"'{name}'") as from_reference:
        torch_ext.recurrent_lif_ref(*call_args, **options, **extra)
    assert str(from_reference.value).split("\n")[0] == str(from_op.value).split("\n")[0]


@pytest.mark.parametrize("lengths", [torch.tensor([2.7, 1.0, 9.0]), torch.tensor([9, -2, 1]),
                                     torch.full((3, 1), 2)])
@pytest.mark.parametrize("backend", ["fused", "autograd"])
def test_module_rejects_bad_lengths_with_either_backend(lengths, backend):
    layer = torch_ext.RecurrentLIF(5, 4, backend=backend)
    with pytest.raises((ValueError, TypeError), match="'lengths'"):
        layer(torch.randn(7, 3, 5), lengths=lengths)


def test_errors_from_cpp_reach_python_for_direct_op_calls():
    a = args(alpha=torch.tensor(0.5, dtype=torch.float64),
             theta=torch.tensor(1.0, dtype=torch.float64))
    forward = torch.ops.torch_ext.recurrent_lif
    for options, name in [(("hard", False, "atan", 1.0), "reset"),
                          (("zero", False, "nope", 1.0), "surrogate"),
                          (("zero", False, "atan", -1.0), "slope")]:
        with pytest.raises(ValueError, match=f"'{name}'"):
            forward(*a, *options)
    spikes, membrane = forward(*a, "zero", False, "atan", 1.0)
    common = (a.x, a.w_in, a.w_rec, a.bias, a.alpha, a.theta, a.u0, a.s0, spikes, membrane, "zero",
              False)
    backward = torch.ops.torch_ext._recurrent_lif_backward
    with pytest.raises(ValueError, match="'surrogate'"):
        backward(None, None, *common, "nope", 1.0, [True] * 11)
    with pytest.raises(ValueError, match="'slope'"):
        backward(None, None, *common, "atan", -1.0, [True] * 11)
    with pytest.raises(ValueError, match="'grad_spikes'"):
        backward(spikes[:1], None, *common, "atan", 1.0, [True] * 11)


def test_module_bad_arguments():
    with pytest.raises(ValueError, match="'backend'"):
        torch_ext.RecurrentLIF(3, 4, backend="cuda")
    with pytest.raises(ValueError, match="'alpha'"):
        torch_ext.RecurrentLIF(3, 4, alpha=2.0)
    with pytest.raises(ValueError, match="'surrogate'"):
        torch_ext.RecurrentLIF(3, 4, surrogate="relu")
    with pytest.raises(ValueError, match="'hidden_size'"):
        torch_ext.RecurrentLIF(3, 0)
    with pytest.raises(ValueError, match="'x'"):  # [T, F] is unbatched input, [T] is nothing
        torch_ext.RecurrentLIF(3, 4)(torch.zeros(5))
    with pytest.raises(ValueError, match="'x'"):
        torch_ext.RecurrentLIF(3, 4)(torch.zeros(5, 2, 1, 3))
