"""Every neuron model of the registry (torch_ext._neurons.NEURONS: LIF,
adaptive, current-based), tested once: the fused op against its
plain-autograd reference in float64 over every option, parameter kind,
initial state, continuation, lengths, the low-memory mode, empty and
low-precision inputs, the errors (naming the argument and the op; the
reference raises what the op raises), opcheck, Meta kernels, autograd
details and the schemas' one pattern. A new model added to the registry is
tested here without a line of test code (model-specific facts live in the
model's own test file)."""
import itertools
import math

import pytest
import torch

import torch_ext
from neurons import (FUSED, NEURONS, OPS, PARAM_FLOATS, RECURRENCES, REFERENCE, RESETS,
                     SURROGATES, assert_matches_reference, grad_inputs, grad_names, make_inputs,
                     run_with_grads)

T, B, F, N = 10, 3, 5, 4
needs_opcheck = pytest.mark.skipif(not hasattr(torch.library, "opcheck"),
                                   reason="torch.library.opcheck needs torch >= 2.4")


def spike_rate_ok(spikes):
    return 0.05 < spikes.double().mean().item() < 0.95


# ---------------------------------------------------------------------------
# The op against the reference
# ---------------------------------------------------------------------------

OPTION_GRID = list(itertools.product(RESETS, [True, False], SURROGATES, RECURRENCES,
                                     [True, False]))


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("reset,detach,surrogate,recurrent,w_in", OPTION_GRID)
def test_matches_reference_float64(op, reset, detach, surrogate, recurrent, w_in):
    # Per-neuron parameters and an initial state: every gradient.
    args = make_inputs(op, w_in=w_in, recurrent=recurrent, state=True)
    spikes = assert_matches_reference(op, args, reset=reset, detach_reset=detach,
                                      surrogate=surrogate)
    assert spike_rate_ok(spikes), "inputs must give a non-trivial spike rate"


def param_kinds(op):
    """Every parameter per neuron, 0-dim or a Python float, and two mixes."""
    names = NEURONS[op].param_names
    cycle = ["neuron", "scalar", "float"]
    return ["neuron", "scalar", "float",
            {n: cycle[i % 3] for i, n in enumerate(names)},
            {n: cycle[(i + 1) % 3] for i, n in enumerate(names)}]


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("kind", range(5), ids=["neuron", "scalar", "float", "mixed1", "mixed2"])
@pytest.mark.parametrize("state", [False, True])
@pytest.mark.parametrize("reset", RESETS)
@pytest.mark.parametrize("recurrent", ["all_to_all", "one_to_one"])
def test_parameter_kinds_and_initial_state(op, kind, state, reset, recurrent):
    args = make_inputs(op, params=param_kinds(op)[kind], state=state, recurrent=recurrent, seed=2)
    spikes = assert_matches_reference(op, args, reset=reset, detach_reset=reset != "none")
    assert spike_rate_ok(spikes)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("slope", [None, 3.0])
def test_bias_and_slope(op, bias, slope):
    args = make_inputs(op, bias=bias, state=True, seed=3)
    assert_matches_reference(op, args, slope=slope, detach_reset=False)


