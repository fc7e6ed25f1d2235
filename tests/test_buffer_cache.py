"""The cache of the ops' large CPU buffers (torch_ext.buffer_cache_info).

The ops take their [T, B, N] outputs, the backward's gradient buffers and the
blocks of x their products round from a cache of freed blocks, so that a
training loop does not fault fresh memory in at every call. A reused block
holds whatever its last user left there, so every result must be the bits of
the same call without the cache: the tests below fill each reused block
with NaN bytes first (the poison hook) and compare with the cache turned off
(TORCH_EXT_BUFFER_CACHE_MB=0), over every model and the options that take
other buffers (lengths, the low-memory replay, delays of both kinds, binary
inputs, one-to-one recurrence, autocast)."""
import copy
import multiprocessing
import pickle

import pytest
import torch

import torch_ext
from torch_ext._neurons import NEURONS

from neurons import FUSED, OPS, make_inputs, run_with_grads

ENV = "TORCH_EXT_BUFFER_CACHE_MB"
# [T, B, N] float64 buffers of 40 * 8 * 64 * 8 bytes = 160 KiB: above the
# cache's 128 KiB minimum, so every big buffer of these calls goes through it.
T, B, F, N = 40, 8, 24, 64


@pytest.fixture
def poisoned():
    torch_ext._C._set_buffer_cache_poison(True)
    yield
    torch_ext._C._set_buffer_cache_poison(False)


def case(op, variant, dtype=torch.float64):
    """(args, options) of one call of `op` that uses `variant`."""
    recurrent = "one_to_one" if variant == "one_to_one" else "all_to_all"
    args = make_inputs(op, T=T, B=B, F=F, N=N, dtype=dtype, recurrent=recurrent, state=True)
    options = {}
    if variant == "lengths":
        options["lengths"] = torch.tensor([T, 0, 7, T - 1, 1, T, 30, 12])
    elif variant == "low_memory":
        options[NEURONS[op].save_flag] = False
    elif variant in ("axonal", "synaptic"):
        D = 16 if variant == "axonal" else 4
        g = torch.Generator().manual_seed(3)
        shape = (N,) if variant == "axonal" else (N, N)
        delays = (1 + (D - 1) * torch.rand(shape, generator=g, dtype=torch.float64)).to(dtype)
        history = (torch.rand(D, B, N, generator=g) < 0.3).to(dtype)
        args = args._replace(s0=history.requires_grad_())
        options.update(delays=delays.requires_grad_(), max_delay=D,
                       delay_sigma=torch.tensor(0.7, dtype=dtype, requires_grad=True),
                       rec_mask=(0.5 + torch.rand(B, N, generator=g, dtype=torch.float64))
                       .to(dtype).requires_grad_())
    elif variant == "binary":
        g = torch.Generator().manual_seed(4)
        args = args._replace(x=(torch.rand(T, B, F, generator=g) < 0.05).to(dtype))
    return args, options


def leaves(args, options):
    return [t for t in list(args) + list(options.values())
            if isinstance(t, torch.Tensor) and t.requires_grad]


def outputs_and_grads(op, args, options):
    outputs, grads = run_with_grads(FUSED[op], args, **options)
    extra = [t for t in options.values() if isinstance(t, torch.Tensor) and t.requires_grad]
    if extra:  # run_with_grads differentiates the positional arguments only
        loss = sum((o.double() * (i + 1)).sum() for i, o in enumerate(FUSED[op](*args, **options)))
        grads = list(grads) + list(torch.autograd.grad(loss, extra))
    return [o.detach() for o in outputs] + list(grads)


def assert_identical(got, want):
    assert len(got) == len(want)
    for i, (a, b) in enumerate(zip(got, want)):
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True,
                                   msg=lambda m, i=i: f"result {i}: {m}")


VARIANTS = ["plain", "lengths", "low_memory", "axonal", "synaptic", "binary", "one_to_one"]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("op", OPS)
def test_reused_buffers_give_the_bits_of_fresh_ones(op, variant, monkeypatch, poisoned):
    args, options = case(op, variant)
    monkeypatch.setenv(ENV, "0")
    want = outputs_and_grads(op, args, options)
    monkeypatch.delenv(ENV)
    before = torch_ext.buffer_cache_info()
    for _ in range(3):  # the later calls run on reused, NaN-filled blocks
        assert_identical(outputs_and_grads(op, args, options), want)
    assert torch_ext.buffer_cache_info()["reused"] > before["reused"]


@pytest.mark.parametrize("op", OPS)
def test_autocast_float32_and_binary_gather_forced_on_reused_buffers(op, monkeypatch, poisoned):
    args, options = case(op, "plain", torch.float32)
    gathered, _ = case(op, "binary", torch.float32)

    def run():
        with torch.autocast("cpu", torch.bfloat16):
            a = outputs_and_grads(op, args, options)
        monkeypatch.setenv("TORCH_EXT_BINARY_INPUTS", "gather")
        b = outputs_and_grads(op, gathered, {})
        monkeypatch.delenv("TORCH_EXT_BINARY_INPUTS")
        return a + b

    monkeypatch.setenv(ENV, "0")
    want = run()
    monkeypatch.delenv(ENV)
    for _ in range(3):
        assert_identical(run(), want)


