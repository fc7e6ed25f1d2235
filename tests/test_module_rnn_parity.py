"""RecurrentLIF as an nn.RNN user expects it: stacked layers (num_layers),
dropout between them in training only, unbatched input, clear state errors,
tensors as initial alpha/theta; and the one-to-one recurrence."""
import copy

import pytest
import torch
from torch.nn import functional as F

import torch_ext
from torch_ext import RecurrentLIF

T, B, FEAT, N = 9, 3, 5, 6
F64 = dict(dtype=torch.float64)


def randn(*shape, scale=1.0, stream=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(stream), **F64) * scale


def single_layers(stack):
    """One-layer RecurrentLIFs holding the stack's parameters, layer by layer."""
    singles = []
    for layer in range(stack.num_layers):
        fan_in = stack.in_features if layer == 0 else stack.hidden_size
        single = RecurrentLIF(fan_in, stack.hidden_size, learn_alpha=True, per_neuron=True,
                              return_membrane=True, **F64)
        suffix = f"_l{layer}"
        single.load_state_dict({name[:-len(suffix)]: value
                                for name, value in stack.state_dict().items()
                                if name.endswith(suffix)})
        singles.append(single)
    return singles


def test_parameter_names_one_layer_unchanged_stack_suffixed():
    one = RecurrentLIF(FEAT, N)
    assert [n for n, _ in one.named_parameters()] == ["w_in", "w_rec", "bias"]
    assert [n for n, _ in one.named_buffers()] == ["alpha", "theta"]
    stack = RecurrentLIF(FEAT, N, num_layers=3, learn_theta=True)
    names = [n for n, _ in stack.named_parameters()]
    assert names == [f"{p}_l{i}" for i in range(3) for p in ("w_in", "w_rec", "bias", "theta")]
    assert [n for n, _ in stack.named_buffers()] == ["alpha_l0", "alpha_l1", "alpha_l2"]
    assert stack.w_in_l0.shape == (N, FEAT) and stack.w_in_l1.shape == stack.w_in_l2.shape == (N, N)
    assert "num_layers=3" in repr(stack)
    # An old one-layer state_dict loads into today's one-layer module.
    RecurrentLIF(FEAT, N).load_state_dict(one.state_dict())


@pytest.mark.parametrize("num_layers", [2, 3])
def test_stack_equals_chained_single_layers_in_eval_mode(num_layers):
    torch.manual_seed(0)
    stack = RecurrentLIF(FEAT, N, num_layers=num_layers, dropout=0.5, learn_alpha=True,
                         per_neuron=True, return_membrane=True, **F64).eval()
    with torch.no_grad():
        for name, p in stack.named_parameters():
            if name.startswith("w_in"):
                p.mul_(5)  # enough input for every layer to spike
    singles = single_layers(stack)
    x = randn(T, B, FEAT, scale=1.5)
    u0, s0 = randn(num_layers, B, N, stream=1), (randn(num_layers, B, N, stream=2) > 0).double()
    spikes, membrane, (u, s) = stack(x, (u0, s0))

    layer_input, finals = x, []
    for layer, single in enumerate(singles):
        want_spikes, want_membrane, final = single(layer_input, (u0[layer], s0[layer]))
        assert 0.05 < want_spikes.mean() < 0.95, "each layer must spike"
        finals.append(final)
        layer_input = want_spikes
    assert torch.equal(spikes, want_spikes)
    torch.testing.assert_close(membrane, want_membrane, rtol=0, atol=1e-13)
    assert u.shape == s.shape == (num_layers, B, N)
    torch.testing.assert_close(u, torch.stack([f[0] for f in finals]), rtol=0, atol=1e-13)
    assert torch.equal(s, torch.stack([f[1] for f in finals]))

    # The gradients flow through the stack as through the chain.
    weights = randn(T, B, N, stream=3)
    got = torch.autograd.grad((spikes * weights).sum() + membrane.sum(),
                              [p for _, p in stack.named_parameters()])
    want = torch.autograd.grad((want_spikes * weights).sum() + want_membrane.sum(),
                               [p for single in singles for p in single.parameters()])
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