@pytest.mark.parametrize("op", OPS)
def test_defaults_are_the_registrys(op):
    neuron = NEURONS[op]
    args = make_inputs(op, requires_grad=False)
    x, w_in, w_rec, bias = args[:4]
    got = FUSED[op](x, w_in, w_rec, bias)
    want = FUSED[op](x, w_in, w_rec, bias, *(p.default for p in neuron.params),
                     reset=neuron.reset, detach_reset=neuron.detach_reset, surrogate="sigmoid")
    ref = REFERENCE[op](x, w_in, w_rec, bias)
    for g, w, r in zip(got, want, ref):
        assert torch.equal(g, w)
        torch.testing.assert_close(g, r, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("op", OPS)
def test_every_gradient_present(op):
    args = make_inputs(op, state=True)
    n_inputs = 5 + len(NEURONS[op].params) + len(NEURONS[op].states)
    for detach in (True, False):
        _, grads = run_with_grads(FUSED[op], args, detach_reset=detach)
        assert len(grads) == n_inputs
        for name, g in zip(grad_names(args), grads):
            assert g.abs().sum() > 0, f"no gradient reaches {name}"


@pytest.mark.parametrize("op", OPS)
def test_python_float_parameters_get_no_gradient(op):
    args = make_inputs(op, params="float")
    assert len(grad_inputs(args)) == 4  # x, w_in, w_rec, bias


@pytest.mark.parametrize("op", OPS)
def test_outputs_shapes_dtypes_and_spikes_binary(op):
    args = make_inputs(op, requires_grad=False)
    outputs = FUSED[op](*args)
    assert len(outputs) == 1 + len(NEURONS[op].states)
    assert all(out.shape == (T, B, N) for out in outputs)
    assert set(outputs[0].unique().tolist()) <= {0.0, 1.0}
    # S[t] = H(U[t] - theta), strict: U == theta does not fire (the membrane is output 1).
    assert torch.equal(outputs[0], (outputs[1] > args.theta).double())


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_low_precision_dtypes(op, dtype):
    args = make_inputs(op, dtype=dtype, state=True, requires_grad=False)
    for fn in (FUSED[op], REFERENCE[op]):
        outputs = fn(*args)
        assert outputs[0].dtype == dtype
        assert all(out.dtype == torch.float32 for out in outputs[1:])


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("T,B", [(0, 3), (5, 0), (0, 0)])
def test_empty_time_or_batch(op, T, B):
    args = make_inputs(op, T=T, B=B, state=True)
    for fn in (FUSED[op], REFERENCE[op]):
        outputs, grads = run_with_grads(fn, args)
        assert all(out.shape == (T, B, N) for out in outputs)
        assert all(g.shape == a.shape for g, a in zip(grads, grad_inputs(args)))


# ---------------------------------------------------------------------------
# Continuation, lengths, the low-memory mode
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("reset", RESETS)
@pytest.mark.parametrize("recurrent", RECURRENCES)
def test_two_calls_equal_one(op, reset, recurrent):
    """The last step's outputs passed as the initial state continue the sequence."""
    neuron = NEURONS[op]
    args = make_inputs(op, T=12, state=True, recurrent=recurrent)
    options = dict(reset=reset, detach_reset=reset == "zero")
    whole, g_all = run_with_grads(FUSED[op], args, **options)

    def chained(*a, **kw):
        a = type(args)(*a)
        first = FUSED[op](*a._replace(x=a.x[:5]), **kw)
        state = {s.initial: out[-1] for s, out in zip(neuron.states, first[1:])}
        second = FUSED[op](*a._replace(x=a.x[5:], s0=first[0][-1], **state), **kw)
        return tuple(torch.cat([one, two]) for one, two in zip(first, second))

    parts, g_ch = run_with_grads(chained, args, **options)
    assert torch.equal(whole[0], parts[0])
    for got, want in zip(parts[1:], whole[1:]):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    for name, got, want in zip(grad_names(args), g_ch, g_all):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10, msg=name)


LENGTHS = [10, 6, 0]  # T = 10, B = 3


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("backend", ["fused", "reference"])
@pytest.mark.parametrize("options", [dict(), dict(reset="subtract", detach_reset=False),
                                     dict(reset="none", low_memory=True)],
                         ids=["defaults", "subtract", "none-low-memory"])
def test_each_row_as_if_run_alone(op, backend, options):
    """With lengths, each row's outputs and gradients are those of running it
    alone on its own length; steps past it output 0 and pass no gradient."""
    neuron = NEURONS[op]
    fn = FUSED[op] if backend == "fused" else REFERENCE[op]
    options = dict(options)
    if options.pop("low_memory", False):
        options[neuron.save_flag] = False
    args = make_inputs(op, state=True)
    lengths = torch.tensor(LENGTHS)
    g = torch.Generator().manual_seed(5)
    weights = [torch.randn(T, B, N, generator=g, dtype=torch.float64)
               for _ in range(1 + len(neuron.states))]

    def loss_of(outputs, weights):
        return sum((out * w).sum() for out, w in zip(outputs, weights))

    outputs = fn(*args, lengths=lengths, **options)
    per_row = ["x", *neuron.initial_names]  # batch-indexed inputs
    shared = ["w_in", "w_rec", "bias", *neuron.param_names]
    grads = torch.autograd.grad(loss_of(outputs, weights),
                                [getattr(args, n) for n in per_row + shared])
    want_shared = [torch.zeros_like(getattr(args, n)) for n in shared]
    for row, length in enumerate(LENGTHS):
        assert not any(out[length:, row].any() for out in outputs)
        if length == 0:
            assert not any(g[:, row].any() if i == 0 else g[row].any()
                           for i, g in enumerate(grads[:len(per_row)]))
            continue
        one = args._replace(x=args.x[:length, row:row + 1],
                            **{n: getattr(args, n)[row:row + 1] for n in per_row[1:]})
        alone = fn(*one, **options)
        assert torch.equal(outputs[0][:length, row:row + 1], alone[0])
        for got, want in zip(outputs[1:], alone[1:]):
            torch.testing.assert_close(got[:length, row:row + 1], want, rtol=1e-12, atol=1e-12)
        g_row = torch.autograd.grad(loss_of(alone, [w[:length, row:row + 1] for w in weights]),
                                    [getattr(one, n) for n in per_row + shared])
        torch.testing.assert_close(grads[0][:length, row:row + 1], g_row[0], rtol=1e-10,
                                   atol=1e-12)
        assert not grads[0][length:, row].any()
        for got, want in zip(grads[1:len(per_row)], g_row[1:len(per_row)]):
            torch.testing.assert_close(got[row:row + 1], want, rtol=1e-10, atol=1e-12)
        want_shared = [w + gr for w, gr in zip(want_shared, g_row[len(per_row):])]
    for got, want in zip(grads[len(per_row):], want_shared):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("op", OPS)
