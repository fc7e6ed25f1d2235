"""Fused op against the plain-autograd reference, in float64, over every option."""
import itertools
import math

import pytest
import torch

import torch_ext
import neurons
from conftest import LIFArgs, make_inputs, run_with_grads

OPTION_GRID = list(itertools.product(
    ["subtract", "zero", "none"],            # reset
    [False, True],                           # detach_reset
    ["sigmoid", "fast_sigmoid", "atan", "triangle"],
    [(), (4,)],                              # alpha: 0-dim or per neuron
    [(), (4,)],                              # theta
    [False, True],                           # bias
    [False, True],                           # given initial state
))


def assert_matches_reference(args, rtol=1e-10, atol=1e-10, **options):
    s_f, u_f, g_f = run_with_grads(torch_ext.recurrent_lif, args, **options)
    s_r, u_r, g_r = run_with_grads(torch_ext.recurrent_lif_ref, args, **options)
    assert torch.equal(s_f, s_r)
    torch.testing.assert_close(u_f, u_r, rtol=rtol, atol=atol)
    assert len(g_f) == len(g_r)
    for got, want in zip(g_f, g_r):
        torch.testing.assert_close(got, want, rtol=rtol, atol=atol)
    return s_f


@pytest.mark.parametrize("reset,detach,surrogate,alpha_shape,theta_shape,bias,state", OPTION_GRID)
def test_matches_reference_float64(reset, detach, surrogate, alpha_shape, theta_shape, bias, state):
    # Float64 and no ties at the threshold: the two differ only by summation order.
    args = make_inputs(alpha_shape=alpha_shape, theta_shape=theta_shape, bias=bias, state=state)
    spikes = assert_matches_reference(args, reset=reset, detach_reset=detach, surrogate=surrogate)
    assert 0.05 < spikes.mean().item() < 0.95, "inputs must give a non-trivial spike rate"


@pytest.mark.parametrize("w_in,w_rec", [(False, True), (True, False), (False, False)])
def test_optional_weights(w_in, w_rec):
    args = make_inputs(w_in=w_in, w_rec=w_rec, state=True)
    assert_matches_reference(args, reset="zero")


def test_python_float_alpha_theta_get_no_gradient():
    args = make_inputs(alpha_shape=None, theta_shape=None)
    assert isinstance(args.alpha, float) and isinstance(args.theta, float)
    assert_matches_reference(args, slope=5.0)


def test_all_eight_gradients_present():
    args = make_inputs(state=True, alpha_shape=(4,), theta_shape=())
    _, _, grads = run_with_grads(torch_ext.recurrent_lif, args)
    assert len(grads) == 8
    assert all(g.abs().sum() > 0 for g in grads)


def test_only_requested_gradients_are_computed():
    args = make_inputs(state=True)
    args.x.requires_grad_(False)
    spikes, _ = torch_ext.recurrent_lif(*args)
    (gw,) = torch.autograd.grad(spikes.sum(), [args.w_in])
    (gw_ref,) = torch.autograd.grad(torch_ext.recurrent_lif_ref(*args)[0].sum(), [args.w_in])
    torch.testing.assert_close(gw, gw_ref, rtol=1e-10, atol=1e-10)


