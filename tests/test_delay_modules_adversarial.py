"""Adversarial tests of the modules' recurrent delays (RecurrentLIF,
RecurrentCubaLIF, RecurrentAdLIF with recurrent_delays=, max_delay,
delay_sigma, learn_delay_spread, delay_init_std; clamp_delays_,
round_delays_; the spike history [(L,) D, (B,) N] as the state's spikes).

Oracles: the module's own autograd backend (the plain-PyTorch reference) in
float64, torch.autograd.gradcheck, the functional op called by hand, exact
identities (a row that takes no step returns its history as given, a run
step by step equals one run), bitwise runs under other thread counts, and
errors that name the argument. (It found four bugs in the checks of
delay_sigma and delay_init_std, now fixed: a huge int, an array without
delays, and a value set after construction with learn_delay_spread.)"""
import copy
import importlib.util
import math

import numpy as np
import pytest
import torch
from torch.func import functional_call

import torch_ext

MODULES = {"lif": torch_ext.RecurrentLIF, "cuba": torch_ext.RecurrentCubaLIF,
           "adlif": torch_ext.RecurrentAdLIF}
KINDS = ("axonal", "synaptic")
F, N, D = 3, 5, 4
F64 = torch.float64


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny products: one thread is as fast and avoids oversubscribing a
    shared 2-core machine; the thread test sets its own counts. Restored."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make(model, kind="axonal", seed=0, dtype=F64, **kwargs):
    """A module with delays spread over [1, D] (fractional) and weights
    strong enough that its neurons spike."""
    torch.manual_seed(seed)
    options = dict(recurrent_delays=kind, max_delay=D, delay_sigma=0.4, slope=5.0)
    options.update(kwargs)
    module = MODULES[model](F, N, **options).to(dtype)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.startswith("w_in"):
                p.mul_(60.0 if model == "adlif" else 3.0)
            if name.startswith("w_rec"):
                p.mul_(20.0 if model == "adlif" else 2.0)
            if name.startswith("delays"):
                p.uniform_(1.0, float(module.max_delay))
            if name.startswith("delay_spread"):
                p.normal_()
    return module


def inputs(T=9, B=3, seed=1, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(T, B, F, generator=g, dtype=F64) * 2).to(dtype)


def history(shape, seed=2, binary=True):
    g = torch.Generator().manual_seed(seed)
    values = torch.rand(shape, generator=g, dtype=F64)
    return (values < 0.5).double() if binary else values


def others(module):
    return (None,) * (len(module._STATE) - 1)


def reference_of(module):
    reference = copy.deepcopy(module)
    reference.backend = "autograd"
    return reference


def run_and_grad(module, x, state=None, seed=5, **kwargs):
    """(spikes, final state, {name: gradient}) of a random linear loss of
    the spikes and every final state tensor; gradients of x, of the given
    state tensors that require grad, and of every parameter."""
    spikes, final = module(x, state, **kwargs)
    g = torch.Generator().manual_seed(seed)
    loss = (spikes * torch.randn(spikes.shape, generator=g, dtype=spikes.dtype)).sum()
    for value in final:
        loss = loss + (value * torch.randn(value.shape, generator=g, dtype=value.dtype)).sum()
    named = [("x", x)] if x.requires_grad else []
    if state is not None:
        named += [(f"state{k}", v) for k, v in enumerate(state)
                  if v is not None and v.requires_grad]
    named += [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, [t for _, t in named], allow_unused=True)
    return spikes, final, dict(zip([n for n, _ in named], grads))


def assert_close(a, b, what, rtol=1e-10, atol=1e-12):
    if a is None or b is None:
        assert a is None and b is None, what
        return
    torch.testing.assert_close(a, b, rtol=rtol, atol=atol, msg=lambda m: f"{what}: {m}")


def assert_same_run(got, want):
    assert torch.equal(got[0], want[0]), "spikes"
    assert len(got[1]) == len(want[1])
    for k, (a, b) in enumerate(zip(got[1], want[1])):
        assert_close(a, b, f"final state {k}")
    assert got[2].keys() == want[2].keys()
    for name in want[2]:
        assert_close(got[2][name], want[2][name], f"gradient of {name}")


# ----------------------------------------------------------------------------
# Constructor arguments


@pytest.mark.parametrize("model", MODULES)
def test_numpy_scalars_are_accepted_as_plain_numbers(model):
    module = MODULES[model](F, N, recurrent_delays="axonal", max_delay=np.int64(3),
                            delay_sigma=np.float32(0.5), delay_init_std=np.float64(0.0))
    assert type(module.max_delay) is int and module.max_delay == 3
    assert type(module.delay_sigma) is float and module.delay_sigma == 0.5
    assert torch.equal(module.delays, torch.ones(N))  # std 0: all delays 1
    _, state = module(torch.rand(4, 2, F))
    assert state[-1].shape == (3, 2, N)


@pytest.mark.parametrize("model", MODULES)
def test_negative_zero_sigma_is_zero(model):
    """-0.0 passes the >= 0 check; it must compute what 0.0 computes."""
    a = make(model, "synaptic", delay_sigma=-0.0)
    b = make(model, "synaptic", delay_sigma=0.0)
    x = inputs()
    sa, fa = a(x)
    sb, fb = b(x)
    assert sa.sum() > 0
    assert torch.equal(sa, sb)
    for u, v in zip(fa, fb):
        assert torch.equal(u, v)


@pytest.mark.parametrize("model", MODULES)
def test_max_delay_one_with_unit_delays_is_the_layer_without_delays(model):
    """D = 1: every initial delay is clamped to 1; with sigma 0 the layer is
    the one without delays, and the history [1, B, N] is its spike state."""
    delayed = make(model, "synaptic", max_delay=1, delay_sigma=0.0)
    assert torch.equal(delayed.delays, torch.ones(N, N, dtype=F64))
    fresh = MODULES[model](F, N, recurrent_delays="synaptic", max_delay=1, delay_init_std=5.0)
    assert torch.equal(fresh.delays, torch.ones(N, N))  # the initialisation clamps into [1, 1]
    plain = MODULES[model](F, N, slope=5.0).double()
    plain.load_state_dict({k: v for k, v in delayed.state_dict().items() if k != "delays"})
    x = inputs()
    got, (*gstate, ghist) = delayed(x)
    want, (*wstate, wlast) = plain(x)
    assert want.sum() > 0
    assert torch.equal(got, want)
    for a, b in zip(gstate, wstate):
        assert_close(a, b, "state")
    assert ghist.shape == (1, 3, N) and torch.equal(ghist[0], wlast)


