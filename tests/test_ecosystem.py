"""The layer inside real training stacks: opcheck, torch.compile, autocast, DDP."""
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import torch_ext
from conftest import make_inputs

needs_opcheck = pytest.mark.skipif(not hasattr(torch.library, "opcheck"),
                                   reason="torch.library.opcheck needs torch >= 2.4")


OPTIONS = ("subtract", False, "sigmoid", 25.0)  # reset, detach_reset, surrogate, slope


def op_inputs(requires_grad, contiguous, dtype=torch.float64):
    """The op's tensor arguments (an LIFArgs), optionally with strided x and w_in."""
    args = make_inputs(T=6, B=3, F=5, N=4, dtype=dtype, alpha_shape=(4,), state=True,
                       requires_grad=requires_grad)
    if not contiguous:
        x = args.x.detach().transpose(0, 1).contiguous().transpose(0, 1)
        w_in = args.w_in.detach().t().contiguous().t()
        args = args._replace(x=x.requires_grad_(requires_grad),
                             w_in=w_in.requires_grad_(requires_grad))
    return args


def forward_args(requires_grad, contiguous, dtype=torch.float64):
    return (*op_inputs(requires_grad, contiguous, dtype), *OPTIONS)


@needs_opcheck
@pytest.mark.parametrize("requires_grad", [False, True])
@pytest.mark.parametrize("contiguous", [True, False])
def test_opcheck_forward(requires_grad, contiguous):
    torch.library.opcheck(torch.ops.torch_ext.recurrent_lif.default,
                          forward_args(requires_grad, contiguous))


@needs_opcheck
# needs_grad: x .. s0, then delays, delay_sigma, rec_mask (absent here)
@pytest.mark.parametrize("needs", [[True] * 11,
                                   [False, True, False, False, True, False, False, True] + [False] * 3])
