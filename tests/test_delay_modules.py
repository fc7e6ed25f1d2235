"""The modules' recurrent delays (recurrent_delays=, max_delay, delay_sigma,
learn_delay_spread, delay_init_std, clamp_delays_, round_delays_, the spike
history as state): against the functional op, the autograd backend, and
runs of the sequence in one piece; their checks; to_nir's refusal."""
import copy
import math

import pytest
import torch

import torch_ext

MODULES = {"lif": torch_ext.RecurrentLIF, "cuba": torch_ext.RecurrentCubaLIF,
           "adlif": torch_ext.RecurrentAdLIF}
FUNCTIONALS = {"lif": torch_ext.recurrent_lif, "cuba": torch_ext.recurrent_cubalif,
               "adlif": torch_ext.recurrent_adlif}
KINDS = ("axonal", "synaptic")
F, N, D = 3, 6, 4


def make(model, kind="axonal", seed=0, **kwargs):
    """A float64 module with delays spread over [1, D] and strong enough
    weights that its neurons spike (so the recurrence and its delays matter)."""
    torch.manual_seed(seed)
    options = dict(recurrent_delays=kind, max_delay=D, delay_sigma=0.4, slope=5.0)
    options.update(kwargs)
    module = MODULES[model](F, N, **options).double()
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.startswith("w_in"):
                p.mul_(60.0 if model == "adlif" else 3.0)
            if name.startswith("w_rec"):
                p.mul_(20.0 if model == "adlif" else 2.0)
            if name.startswith("delays"):  # fractional values everywhere in [1, D]
                p.uniform_(1.0, float(D))
    return module


def inputs(T=9, B=3, seed=1):
    torch.manual_seed(seed)
    return torch.rand(T, B, F, dtype=torch.float64) * 2


def gradients(module, x, state=None, last_spikes_only=False, **kwargs):
    """(spikes, final state, gradients of every parameter and of x) of a
    random linear loss over the spikes and every final state tensor (of the
    spike history its last step only, with last_spikes_only)."""
    x = x.clone().requires_grad_()
    spikes, final = module(x, state, **kwargs)
    torch.manual_seed(5)
    loss = (spikes * torch.randn_like(spikes)).sum()
    for value in final:
        if last_spikes_only and value is final[-1] and value.dim() == 3:
            value = value[-1]
        loss = loss + (value * torch.randn_like(value)).sum()
    names = [n for n, p in module.named_parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, [x] + [module.get_parameter(n) for n in names],
                                allow_unused=True)
    return spikes, final, dict(zip(["x"] + names, grads))


def assert_close(a, b, what):
    if a is None or b is None:
        assert a is None and b is None, what
        return
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=lambda m: f"{what}: {m}")