BAD_CONSTRUCTOR = [
    (dict(recurrent_delays="axonal", max_delay=torch.tensor(3)), ValueError, "max_delay"),
    (dict(recurrent_delays="axonal", max_delay=np.float64(3.0)), ValueError, "max_delay"),
    (dict(recurrent_delays="axonal", max_delay=np.bool_(True)), ValueError, "max_delay"),
    (dict(recurrent_delays="axonal", max_delay=2 ** 31), ValueError, "max_delay"),
    (dict(recurrent_delays="axonal", max_delay=-3), ValueError, "max_delay"),
    (dict(recurrent_delays="axonal", max_delay="3"), ValueError, "max_delay"),
    (dict(recurrent_delays="axonal", max_delay=3, delay_sigma=float("inf")), ValueError,
     "delay_sigma"),
    (dict(recurrent_delays="axonal", max_delay=3, delay_sigma=-1e-300), ValueError,
     "delay_sigma"),
    (dict(recurrent_delays="axonal", max_delay=3, delay_sigma=torch.tensor(0.5)), ValueError,
     "delay_sigma"),
    (dict(recurrent_delays="axonal", max_delay=3, delay_sigma=None), ValueError, "delay_sigma"),
    (dict(recurrent_delays="axonal", max_delay=3, delay_sigma=1j), ValueError, "delay_sigma"),
    (dict(recurrent_delays="axonal", max_delay=3, delay_sigma=True), ValueError, "delay_sigma"),
    (dict(recurrent_delays="axonal", max_delay=3, delay_sigma=np.float64("nan")), ValueError,
     "delay_sigma"),
    (dict(recurrent_delays="axonal", max_delay=3, delay_init_std=float("nan")), ValueError,
     "delay_init_std"),
    (dict(recurrent_delays="axonal", max_delay=3, delay_init_std=float("inf")), ValueError,
     "delay_init_std"),
    (dict(recurrent_delays="axonal", max_delay=3, delay_init_std="1"), ValueError,
     "delay_init_std"),
    (dict(recurrent_delays="axonal", max_delay=3, delay_init_std=False), ValueError,
     "delay_init_std"),
    (dict(recurrent_delays="Axonal", max_delay=3), ValueError, "recurrent_delays"),
    (dict(recurrent_delays=["axonal"], max_delay=3), ValueError, "recurrent_delays"),
    (dict(recurrent_delays=b"axonal", max_delay=3), ValueError, "recurrent_delays"),
    (dict(recurrent_delays=True, max_delay=3), ValueError, "recurrent_delays"),
    (dict(recurrent_delays="axonal", max_delay=3, learn_delay_spread=np.bool_(True)), TypeError,
     "learn_delay_spread"),
    (dict(recurrent_delays="axonal", max_delay=3, learn_delay_spread=None), TypeError,
     "learn_delay_spread"),
    (dict(max_delay=np.int64(0)), ValueError, "max_delay"),
    (dict(delay_sigma=float("nan")), ValueError, "delay_sigma"),
    (dict(delay_sigma=torch.tensor(0.5)), ValueError, "delay_sigma"),
    (dict(delay_init_std=0.0), ValueError, "delay_init_std"),
]


@pytest.mark.parametrize("model", MODULES)
@pytest.mark.parametrize("options, error, name", BAD_CONSTRUCTOR,
                         ids=[f"{i}" for i in range(len(BAD_CONSTRUCTOR))])
def test_bad_constructor_values_name_the_argument(model, options, error, name):
    with pytest.raises(error, match=rf"^{MODULES[model].__name__}: argument '{name}'"):
        MODULES[model](F, N, **options)


@pytest.mark.parametrize("model", MODULES)
@pytest.mark.parametrize("default", [0, -0.0, False, np.float64(0.0), torch.tensor(0.0)])
def test_values_equal_to_the_default_sigma_without_delays_are_accepted(model, default):
    module = MODULES[model](F, N, delay_sigma=default)
    assert module.recurrent_delays is None
    assert not any("delay" in n for n in module.state_dict())


@pytest.mark.parametrize("name", ["delay_sigma", "delay_init_std"])
def test_huge_int_sigma_or_std_names_the_argument(name):
    with pytest.raises(ValueError, match=rf"argument '{name}'"):
        torch_ext.RecurrentLIF(F, N, recurrent_delays="axonal", max_delay=3, **{name: 10 ** 400})


@pytest.mark.parametrize("value", [torch.tensor([0.0, 1.0]), np.array([0.0, 1.0])],
                         ids=["tensor", "ndarray"])
def test_array_sigma_without_delays_names_the_argument(value):
    with pytest.raises(ValueError, match=r"argument 'delay_sigma'"):
        torch_ext.RecurrentLIF(F, N, delay_sigma=value)


# ----------------------------------------------------------------------------
# delay_sigma and max_delay changed after construction


@pytest.mark.parametrize("spread", [False, True])
@pytest.mark.parametrize("value", [-1.0, float("nan"), float("inf"), torch.tensor(-0.5, dtype=F64),
                                   torch.tensor(float("nan"), dtype=F64), -torch.ones(N, dtype=F64),
                                   torch.tensor([0.5, 0.5, float("nan"), 0.5, 0.5],
                                                dtype=F64)],
                         ids=["neg", "nan", "inf", "neg_t", "nan_t", "neg_N", "nan_N"])
def test_a_bad_sigma_set_later_is_refused_naming_it(spread, value):
    module = make("lif", learn_delay_spread=spread)
    module.delay_sigma = value
    with pytest.raises(ValueError, match=r"argument 'delay_sigma' must be finite and >= 0"):
        module(inputs())


@pytest.mark.parametrize("model", MODULES)
@pytest.mark.parametrize("spread", [False, True])
def test_a_per_neuron_sigma_tensor_set_later_is_used_and_learnt(model, spread):
    """A [N] delay_sigma tensor (requires grad) set after construction: the
    functional's sigma (2 sigma sigmoid(spread) with the spread), the same
    run and gradients (sigma's included) as the autograd backend."""
    module = make(model, "synaptic", learn_delay_spread=spread)
    sigma = torch.tensor([0.0, 0.3, 1.2, 0.7, 2.5], dtype=F64, requires_grad=True)
    module.delay_sigma = sigma
    want_sigma = 2 * sigma * module.delay_spread.sigmoid() if spread else sigma
    assert torch.equal(module._delay_arguments(0)["delay_sigma"], want_sigma)
    x = inputs()
    got = run_and_grad(module, x)
    want = run_and_grad(reference_of(module), x)
    assert got[0].sum() > 0
    assert_same_run(got, want)
    reference = reference_of(module)
    reference.delay_sigma = sigma  # deepcopy copied the tensor: the same one for both
    (g1,) = torch.autograd.grad((module(x)[1][0] ** 2).sum(), sigma)
    (g2,) = torch.autograd.grad((reference(x)[1][0] ** 2).sum(), sigma)
    assert g1.abs().sum() > 0
    assert_close(g1, g2, "gradient of the sigma tensor")