def test_full_lengths_equal_no_lengths(op):
    args = make_inputs(op, state=True)
    one = FUSED[op](*args)
    other = FUSED[op](*args, lengths=torch.full((B,), T))
    assert all(torch.equal(a, b) for a, b in zip(one, other))


LOW_MEMORY_GRID = list(itertools.product(RESETS, [True, False], SURROGATES, RECURRENCES))


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("reset,detach,surrogate,recurrent", LOW_MEMORY_GRID)
def test_low_memory_mode_bitwise_equal(op, reset, detach, surrogate, recurrent):
    """Without the saved states the backward replays them: the same bits."""
    options = dict(reset=reset, detach_reset=detach, surrogate=surrogate)
    low_memory = {NEURONS[op].save_flag: False}
    for dtype in (torch.float64, torch.float32):
        args = make_inputs(op, dtype=dtype, state=True, recurrent=recurrent)
        out1, g1 = run_with_grads(FUSED[op], args, **options)
        out2, g2 = run_with_grads(FUSED[op], args, **low_memory, **options)
        assert all(torch.equal(a, b) for a, b in zip(out1, out2))
        for name, a, b in zip(grad_names(args), g1, g2):
            assert torch.equal(a, b), f"{dtype}: gradient of {name}"


@pytest.mark.parametrize("op", OPS)
def test_low_memory_mode_keeps_only_the_spikes(op):
    """What autograd keeps beyond the inputs: the states' outputs, or nothing."""
    args = make_inputs(op, T=40, B=4, N=16, state=True)

    def kept(**options):
        storages = set()

        def pack(t):
            if not any(t is a for a in args if isinstance(a, torch.Tensor)):
                storages.add(t.untyped_storage().data_ptr())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            FUSED[op](*args, **options)
        return len(storages)

    n_states = len(NEURONS[op].states)
    assert kept() == 1 + n_states  # the spikes and each state's output
    assert kept(**{NEURONS[op].save_flag: False}) == 1  # the spikes


# ---------------------------------------------------------------------------
# Errors: Python-side and the op's own, naming the argument and the op; the
# reference raises what the op raises
# ---------------------------------------------------------------------------

def _t(*values):
    return torch.tensor(values, dtype=torch.float64)


