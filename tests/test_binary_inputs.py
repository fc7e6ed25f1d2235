"""Binary (spike) inputs: where x holds only 0 and 1, the op gathers the w_in
columns of the active inputs for the input current and sums gU over them
for grad_w_in, instead of the dense products. Tested for every neuron model
of the registry against the plain-autograd reference in float64 and against
the dense path, with lengths, the low-memory mode, every recurrence, low
precision, autocast and stacked modules; and the choice between the two
paths (TORCH_EXT_BINARY_INPUTS, the crossover density)."""
import pytest
import torch

import torch_ext
from neurons import (FUSED, NEURONS, OPS, assert_matches_reference, grad_names, make_inputs,
                     run_with_grads)

density = torch.ops.torch_ext._binary_input_density


def binary_inputs(op, rate=0.3, T=12, B=3, F=70, N=40, dtype=torch.float64, seed=0, **kwargs):
    """make_inputs with a binary x at about `rate` and w_in scaled so that the
    neurons still fire (the binary x has a smaller mean square than the
    random one make_inputs draws)."""
    args = make_inputs(op, T=T, B=B, F=F, N=N, dtype=dtype, seed=seed, **kwargs)
    g = torch.Generator().manual_seed(seed + 100)
    x = (torch.rand(T, B, F, generator=g) < rate).to(dtype).requires_grad_()
    w_in = (args.w_in.detach() * 3.0).requires_grad_()
    return args._replace(x=x, w_in=w_in)


@pytest.fixture
def gather(monkeypatch):
    monkeypatch.setenv("TORCH_EXT_BINARY_INPUTS", "gather")


def run_both(monkeypatch, fn, *args, **options):
    """run_with_grads(fn, ...) with the gather forced, then with the dense products."""
    monkeypatch.setenv("TORCH_EXT_BINARY_INPUTS", "gather")
    gathered = run_with_grads(fn, *args, **options)
    monkeypatch.setenv("TORCH_EXT_BINARY_INPUTS", "dense")
    dense = run_with_grads(fn, *args, **options)
    return gathered, dense


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("recurrent", ["all_to_all", "one_to_one", "none"])
@pytest.mark.parametrize("lengths", [False, True])
@pytest.mark.parametrize("low_memory", [False, True])
def test_gather_matches_reference_float64(op, recurrent, lengths, low_memory, gather):
    args = binary_inputs(op, recurrent=recurrent, state=True)
    assert density(args.x, args.w_in) > 0.2
    options = {}
    if lengths:
        options["lengths"] = torch.tensor([12, 0, 7])
    if low_memory:
        options[NEURONS[op].save_flag] = False
    spikes = assert_matches_reference(op, args, rtol=1e-12, atol=1e-12, **options)
    assert 0.02 < spikes.mean().item() < 0.9