def test_stack_fused_and_autograd_backends_agree():
    torch.manual_seed(1)
    fused = RecurrentLIF(FEAT, N, num_layers=2, learn_theta=True, return_membrane=True, **F64)
    ref = copy.deepcopy(fused)
    ref.backend = "autograd"
    x = randn(T, B, FEAT, scale=3)
    grads = []
    for layer in (fused, ref):
        spikes, membrane, _ = layer(x)
        grads.append(torch.autograd.grad(spikes.sum() + membrane.sum(), list(layer.parameters())))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_dropout_between_layers_in_training_only():
    torch.manual_seed(0)
    p = 0.5
    stack = RecurrentLIF(FEAT, N, num_layers=2, dropout=p, learn_alpha=True, per_neuron=True,
                         return_membrane=True, **F64)
    with torch.no_grad():
        stack.w_in_l0.mul_(3)
        stack.w_in_l1.mul_(3)
    first, second = single_layers(stack)
    x = randn(T, B, FEAT, scale=1.5)
    below, _, _ = first(x)
    assert below.sum() > 10  # spikes to drop

    torch.manual_seed(123)
    train_spikes, _, _ = stack.train()(x)
    torch.manual_seed(123)  # the same dropout mask, drawn by hand
    want_train, _, _ = second(F.dropout(below, p, training=True))
    assert torch.equal(train_spikes, want_train)

    eval_spikes, _, _ = stack.eval()(x)
    want_eval, _, _ = second(below)
    assert torch.equal(eval_spikes, want_eval)
    assert not torch.equal(train_spikes, eval_spikes)


def test_dropout_with_one_layer_warns_like_nn_rnn():
    with pytest.warns(UserWarning, match="num_layers > 1"):
        RecurrentLIF(FEAT, N, dropout=0.2)


@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("batch_first", [False, True])
def test_unbatched_input_equals_a_batch_of_one(num_layers, batch_first):
    torch.manual_seed(0)
    layer = RecurrentLIF(FEAT, N, num_layers=num_layers, batch_first=batch_first,
                         return_membrane=True, **F64)
    x = randn(T, FEAT, scale=3)
    lead = (num_layers,) if num_layers > 1 else ()
    u0, s0 = randn(*lead, N, stream=1), (randn(*lead, N, stream=2) > 0).double()
    spikes, membrane, (u, s) = layer(x, (u0, s0))
    assert spikes.shape == membrane.shape == (T, N) and u.shape == s.shape == lead + (N,)

    batch_dim = len(lead)  # the state's batch dimension
    xb = x.unsqueeze(0) if batch_first else x.unsqueeze(1)
    want = layer(xb, (u0.unsqueeze(batch_dim), s0.unsqueeze(batch_dim)))
    squeeze = 0 if batch_first else 1
    assert torch.equal(spikes, want[0].squeeze(squeeze))
    assert torch.equal(membrane, want[1].squeeze(squeeze))
    assert torch.equal(u, want[2][0].squeeze(batch_dim))
    assert torch.equal(s, want[2][1].squeeze(batch_dim))
    # The final state continues the sequence.
    first, _, state = layer(x[:4])
    rest, _, _ = layer(x[4:], state)
    assert torch.equal(torch.cat([first, rest]), layer(x)[0])


@pytest.mark.parametrize("num_layers", [1, 2])
def test_empty_sequence_returns_zeros_or_the_given_state(num_layers):
    layer = RecurrentLIF(FEAT, N, num_layers=num_layers)
    lead = (num_layers,) if num_layers > 1 else ()
    spikes, (u, s) = layer(torch.zeros(0, B, FEAT))
    assert spikes.shape == (0, B, N) and u.shape == s.shape == lead + (B, N)
    assert not u.any() and not s.any()
    spikes, (u, s) = layer(torch.zeros(0, FEAT))
    assert spikes.shape == (0, N) and u.shape == s.shape == lead + (N,)
    state = (torch.randn(*lead, B, N), torch.ones(*lead, B, N))
    _, out = layer(torch.zeros(0, B, FEAT), state)
    assert out[0] is state[0] and out[1] is state[1]


def expect_message(exc, *parts):
    return pytest.raises(exc, match=".*".join(map(__import__("re").escape, parts)))


def test_state_errors_say_what_is_expected():
    x = torch.randn(T, B, FEAT)
    one = RecurrentLIF(FEAT, N)
    h0 = torch.zeros(1, B, N)  # what nn.RNN takes
    with expect_message(TypeError, "'state' must be None or a pair (u, s)",
                        f"[B, N] = [{B}, {N}] (one layer, batched input)",
                        f"a single tensor of shape [1, {B}, {N}] (nn.RNN's h0"):
        one(x, h0)
    with expect_message(ValueError, f"u must have shape [B, N] = [{B}, {N}]",
                        f"got [1, {B}, {N}]", "no layer dimension", "pass u[0]"):
        one(x, (h0, h0))
    with expect_message(ValueError, f"s must have shape [B, N] = [{B}, {N}]", f"got [{B + 1}, {N}]"):
        one(x, (torch.zeros(B, N), torch.zeros(B + 1, N)))
    with expect_message(TypeError, "s must be a tensor", "or None, got list"):
        one(x, (torch.zeros(B, N), [0.0] * N))
    with expect_message(TypeError, "a list of 3"):
        one(x, [torch.zeros(B, N)] * 3)

    stack = RecurrentLIF(FEAT, N, num_layers=2)
    with expect_message(ValueError, f"[L, B, N] = [2, {B}, {N}] (num_layers=2, batched input)",
                        f"got [{B}, {N}]"):
        stack(x, (torch.zeros(B, N), None))
    with expect_message(ValueError, f"[L, N] = [2, {N}] (num_layers=2, unbatched input)",
                        f"got [{N}]"):
        stack(x[:, 0], (None, torch.zeros(N)))
    with expect_message(ValueError, f"[N] = [{N}] (one layer, unbatched input)",
                        f"got [1, {N}]"):
        one(x[:, 0], (torch.zeros(1, N), None))
    # Either half may be None (zeros).
    stack(x, (None, torch.zeros(2, B, N)))