def test_a_training_loop_takes_no_fresh_memory_after_its_first_steps():
    args, _ = case("recurrent_lif", "plain")
    for step in range(6):
        if step == 3:
            start = torch_ext.buffer_cache_info()
        spikes, membrane = FUSED["recurrent_lif"](*args)
        (spikes.sum() + membrane.sum()).backward()
    end = torch_ext.buffer_cache_info()
    assert end["allocated"] == start["allocated"]
    assert end["reused"] > start["reused"]


def test_limits_and_release(monkeypatch):
    args, _ = case("recurrent_adlif", "plain")

    def step():
        FUSED["recurrent_adlif"](*args)[0].sum().backward()

    step()
    step()
    assert torch_ext.buffer_cache_info()["cached_bytes"] > 0
    monkeypatch.setenv(ENV, "0")  # off: what is held goes at the next call, nothing is kept
    for _ in range(2):
        step()
        info = torch_ext.buffer_cache_info()
        assert info["cached_bytes"] == 0 and info["cached_blocks"] == 0
        assert info["limit_bytes"] == 0
    monkeypatch.setenv(ENV, "1")  # 1 MiB: never more than that held
    for _ in range(3):
        step()
        assert 0 < torch_ext.buffer_cache_info()["cached_bytes"] <= 1 << 20
    monkeypatch.delenv(ENV)
    step()
    assert torch_ext.buffer_cache_info()["limit_bytes"] == 256 << 20
    torch_ext.release_buffer_cache()
    info = torch_ext.buffer_cache_info()
    assert info["cached_bytes"] == 0 and info["cached_blocks"] == 0


@pytest.mark.parametrize("value", ["-1", "lots", "1.5", "4MB", " 4", "+4", "0x10",
                                   str(2 ** 43), "99999999999999999999"])
def test_a_bad_limit_names_the_variable(value, monkeypatch):
    args, _ = case("recurrent_lif", "plain")
    monkeypatch.setenv(ENV, value)
    with pytest.raises(ValueError, match=ENV):
        FUSED["recurrent_lif"](*args)


def test_a_bad_limit_set_later_leaves_existing_outputs_alone(monkeypatch):
    """Torch allocates through an output's allocator too (growing it, copying
    a copy-on-write clone); only the op's own calls read the variable."""
    args, _ = case("recurrent_lif", "plain")
    with torch.no_grad():
        spikes, membrane = FUSED["recurrent_lif"](*args)
    want = membrane.clone()
    monkeypatch.setenv(ENV, "lots")
    spikes.resize_(3 * T, B, N)
    if hasattr(torch.Tensor, "_lazy_clone"):
        lazy = membrane._lazy_clone()
        lazy.add_(1)
        assert torch.equal(lazy, want + 1) and torch.equal(membrane, want)
        del lazy
    del spikes, membrane


def test_outputs_are_ordinary_tensors(tmp_path):
    """Resizable, shareable, serialisable, and never aliasing one another."""
    args, _ = case("recurrent_cubalif", "plain")
    with torch.no_grad():
        spikes, membrane, current = FUSED["recurrent_cubalif"](*args)
    pointers = {t.data_ptr() for t in (spikes, membrane, current)}
    assert len(pointers) == 3
    want = spikes.clone()
    spikes.resize_(2 * T, B, N)  # a bigger storage, its contents kept
    assert torch.equal(spikes[:T], want)
    assert torch.equal(torch.from_numpy(membrane.numpy()), membrane)
    torch.save({"m": membrane}, tmp_path / "m.pt")
    assert torch.equal(torch.load(tmp_path / "m.pt")["m"], membrane)
    assert torch.equal(pickle.loads(pickle.dumps(current)), current)
    assert torch.equal(copy.deepcopy(membrane), membrane)
    if hasattr(torch.Tensor, "_lazy_clone"):  # copy-on-write clones need a "simple" data pointer
        lazy = membrane._lazy_clone()
        membrane.add_(1)
        assert torch.equal(lazy + 1, membrane)
    shared = current.clone().share_memory_()
    assert shared.is_shared() and torch.equal(shared, current)
    current.share_memory_()
    assert current.is_shared() and torch.equal(shared, current)


def _child_step(queue):
    torch.set_num_threads(1)  # as DataLoader's workers do (OpenMP's threads do not survive fork)
    args, _ = case("recurrent_lif", "plain")
    spikes, membrane = FUSED["recurrent_lif"](*args)
    (spikes.sum() + membrane.sum()).backward()
    queue.put(float(args.w_rec.grad.abs().sum()))


def test_a_forked_child_runs_the_op():
    """A DataLoader worker (fork) gets a cache it can use, with blocks the
    parent cached before the fork."""
    args, _ = case("recurrent_lif", "plain")
    spikes, membrane = FUSED["recurrent_lif"](*args)
    (spikes.sum() + membrane.sum()).backward()
    want = float(args.w_rec.grad.abs().sum())
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_child_step, args=(queue,))
    child.start()
    got = queue.get(timeout=120)
    child.join(timeout=120)
    assert child.exitcode == 0 and got == want