@pytest.mark.parametrize("op", OPS)
def test_low_memory_replay_is_bitwise_under_the_gather(op, gather):
    """The backward's recomputed input current takes the same path: the same bits."""
    args = binary_inputs(op, state=True)
    out1, g1 = run_with_grads(FUSED[op], args)
    out2, g2 = run_with_grads(FUSED[op], args, **{NEURONS[op].save_flag: False})
    assert all(torch.equal(a, b) for a, b in zip(out1, out2))
    assert all(torch.equal(a, b) for a, b in zip(g1, g2))


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_gather_equals_dense_up_to_summation_order(op, dtype, monkeypatch):
    args = binary_inputs(op, dtype=dtype, T=20, B=4, F=150, N=70, rate=0.1)
    (out_g, grads_g), (out_d, grads_d) = run_both(monkeypatch, FUSED[op], args)
    # float32: the two sum the same terms in another order (~1e-7 relative
    # each); a membrane within that of the threshold could flip a spike, so
    # compare spikes where the dense membrane is clear of the threshold.
    # float64: 1e-12 relative to each tensor's largest entry (an entry that
    # is a cancelling sum of many terms carries their rounding, not its own).
    rel = 1e-12 if dtype == torch.float64 else 1e-4
    theta = args.theta.detach()
    clear = (out_d[1] - theta).abs() > 1e-4
    assert torch.equal(out_g[0][clear], out_d[0][clear])
    if dtype == torch.float64 or torch.equal(out_g[0], out_d[0]):
        for state_g, state_d in zip(out_g[1:], out_d[1:]):
            torch.testing.assert_close(state_g, state_d, rtol=rel,
                                       atol=rel * state_d.abs().max().item())
        for name, a, b in zip(grad_names(args), grads_g, grads_d):
            torch.testing.assert_close(a, b, rtol=rel, atol=rel * b.abs().max().item(),
                                       msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_binary_x(op, dtype, monkeypatch):
    """Low-precision inputs: both paths multiply w_in rounded to x's dtype and
    sum in float32, so they agree to float32 rounding."""
    args = binary_inputs(op, dtype=torch.float32, T=15, B=3, F=90, N=40, rate=0.1)
    # x and the weights in the low dtype; the neuron's parameters and
    # initial states may stay float32 (the compute dtype).
    low = args._replace(**{name: getattr(args, name).detach().to(dtype).requires_grad_()
                           for name in ("x", "w_in", "w_rec", "bias")})
    (out_g, grads_g), (out_d, grads_d) = run_both(monkeypatch, FUSED[op], low)
    monkeypatch.setenv("TORCH_EXT_BINARY_INPUTS", "gather")
    assert density(low.x, low.w_in) > 0
    if torch.equal(out_g[0], out_d[0]):  # no spike flipped by the summation order
        torch.testing.assert_close(out_g[1], out_d[1], rtol=1e-5, atol=1e-5)
        for a, b in zip(grads_g, grads_d):
            torch.testing.assert_close(a.float(), b.float(), rtol=2e-2, atol=2e-2)
    else:
        assert (out_g[0] != out_d[0]).float().mean() < 0.01


@pytest.mark.parametrize("op", OPS)
def test_autocast(op, monkeypatch):
    args = binary_inputs(op, dtype=torch.float32, T=15, B=3, F=90, N=40, rate=0.1)

    def under_autocast(*a, **kw):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return FUSED[op](*a, **kw)

    (out_g, _), (out_d, _) = run_both(monkeypatch, under_autocast, args)
    assert (out_g[0] != out_d[0]).float().mean() < 0.01
    same = (out_g[0] == out_d[0]).all(-1, keepdim=True)
    torch.testing.assert_close(out_g[1] * same, out_d[1] * same, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("threads", [1, 2])
def test_gather_does_not_depend_on_the_thread_count(threads, gather):
    args = binary_inputs("recurrent_lif", dtype=torch.float32, T=40, B=8, F=300, N=200)
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        out1, g1 = run_with_grads(FUSED["recurrent_lif"], args)
        torch.set_num_threads(threads)
        out2, g2 = run_with_grads(FUSED["recurrent_lif"], args)
    finally:
        torch.set_num_threads(previous)
    assert all(torch.equal(a, b) for a, b in zip(out1, out2))
    assert all(torch.equal(a, b) for a, b in zip(g1, g2))


def test_the_choice_follows_the_density_and_the_size(monkeypatch):
    """Unforced: gather below the crossover density (which grows with N;
    below about 100 neurons never), dense above it; and the switch."""
    monkeypatch.delenv("TORCH_EXT_BINARY_INPUTS", raising=False)
    g = torch.Generator().manual_seed(0)
    sparse = (torch.rand(50, 8, 700, generator=g) < 0.02).float()
    dense_ones = (torch.rand(50, 8, 700, generator=g) < 0.5).float()
    for N in (128, 256, 512):
        w_in = torch.randn(N, 700)
        assert density(sparse, w_in) == pytest.approx(sparse.mean().item())
        assert density(dense_ones, w_in) == -1
    assert density(sparse, torch.randn(64, 700)) == -1
    assert density(sparse + 0.5, torch.randn(256, 700)) == -1  # not binary
    assert density(sparse.to(torch.bfloat16), torch.randn(256, 700)) > 0
    monkeypatch.setenv("TORCH_EXT_BINARY_INPUTS", "dense")
    assert density(sparse, torch.randn(256, 700)) == -1
    monkeypatch.setenv("TORCH_EXT_BINARY_INPUTS", "gather")
    assert density(dense_ones, torch.randn(64, 700)) == pytest.approx(dense_ones.mean().item())


def stack_grads(module, x):
    spikes = module(x)[0]
    loss = (spikes * torch.linspace(-1, 1, spikes.shape[-1], dtype=spikes.dtype)).sum()
    return spikes, torch.autograd.grad(loss, [x, *module.parameters()])


@pytest.mark.parametrize("layer", [torch_ext.RecurrentLIF, torch_ext.RecurrentAdLIF,
                                   torch_ext.RecurrentCubaLIF])
def test_stacked_layers_gather_the_spikes_below(layer, monkeypatch):
    """Layer 2 reads layer 1's spikes: gathered unforced (N = 300, a low
    rate), equal to the dense path; the module computes what the ops do."""
    monkeypatch.delenv("TORCH_EXT_BINARY_INPUTS", raising=False)
    torch.manual_seed(0)
    module = layer(20, 300, num_layers=2, dtype=torch.float64)
    w_in_2 = module.w_in_l1
    with torch.no_grad():  # no bias in layer 1, so that its rate follows its input
        module.bias_l0.zero_()
    first = layer(20, 300, dtype=torch.float64)
    first.load_state_dict({k[:-3]: v for k, v in module.state_dict().items() if k.endswith("_l0")})
    noise = torch.randn(30, 4, 20, dtype=torch.float64)
    with torch.no_grad():  # an input scale at which layer 1 fires sparsely
        scale = next(s for s in (0.1, 0.15, 0.25, 0.5, 0.7, 1, 1.4, 2, 3, 4, 6, 10, 20)
                     if 0.01 < first(noise * s)[0].mean() < 0.1)
        spikes_1 = first(noise * scale)[0]  # what the stack passes to layer 2
    x = (noise * scale).requires_grad_()
    assert 0 < spikes_1.mean() < 0.1 and density(spikes_1, w_in_2) > 0
    out_auto, grads_auto = stack_grads(module, x)
    monkeypatch.setenv("TORCH_EXT_BINARY_INPUTS", "dense")
    out_dense, grads_dense = stack_grads(module, x)
    assert torch.equal(out_auto, out_dense)
    # 1e-12 relative to each gradient's largest entry (they reach 1e6 here;
    # an entry that is a cancelling sum of many terms carries their rounding).
    for a, b in zip(grads_auto, grads_dense):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12 * b.abs().max().item())


def test_dropout_between_layers_falls_back_to_dense(monkeypatch):
    """Dropout scales kept spikes by 1 / (1 - p): not binary, so the second
    layer multiplies densely, forced gather or not (the same bits)."""
    module = torch_ext.RecurrentLIF(20, 300, num_layers=2, dropout=0.3, dtype=torch.float64)
    x = torch.randn(30, 4, 20, dtype=torch.float64) * 2
    results = []
    for mode in ("gather", "dense"):
        monkeypatch.setenv("TORCH_EXT_BINARY_INPUTS", mode)
        torch.manual_seed(1)
        results.append(stack_grads(module, x.clone().requires_grad_()))
    assert torch.equal(results[0][0], results[1][0])
    assert all(torch.equal(a, b) for a, b in zip(results[0][1], results[1][1]))
    dropped = torch.nn.functional.dropout((torch.rand(5, 4, 300) < 0.1).double(), 0.3)
    monkeypatch.setenv("TORCH_EXT_BINARY_INPUTS", "gather")
    assert density(dropped, module.w_in_l1) == -1


def test_a_forward_reads_x_anew_however_its_memory_changed(gather):
    """The backward reuses the index of x its forward built (keyed by x's
    storage and version); a forward always scans: here x's memory changes
    through numpy, which bumps no version counter."""
    args = binary_inputs("recurrent_lif", dtype=torch.float32, requires_grad=False)
    x = args.x.detach().clone()
    first = FUSED["recurrent_lif"](*args._replace(x=x))
    x.numpy()[...] = torch.roll(x, 1, dims=2).numpy()
    second = FUSED["recurrent_lif"](*args._replace(x=x))
    fresh = FUSED["recurrent_lif"](*args._replace(x=x.clone()))
    assert all(torch.equal(a, b) for a, b in zip(second, fresh))
    assert not torch.equal(first[1], second[1])


def test_interleaved_layers_each_get_their_own_index(gather):
    """Several binary inputs alive between forwards and backwards (a stack,
    or two models): each backward finds its own x's index."""
    calls = [binary_inputs("recurrent_lif", seed=seed, T=8, F=30 + seed, N=20) for seed in range(3)]
    want = [run_with_grads(FUSED["recurrent_lif"], args) for args in calls]
    outputs = [FUSED["recurrent_lif"](*args) for args in calls]
    for args, out, (want_out, want_grads) in reversed(list(zip(calls, outputs, want))):
        g = torch.Generator().manual_seed(1)  # run_with_grads's random loss
        loss = sum((o * torch.randn(o.shape, generator=g, dtype=torch.float64)).sum()
                   for o in out)
        grads = torch.autograd.grad(loss, [a for a in args if isinstance(a, torch.Tensor)
                                           and a.requires_grad])
        assert all(torch.equal(a, b) for a, b in zip(out, want_out))
        assert all(torch.equal(a, b) for a, b in zip(grads, want_grads))


@pytest.mark.parametrize("mode", ["inference_mode", "no_grad"])
def test_stacks_without_autograd(mode, monkeypatch):
    """Under inference_mode (tensors without a version counter) and no_grad:
    a stack whose second layer gathers gives the dense path's spikes."""
    monkeypatch.delenv("TORCH_EXT_BINARY_INPUTS", raising=False)
    torch.manual_seed(0)
    module = torch_ext.RecurrentLIF(20, 300, num_layers=2)
    x = torch.randn(30, 4, 20) * 0.5
    context = torch.inference_mode if mode == "inference_mode" else torch.no_grad
    with context():
        first = torch_ext.recurrent_lif(x, module.w_in_l0, module.w_rec_l0, module.bias_l0,
                                        module.alpha_l0, module.theta_l0)[0]
        assert 0 < first.mean() < 0.1 and density(first, module.w_in_l1) > 0
        gathered = module(x)[0]
    monkeypatch.setenv("TORCH_EXT_BINARY_INPUTS", "dense")
    with context():
        dense = module(x)[0]
    clear = (gathered == dense).float().mean()
    assert clear > 0.999


@pytest.mark.parametrize("op", OPS)
def test_float16_gradient_overflow_falls_back_to_dense(op, monkeypatch):
    """float16 x multiplies with gU rounded to float16 (where MKL's float16
    products are present), where a gradient of 1e5 becomes inf although the
    float32 gU is finite: then grad_w_in is the dense product's, whose
    0 * inf spreads NaN, not a gather that would skip the zeros."""
    monkeypatch.setenv("TORCH_EXT_LOW_PRECISION_PRODUCTS", "on")  # MKL's, wherever present
    args = binary_inputs(op, dtype=torch.float32, T=10, B=3, F=70, N=40, rate=0.1)
    half = args._replace(**{name: getattr(args, name).detach().to(torch.float16).requires_grad_()
                            for name in ("x", "w_in", "w_rec", "bias")})
    grads = []
    for mode in ("gather", "dense"):
        monkeypatch.setenv("TORCH_EXT_BINARY_INPUTS", mode)
        membrane = FUSED[op](*half)[1]  # float32, the compute dtype
        grads.append(torch.autograd.grad(membrane, half.w_in, torch.full_like(membrane, 1e5))[0])
    if torch_ext.build_info()["cpu_low_precision_products"]:
        assert grads[1].isnan().any()
    torch.testing.assert_close(grads[0], grads[1], equal_nan=True, rtol=1e-2, atol=1e-2)