def test_a_sigma_set_later_of_another_dtype_names_it():
    module = make("lif", dtype=torch.float32)
    module.delay_sigma = torch.tensor(0.5, dtype=F64)
    with pytest.raises(TypeError, match=r"argument 'delay_sigma' has dtype Double"):
        module(inputs(dtype=torch.float32))


@pytest.mark.parametrize("value", [None, "1", torch.ones(N + 1)], ids=["None", "str", "N+1"])
def test_a_bad_sigma_set_later_with_a_spread_names_it(value):
    module = make("lif", learn_delay_spread=True)
    module.delay_sigma = value
    with pytest.raises((TypeError, ValueError), match=r"delay_sigma"):
        module(inputs())


def test_a_bool_sigma_set_later_with_a_spread_is_refused():
    plain = make("lif")
    plain.delay_sigma = True
    with pytest.raises(TypeError, match=r"argument 'delay_sigma' must be a float"):
        plain(inputs())
    spread = make("lif", learn_delay_spread=True)
    spread.delay_sigma = True
    with pytest.raises(TypeError, match=r"argument 'delay_sigma'"):
        spread(inputs())


@pytest.mark.parametrize("value, error", [(0, ValueError), (-1, ValueError), (3.0, TypeError),
                                          (True, TypeError), (None, ValueError)])
def test_a_bad_max_delay_set_later_names_it(value, error):
    module = make("cuba")
    module.max_delay = value
    with pytest.raises(error, match=r"argument 'max_delay'"):
        module(inputs())


def test_a_longer_max_delay_set_later_lengthens_the_history_and_keeps_the_run():
    """A larger D with the same (in-range) delays reads the same taps: the
    same spikes; the history grows (zeros in front of the run's last steps)."""
    module = make("lif", "synaptic")
    x = inputs(T=3)
    spikes, (_, short) = module(x)
    module.max_delay = D + 3
    longer_spikes, (_, long) = module(x)
    assert torch.equal(spikes, longer_spikes)
    assert long.shape == (D + 3, 3, N)
    assert torch.equal(long[-D:], short) and not long[:D].any()


# ----------------------------------------------------------------------------
# The state


@pytest.mark.parametrize("model", MODULES)
def test_a_state_with_the_wrong_number_of_parts_is_a_type_error(model):
    module = make(model)
    count = len(module._STATE)
    x = inputs(B=2)
    h = torch.zeros(D, 2, N, dtype=F64)
    for state in [(h,), (None,) * (count + 1), h]:
        with pytest.raises(TypeError, match=rf"^{type(module).__name__}: argument 'state' must "
                           r"be None or a (pair|triple)"):
            module(x, state)


@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("batched", [True, False])
def test_histories_of_the_wrong_shape_give_the_expected_one(num_layers, batched):
    module = make("adlif", num_layers=num_layers)
    B = 2
    x = inputs(B=B) if batched else inputs(B=1)[:, 0]
    lead = [num_layers] if num_layers > 1 else []
    good = lead + [D] + ([B] if batched else []) + [N]
    names = (["L"] if num_layers > 1 else []) + ["D"] + (["B"] if batched else []) + ["N"]
    bad = []
    d_at = len(lead)
    for delta in (-1, 1):
        shape = list(good)
        shape[d_at] += delta
        bad.append(shape)
    bad.append([s for i, s in enumerate(good) if i != d_at])  # no D: the plain [(L,) B, N]
    if batched:
        bad.append([s for i, s in enumerate(good) if i != d_at + 1])  # no batch dimension
    else:
        bad.append(good[:d_at + 1] + [1] + good[d_at + 1:])  # a batch dimension
    for shape in bad:
        with pytest.raises(ValueError, match=(
                rf"argument 'state': s must have shape \[{', '.join(names)}\] = "
                rf"\[{', '.join(map(str, good))}\] .*the spike history of max_delay={D} "
                rf"steps, oldest first\), got \[{', '.join(map(str, shape))}\]")):
            module(x, (None, None, torch.zeros(shape, dtype=F64)))
    # The right shape runs.
    module(x, (None, None, torch.zeros(good, dtype=F64)))


def test_a_one_layer_history_with_a_layer_dimension_gets_the_hint():
    module = make("lif")
    with pytest.raises(ValueError, match=r"has no layer dimension, unlike nn.RNN's h0: pass s\[0\]"):
        module(inputs(B=2), (None, torch.zeros(1, D, 2, N, dtype=F64)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.long, torch.bool])
def test_a_history_of_another_dtype_names_s0(dtype):
    module = make("cuba")
    with pytest.raises(TypeError, match=r"argument 's0' has dtype \w+ but x has dtype Double"):
        module(inputs(B=2), (None, None, torch.zeros(D, 2, N, dtype=dtype)))


def test_a_history_on_meta_names_s0_and_the_device():
    module = make("lif")
    with pytest.raises(ValueError, match=r"argument 's0' is on meta but x is on cpu"):
        module(inputs(B=2), (None, torch.zeros(D, 2, N, dtype=F64, device="meta")))


@pytest.mark.parametrize("model", MODULES)
@pytest.mark.parametrize("kind", KINDS)
def test_a_real_valued_history_and_state_match_the_autograd_backend(model, kind):
    """Graded (non-binary, negative too) histories are read as they are, by
    both backends alike, gradients into the history included."""
    module = make(model, kind, learn_delay_spread=True)
    B = 3
    hist = (history((D, B, N), binary=False) * 3 - 1).requires_grad_()
    first = torch.rand(B, N, dtype=F64, generator=torch.Generator().manual_seed(9))
    state = (first.requires_grad_(),) + (None,) * (len(module._STATE) - 2) + (hist,)
    x = inputs(B=B)
    got = run_and_grad(module, x, state)
    want = run_and_grad(reference_of(module), x, state)
    assert_same_run(got, want)
    assert got[2]["state%d" % (len(state) - 1)].abs().sum() > 0