def error_cases(op):
    """(replaced arguments, options, exception, the argument it names)."""
    neuron = NEURONS[op]
    cases = []
    for p in neuron.params:
        name = p.name
        if p.decay:
            cases += [({name: 1.5}, {}, ValueError, name), ({name: -0.1}, {}, ValueError, name),
                      ({name: math.nan}, {}, ValueError, name),
                      ({name: _t(0.5, 1.2, 0.5, 0.5)}, {}, ValueError, name)]
        else:
            cases += [({name: math.inf}, {}, ValueError, name),
                      ({name: math.nan}, {}, ValueError, name)]
        cases += [({name: "0.9"}, {}, TypeError, name), ({name: True}, {}, TypeError, name),
                  ({name: [1.0]}, {}, TypeError, name),
                  ({name: torch.full((N + 1,), 0.5, dtype=torch.float64)}, {}, ValueError, name),
                  ({name: torch.full((1, N), 0.5, dtype=torch.float64)}, {}, ValueError, name),
                  ({name: torch.zeros((), dtype=torch.int64)}, {}, TypeError, name),
                  ({name: torch.full((), 0.5, dtype=torch.float16)}, {}, TypeError, name)]
    for name in neuron.initial_names:
        cases += [({name: torch.zeros(B + 1, N, dtype=torch.float64)}, {}, ValueError, name),
                  ({name: torch.zeros(B, N + 1, dtype=torch.float64)}, {}, ValueError, name),
                  ({name: torch.zeros(B, N, dtype=torch.float16)}, {}, TypeError, name),
                  ({name: [[0.0]]}, {}, TypeError, name)]
    cases += [
        (dict(x=torch.zeros(T, B)), {}, ValueError, "x"),
        (dict(x=torch.zeros(T, B, F, dtype=torch.int64)), {}, TypeError, "x"),
        (dict(w_in=torch.zeros(N, F + 1, dtype=torch.float64)), {}, ValueError, "w_in"),
        (dict(w_in=None, w_rec=torch.zeros(N, N, dtype=torch.float64)), {}, ValueError, "w_rec"),
        (dict(w_rec=torch.zeros(N + 1, dtype=torch.float64)), {}, ValueError, "w_rec"),
        (dict(bias=torch.zeros(N + 1, dtype=torch.float64)), {}, ValueError, "bias"),
        ({}, dict(reset="hard"), ValueError, "reset"),
        ({}, dict(surrogate="relu"), ValueError, "surrogate"),
        ({}, dict(surrogate=torch.sigmoid), ValueError, "surrogate"),
        ({}, dict(slope=-1.0), ValueError, "slope"),
        ({}, dict(slope=math.inf), ValueError, "slope"),
        ({}, dict(detach_reset=1), TypeError, "detach_reset"),
        ({}, {neuron.save_flag: "no"}, TypeError, neuron.save_flag),
        ({}, dict(lengths=torch.tensor([T + 1, 1, 1])), ValueError, "lengths"),
        ({}, dict(lengths=torch.tensor([-1, 1, 1])), ValueError, "lengths"),
        ({}, dict(lengths=torch.tensor([1.0, 2.0, 3.0])), TypeError, "lengths"),
        ({}, dict(lengths=torch.tensor([1, 2])), ValueError, "lengths"),
    ]
    return cases


ERROR_CASES = [(op, *case) for op in OPS for case in error_cases(op)]


@pytest.mark.parametrize("op,replace,options,exc,name", ERROR_CASES,
                         ids=[f"{c[0]}-{c[4]}-{i}" for i, c in enumerate(ERROR_CASES)])
def test_bad_input_names_the_argument_and_the_op(op, replace, options, exc, name):
    args = make_inputs(op, state=True, requires_grad=False)._replace(**replace)
    with pytest.raises(exc, match=f"{op}: argument '{name}'") as from_op:
        FUSED[op](*args, **options)
    with pytest.raises(exc, match=f"'{name}'") as from_reference:
        REFERENCE[op](*args, **options)
    assert str(from_reference.value).split("\n")[0] == str(from_op.value).split("\n")[0]


@pytest.mark.parametrize("op", OPS)
def test_forward_mode_ad_names_the_op(op):
    import torch.autograd.forward_ad as fw
    args = make_inputs(op, requires_grad=False)
    with fw.dual_level():
        x = fw.make_dual(args.x, torch.ones_like(args.x))
        with pytest.raises(NotImplementedError, match=f"^{op}: forward-mode AD"):
            FUSED[op](*args._replace(x=x))


@pytest.mark.parametrize("op", OPS)
def test_second_derivative_raises_naming_the_op(op):
    args = make_inputs(op)
    spikes = FUSED[op](*args)[0]
    (grad,) = torch.autograd.grad(spikes.sum() + 0 * args.x.sum(), [args.w_in],
                                  create_graph=True)
    with pytest.raises(RuntimeError, match=f"{op}: the backward pass is once-differentiable"):
        grad.sum().backward()


@pytest.mark.parametrize("op", OPS)
def test_the_backward_is_one_cpp_node(op):
    args = make_inputs(op, state=True)
    outputs = FUSED[op](*args)
    node = outputs[0].grad_fn
    assert all(out.grad_fn is node for out in outputs)
    assert "torch_ext::RecurrentFunction<" in node.name()
    edges = [fn for fn, _ in node.next_functions]
    assert len(edges) == len(grad_inputs(args))
    assert all(type(fn).__name__ == "AccumulateGrad" for fn in edges)