def test_opcheck_backward(needs):
    a = op_inputs(False, True)
    spikes, membrane = torch.ops.torch_ext.recurrent_lif(*a, *OPTIONS)
    torch.library.opcheck(torch.ops.torch_ext._recurrent_lif_backward.default,
                          (torch.randn_like(spikes), None, a.x, a.w_in, a.w_rec, a.bias, a.alpha,
                           a.theta, a.u0, a.s0, spikes, membrane, *OPTIONS, needs))


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lif = torch_ext.RecurrentLIF(5, 6, learn_alpha=True, learn_theta=True, per_neuron=True,
                                          return_membrane=True)
        self.readout = torch.nn.Linear(6, 2)

    def forward(self, x):
        spikes, membrane, _ = self.lif(x)
        return self.readout(spikes.mean(0) + membrane.mean(0))


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_torch_compile_fullgraph_forward_and_backward(backend):
    torch.manual_seed(0)
    model = Net().double()
    x = torch.randn(12, 3, 5, dtype=torch.float64) * 2
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend=backend)
    outputs = []
    for m in (model, compiled):
        out = m(x)
        grads = torch.autograd.grad(out.square().sum(), list(model.parameters()))
        outputs.append((out, grads))
    torch.testing.assert_close(outputs[1][0], outputs[0][0], rtol=1e-10, atol=1e-10)
    for a, b in zip(outputs[1][1], outputs[0][1]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_autocast_cpu_bfloat16_stays_close_to_float32():
    """Under autocast the weights and (for the products) x are rounded to
    bfloat16 (~3 significant digits); everything after that runs in float32. So the run equals a float32
    run on the rounded inputs, up to the bfloat16 rounding of the returned
    weight gradients (< 1 %), and stays within a few 1e-2 of the unrounded
    float32 membranes with under 3 % of the spikes flipped. (Gradients are not
    compared with the unrounded run: each flipped spike moves the surrogate
    gradient of a near-threshold neuron by O(slope), here 25.)"""
    torch.manual_seed(0)
    layer = torch_ext.RecurrentLIF(16, 32, return_membrane=True)
    x = torch.randn(20, 8, 16)
    params = [layer.w_in, layer.w_rec, layer.bias]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        spikes, membrane, (u, s) = layer(x)
    # x stays float32 (autocast casts the weights): spikes, membrane and state float32.
    assert spikes.dtype == membrane.dtype == u.dtype == torch.float32
    grads = torch.autograd.grad(membrane.sum() + spikes.float().sum(), params)
    assert all(g.dtype == torch.float32 for g in grads)

    rounded = [p.detach().bfloat16().float().requires_grad_() for p in params]
    spikes_r, membrane_r = torch_ext.recurrent_lif(x.bfloat16().float(), *rounded, layer.alpha,
                                                   layer.theta)
    grads_r = torch.autograd.grad(membrane_r.sum() + spikes_r.sum(), rounded)
    assert torch.equal(spikes.float(), spikes_r)
    torch.testing.assert_close(membrane, membrane_r, rtol=1e-5, atol=1e-5)
    for g, g_r in zip(grads, grads_r):
        assert (g - g_r).norm() < 1e-2 * g_r.norm()

    spikes32, membrane32, _ = layer(x)
    assert (spikes.float() != spikes32).float().mean() < 0.03
    assert (membrane - membrane32).abs().mean() < 0.05


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world_size, port, x, y, state, out_path):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        torch.set_num_threads(1)
        layer = torch_ext.RecurrentLIF(5, 6, learn_alpha=True, per_neuron=True, dtype=torch.float64)
        layer.load_state_dict(state)
        model = torch.nn.parallel.DistributedDataParallel(layer)
        shard = slice(rank * x.shape[1] // world_size, (rank + 1) * x.shape[1] // world_size)
        spikes, _ = model(x[:, shard])
        ((spikes.mean(0) - y[shard]) ** 2).mean().backward()
        if rank == 0:
            torch.save({n: p.grad for n, p in layer.named_parameters()}, out_path)
        # Leave together: a rank that tears gloo down while the other is still
        # working can abort it ("terminate called without an active exception").
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_distributed_data_parallel_matches_single_process(tmp_path):
    torch.manual_seed(0)
    layer = torch_ext.RecurrentLIF(5, 6, learn_alpha=True, per_neuron=True, dtype=torch.float64)
    x = torch.randn(10, 8, 5, dtype=torch.float64) * 2
    y = torch.rand(8, 6, dtype=torch.float64)
    spikes, _ = layer(x)
    ((spikes.mean(0) - y) ** 2).mean().backward()
    out_path = tmp_path / "ddp_grads.pt"
    mp.start_processes(_ddp_worker, args=(2, _free_port(), x, y, layer.state_dict(), str(out_path)),
                       nprocs=2, join=True, start_method="spawn")
    ddp_grads = torch.load(out_path, weights_only=True)
    for name, p in layer.named_parameters():
        torch.testing.assert_close(ddp_grads[name], p.grad, rtol=1e-12, atol=1e-12)


def test_torch_compile_of_the_reference_runs_its_checks():
    """The reference calls the op's check (torch.ops.torch_ext._recurrent_lif_check):
    compiled as the benchmarks compile it (not fullgraph: its slope lookup is a
    Python call), it computes what eager computes, and a bad shape is still
    rejected, naming the argument."""
    torch.manual_seed(0)
    x = torch.randn(9, 3, 5, dtype=torch.float64) * 2
    w_in = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    w_rec = torch.randn(4, 4, dtype=torch.float64) * 0.3
    lengths = torch.tensor([9, 4, 0])
    torch._dynamo.reset()
    compiled = torch.compile(torch_ext.recurrent_lif_ref, backend="aot_eager")
    results = []
    for fn in (torch_ext.recurrent_lif_ref, compiled):
        spikes, membrane = fn(x, w_in, w_rec, lengths=lengths)
        results.append((spikes, membrane, torch.autograd.grad(membrane.sum(), w_in)[0]))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    with pytest.raises(Exception, match="'lengths'"):
        compiled(x, w_in, w_rec, lengths=torch.full((3, 1), 2))