@pytest.mark.parametrize("model", MODULES)
def test_a_nan_history_in_a_row_of_length_zero_stays_there(model):
    """A row with length 0 takes no step: its final history is the given
    NaN history; the other rows are those of the batch without it."""
    module = make(model, "synaptic")
    B = 3
    hist = history((D, B, N))
    hist[:, 1] = float("nan")
    x = inputs(B=B)
    lengths = torch.tensor([9, 0, 5])
    state = others(module) + (hist,)
    spikes, final = module(x, state, lengths=lengths)
    assert not spikes[:, 1].any()
    assert final[-1][:, 1].isnan().all()
    keep = [0, 2]
    alone, alone_final = module(x[:, keep], others(module) + (hist[:, keep],),
                                lengths=lengths[keep])
    assert torch.equal(spikes[:, keep], alone)
    for a, b in zip(final, alone_final):
        assert not a[..., keep, :].isnan().any()
        assert torch.equal(a[..., keep, :], b)


# ----------------------------------------------------------------------------
# lengths and the number of steps


@pytest.mark.parametrize("model", MODULES)
@pytest.mark.parametrize("num_layers", [1, 2])
def test_zero_steps_return_the_given_state(model, num_layers):
    module = make(model, num_layers=num_layers)
    lead = [num_layers] if num_layers > 1 else []
    B = 2
    x = inputs(T=0, B=B)
    state = tuple(torch.rand(lead + [B, N], dtype=F64) for _ in module._STATE[:-1]) + (
        history(lead + [D, B, N]),)
    for lengths in (None, torch.zeros(B, dtype=torch.long)):
        spikes, final = module(x, state, lengths=lengths)
        assert spikes.shape == (0, B, N)
        assert all(a is b for a, b in zip(final, state))
    # Missing parts become zeros of the right shapes; given ones come back.
    _, final = module(x, (None,) * (len(state) - 1) + (state[-1],))
    assert final[-1] is state[-1]
    for value in final[:-1]:
        assert value.shape == tuple(lead + [B, N]) and not value.any()
    _, final = module(x)
    assert final[-1].shape == tuple(lead + [D, B, N]) and not final[-1].any()
    # Unbatched.
    _, final = module(x[:, 0])
    assert final[-1].shape == tuple(lead + [D, N])


@pytest.mark.parametrize("model", MODULES)
def test_all_lengths_zero_is_no_step_at_all(model):
    module = make(model, "synaptic", num_layers=2)
    B = 3
    state = tuple(torch.rand(2, B, N, dtype=F64) for _ in module._STATE[:-1]) + (
        history((2, D, B, N)),)
    spikes, final = module(inputs(B=B), state, lengths=torch.zeros(B, dtype=torch.int32))
    assert not spikes.any()
    for a, b in zip(final, state):
        assert torch.equal(a, b)


@pytest.mark.parametrize("model", MODULES)
def test_lengths_all_T_are_no_lengths(model):
    module = make(model, "axonal", num_layers=2, learn_delay_spread=True)
    x = inputs(B=3)
    state = others(module) + (history((2, D, 3, N)),)
    a = module(x, state)
    b = module(x, state, lengths=torch.full((3,), x.shape[0]))
    assert a[0].sum() > 0
    assert torch.equal(a[0], b[0])
    for u, v in zip(a[1], b[1]):
        assert torch.equal(u, v)


@pytest.mark.parametrize("model", MODULES)
@pytest.mark.parametrize("T", [1, 2, D - 1])
def test_fewer_steps_than_d_shift_the_history(model, T):
    """T < D: the final history is the given one shifted by T steps, the T
    new spikes appended; per row with lengths (a row of 0 steps unshifted)."""
    module = make(model, "synaptic")
    B = 3
    hist = history((D, B, N))
    x = inputs(T=T, B=B)
    spikes, final = module(x, others(module) + (hist,))
    assert torch.equal(final[-1], torch.cat([hist, spikes])[-D:])
    lengths = torch.tensor([T, 0, 1])
    spikes, final = module(x, others(module) + (hist,), lengths=lengths)
    for b, length in enumerate(lengths.tolist()):
        want = torch.cat([hist[:, b], spikes[:length, b]])[-D:]
        assert torch.equal(final[-1][:, b], want)


@pytest.mark.parametrize("model", MODULES)
@pytest.mark.parametrize("kind", KINDS)
def test_step_by_step_with_lengths_is_one_run(model, kind):
    """T calls of one step each, row b taking the step while t < lengths[b]
    (a length-1 or length-0 mask per call), continue the state exactly:
    the spikes and final state of one call over T steps with lengths."""
    module = make(model, kind, num_layers=2, learn_delay_spread=True)
    T, B = 7, 4
    x = inputs(T=T, B=B)
    lengths = torch.tensor([7, 0, 2, 5])
    start = others(module) + (history((2, D, B, N)),)
    whole, final = module(x, start, lengths=lengths)
    assert whole.sum() > 0
    state, pieces = start, []
    for t in range(T):
        out, state = module(x[t:t + 1], state, lengths=(lengths > t).long())
        pieces.append(out)
    assert torch.equal(torch.cat(pieces), whole)
    for a, b in zip(state, final):
        assert_close(a, b, "final state")


def test_a_huge_max_delay_with_unreachable_delays_is_no_recurrence():
    """D = 5000 with delays of 1000.5 and a zero history: every tap the
    kernel reads is 0, so the layer equals the one with w_rec = 0; the
    history is 4997 zeros and the 3 steps' spikes."""
    module = make("lif", "synaptic", max_delay=5000, delay_sigma=0.0)
    with torch.no_grad():
        module.delays.fill_(1000.5)
    cut = copy.deepcopy(module)
    with torch.no_grad():
        cut.w_rec.zero_()
    x = inputs(T=3, B=2)
    spikes, (u, s) = module(x)
    want, (wu, _) = cut(x)
    assert spikes.sum() > 0
    assert torch.equal(spikes, want) and torch.equal(u, wu)
    assert s.shape == (5000, 2, N)
    assert not s[:-3].any() and torch.equal(s[-3:], spikes)


# ----------------------------------------------------------------------------
# Layouts, stacks, dropout