def test_tensor_alpha_and_theta_are_initial_values():
    alpha = torch.linspace(0.5, 0.95, N)
    layer = RecurrentLIF(FEAT, N, alpha=alpha, theta=torch.tensor(1.5), learn_alpha=True, **F64)
    assert isinstance(layer.alpha, torch.nn.Parameter)
    assert layer.alpha.shape == (N,) and layer.alpha.dtype == torch.float64
    assert torch.equal(layer.alpha, alpha.double())
    assert layer.theta.shape == () and layer.theta.item() == 1.5
    alpha.fill_(0.1)  # the layer holds a copy
    with torch.no_grad():
        layer.alpha.fill_(0.3)
        layer.theta.fill_(7.0)
    layer.reset_parameters()
    assert torch.equal(layer.alpha, torch.linspace(0.5, 0.95, N).double())
    assert layer.theta.item() == 1.5
    # per_neuron spreads a 0-dim tensor over the neurons; stacks give every layer the value.
    stack = RecurrentLIF(FEAT, N, alpha=torch.tensor(0.7), theta=torch.full((N,), 2.0),
                         per_neuron=True, num_layers=2)
    for name in ("alpha_l0", "alpha_l1"):
        assert torch.equal(getattr(stack, name), torch.full((N,), 0.7))
    assert stack.theta_l1.shape == (N,)
    assert "alpha=tensor[]" in repr(stack)


def test_one_to_one_recurrence_equals_a_diagonal_dense_one():
    torch.manual_seed(0)
    diag = RecurrentLIF(FEAT, N, recurrent="one_to_one", return_membrane=True, **F64)
    assert diag.w_rec.shape == (N,)
    dense = RecurrentLIF(FEAT, N, return_membrane=True, **F64)
    with torch.no_grad():
        dense.w_in.copy_(diag.w_in.mul_(3))
        dense.bias.copy_(diag.bias)
        diag.w_rec.copy_(torch.linspace(-0.8, 0.8, N))
        dense.w_rec.copy_(torch.diag(diag.w_rec))
    x = randn(T, B, FEAT)
    outs = [layer(x) for layer in (diag, dense)]
    assert torch.equal(outs[0][0], outs[1][0]) and 0.05 < outs[0][0].mean() < 0.95
    # Rounding-level tolerances: an O(N) one-to-one kernel may sum in another order.
    torch.testing.assert_close(outs[0][1], outs[1][1], rtol=0, atol=1e-13)
    grads = [torch.autograd.grad(o[0].sum() + o[1].sum(), [layer.w_rec, layer.w_in])
             for o, layer in zip(outs, (diag, dense))]
    torch.testing.assert_close(grads[0][0], torch.diagonal(grads[1][0]), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grads[0][1], grads[1][1], rtol=1e-12, atol=1e-12)
    # One weight shared by every neuron (0-dim w_rec) works too.
    with torch.no_grad():
        diag.w_rec = torch.nn.Parameter(torch.tensor(0.4, **F64))
        dense.w_rec.copy_(0.4 * torch.eye(N))
    assert torch.equal(diag(x)[0], dense(x)[0])


def test_recurrent_none_has_no_w_rec_and_equals_w_rec_none():
    torch.manual_seed(0)
    layer = RecurrentLIF(FEAT, N, recurrent="none", return_membrane=True, **F64)
    assert layer.w_rec is None and "w_rec" not in dict(layer.named_parameters())
    x = randn(T, B, FEAT)
    spikes, membrane, _ = layer(x)
    want = torch_ext.recurrent_lif(x, layer.w_in, None, layer.bias, layer.alpha, layer.theta)
    assert torch.equal(spikes, want[0]) and torch.equal(membrane, want[1])


def test_low_memory_module_gives_the_same_gradients():
    torch.manual_seed(0)
    layer = RecurrentLIF(FEAT, N, learn_alpha=True, **F64)
    low = RecurrentLIF(FEAT, N, learn_alpha=True, save_membrane=False, **F64)
    low.load_state_dict(layer.state_dict())
    x = randn(T, B, FEAT)
    grads = [torch.autograd.grad(m(x)[0].sum(), list(m.parameters())) for m in (layer, low)]
    for a, b in zip(*grads):
        assert torch.equal(a, b)