def test_seed_single_neuron_closed_form():
    """The seed's forward-mode recursion (u_derivative_beta) for one neuron with
    one input, reset='subtract', L = sum_t S[t], computed here in plain Python."""
    T, alpha, theta, k = 40, 0.8, 1.0, 25.0
    w_in, w_rec = 0.9, 0.35
    g = torch.Generator().manual_seed(3)
    xs = (torch.rand(T, generator=g, dtype=torch.float64) * 1.4).tolist()

    def sg(v):
        e = math.exp(-k * abs(v))
        return k * e / (1 + e) ** 2

    u, s, du_dw, beta_prev, grad = 0.0, 0.0, 0.0, 0.0, 0.0
    for x_t in xs:
        u = alpha * u + w_in * x_t + w_rec * s - theta * s
        du_dw = beta_prev * du_dw + x_t           # dU[t]/dW_in = beta[t-1] dU[t-1]/dW_in + X[t]
        grad += sg(u - theta) * du_dw             # dL/dW_in = sum_t sg[t] dU[t]/dW_in
        beta_prev = alpha + (w_rec - theta) * sg(u - theta)
        s = 1.0 if u > theta else 0.0

    x = torch.tensor(xs, dtype=torch.float64).view(T, 1, 1)
    W_in = torch.tensor([[w_in]], dtype=torch.float64, requires_grad=True)
    W_rec = torch.tensor([[w_rec]], dtype=torch.float64)
    spikes, _ = torch_ext.recurrent_lif(x, W_in, W_rec, None, alpha, theta,
                                        reset="subtract", detach_reset=False)
    assert 0 < spikes.sum() < T
    (got,) = torch.autograd.grad(spikes.sum(), [W_in])
    assert got.item() == pytest.approx(grad, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("reset", ["subtract", "zero", "none"])
def test_chained_calls_equal_one_call(reset):
    args = make_inputs(T=16, state=True, alpha_shape=(4,))
    s_all, u_all, g_all = run_with_grads(torch_ext.recurrent_lif, args, reset=reset)

    def chained(*a, **kw):
        a = LIFArgs(*a)
        s1, u1 = torch_ext.recurrent_lif(*a._replace(x=a.x[:7]), **kw)
        s2, u2 = torch_ext.recurrent_lif(*a._replace(x=a.x[7:], u0=u1[-1], s0=s1[-1]), **kw)
        return torch.cat([s1, s2]), torch.cat([u1, u2])

    s_ch, u_ch, g_ch = run_with_grads(chained, args, reset=reset)
    assert torch.equal(s_all, s_ch)
    torch.testing.assert_close(u_ch, u_all, rtol=1e-12, atol=1e-12)
    for got, want in zip(g_ch, g_all):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_non_contiguous_and_expanded_inputs():
    T, B, F, N = 10, 3, 5, 4
    args = make_inputs(T, B, F, N, alpha_shape=(N,), theta_shape=(), state=True)
    x, w_in, w_rec, bias, alpha, theta, u0, s0 = [a.detach() for a in args]
    strided = LIFArgs(
        x=x.transpose(0, 1).contiguous().transpose(0, 1),    # strided x
        w_in=w_in.t().contiguous().t(),                       # transposed weights
        w_rec=w_rec.t().contiguous().t(),
        bias=torch.stack([bias, bias], 1)[:, 0],              # every other element
        alpha=alpha.t().contiguous().t(),
        theta=theta.expand(N),                                # [N] with stride 0
        u0=u0[:1].expand(B, N),                               # [B, N] with stride 0
        s0=s0.t().contiguous().t(),
    )
    dense = LIFArgs(strided.x.contiguous(), w_in, w_rec, bias, alpha,
                    theta.expand(N).contiguous(), u0[:1].expand(B, N).contiguous(), s0)
    assert not strided.x.is_contiguous() and not strided.w_in.is_contiguous()
    assert strided.theta.stride() == (0,) and strided.u0.stride() == (0, 1)
    results = []
    for inputs in (strided, dense):
        inputs = LIFArgs(*[t.detach().requires_grad_() for t in inputs])  # leaves, strides kept
        results.append(run_with_grads(torch_ext.recurrent_lif, inputs, reset="zero"))
    (s1, u1, g1), (s2, u2, g2) = results
    assert torch.equal(s1, s2) and torch.equal(u1, u2)
    for a, b in zip(g1, g2):
        assert torch.equal(a, b)


def test_grad_of_expanded_incoming_gradient():
    # loss.sum() hands backward an expanded (stride-0) gradient.
    args = make_inputs()
    s, u = torch_ext.recurrent_lif(*args)
    g1 = torch.autograd.grad(u.sum() + s.sum(), [args.x, args.w_in])
    s, u = torch_ext.recurrent_lif_ref(*args)
    g2 = torch.autograd.grad(u.sum() + s.sum(), [args.x, args.w_in])
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("T,B", [(0, 3), (5, 0), (0, 0)])
def test_empty_time_or_batch(T, B):
    args = make_inputs(T=T, B=B, state=True)
    spikes, membrane = torch_ext.recurrent_lif(*args)
    assert spikes.shape == membrane.shape == (T, B, 4)
    tensors = [args.x, args.w_in, args.w_rec, args.bias]
    grads = torch.autograd.grad(spikes.sum() + membrane.sum(), tensors, allow_unused=True)
    for g, a in zip(grads, tensors):
        assert g.shape == a.shape and not g.abs().sum()


def test_float32_matches_float64_away_from_threshold():
    """float32 agrees with float64 when no membrane comes within 1e-3 of theta
    (closer, a rounding difference could flip a spike and change the whole
    trajectory). Tolerances: ~T rounding steps of 6e-8 on values of order 1."""
    args64 = make_inputs(T=30, B=4, F=6, N=8, seed=11)
    s64, u64, g64 = run_with_grads(torch_ext.recurrent_lif, args64)
    assert (u64 - 1.0).abs().min() > 1e-3, "pick a seed without near-ties"
    args32 = [a.detach().float().requires_grad_() if isinstance(a, torch.Tensor) else a
              for a in args64]
    s32, u32, g32 = run_with_grads(torch_ext.recurrent_lif, args32)
    assert torch.equal(s32.double(), s64)
    torch.testing.assert_close(u32.double(), u64, rtol=1e-5, atol=1e-5)
    for a, b in zip(g32, g64):
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_compute_the_float32_op_of_their_values(dtype):
    """The state and the time loop are float32; the dense products multiply
    the half operands with float32 accumulation (MKL's products where the
    build has them: then only their summation order differs from float32's,
    README "Mixed precision"), so the membrane agrees to float32 rounding."""
    args = make_inputs(dtype=dtype, state=True)
    as_float = [a.detach().float().requires_grad_() if isinstance(a, torch.Tensor) else a
                for a in args]
    s_h, u_h, g_h = run_with_grads(torch_ext.recurrent_lif, args)
    s_f, u_f, g_f = run_with_grads(torch_ext.recurrent_lif, as_float)
    assert s_h.dtype == dtype and u_h.dtype == torch.float32
    assert set(s_h.unique().tolist()) <= {0.0, 1.0}
    assert (u_f - as_float[5]).abs().min() > 1e-4  # no float32 near-tie at theta
    assert torch.equal(s_h.float(), s_f)
    torch.testing.assert_close(u_h, u_f, rtol=1e-6, atol=1e-6)
    for got, want, inp in zip(g_h, g_f, [a for a in args if isinstance(a, torch.Tensor)]):
        assert got.dtype == inp.dtype
        # the loss weights were rounded to float16 for the half run; compare loosely
        torch.testing.assert_close(got.float(), want, rtol=2e-2, atol=2e-2)


def test_half_state_from_a_previous_call_is_accepted():
    args = make_inputs(dtype=torch.bfloat16, requires_grad=False)
    s, u = torch_ext.recurrent_lif(*args)
    s2, u2 = torch_ext.recurrent_lif(*args._replace(u0=u[-1], s0=s[-1]))  # float32 u0, bfloat16 s0
    assert s2.dtype == torch.bfloat16


def test_second_derivative_raises():
    args = make_inputs()
    spikes, _ = torch_ext.recurrent_lif(*args)
    # The first derivative may be taken with create_graph=True (it is then
    # part of a graph); differentiating it raises.
    (grad_w_in,) = torch.autograd.grad(spikes.sum(), [args.w_in], create_graph=True)
    assert grad_w_in.requires_grad
    with pytest.raises(RuntimeError, match="once-differentiable"):
        grad_w_in.sum().backward()


def test_backward_is_the_fused_op():
    args = make_inputs(state=True)  # all eight inputs are tensors that require grad
    spikes, membrane = torch_ext.recurrent_lif(*args)
    node = spikes.grad_fn
    assert node is membrane.grad_fn  # one node for the whole sequence
    assert "RecurrentFunction<torch_ext::LIF>" in node.name()  # the C++ autograd Function
    # Its backward is that one node, connected straight to the eight leaves:
    # no autograd-generated nodes (casts, copies, per-step ops) in between.
    edges = [fn for fn, _ in node.next_functions]
    assert len(edges) == 8
    assert all(type(fn).__name__ == "AccumulateGrad" for fn in edges), [fn.name() for fn in edges]
    assert all(fn.variable is a for fn, a in zip(edges, args))


@pytest.mark.parametrize("reset", ["subtract", "zero", "none"])
@pytest.mark.parametrize("detach", [False, True])
def test_real_valued_initial_spikes(reset, detach):
    # s0 may hold any real value (R[0] = s0): the recurrent input of the first
    # step is then a weighted, not a plain, sum of w_rec columns.
    args = make_inputs(state=True)
    g = torch.Generator().manual_seed(7)
    s0 = torch.randn(args.s0.shape, generator=g, dtype=torch.float64) * 1.5
    args = args._replace(s0=s0.requires_grad_())
    assert_matches_reference(args, reset=reset, detach_reset=detach)


def test_row_padded_input_gives_the_bits_of_a_contiguous_one():
    # x viewed out of a wider buffer: its rows are strided, so the products
    # must not see the caller's layout (BLAS kernels differ by layout).
    args = make_inputs(T=10, B=3, F=5, N=4, requires_grad=False)
    wide = torch.randn(10, 3, 7, dtype=torch.float64)
    wide[..., :5] = args.x
    padded = args._replace(x=wide[..., :5].requires_grad_())
    dense = args._replace(x=args.x.clone().requires_grad_())
    (s1, u1, g1), (s2, u2, g2) = (run_with_grads(torch_ext.recurrent_lif, a) for a in (padded, dense))
    assert torch.equal(s1, s2) and torch.equal(u1, u2)
    for a, b in zip(g1, g2):
        assert torch.equal(a, b)


@pytest.mark.parametrize("N", [63, 64, 130])
def test_w_rec_gradient_over_fired_sources_only(N):
    """The CPU op sums the w_rec gradient over the sources that fired only (a
    bit mask per row, 64 sources a word): N across word boundaries, an initial
    state s0 with real values and zeros, and rows shorter than T (whose later
    steps have no spikes and no gradient) must give the reference's gradient."""
    args = make_inputs(T=9, B=4, F=7, N=N, state=True, seed=3)
    s0 = args.s0.detach() * torch.randn(4, N, dtype=torch.float64)  # zeros and real values
    args = args._replace(s0=s0.requires_grad_())
    lengths = torch.tensor([9, 3, 0, 7])
    for options in [{}, dict(lengths=lengths)]:
        spikes = assert_matches_reference(args, **options)
        assert 0.05 < spikes.mean().item() < 0.95


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
def test_non_finite_incoming_gradient_reaches_w_rec_as_in_the_reference(bad):
    """Skipping zero spikes would drop the NaN of 0 * inf: with a non-finite
    gradient flowing back, the w_rec gradient is the dense product's, NaN
    wherever the reference has NaN."""
    args = make_inputs(T=6, B=3, F=5, N=8, state=True, seed=4)
    results = []
    for fn in (torch_ext.recurrent_lif, torch_ext.recurrent_lif_ref):
        spikes, membrane = fn(*args)
        grad_membrane = torch.zeros_like(membrane)
        grad_membrane[3, 1, 2] = bad
        results.append(torch.autograd.grad(membrane, args.w_rec, grad_membrane)[0])
    assert not results[1].isfinite().all()
    torch.testing.assert_close(results[0], results[1], rtol=1e-10, atol=1e-10, equal_nan=True)


def _layouts(T, B, N):
    """Incoming gradients [T, B, N] of every layout a loss hands the backward."""
    g = torch.Generator().manual_seed(5)
    r = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64)
    return {
        "sum": r(()).expand(T, B, N),                      # spikes.sum(): all strides 0
        "sum over time": r(B, N).expand(T, B, N),           # spikes.sum(0) (spike counts)
        "mean over batch": r(T, 1, N).expand(T, B, N),
        "per step": r(T, B, 1).expand(T, B, N),             # stride 0 along N
        "time-major copy": r(B, T, N).transpose(0, 1),      # strided, unit stride along N
        "neuron-major": r(N, T, B).permute(1, 2, 0),        # no unit stride at all
        "every other neuron": r(T, B, 2 * N)[:, :, ::2],
    }