@pytest.mark.parametrize("model", MODULES)
@pytest.mark.parametrize("num_layers", [1, 3])
def test_unbatched_batch_first_stack_is_the_batched_run(model, num_layers):
    """An unbatched [T, F] x ignores batch_first: the batched time-first run
    of x[:, None] squeezed, histories [(L,) D, N], a continuation included."""
    bf = make(model, "synaptic", num_layers=num_layers, batch_first=True)
    tf = copy.deepcopy(bf)
    tf.batch_first = False
    x = inputs(T=10, B=1)
    lead = [num_layers] if num_layers > 1 else []
    s1, f1 = bf(x[:6, 0])
    s2, f2 = tf(x[:6])
    assert s1.shape == (6, N) and torch.equal(s1, s2[:, 0])
    assert f1[-1].shape == tuple(lead + [D, N])
    for a, b in zip(f1, f2):
        assert torch.equal(a, b.squeeze(-2))
    c1, g1 = bf(x[6:, 0], f1)
    c2, g2 = tf(x[6:], f2)
    assert torch.equal(c1, c2[:, 0])
    for a, b in zip(g1, g2):
        assert torch.equal(a, b.squeeze(-2))
    # And batch_first batched: the transpose.
    xb = inputs(T=10, B=3)
    sb, fb = bf(xb.transpose(0, 1))
    st, ft = tf(xb)
    assert torch.equal(sb, st.transpose(0, 1))
    for a, b in zip(fb, ft):
        assert torch.equal(a, b)


@pytest.mark.parametrize("model", MODULES)
def test_dropout_between_delayed_layers_trains_like_the_autograd_backend(model):
    """Train mode, dropout 0.5 between three delayed layers: the same masks
    (same RNG draws) give the same run and gradients in both backends; every
    layer's delays get a gradient; the history holds undropped spikes (0/1);
    in eval mode dropout is off (the run of dropout=0)."""
    module = make(model, "axonal", num_layers=3, dropout=0.5, learn_delay_spread=True)
    module.train()
    x = inputs(T=12, B=4)
    torch.manual_seed(123)
    got = run_and_grad(module, x)
    torch.manual_seed(123)
    want = run_and_grad(reference_of(module), x)
    assert_same_run(got, want)
    for layer in range(3):
        assert got[2][f"delays_l{layer}"].abs().sum() > 0, layer
    assert set(got[1][-1].unique().tolist()) <= {0.0, 1.0}
    module.eval()
    no_dropout = copy.deepcopy(module)
    no_dropout.dropout = 0.0
    a, b = module(x), no_dropout(x)
    assert torch.equal(a[0], b[0])


# ----------------------------------------------------------------------------
# dtypes


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_half_precision_module_computes_as_float32_of_the_same_values(dtype):
    """dtype=bfloat16/float16: float32 delays; the run is that of the module
    cast to float32 on the same (rounded) inputs, bitwise."""
    module = make("lif", "synaptic", dtype=torch.float32)
    half = torch_ext.RecurrentLIF(F, N, recurrent_delays="synaptic", max_delay=D,
                                  delay_sigma=0.4, slope=5.0, dtype=dtype,
                                  learn_delay_spread=True)
    with torch.no_grad():
        for name, p in half.named_parameters():
            p.copy_(module.get_parameter(name) if name != "delay_spread" else torch.randn(N))
    assert half.delays.dtype == torch.float32 and half.delay_spread.dtype == torch.float32
    assert half.w_in.dtype == dtype
    single = copy.deepcopy(half).float()
    x = inputs(T=10, dtype=dtype)
    a, fa = half(x)
    b, fb = single(x.float())
    assert b.sum() > 0
    assert a.dtype == dtype and torch.equal(a.float(), b)
    assert torch.equal(fa[-1].float(), fb[-1])


def test_double_and_to_half_cast_the_delays_too():
    """module.double() makes the delays float64; module.half() (unlike
    dtype=float16 at construction) casts them to float16, and still runs."""
    module = make("cuba", dtype=torch.float32, learn_delay_spread=True)
    assert copy.deepcopy(module).double().delays.dtype == F64
    half = copy.deepcopy(module).half()
    assert half.delays.dtype == torch.float16 and half.delay_spread.dtype == torch.float16
    spikes, final = half(inputs(dtype=torch.float16))
    assert spikes.dtype == torch.float16 and final[-1].shape == (D, 3, N)


@pytest.mark.parametrize("model", MODULES)
def test_autocast_casts_the_weights_but_not_the_delays(model):
    """Under autocast(cpu, bfloat16) the op rounds w_in, w_rec, bias and x to
    bfloat16 (README) and leaves the delays and sigma alone: the run equals
    the float32 module with those rounded by hand, bitwise; the delays and
    the spread get float32 gradients."""
    module = make(model, "synaptic", dtype=torch.float32, learn_delay_spread=True)
    with torch.no_grad():
        module.delays.add_(0.001)  # not representable in bfloat16 near 3: would show a cast
    rounded = copy.deepcopy(module)
    with torch.no_grad():
        for name, p in rounded.named_parameters():
            if name in ("w_in", "w_rec", "bias"):
                p.copy_(p.bfloat16().float())
    x = inputs(dtype=torch.float32)
    with torch.autocast("cpu", torch.bfloat16):
        spikes, final = module(x)
    want, want_final = rounded(x.bfloat16().float())
    assert spikes.dtype == torch.float32 and want.sum() > 0
    assert torch.equal(spikes, want)
    for a, b in zip(final, want_final):
        assert torch.equal(a, b)
    (spikes.sum() + final[0].sum()).backward()
    assert module.delays.grad.dtype == torch.float32 and module.delays.grad.abs().sum() > 0
    assert module.delay_spread.grad.dtype == torch.float32


# ----------------------------------------------------------------------------
# Copies and state dicts


@pytest.mark.parametrize("model", MODULES)
def test_deepcopy_is_independent(model):
    module = make(model, "synaptic", num_layers=2, learn_delay_spread=True)
    twin = copy.deepcopy(module)
    x = inputs()
    assert torch.equal(twin(x)[0], module(x)[0])
    twin.round_delays_()
    twin.delay_sigma = 0.0
    assert not torch.equal(twin.delays_l0, module.delays_l0)
    assert module.delay_sigma == 0.4