# ---------------------------------------------------------------------------
# The ops' schemas: one pattern for every model; opcheck; Meta kernels
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("op", OPS)
def test_schemas_follow_one_pattern(op):
    neuron = NEURONS[op]
    ops = torch.ops.torch_ext
    tensors = ["x", "w_in", "w_rec", "bias", *neuron.param_names, *neuron.initial_names]
    options = ["reset", "detach_reset", "surrogate", "slope"]
    delays = ["delays", "max_delay", "delay_sigma", "rec_mask"]
    forward = getattr(ops, op).default._schema
    assert [a.name for a in forward.arguments] == tensors + options + [neuron.save_flag,
                                                                        "lengths", *delays]
    assert [r.name for r in forward.returns] == ["spikes", *(s.output for s in neuron.states)]
    backward = getattr(ops, f"_{op}_backward").default._schema
    outputs = [s.output for s in neuron.states]
    assert [a.name for a in backward.arguments] == (
        ["grad_spikes", *(f"grad_{o}" for o in outputs)] + tensors + ["spikes", *outputs]
        + options + ["needs_grad", "lengths", *delays])
    assert str(backward.returns[0].type) == "List[Tensor]"
    check = getattr(ops, f"_{op}_check").default._schema
    assert [a.name for a in check.arguments] == tensors + options + ["lengths", *delays]


def direct_call(op, args):
    """The op's positional arguments, every parameter a tensor."""
    neuron = NEURONS[op]
    tensors = [torch.tensor(a, dtype=torch.float64) if isinstance(a, float) else a for a in args]
    return (*tensors, neuron.reset, neuron.detach_reset, "sigmoid", None, True, None)


@needs_opcheck
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("lengths", [False, True])
def test_opcheck_forward_and_backward(op, lengths):
    neuron = NEURONS[op]
    args = make_inputs(op, state=True, params="scalar")
    call = list(direct_call(op, args))
    if lengths:
        call[-1] = torch.tensor([T, 4, 0])
    torch.library.opcheck(getattr(torch.ops.torch_ext, op).default, tuple(call))
    with torch.no_grad():
        outputs = getattr(torch.ops.torch_ext, op)(*call)
    n = len(grad_inputs(args))
    # (needs_grad also has the three of the delays, absent here)
    for needs in ([True] * n + [False] * 3, [i % 2 == 0 for i in range(n + 3)]):
        back = (torch.randn_like(outputs[0]), *(torch.randn_like(o) for o in outputs[1:]),
                *[a.detach() for a in call[:n]], *outputs, neuron.reset, neuron.detach_reset,
                "sigmoid", None, needs, call[-1])
        torch.library.opcheck(getattr(torch.ops.torch_ext, f"_{op}_backward").default, back)


@pytest.mark.parametrize("op", OPS)
def test_meta_kernels_give_the_real_kernels_shapes_and_dtypes(op):
    for dtype in (torch.float64, torch.float16):
        args = make_inputs(op, dtype=dtype, state=True, requires_grad=False)
        real = FUSED[op](*args)
        meta = FUSED[op](*[a.to("meta") if isinstance(a, torch.Tensor) else a for a in args])
        for r, m in zip(real, meta):
            assert m.device.type == "meta" and m.shape == r.shape and m.dtype == r.dtype


@pytest.mark.parametrize("op", OPS)
def test_compile_fullgraph_matches_eager(op):
    args = make_inputs(op, state=True)

    def f(*a):
        return FUSED[op](*a, lengths=torch.tensor([T, 3, 0]))

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    eager, g_eager = run_with_grads(f, args)
    traced, g_traced = run_with_grads(compiled, args)
    assert all(torch.equal(a, b) for a, b in zip(eager, traced))
    assert all(torch.equal(a, b) for a, b in zip(g_eager, g_traced))


def test_every_registered_model_is_tested_here():
    """The registry's models are exactly the ops torch_ext exports."""
    assert set(OPS) == {"recurrent_lif", "recurrent_adlif", "recurrent_cubalif"}
    for op in OPS:
        assert hasattr(torch.ops.torch_ext, op) and callable(getattr(torch_ext, op))
        assert set(PARAM_FLOATS) >= set(NEURONS[op].param_names)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("recurrent", RECURRENCES)
@pytest.mark.parametrize("w_in", [True, False])
def test_padding_past_lengths_takes_no_part_in_the_gradients(op, recurrent, w_in):
    """NaN padding past a row's length (what a padded batch may hold) reaches
    no output and no gradient."""
    args = make_inputs(op, recurrent=recurrent, w_in=w_in, state=True)
    x = args.x.detach().clone()
    x[T - 3:, 1] = float("nan")
    args = args._replace(x=x.requires_grad_())
    outputs, grads = run_with_grads(FUSED[op], args, lengths=torch.tensor([T, T - 3, 2]))
    assert all(torch.isfinite(out).all() for out in outputs)
    for name, grad in zip(grad_names(args), grads):
        if name == "x":
            grad = grad[:T - 3]  # the padding's own gradient is 0, not NaN either
        assert torch.isfinite(grad).all(), name