@pytest.mark.parametrize("layout", list(_layouts(1, 1, 1)))
@pytest.mark.parametrize("op", neurons.OPS)
@pytest.mark.parametrize("lengths", [False, True])
def test_incoming_gradient_layouts_give_the_bits_of_contiguous_ones(op, layout, lengths):
    # The backward reads broadcast gradients without writing them out; any
    # layout must give exactly the gradients of its contiguous copy.
    T, B, F, N = 7, 3, 5, 4
    args = neurons.make_inputs(op, T, B, F, N, state=True)
    length = torch.tensor([7, 4, 0]) if lengths else None
    outputs = neurons.FUSED[op](*args, lengths=length)
    grads = {}
    for name, layout_of in (("strided", lambda g: g), ("contiguous", torch.Tensor.contiguous)):
        incoming = [layout_of(g) for g in
                    [_layouts(T, B, N)[layout]] + [_layouts(T, B, N)["time-major copy"] * k
                                                   for k in range(1, len(outputs))]]
        grads[name] = torch.autograd.grad(outputs, neurons.grad_inputs(args), incoming,
                                          retain_graph=True)
    assert not _layouts(T, B, N)[layout].is_contiguous()
    for a, b in zip(grads["strided"], grads["contiguous"]):
        assert torch.equal(a, b)
    # and the same as the reference (the layouts of the spikes' gradient only)
    ref = neurons.REFERENCE[op](*args, lengths=length)
    want = torch.autograd.grad(ref[0], neurons.grad_inputs(args), _layouts(T, B, N)[layout])
    got = torch.autograd.grad(outputs[0], neurons.grad_inputs(args), _layouts(T, B, N)[layout])
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