@pytest.mark.parametrize("model", MODULES)
def test_state_dicts_of_other_delay_layouts_are_refused_naming_the_key(model):
    cls = MODULES[model]
    axonal = cls(F, N, recurrent_delays="axonal", max_delay=D)
    synaptic = cls(F, N, recurrent_delays="synaptic", max_delay=D)
    plain = cls(F, N)
    spread = cls(F, N, recurrent_delays="synaptic", max_delay=D, learn_delay_spread=True)
    stack = cls(F, N, recurrent_delays="synaptic", max_delay=D, num_layers=2)
    with pytest.raises(RuntimeError, match=r"size mismatch for delays: copying a param with "
                       r"shape torch.Size\(\[5\]\) from checkpoint, the shape in current model "
                       r"is torch.Size\(\[5, 5\]\)"):
        synaptic.load_state_dict(axonal.state_dict())
    with pytest.raises(RuntimeError, match=r"Missing key\(s\) in state_dict: \"delays\""):
        synaptic.load_state_dict(plain.state_dict())
    with pytest.raises(RuntimeError, match=r"Unexpected key\(s\) in state_dict: \"delays\""):
        plain.load_state_dict(synaptic.state_dict())
    with pytest.raises(RuntimeError, match=r"Unexpected key\(s\) in state_dict: \"delay_spread\""):
        synaptic.load_state_dict(spread.state_dict())
    with pytest.raises(RuntimeError, match=r"Missing key\(s\) in state_dict: .*\"delays\""):
        synaptic.load_state_dict(stack.state_dict())
    # strict=False loads the shared tensors and keeps the module's delays.
    before = synaptic.delays.detach().clone()
    result = synaptic.load_state_dict(plain.state_dict(), strict=False)
    assert result.missing_keys == ["delays"] and not result.unexpected_keys
    assert torch.equal(synaptic.delays, before)
    assert torch.equal(synaptic.w_rec, plain.w_rec)


@pytest.mark.parametrize("model", MODULES)
def test_reset_parameters_redraws_the_delays_and_zeroes_the_spread(model):
    module = make(model, "synaptic", num_layers=2, learn_delay_spread=True, max_delay=9)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "delay" in name:
                p.fill_(-7.0)
    torch.manual_seed(42)
    module.reset_parameters()
    first = {n: p.detach().clone() for n, p in module.named_parameters()}
    for layer in range(2):
        delays = module.get_parameter(f"delays_l{layer}")
        assert delays.min() >= 1 and delays.max() <= 9 and delays.std() > 0
        assert not module.get_parameter(f"delay_spread_l{layer}").any()
    assert not torch.equal(module.delays_l0, module.delays_l1)
    torch.manual_seed(42)
    module.reset_parameters()  # reproducible from the seed
    for n, p in module.named_parameters():
        assert torch.equal(p, first[n]), n


# ----------------------------------------------------------------------------
# clamp_delays_ and round_delays_


@pytest.mark.parametrize("backend", ["fused", "autograd"])
def test_clamp_and_round_under_autograd(backend):
    """On requires-grad leaves, with grad mode on: no error, the module
    back; the values projected; no gradient history recorded. A backward of
    a graph built before the change either refuses (the fused op saved the
    delays) or gives the gradient of the values it ran with."""
    module = make("lif", "synaptic", num_layers=2, backend=backend)
    with torch.no_grad():
        module.delays_l0.uniform_(-3, 9)
        module.delays_l1.copy_(torch.linspace(0.5, 4.5, N * N).view(N, N))
    x = inputs()
    ran_with = copy.deepcopy(module)
    spikes, final = module(x)
    assert torch.is_grad_enabled()
    assert module.clamp_delays_() is module
    assert module.delays_l0.min() == 1 and module.delays_l0.max() == D
    assert module.delays_l0.requires_grad and module.delays_l0.grad_fn is None
    assert module.round_delays_() is module
    want = torch.linspace(0.5, 4.5, N * N, dtype=F64).view(N, N).clamp(1, D).round()
    assert torch.equal(module.delays_l1, want)
    loss = spikes.sum() + final[0].sum()
    if backend == "fused":
        with pytest.raises(RuntimeError, match=r"modified by an inplace operation"):
            loss.backward()
    else:
        loss.backward()
        want_spikes, want_final = ran_with(x)
        (want_spikes.sum() + want_final[0].sum()).backward()
        for name in ("delays_l0", "delays_l1"):
            assert_close(module.get_parameter(name).grad, ran_with.get_parameter(name).grad, name)


def test_clamp_leaves_nan_delays_and_the_forward_refuses_them():
    """clamp_ keeps NaN (no projection of NaN into [1, D]); the forward
    then names the delays."""
    module = make("lif")
    with torch.no_grad():
        module.delays[0] = float("nan")
        module.delays[1] = float("inf")
    module.clamp_delays_()
    assert module.delays[0].isnan() and module.delays[1] == D
    with pytest.raises(ValueError, match=r"argument 'delays' must be finite"):
        module(inputs())


@pytest.mark.parametrize("model", MODULES)
def test_meta_modules(model):
    """device='meta': clamp and round return the module, everything stays on
    meta with its shapes; the forward gives meta outputs of the real shapes;
    to_empty + reset_parameters gives delays in range."""
    module = MODULES[model](F, N, recurrent_delays="synaptic", max_delay=D, num_layers=2,
                            learn_delay_spread=True, device="meta")
    assert module.clamp_delays_() is module and module.round_delays_() is module
    assert module.delays_l1.is_meta and module.delays_l1.shape == (N, N)
    spikes, final = module(torch.empty(6, 2, F, device="meta"),
                           lengths=torch.tensor([3, 6], device="meta"))
    assert spikes.is_meta and spikes.shape == (6, 2, N)
    assert final[-1].is_meta and final[-1].shape == (2, D, 2, N)
    module.to_empty(device="cpu")
    module.reset_parameters()
    assert module.delays_l0.min() >= 1 and module.delays_l0.max() <= D


# ----------------------------------------------------------------------------
# Gradients