@pytest.mark.parametrize("model", MODULES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("spread", [False, True])
def test_fused_module_matches_the_autograd_backend(model, kind, num_layers, spread):
    """Spikes, final state (the spike history included) and the gradient of
    every parameter (delays and their spread included) and of x: the fused
    op against the plain-PyTorch reference of the same module, in float64."""
    fused = make(model, kind, num_layers=num_layers, learn_delay_spread=spread)
    if spread:
        with torch.no_grad():
            for name, p in fused.named_parameters():
                if "delay_spread" in name:
                    p.normal_()
    reference = copy.deepcopy(fused)
    reference.backend = "autograd"
    x = inputs()
    got, want = gradients(fused, x), gradients(reference, x)
    assert got[0].sum() > 0, "no spikes: the test would not exercise the recurrence"
    assert_close(got[0], want[0], "spikes")
    for k, (a, b) in enumerate(zip(got[1], want[1])):
        assert_close(a, b, f"final state {k}")
    assert got[2].keys() == want[2].keys()
    assert any("delays" in name for name in got[2])
    for name in got[2]:
        assert_close(got[2][name], want[2][name], f"gradient of {name}")
    assert got[2]["delays" if num_layers == 1 else "delays_l0"].abs().sum() > 0


@pytest.mark.parametrize("model", MODULES)
@pytest.mark.parametrize("kind", KINDS)
def test_a_one_layer_module_calls_the_functional_with_its_delays(model, kind):
    module = make(model, kind, learn_delay_spread=True)
    with torch.no_grad():
        module.delay_spread.normal_()
    x = inputs()
    spikes, state = module(x)
    sigma = 2 * module.delay_sigma * torch.sigmoid(module.delay_spread)
    if model == "adlif":
        params = module.neuron_parameters()
        want = FUNCTIONALS[model](x, module.w_in, module.w_rec, module.bias, *params,
                                  module.theta, delays=module.delays, max_delay=D,
                                  delay_sigma=sigma, reset=module.reset,
                                  detach_reset=module.detach_reset, slope=module.slope)
    else:
        params = [getattr(module, n).clamp(0, 1) if n.startswith("alpha") else getattr(module, n)
                  for n in ("alpha", "alpha_syn", "theta") if hasattr(module, n)]
        want = FUNCTIONALS[model](x, module.w_in, module.w_rec, module.bias, *params,
                                  delays=module.delays, max_delay=D, delay_sigma=sigma)
    assert torch.equal(spikes, want[0])
    assert torch.equal(state[-1], torch.cat([torch.zeros(D, 3, N, dtype=x.dtype), want[0]])[-D:])


@pytest.mark.parametrize("model", MODULES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("layout", ["time_first", "batch_first", "unbatched"])
@pytest.mark.parametrize("num_layers", [1, 2])
def test_chunks_continued_with_the_returned_state_equal_one_run(model, kind, layout, num_layers):
    """The spike history of the state carries the delays across calls: two
    chunks give one run's spikes, final state and gradients."""
    module = make(model, kind, num_layers=num_layers, batch_first=layout == "batch_first")
    x = inputs(T=11, B=2)
    if layout == "batch_first":
        x = x.transpose(0, 1)
    elif layout == "unbatched":
        x = x[:, 0]
    time_dim = 1 if layout == "batch_first" else 0
    whole, final = module(x)
    for cut in (1, 3, 7):  # shorter and longer than D
        first, state = module(x.narrow(time_dim, 0, cut))
        history = state[-1]
        expected = [D] + ([] if layout == "unbatched" else [2]) + [N]
        assert list(history.shape) == ([num_layers] if num_layers > 1 else []) + expected
        second, again = module(x.narrow(time_dim, cut, x.shape[time_dim] - cut), state)
        assert torch.equal(torch.cat([first, second], time_dim), whole)
        for a, b in zip(again, final):
            assert_close(a, b, "final state")


@pytest.mark.parametrize("model", MODULES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("num_layers", [1, 2])
def test_lengths_each_row_as_if_run_alone(model, kind, num_layers):
    """With lengths, each row's spikes and final state (its own last D
    steps, reaching into the given history where it took fewer) are those
    of that row run alone for its own number of steps; gradients flow into
    the given history."""
    module = make(model, kind, num_layers=num_layers)
    T, B = 8, 5
    x = inputs(T=T, B=B)
    lengths = torch.tensor([8, 0, 2, 5, 4])
    torch.manual_seed(3)
    shape = ([num_layers] if num_layers > 1 else []) + [D, B, N]
    history = (torch.rand(shape, dtype=torch.float64) < 0.5).double()
    others = [None] * (len(module._STATE) - 1)
    spikes, final = module(x, (*others, history), lengths=lengths)
    for b, length in enumerate(lengths.tolist()):
        row_history = history[..., b:b + 1, :]
        alone, alone_final = module(x[:length, b:b + 1], (*others, row_history))
        assert torch.equal(spikes[:length, b:b + 1], alone)
        assert not spikes[length:, b].any()
        for a, want in zip(final, alone_final):
            assert_close(a[..., b:b + 1, :], want, f"row {b}'s final state")

    history.requires_grad_()
    _, final = module(x, (*others, history), lengths=lengths)
    (grad,) = torch.autograd.grad(final[-1].sum() + final[0].sum(), history)
    # A row that took no step returns its history as it was given.
    assert torch.equal(grad[..., 1, :], torch.full_like(grad[..., 1, :], 1.0))


@pytest.mark.parametrize("model", MODULES)
def test_unit_delays_without_spread_are_the_layer_without_delays(model):
    """delays = 1 and delay_sigma = 0: the spikes, the membrane and every
    shared gradient of the layer without delays; the history's last step is
    its spike state."""
    delayed = make(model, "synaptic", delay_sigma=0.0)
    with torch.no_grad():
        delayed.delays.fill_(1.0)
    plain = MODULES[model](F, N, slope=5.0).double()
    plain.load_state_dict({k: v for k, v in delayed.state_dict().items() if k != "delays"})
    x = inputs()
    got, want = gradients(delayed, x, last_spikes_only=True), gradients(plain, x)
    assert got[0].sum() > 0
    assert_close(got[0], want[0], "spikes")
    for a, b in zip(got[1][:-1], want[1][:-1]):
        assert_close(a, b, "final state")
    assert torch.equal(got[1][-1][-1], want[1][-1])
    for name, value in want[2].items():
        assert_close(got[2][name], value, f"gradient of {name}")


@pytest.mark.parametrize("model", MODULES)
def test_without_delays_nothing_changes(model):
    """recurrent_delays=None (the default): no delay parameters, the state's
    spikes are [B, N], the op is called without delay arguments."""
    module = MODULES[model](F, N)
    assert not any("delay" in name for name in module.state_dict())
    _, state = module(torch.rand(5, 2, F))
    assert state[-1].shape == (2, N)
    assert "recurrent_delays" not in repr(module)
    with pytest.raises(ValueError, match=r"clamp_delays_: the module has no recurrent delays"):
        module.clamp_delays_()
    with pytest.raises(ValueError, match=r"round_delays_: the module has no recurrent delays"):
        module.round_delays_()


@pytest.mark.parametrize("model", MODULES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("num_layers", [1, 2])
def test_parameters_initialisation_clamp_and_round(model, kind, num_layers):
    torch.manual_seed(0)
    module = MODULES[model](F, 40, recurrent_delays=kind, max_delay=12, num_layers=num_layers,
                            learn_delay_spread=True)
    suffixes = [""] if num_layers == 1 else ["_l0", "_l1"]
    for suffix in suffixes:
        delays = module.get_parameter("delays" + suffix)
        spread = module.get_parameter("delay_spread" + suffix)
        assert delays.shape == ((40,) if kind == "axonal" else (40, 40))
        assert spread.shape == (40,) and not spread.any()
        # 1 + |N(0, (12 / 4)^2)|, clamped into [1, 12]: half-normal, mean 1 + 3 sqrt(2 / pi)
        assert delays.min() >= 1 and delays.max() <= 12
        if kind == "synaptic":
            assert abs(delays.mean().item() - (1 + 3 * math.sqrt(2 / math.pi))) < 0.3
    with torch.no_grad():
        for suffix in suffixes:
            module.get_parameter("delays" + suffix).uniform_(-5, 20)
    assert module.clamp_delays_() is module
    for suffix in suffixes:
        delays = module.get_parameter("delays" + suffix)
        assert delays.min() == 1 and delays.max() == 12
    with torch.no_grad():
        for suffix in suffixes:
            module.get_parameter("delays" + suffix).uniform_(1, 12)
    before = {s: module.get_parameter("delays" + s).clone() for s in suffixes}
    assert module.round_delays_() is module
    for suffix in suffixes:
        assert torch.equal(module.get_parameter("delays" + suffix), before[suffix].round())

    still = MODULES[model](F, 5, recurrent_delays=kind, max_delay=7, delay_init_std=0.0)
    assert torch.equal(still.delays, torch.ones_like(still.delays))
    with torch.no_grad():
        still.delays.fill_(3.5)
    still.reset_parameters()
    assert torch.equal(still.delays, torch.ones_like(still.delays))


@pytest.mark.parametrize("model", MODULES)
def test_the_spread_is_learnt_through_a_sigmoid(model):
    module = make(model, "axonal", learn_delay_spread=True, delay_sigma=1.5)
    x = inputs()
    _, _, grads = gradients(module, x)
    assert grads["delay_spread"].abs().sum() > 0
    # delay_sigma = 0 switches the spread off: its gradient is 0.
    module.delay_sigma = 0.0
    _, _, grads = gradients(module, x)
    assert not grads["delay_spread"].any()


def test_annealing_delay_sigma_changes_what_the_layer_computes():
    module = make("lif", "axonal", delay_sigma=3.0)
    x = inputs(T=20)
    wide, _ = module(x)
    module.delay_sigma = 0.0
    narrow, _ = module(x)
    reference = copy.deepcopy(module)
    reference.backend = "autograd"
    assert torch.equal(narrow, reference(x)[0])
    assert not torch.equal(wide, narrow)


@pytest.mark.parametrize("model", MODULES)
def test_state_dict_and_repr(model):
    module = make(model, "synaptic", num_layers=2, learn_delay_spread=True)
    keys = list(module.state_dict())
    assert {"delays_l0", "delays_l1", "delay_spread_l0", "delay_spread_l1"} <= set(keys)
    again = MODULES[model](F, N, num_layers=2, recurrent_delays="synaptic", max_delay=D,
                           delay_sigma=0.4, learn_delay_spread=True).double()
    again.load_state_dict(module.state_dict())
    x = inputs()
    assert torch.equal(again(x)[0], module(x)[0])
    text = repr(module)
    assert ("recurrent_delays='synaptic', max_delay=4, delay_sigma=0.4, "
            "learn_delay_spread=True") in text


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_modules_keep_float32_delays(dtype):
    module = torch_ext.RecurrentLIF(F, N, recurrent_delays="axonal", max_delay=D,
                                    learn_delay_spread=True, dtype=dtype)
    assert module.w_in.dtype == dtype
    assert module.delays.dtype == torch.float32 and module.delay_spread.dtype == torch.float32
    spikes, (u, s) = module(torch.rand(6, 2, F, dtype=dtype))
    assert spikes.dtype == dtype and s.shape == (D, 2, N)


def test_to_nir_refuses_delays():
    pytest.importorskip("nir")
    for kind in KINDS:
        module = torch_ext.RecurrentLIF(F, N, reset="zero", recurrent_delays=kind, max_delay=D)
        with pytest.raises(ValueError, match=r"RecurrentLIF has recurrent delays "
                           rf"\(recurrent_delays='{kind}'\), which NIR cannot express"):
            torch_ext.to_nir(module)
        with pytest.raises(ValueError, match=r"module 1 \(RecurrentCubaLIF\) has recurrent delays"):
            torch_ext.to_nir(torch.nn.Sequential(torch.nn.Linear(2, F), torch_ext.RecurrentCubaLIF(
                F, N, reset="zero", recurrent_delays=kind, max_delay=D)))


BAD_OPTIONS = [
    (dict(recurrent_delays="dendritic", max_delay=3), ValueError,
     r"argument 'recurrent_delays' must be one of \(None, 'axonal', 'synaptic'\), got 'dendritic'"),
    (dict(recurrent_delays=1, max_delay=3), ValueError, r"argument 'recurrent_delays' must be"),
    (dict(recurrent_delays="axonal"), ValueError,
     r"argument 'max_delay' must be an int >= 1 \(the longest delay, in steps\) with "
     r"recurrent_delays, got None"),
    (dict(recurrent_delays="axonal", max_delay=0), ValueError, r"argument 'max_delay' must be an int >= 1"),
    (dict(recurrent_delays="axonal", max_delay=2.0), ValueError, r"argument 'max_delay' must be an int"),
    (dict(recurrent_delays="axonal", max_delay=True), ValueError, r"argument 'max_delay' must be an int"),
    (dict(recurrent_delays="axonal", max_delay=3, delay_sigma=-0.1), ValueError,
     r"argument 'delay_sigma' must be a finite number >= 0, got -0.1"),
    (dict(recurrent_delays="axonal", max_delay=3, delay_sigma=float("nan")), ValueError,
     r"argument 'delay_sigma' must be a finite number >= 0"),
    (dict(recurrent_delays="axonal", max_delay=3, delay_sigma="1"), ValueError,
     r"argument 'delay_sigma' must be a finite number >= 0"),
    (dict(recurrent_delays="axonal", max_delay=3, delay_init_std=-1.0), ValueError,
     r"argument 'delay_init_std' must be a finite number >= 0, got -1.0"),
    (dict(recurrent_delays="axonal", max_delay=3, learn_delay_spread=1), TypeError,
     r"argument 'learn_delay_spread' must be a bool, got int"),
    (dict(max_delay=3), ValueError,
     r"argument 'max_delay' is given without 'recurrent_delays' \(\"axonal\" or \"synaptic\"\)"),
    (dict(delay_sigma=1.0), ValueError, r"argument 'delay_sigma' is given without"),
    (dict(learn_delay_spread=True), ValueError, r"argument 'learn_delay_spread' is given without"),
    (dict(delay_init_std=1.0), ValueError, r"argument 'delay_init_std' is given without"),
    (dict(recurrent_delays="axonal", max_delay=3, recurrent="none"), ValueError,
     r"argument 'recurrent_delays' delays the recurrent connections, which recurrent='none' "
     r"does not have"),
    (dict(recurrent_delays="synaptic", max_delay=3, recurrent="one_to_one"), ValueError,
     r"argument 'recurrent_delays' is \"synaptic\" .* recurrent='one_to_one' has one connection "
     r"per neuron: use \"axonal\""),
]


@pytest.mark.parametrize("model", MODULES)
@pytest.mark.parametrize("options, error, message", BAD_OPTIONS)
def test_bad_delay_options_name_the_argument(model, options, error, message):
    with pytest.raises(error, match=rf"^{MODULES[model].__name__}: {message}"):
        MODULES[model](F, N, **options)


@pytest.mark.parametrize("model", MODULES)
def test_one_to_one_axonal_delays(model):
    fused = make(model, "axonal", recurrent="one_to_one")
    assert fused.w_rec.shape == (N,)
    reference = copy.deepcopy(fused)
    reference.backend = "autograd"
    x = inputs()
    got, want = gradients(fused, x), gradients(reference, x)
    assert_close(got[0], want[0], "spikes")
    for name in want[2]:
        assert_close(got[2][name], want[2][name], f"gradient of {name}")


@pytest.mark.parametrize("model", MODULES)
def test_a_history_of_the_wrong_shape_names_the_expected_one(model):
    module = make(model, "axonal", num_layers=2)
    others = (None,) * (len(module._STATE) - 1)
    x = inputs(B=3)
    with pytest.raises(ValueError, match=(
            r"argument 'state': s must have shape \[L, D, B, N\] = \[2, 4, 3, 6\] "
            r"\(num_layers=2, batched input, the spike history of max_delay=4 steps, oldest "
            r"first\), got \[2, 3, 6\]")):
        module(x, (*others, torch.zeros(2, 3, N, dtype=torch.float64)))
    # The other state variables keep their shapes.
    with pytest.raises(ValueError, match=r"must have shape \[L, B, N\] = \[2, 3, 6\]"):
        module(x, (torch.zeros(2, D, 3, N, dtype=torch.float64),) + others[1:] + (None,))


def test_the_delays_train_and_clamping_keeps_them_in_range():
    """A few optimiser steps move the delays; clamp_delays_ after each keeps
    them in [1, D] (the DelRec loop)."""
    module = make("lif", "axonal", learn_delay_spread=True, delay_sigma=1.0)
    before = module.delays.detach().clone()
    optimizer = torch.optim.Adam(module.parameters(), lr=0.5)
    x = inputs(T=15)
    for _ in range(5):
        spikes, _ = module(x)
        loss = (spikes.mean() - 0.3) ** 2 + spikes[-5:].sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        module.clamp_delays_()
        assert module.delays.min() >= 1 and module.delays.max() <= D
    assert not torch.equal(module.delays, before)