@pytest.mark.parametrize("model", MODULES)
@pytest.mark.parametrize("kind", KINDS)
def test_gradcheck_delays_spread_and_history(model, kind):
    """torch.autograd.gradcheck of the fused module in float64 where the run
    is smooth: a threshold never reached (no new spikes), a real-valued
    history read at fractional delays away from the kernel's kinks (at
    integer distances and at +-s = 1.3 from a tap), sigma 0.3 through the
    learnt spread (delay_sigma 0.3, spread 0: 2 * 0.3 * sigmoid(0) = 0.3)."""
    module = MODULES[model](2, 3, recurrent_delays=kind, max_delay=3, delay_sigma=0.3,
                            learn_delay_spread=True, theta=1e3).double()
    fractions = torch.tensor([1.15, 2.45, 1.55, 2.85, 1.85, 2.15, 1.45, 2.55, 1.15],
                             dtype=F64)
    delays = fractions[:3] if kind == "axonal" else fractions.view(3, 3)
    spread = torch.zeros(3, dtype=F64)
    w_rec = module.w_rec.detach().clone()
    g = torch.Generator().manual_seed(3)
    x = torch.rand(5, 2, 2, generator=g, dtype=F64)
    hist = torch.rand(3, 2, 3, generator=g, dtype=F64)
    hist[-1] = 0.0  # its last step is also the reset R[0]: theta * R would round at 1e3
    fixed = {n: p.detach() for n, p in module.named_parameters()}
    fixed.update({n: b for n, b in module.named_buffers()})

    def f(delays, spread, w_rec, hist):
        params = {**fixed, "delays": delays, "delay_spread": spread, "w_rec": w_rec}
        spikes, final = functional_call(module, params, (x, others(module) + (hist,)))
        assert not spikes.any()
        return final[:-1]

    args = [t.clone().requires_grad_() for t in (delays, spread, w_rec, hist)]
    assert torch.autograd.gradcheck(f, args, eps=1e-6, atol=1e-8, rtol=1e-6)
    # And the gradient of the delays is not trivially zero.
    out = f(*args)
    (grad,) = torch.autograd.grad(sum(o.sum() for o in out), args[0])
    assert grad.abs().min() > 0


def random_config(model, rng):
    kind = rng.choice(KINDS)
    recurrent = "one_to_one" if kind == "axonal" and rng.random() < 0.3 else "all_to_all"
    num_layers = int(rng.integers(1, 4))
    options = dict(
        recurrent_delays=kind, recurrent=recurrent, num_layers=num_layers,
        max_delay=int(rng.integers(1, 7)), delay_sigma=float(rng.choice([0.0, 0.37, 2.2])),
        learn_delay_spread=bool(rng.random() < 0.5), reset=str(rng.choice(["subtract", "zero",
                                                                          "none"])),
        detach_reset=bool(rng.random() < 0.5),
        surrogate=str(rng.choice(["sigmoid", "fast_sigmoid", "atan", "triangle"])),
        batch_first=bool(rng.random() < 0.5),
        dropout=float(rng.choice([0.0, 0.3])) if num_layers > 1 else 0.0)
    options["save_state" if model != "lif" else "save_membrane"] = bool(rng.random() < 0.5)
    return options


@pytest.mark.parametrize("model", MODULES)
@pytest.mark.parametrize("seed", range(8))
def test_random_configurations_fused_is_the_autograd_backend(model, seed):
    """Random kinds, depths, D, sigma, spreads, resets, surrogates, layouts,
    dropout (train mode), low-memory mode, lengths and given histories: the
    same spikes, final states and every gradient (x, the given state, every
    parameter) in float64, rtol 1e-10."""
    rng = np.random.default_rng(1000 * seed + len(model))
    options = random_config(model, rng)
    module = make(model, seed=seed, **{k: v for k, v in options.items()
                                       if k not in ("recurrent_delays",)},
                  kind=options["recurrent_delays"])
    module.train()
    L, Dm, B = module.num_layers, module.max_delay, 3
    T = int(rng.integers(1, 10))
    layout = rng.choice(["batched", "unbatched"])
    lead = [L] if L > 1 else []
    x = inputs(T=T, B=B, seed=seed)
    if layout == "unbatched":
        x = x[:, 0]
        rows = []
    else:
        rows = [B]
        if module.batch_first:
            x = x.transpose(0, 1)
    x = x.clone().requires_grad_()
    hist = history(lead + [Dm] + rows + [N], seed=seed).requires_grad_()
    first = torch.rand(lead + rows + [N], dtype=F64).requires_grad_()
    state = (first,) + (None,) * (len(module._STATE) - 2) + (hist,)
    lengths = None
    if layout == "batched" and rng.random() < 0.7:
        lengths = torch.tensor(rng.integers(0, T + 1, size=B))
    torch.manual_seed(seed)
    got = run_and_grad(module, x, state, lengths=lengths)
    torch.manual_seed(seed)
    want = run_and_grad(reference_of(module), x, state, lengths=lengths)
    assert got[0].sum() > 0, options
    assert_same_run(got, want)


# ----------------------------------------------------------------------------
# Determinism, compile, the other constructors


def test_results_do_not_depend_on_the_thread_count():
    """Forward and every gradient bitwise with 1 and 2 threads (a size at
    which the op and the products may split the work)."""
    module = make("adlif", "synaptic", num_layers=2, learn_delay_spread=True, max_delay=6)
    big = MODULES["adlif"](F, 48, recurrent_delays="synaptic", max_delay=6, num_layers=2,
                           delay_sigma=0.4, learn_delay_spread=True).double()
    results = []
    for threads in (1, 2, 1):
        torch.set_num_threads(threads)
        for m, B in ((module, 3), (big, 16)):
            x = inputs(T=20, B=B).requires_grad_()
            results.append(run_and_grad(m, x, lengths=torch.arange(B) % 21))
    for i in range(2):
        for other in results[i + 2::2]:
            a, b = results[i], other
            assert torch.equal(a[0], b[0])
            for u, v in zip(a[1], b[1]):
                assert torch.equal(u, v)
            for name in a[2]:
                assert torch.equal(a[2][name], b[2][name]), name


def test_torch_compile_of_a_delayed_module():
    """torch.compile (fullgraph=False, aot_eager: the op's fake kernels and
    autograd traced by AOTAutograd) of a delayed stack with lengths: the
    eager spikes, final state and every gradient."""
    pytest.importorskip("torch._dynamo")
    torch._dynamo.reset()
    module = make("lif", "synaptic", learn_delay_spread=True, num_layers=2)
    compiled = torch.compile(copy.deepcopy(module), fullgraph=False, backend="aot_eager")
    x = inputs()
    lengths = torch.tensor([9, 0, 4])
    got = run_and_grad(compiled, x, lengths=lengths)
    want = run_and_grad(module, x, lengths=lengths)
    torch._dynamo.reset()
    assert want[0].sum() > 0
    got_grads = {name.replace("_orig_mod.", ""): g for name, g in got[2].items()}
    assert_same_run((got[0], got[1], got_grads), want)


def test_second_derivatives_are_refused_by_the_fused_backend():
    """The fused backward is once-differentiable: differentiating a gradient
    of the delays must raise (not silently give a partial second derivative
    through the spread's sigmoid); the autograd backend gives them."""
    module = make("lif", "synaptic", learn_delay_spread=True)
    for backend in ("fused", "autograd"):
        module.backend = backend
        _, final = module(inputs())
        g, gs = torch.autograd.grad((final[0] ** 2).sum(), [module.delays, module.delay_spread],
                                    create_graph=True)
        if backend == "fused":
            with pytest.raises(RuntimeError, match=r"once-differentiable"):
                torch.autograd.grad((g ** 2).sum() + (gs ** 2).sum(), module.delays)
        else:
            (h,) = torch.autograd.grad((g ** 2).sum() + (gs ** 2).sum(), module.delays)
            assert h.abs().sum() > 0


@pytest.mark.parametrize("model", ["lif", "cuba"])
def test_return_membrane_with_delays_and_lengths(model):
    """return_membrane: the membrane of both backends alike; each row's
    membrane at its last valid step is its final u."""
    module = make(model, "synaptic", return_membrane=True, batch_first=True)
    x = inputs(B=3).transpose(0, 1)
    lengths = torch.tensor([9, 1, 5])
    spikes, membrane, final = module(x, lengths=lengths)
    ref_spikes, ref_membrane, ref_final = reference_of(module)(x, lengths=lengths)
    assert torch.equal(spikes, ref_spikes)
    assert_close(membrane, ref_membrane, "membrane")
    assert membrane.shape == (3, 9, N)
    for b, length in enumerate(lengths.tolist()):
        assert torch.equal(final[0][b], membrane[b, length - 1])
    for a, r in zip(final, ref_final):
        assert_close(a, r, "final state")


def test_unbatched_lengths_and_small_integer_lengths():
    """Unbatched x takes lengths [1] (its run cut there); uint8 lengths are
    integers; a 0-dim lengths and bool lengths are refused naming 'lengths'."""
    module = make("lif", "synaptic")
    x = inputs(B=3)
    xu = x[:, 0]
    cut, (u, s) = module(xu, lengths=torch.tensor([4]))
    alone, (au, as_) = module(xu[:4])
    assert torch.equal(cut[:4], alone) and not cut[4:].any()
    assert torch.equal(s, as_) and s.shape == (D, N)
    # The input projection is one product over all T*B rows, and how BLAS
    # sums a row can depend on how many rows the product has (it does with
    # MKL on AVX-512): the same values up to float64 rounding.
    torch.testing.assert_close(u, au, rtol=1e-13, atol=1e-13 * au.abs().max().item())
    a = module(x, lengths=torch.tensor([3, 0, 9], dtype=torch.uint8))
    b = module(x, lengths=torch.tensor([3, 0, 9]))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1][1], b[1][1])
    with pytest.raises(ValueError, match=r"argument 'lengths' must have shape \[1\]"):
        module(xu, lengths=torch.tensor(4))
    with pytest.raises(TypeError, match=r"argument 'lengths' must hold integers, got dtype Bool"):
        module(x, lengths=torch.tensor([True, False, True]))


def test_an_empty_batch_keeps_its_history_shape():
    module = make("adlif", "axonal", num_layers=2)
    x = inputs(B=3)[:, :0]
    hist = torch.zeros(2, D, 0, N, dtype=F64)
    spikes, final = module(x, (None, None, hist), lengths=torch.zeros(0, dtype=torch.long))
    assert spikes.shape == (9, 0, N)
    assert final[-1].shape == (2, D, 0, N) and final[0].shape == (2, 0, N)


def test_the_annealed_sigma_is_not_in_the_state_dict():
    """delay_sigma is a plain attribute (to anneal): a state_dict round trip
    keeps the delays and the spread but not a changed sigma."""
    module = make("cuba", "axonal", learn_delay_spread=True)
    module.delay_sigma = 2.0
    again = MODULES["cuba"](F, N, recurrent_delays="axonal", max_delay=D, delay_sigma=0.4,
                            slope=5.0, learn_delay_spread=True).double()
    again.load_state_dict(module.state_dict())
    assert again.delay_sigma == 0.4
    assert torch.equal(again.delays, module.delays)
    x = inputs()
    module.delay_sigma = 0.4
    assert torch.equal(again(x)[0], module(x)[0])


def test_from_snntorch_and_from_nir_modules_have_no_delays():
    snntorch = pytest.importorskip("snntorch")
    linear = torch.nn.Linear(F, N)
    layer = torch_ext.RecurrentLIF.from_snntorch(linear, snntorch.RLeaky(beta=0.9,
                                                                         linear_features=N))
    checks = [layer]
    if importlib.util.find_spec("nir") is not None:
        checks.append(torch_ext.from_nir(torch_ext.to_nir(torch_ext.RecurrentCubaLIF(
            F, N, reset="zero"))))
    for found in checks:
        module = next(m for m in found.modules()
                      if isinstance(m, (torch_ext.RecurrentLIF, torch_ext.RecurrentCubaLIF)))
        assert module.recurrent_delays is None and module.max_delay is None
        assert not any("delay" in n for n in module.state_dict())
        _, state = module(torch.rand(4, 2, F))
        assert state[-1].shape == (2, N)
        with pytest.raises(ValueError, match=r"the module has no recurrent delays"):
            module.clamp_delays_()


def test_to_nir_refuses_an_adlif_and_a_delayed_stack():
    pytest.importorskip("nir")
    with pytest.raises(ValueError, match=r"RecurrentLIF has recurrent delays"):
        torch_ext.to_nir(torch_ext.RecurrentLIF(F, N, reset="zero", num_layers=2,
                                                recurrent_delays="axonal", max_delay=2))
    with pytest.raises(TypeError, match=r"RecurrentAdLIF cannot be exported"):
        torch_ext.to_nir(torch_ext.RecurrentAdLIF(F, N, recurrent_delays="axonal", max_delay=2))


def test_hidden_size_one_and_one_to_one_axonal():
    module = make("cuba", "synaptic")
    single = torch_ext.RecurrentCubaLIF(F, 1, recurrent_delays="synaptic", max_delay=2,
                                        delay_sigma=0.5).double()
    assert single.delays.shape == (1, 1)
    got = run_and_grad(single, inputs())
    want = run_and_grad(reference_of(single), inputs())
    assert_same_run(got, want)
    assert got[1][-1].shape == (2, 3, 1)
    one = make("adlif", "axonal", recurrent="one_to_one")
    assert one.w_rec.shape == (N,) and one.delays.shape == (N,)
    assert module.delays.shape == (N, N)
    assert math.isfinite(float(run_and_grad(one, inputs())[2]["delays"].abs().sum()))
