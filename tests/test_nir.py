"""torch_ext.to_nir / from_nir: a round trip through NIR (in memory and
through a file) gives bitwise the same spikes and gradients; the exported
graph, run with NIR's own semantics (a small executor below), spikes like
the layer; graphs other tools write (snnTorch's RLeaky export) import with
the spikes of their NIR semantics; what has no exact equivalent is refused,
naming the node; files that are not NIR graphs are refused naming the file;
the encodings other importers do not read warn. RecurrentCubaLIF and NIR's
CubaLIF: tests/test_nir_cuba.py (which uses this file's executor)."""
import importlib.util
import re
import sys
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import torch_ext
from torch_ext import RecurrentCubaLIF, RecurrentLIF
from torch_ext._nir import LeakyIntegrator, SpikingSequential

DT = 1e-4
T, B, F, N = 30, 3, 4, 6
ROOT = Path(__file__).resolve().parents[1]
# to_nir warns about the LI -> Threshold encoding of reset="subtract"/"none"
# (other importers do not read it); test_the_encoding_other_importers_refuse_warns
# checks that warning, the other tests export those models for the round trip.
UNREADABLE_WARNING = r"ignore:torch_ext\.to_nir. .* has reset='(subtract|none)':UserWarning"
pytestmark = pytest.mark.filterwarnings(UNREADABLE_WARNING)


@pytest.fixture
def nir():
    return pytest.importorskip("nir")


# ---------------------------------------------------------------- NIR's semantics

def run_nir(nir, graph, x, dt=DT):
    """Runs a flat NIR graph on x [T, B, F] (float64) as NIR defines it,
    discretised by forward Euler with step dt: v += dt / tau * (v_leak - v +
    r * I) (IF, I: v += dt * r * I; CubaLIF: its current first, I_syn +=
    dt / tau_syn * (-I_syn + w_in * I), then v += dt / tau_mem * (v_leak - v
    + r * I_syn)), a spike where v > v_threshold, then v = v_reset; a
    node's input is the sum over its incoming edges; an edge from a node
    computed later in the step (a cycle) carries the previous step's value:
    the cycle's one-step delay (before the first step every node gives what
    it gives for zero input and state: an Affine its bias, the others 0).
    Returns (the Output node's values [T, B, *], {neuron node: v before the
    reset, [T, B, N]})."""
    nodes = graph.nodes
    preds = defaultdict(list)
    for a, b in graph.edges:
        preds[b].append(a)
    (start,) = [k for k, v in nodes.items() if isinstance(v, nir.Input)]
    (end,) = [k for k, v in nodes.items() if isinstance(v, nir.Output)]
    order, frontier = [], [start]
    while frontier:  # breadth first from the input: each node once per step
        name = frontier.pop(0)
        if name not in order:
            order.append(name)
            frontier += [b for a, b in graph.edges if a == name]
    p = {}

    def param(name, field):
        key = (name, field)
        if key not in p:
            p[key] = torch.as_tensor(np.asarray(getattr(nodes[name], field), dtype=np.float64))
        return p[key]

    state, outputs, membranes = defaultdict(float), [], defaultdict(list)
    prev = {k: param(k, "bias") for k, v in nodes.items() if isinstance(v, nir.Affine)}
    for t in range(x.shape[0]):
        now = {}
        for name in order:
            node = nodes[name]
            if isinstance(node, nir.Input):
                now[name] = x[t]
                continue
            i = sum(now[a] if a in now else prev.get(a, 0.0) for a in preds[name])
            if isinstance(node, nir.Affine):
                y = i @ param(name, "weight").T + param(name, "bias")
            elif isinstance(node, nir.Linear):
                y = i @ param(name, "weight").T
            elif isinstance(node, nir.Output):
                y = i
            elif isinstance(node, nir.Threshold):
                y = (i > param(name, "threshold")).double()
            else:
                v = state[name]
                if isinstance(node, (nir.IF, nir.I)):
                    v = v + dt * param(name, "r") * i
                elif isinstance(node, nir.CubaLIF):
                    syn = state[name + "/syn"]
                    syn = syn + dt / param(name, "tau_syn") * (-syn + param(name, "w_in") * i)
                    state[name + "/syn"] = syn
                    v = v + dt / param(name, "tau_mem") * (
                        param(name, "v_leak") - v + param(name, "r") * syn)
                else:  # LIF, LI
                    tau, r, v_leak = (param(name, f) for f in ("tau", "r", "v_leak"))
                    v = v + dt / tau * (v_leak - v + r * i)
                membranes[name].append(v)
                if isinstance(node, (nir.LIF, nir.IF, nir.CubaLIF)):
                    y = (v > param(name, "v_threshold")).double()
                    v = torch.where(y > 0, param(name, "v_reset"), v)
                else:
                    y = v
                state[name] = v
            now[name] = y
        outputs.append(now[end])
        prev = now
    return torch.stack(outputs), {k: torch.stack(v) for k, v in membranes.items()}


# ---------------------------------------------------------------- models

def _seeded(build):
    def make(dtype):
        torch.manual_seed(0)
        return build(dtype)
    return make


def _shared_one_to_one(dtype):
    layer = RecurrentLIF(F, N, reset="subtract", recurrent="one_to_one", dtype=dtype)
    layer.w_rec = nn.Parameter(torch.tensor(-0.4, dtype=dtype))  # one weight for all, 0-dim
    return layer


def _alpha_above_one(dtype):
    layer = RecurrentLIF(F, N, reset="zero", learn_alpha=True, dtype=dtype)
    with torch.no_grad():
        layer.alpha.fill_(1.02)  # as an optimiser step leaves it: the forward clamps it to 1
    return layer


def _stack_of_mixed_shapes(dtype, cls=RecurrentLIF, other="theta", **options):
    """A 2-layer stack whose alpha is [N] in layer 0 and 0-dim in layer 1, and
    `other` the other way."""
    layer = cls(F, N, num_layers=2, alpha=torch.linspace(0.6, 0.9, N), theta=0.5, dtype=dtype,
                **options)
    layer.alpha_l1 = torch.tensor(0.8, dtype=dtype)
    setattr(layer, f"{other}_l1", torch.linspace(0.4, 0.6, N, dtype=dtype))
    return layer


MODELS = {
    "zero": lambda d: RecurrentLIF(F, N, reset="zero", dtype=d),
    "zero_per_neuron_learnable_atan": lambda d: RecurrentLIF(
        F, N, reset="zero", alpha=torch.linspace(0.5, 0.95, N), theta=torch.linspace(0.7, 1.3, N),
        learn_alpha=True, learn_theta=True, surrogate="atan", slope=3.0, detach_reset=True,
        dtype=d),
    "subtract_per_neuron": lambda d: RecurrentLIF(
        F, N, alpha=0.8, per_neuron=True, learn_alpha=True, learn_theta=True, dtype=d),
    "subtract_one_to_one": lambda d: RecurrentLIF(
        F, N, recurrent="one_to_one", learn_theta=True, surrogate="fast_sigmoid", dtype=d),
    "subtract_one_to_one_shared_weight": _shared_one_to_one,
    "subtract_no_recurrence": lambda d: RecurrentLIF(F, N, recurrent="none", dtype=d),
    "none_triangle": lambda d: RecurrentLIF(F, N, reset="none", surrogate="triangle", theta=1.5,
                                            learn_alpha=True, dtype=d),
    "zero_no_bias_no_recurrence": lambda d: RecurrentLIF(F, N, reset="zero", bias=False,
                                                          recurrent="none", dtype=d),
    "if_alpha_1": lambda d: RecurrentLIF(F, N, reset="zero", alpha=1.0, theta=0.8, dtype=d),
    "i_alpha_1": lambda d: RecurrentLIF(F, N, reset="subtract", alpha=1.0, theta=2.0, dtype=d),
    "alpha_above_1": _alpha_above_one,
    "stack": lambda d: RecurrentLIF(F, N, num_layers=3, dropout=0.2, learn_alpha=True,
                                    alpha=torch.linspace(0.6, 0.9, N), theta=0.4, dtype=d),
    "stack_of_mixed_shapes": _stack_of_mixed_shapes,
    "sequential_with_readouts": lambda d: SpikingSequential(
        RecurrentLIF(F, N, reset="zero", dtype=d), nn.Linear(N, 5, dtype=d),
        RecurrentLIF(5, N, num_layers=2, recurrent="one_to_one", dtype=d),
        nn.Linear(N, 2, bias=False, dtype=d)),
}
MODELS = {name: _seeded(build) for name, build in MODELS.items()}


def inputs(dtype, features=F, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(T, B, features, generator=g, dtype=torch.float64) * 2.5).to(dtype)


def outputs_and_grads(module, x):
    """The output (and the membrane of a single layer), and the gradients of
    a random linear function of them for x and every parameter, by name."""
    x = x.clone().requires_grad_()
    torch.manual_seed(5)  # the same dropout masks (a stack in training mode) for both
    if isinstance(module, (RecurrentLIF, RecurrentCubaLIF)):
        module.return_membrane = True
        out, membrane, _ = module(x)
        outs = [out, membrane]
    else:
        outs = [module(x)]
    g = torch.Generator().manual_seed(2)
    loss = sum((o * torch.randn(o.shape, generator=g, dtype=torch.float64).to(o.dtype)).sum()
               for o in outs)
    names = [n for n, p in module.named_parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, [x] + [dict(module.named_parameters())[n] for n in names])
    return outs, dict(zip(["x"] + names, grads))


def options(module):
    layers = [module] if isinstance(module, (RecurrentLIF, RecurrentCubaLIF)) else list(module)
    keys = ("reset", "detach_reset", "surrogate", "slope", "recurrent", "per_neuron",
            "num_layers", "dropout", "in_features", "hidden_size")
    return [(type(m).__name__, *(getattr(m, k, None) for k in keys)) for m in layers]


# ---------------------------------------------------------------- round trip

@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("model", MODELS)
def test_round_trip_is_bitwise(nir, model, dtype, tmp_path):
    assert_round_trip_is_bitwise(nir, MODELS[model](dtype), tmp_path,
                                 spiking=model != "sequential_with_readouts")


def assert_round_trip_is_bitwise(nir, module, tmp_path, spiking=True):
    """from_nir(to_nir(module)), in memory and through a file (a Path and a
    str), is the module: assert_same_module on the module's dtype."""
    graph = torch_ext.to_nir(module)
    nir.write(tmp_path / "model.nir", graph)
    x = inputs(next(module.parameters()).dtype)
    want, want_grads = outputs_and_grads(module, x)
    assert 0.05 < want[0].double().mean() < 0.95 or not spiking
    for again in (torch_ext.from_nir(graph), torch_ext.from_nir(tmp_path / "model.nir"),
                  torch_ext.from_nir(str(tmp_path / "model.nir"))):
        assert_same_module(again, module, x, want, want_grads)


def assert_same_module(again, module, x, want, want_grads):
    """An imported module is the exported one: type, options, state_dict
    (dtypes, values, Parameter or buffer), bitwise the same outputs and
    gradients of every parameter on x."""
    assert type(again) is type(module) and options(again) == options(module)
    if isinstance(again, torch.nn.Sequential):
        assert [type(m) for m in again] == [type(m) for m in module]
    state, want_state = again.state_dict(), module.state_dict()
    assert list(state) == list(want_state)
    for key in state:
        assert state[key].dtype == want_state[key].dtype, key
        assert torch.equal(state[key], want_state[key]), key
        assert (type(dict(again.named_buffers()).get(key)) is
                type(dict(module.named_buffers()).get(key))), key  # Parameter or buffer
    got, grads = outputs_and_grads(again, x)
    for o, w in zip(got, want):
        assert torch.equal(o, w)
    assert list(grads) == list(want_grads)
    for name in grads:
        assert torch.equal(grads[name], want_grads[name]), name


def test_the_graph_holds_copies(nir):
    layer = MODELS["zero"](torch.float64)
    graph = torch_ext.to_nir(layer)
    with torch.no_grad():
        layer.w_in.zero_()
    assert np.abs(graph.nodes["w_in"].weight).max() > 0
    again = torch_ext.from_nir(graph)
    graph.nodes["w_in"].weight[:] = 0
    assert again.w_in.abs().max() > 0


# ---------------------------------------------------------------- NIR semantics

def _assert_same_spikes(nir, graph, module, x, dt=DT):
    """The module's spikes are those of the graph's NIR semantics (run in
    float64); where the output is a membrane (a readout) it agrees to rounding."""
    want, membranes = run_nir(nir, graph, x.double(), dt)
    got = module(x)
    got = got[0] if isinstance(got, tuple) else got
    for name, v in membranes.items():  # no membrane within rounding of its threshold
        node = graph.nodes[name]
        if isinstance(node, (nir.LIF, nir.IF, nir.CubaLIF)):
            threshold = np.asarray(node.v_threshold)
        elif isinstance(graph.nodes[name], (nir.LI, nir.I)) and any(
                isinstance(graph.nodes[b], nir.Threshold) for a, b in graph.edges if a == name):
            (threshold,) = [np.asarray(graph.nodes[b].threshold) for a, b in graph.edges
                            if a == name]
        else:
            continue
        assert (v - torch.as_tensor(threshold)).abs().min() > 1e-6, name
    if torch.is_floating_point(got) and not ((got == 0) | (got == 1)).all():
        torch.testing.assert_close(got.double(), want, rtol=1e-9, atol=1e-9)
    else:
        assert torch.equal(got.double(), want)
        assert 0.05 < want.mean() < 0.95
    return want


SEMANTICS = [m for m in MODELS if m != "sequential_with_readouts"]


@pytest.mark.parametrize("model", SEMANTICS)
def test_the_exported_graph_spikes_like_the_layer(nir, model):
    assert_graph_runs_like_the_module(nir, MODELS[model](torch.float64))


def assert_graph_runs_like_the_module(nir, module):
    """The exported graph, run by the NIR executor, spikes like the module,
    and a one-layer module's membrane is the graph's: U = v (the gain is 1)."""
    module = module.eval()  # dropout is training-only, not in NIR
    graph = torch_ext.to_nir(module)
    x = inputs(torch.float64)
    _assert_same_spikes(nir, graph, module, x)
    if hasattr(module, "return_membrane") and module.num_layers == 1:
        module.return_membrane = True
        _, membrane, _ = module(x)
        (cell,) = [k for k, v in graph.nodes.items()
                   if isinstance(v, (nir.LIF, nir.IF, nir.LI, nir.I, nir.CubaLIF))]
        _, membranes = run_nir(nir, graph, x)
        torch.testing.assert_close(membranes[cell], membrane, rtol=0, atol=1e-9)


def test_a_sequential_with_readouts_exports_its_chain(nir):
    module = MODELS["sequential_with_readouts"](torch.float64)
    graph = torch_ext.to_nir(module)
    assert graph.edges[0] == ("input", "0.w_in") and graph.edges[-1] == ("3.linear", "output")
    assert isinstance(graph.nodes["2.l1.w_rec"], nir.Linear)  # one-to-one: a diagonal Linear
    w = graph.nodes["2.l1.w_rec"].weight
    assert np.array_equal(w, np.diag(np.diag(w)))
    x = inputs(torch.float64)
    torch.testing.assert_close(module(x), run_nir(nir, graph, x)[0], rtol=0, atol=1e-9)


def test_node_layout_and_metadata(nir):
    layer = RecurrentLIF(F, N, alpha=0.75, theta=1.25, reset="subtract", dtype=torch.float32)
    graph = torch_ext.to_nir(layer, dt=1e-3)
    assert list(graph.nodes) == ["input", "w_in", "li", "threshold", "w_rec", "output"]
    assert sorted(graph.edges) == sorted([("input", "w_in"), ("w_in", "li"), ("li", "threshold"),
                                          ("threshold", "w_rec"), ("w_rec", "li"),
                                          ("threshold", "output")])
    li = graph.nodes["li"]
    np.testing.assert_allclose(li.tau, np.full(N, 1e-3 / 0.25))
    np.testing.assert_allclose(li.r * 1e-3 / li.tau, 1.0)
    assert np.array_equal(graph.nodes["threshold"].threshold, np.full(N, 1.25))
    assert graph.nodes["w_in"].weight.dtype == np.float32
    rec = graph.nodes["w_rec"].weight
    assert np.array_equal(rec, (layer.w_rec - 1.25 * torch.eye(N)).detach().numpy())
    meta = li.metadata["torch_ext"]
    assert meta["alpha"] == np.float32(0.75) and meta["theta"] == np.float32(1.25)
    assert (meta["reset"], meta["surrogate"]) == ("subtract", "sigmoid")
    assert not meta["detach_reset"]
    zero = torch_ext.to_nir(RecurrentLIF(F, N, reset="zero"))
    assert list(zero.nodes) == ["input", "w_in", "lif", "w_rec", "output"]
    assert isinstance(zero.nodes["w_in"], nir.Affine)
    assert np.array_equal(zero.nodes["lif"].v_reset, np.zeros(N))


# ---------------------------------------------------------------- other tools' graphs

def _chain(nir, *named, more_edges=(), extra=None, n_in=F, n_out=N):
    """A graph input -> the named nodes in order -> output, plus the nodes
    of extra (recurrent weights, say) and more_edges (cycles, branches)."""
    nodes = {"input": nir.Input(input_type=np.array([n_in])), **dict(named), **(extra or {}),
             "output": nir.Output(output_type=np.array([n_out]))}
    names = ["input"] + [k for k, _ in named] + ["output"]
    return nir.NIRGraph(nodes=nodes, edges=list(zip(names, names[1:])) + list(more_edges),
                        type_check=False)


def _weights(seed, *shape, scale=1.0):
    return np.random.default_rng(seed).normal(size=shape) * scale


def test_a_foreign_lif_graph_with_gain_leak_and_recurrent_bias(nir):
    """v_leak, r != tau / dt, per-neuron tau and a recurrent Affine with a
    bias: the spikes of the graph's semantics, the bias folded."""
    tau = np.linspace(2e-4, 1e-3, N)
    lif = nir.LIF(tau=tau, r=np.full(N, 3.0), v_leak=np.linspace(-0.2, 0.3, N),
                  v_threshold=np.full(N, 1.5), v_reset=np.zeros(N))
    rec = nir.Affine(_weights(1, N, N, scale=0.3), _weights(2, N, scale=0.1))
    graph = _chain(nir, ("fc", nir.Affine(_weights(0, N, F, scale=0.5), np.zeros(N))),
                   ("lif", lif), more_edges=[("lif", "rec"), ("rec", "lif")], extra={"rec": rec})
    layer = torch_ext.from_nir(graph)
    assert isinstance(layer, RecurrentLIF) and layer.reset == "zero"
    assert layer.w_in.dtype == torch.float64 and layer.alpha.shape == (N,)
    gain = 3.0 * DT / tau
    np.testing.assert_allclose(layer.alpha.numpy(), 1 - DT / tau)
    np.testing.assert_allclose(layer.theta.numpy(), 1.5 / gain)
    np.testing.assert_allclose(layer.bias.detach().numpy(), rec.bias + lif.v_leak / 3.0)
    _assert_same_spikes(nir, graph, layer, inputs(torch.float64))


def test_foreign_if_cubalif_li_threshold_and_readouts(nir):
    """IF, a CubaLIF with an instantaneous synapse (tau_syn = dt), LI +
    Threshold with a diagonal cycle (one-to-one), and an LI readout whose
    membrane is the output."""
    n2 = 5
    graph = _chain(
        nir,
        ("fc0", nir.Linear(_weights(0, N, F, scale=0.6))),
        ("if", nir.IF(r=np.full(N, 1 / DT * 0.8), v_threshold=np.full(N, 1.0))),
        ("fc1", nir.Affine(_weights(1, n2, N, scale=0.8), _weights(2, n2, scale=0.3))),
        ("cuba", nir.CubaLIF(tau_syn=np.full(n2, DT), tau_mem=np.full(n2, 5e-4),
                             r=np.full(n2, 4.0), v_leak=np.full(n2, 0.1),
                             v_threshold=np.full(n2, 0.6), w_in=np.full(n2, 1.5))),
        ("fc2", nir.Linear(_weights(3, N, n2, scale=0.9))),
        ("li", nir.LI(tau=np.full(N, 4e-4), r=np.full(N, 4.0), v_leak=np.zeros(N))),
        ("thr", nir.Threshold(np.full(N, 0.4))),
        ("fc3", nir.Affine(_weights(4, 2, N), np.array([0.1, -0.1]))),
        ("out", nir.LI(tau=np.full(2, 3e-4), r=np.full(2, 2.0), v_leak=np.array([0.5, -0.5]))),
        more_edges=[("thr", "self"), ("self", "li")], n_out=2,
        extra={"self": nir.Linear(np.diag(np.linspace(-0.5, 0.5, N)))})
    net = torch_ext.from_nir(graph)
    assert [type(m).__name__ for m in net] == ["RecurrentLIF", "RecurrentLIF", "RecurrentLIF",
                                               "Linear", "LeakyIntegrator"]
    assert net[0].alpha.item() == 1 and net[0].bias is None and net[0].recurrent == "none"
    assert net[2].recurrent == "one_to_one" and net[2].reset == "none"
    x = inputs(torch.float64)
    _assert_same_spikes(nir, graph, net, x)
    spikes = net[2](net[1](net[0](x)[0])[0])[0]  # the last hidden layer against its nodes
    want = run_nir(nir, graph, x)[1]["li"] > 0.4
    assert torch.equal(spikes, want.double())
    again = torch_ext.from_nir(torch_ext.to_nir(net))  # now with this package's metadata
    assert [type(m) for m in again] == [type(m) for m in net]
    assert torch.equal(again(x), net(x))


def test_tau_equal_to_dt_in_float32_imports(nir):
    """snnTorch 1.0 writes Leaky(beta=0) as a LIF with tau = dt and its
    Synaptic(alpha=0) as a CubaLIF with tau_syn = dt, both in float32, so a
    little off dt: that is still tau = dt (alpha = 0, an instantaneous synapse)."""
    f32 = lambda value: np.full(N, value, dtype=np.float32)  # noqa: E731
    assert float(f32(DT)[0]) != DT
    fc = nir.Affine(_weights(0, N, F), _weights(1, N, scale=0.2))
    lif = nir.LIF(tau=f32(DT), r=f32(1.0), v_leak=f32(0), v_threshold=f32(1), v_reset=f32(0))
    cuba = nir.CubaLIF(tau_syn=f32(DT), tau_mem=f32(5e-4), r=f32(5.0), v_leak=f32(0),
                       v_threshold=f32(1), v_reset=f32(0), w_in=f32(1))
    x = inputs(torch.float64)
    for cell in (lif, cuba):
        graph = _chain(nir, ("fc", fc), ("cell", cell))
        layer = torch_ext.from_nir(graph)
        # tau_syn a little below dt: alpha_syn = 0 (clamped, as alpha), and
        # with alpha_syn = 0 the CUBA equations are the LIF's.
        assert type(layer) is RecurrentLIF
        if cell is lif:
            assert layer.alpha.item() == 0
        _assert_same_spikes(nir, graph, layer, x)


def test_a_nested_subgraph_is_inlined(nir):
    """The layout some exporters write: the recurrent layer as a subgraph."""
    lif = nir.LIF(tau=np.full(N, 5e-4), r=np.full(N, 5.0), v_leak=np.zeros(N),
                  v_threshold=np.ones(N))
    sub = nir.NIRGraph(nodes={"input": nir.Input(np.array([N])), "lif": lif,
                              "w_rec": nir.Linear(_weights(1, N, N, scale=0.3)),
                              "output": nir.Output(np.array([N]))},
                       edges=[("input", "lif"), ("lif", "w_rec"), ("w_rec", "lif"),
                              ("lif", "output")])
    graph = nir.NIRGraph(nodes={"input": nir.Input(np.array([F])),
                                "fc": nir.Affine(_weights(0, N, F), _weights(2, N, scale=0.2)),
                                "rnn": sub, "output": nir.Output(np.array([N]))},
                         edges=[("input", "fc"), ("fc", "rnn"), ("rnn", "output")])
    layer = torch_ext.from_nir(graph)
    assert layer.recurrent == "all_to_all"
    flat = _chain(nir, ("fc", graph.nodes["fc"]), ("lif", lif),
                  more_edges=[("lif", "w_rec"), ("w_rec", "lif")],
                  extra={"w_rec": sub.nodes["w_rec"]})
    _assert_same_spikes(nir, flat, layer, inputs(torch.float64))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # nirtorch's, in snnTorch's exporter
@pytest.mark.parametrize("all_to_all", [True, False], ids=["all_to_all", "one_to_one_V"])
def test_snntorch_rleaky_export_imports_with_its_nir_semantics(nir, all_to_all):
    """snnTorch 1.0's own export_to_nir of nn.Linear + RLeaky (a flat graph:
    Affine -> LIF with the cycle LIF -> Affine(recurrent weight, bias) -> LIF,
    r = tau / dt): from_nir's layer spikes as that graph's NIR semantics say
    (NIR's LIF resets to zero, whatever RLeaky's own reset was)."""
    snntorch = pytest.importorskip("snntorch")
    pytest.importorskip("nirtorch")  # snnTorch's exporter traces the model with it
    from snntorch.export_nir import export_to_nir

    torch.manual_seed(3)
    kwargs = dict(linear_features=N) if all_to_all else dict(
        all_to_all=False, V=torch.linspace(-0.5, 0.5, N))
    rleaky = snntorch.RLeaky(beta=0.8, threshold=0.9, init_hidden=True, output=True, **kwargs)
    net = nn.Sequential(nn.Linear(F, N), rleaky)
    graph = export_to_nir(net, torch.randn(1, F), ignore_dims=[0])
    layer = torch_ext.from_nir(graph)
    assert isinstance(layer, RecurrentLIF) and layer.reset == "zero"
    assert layer.recurrent == ("all_to_all" if all_to_all else "one_to_one")
    assert layer.w_in.dtype == torch.float32
    assert abs(layer.alpha.item() - 0.8) < 1e-6 and abs(layer.theta.item() - 0.9) < 1e-6
    bias = net[0].bias + (rleaky.recurrent.bias if all_to_all else 0)
    torch.testing.assert_close(layer.bias, bias.detach(), rtol=0, atol=1e-7)
    x = inputs(torch.float32, seed=4)
    # float32 layer against float64 NIR semantics: no membrane within 1e-6 of
    # its threshold (checked), so no spike can flip.
    _assert_same_spikes(nir, graph, layer, x)


# ---------------------------------------------------------------- refusals

def _lif(nir, **changes):
    fields = dict(tau=np.full(N, 5e-4), r=np.full(N, 5.0), v_leak=np.zeros(N),
                  v_threshold=np.ones(N), v_reset=np.zeros(N))
    fields.update(changes)
    return nir.LIF(**fields)


def _refused(nir):
    fc = lambda: nir.Affine(_weights(0, N, F), np.zeros(N))  # noqa: E731
    branch = _chain(nir, ("fc", fc()), ("lif", _lif(nir)), more_edges=[("lif", "other")],
                    extra={"other": nir.Linear(np.eye(N))})
    identity = nir.NIRGraph(nodes={"input": nir.Input(np.array([N])),
                                   "output": nir.Output(np.array([N]))},
                            edges=[("input", "output")], type_check=False)
    nan = np.full(N, np.nan)
    return {
        "v_reset": (_chain(nir, ("fc", fc()), ("lif", _lif(nir, v_reset=np.full(N, 0.2)))),
                    "node 'lif' (LIF): v_reset = 0.2 for all 6: the layers reset to 0"),
        "delay": (_chain(nir, ("fc", fc()), ("d", nir.Delay(np.full(N, 1e-3)))),
                  "node 'd' (Delay): a delay line"),
        "conv": (_chain(nir, ("conv", nir.Conv1d(None, np.ones((2, 1, 3)), 1, 0, 1, 1,
                                                  np.zeros(2)))),
                 "node 'conv' (Conv1d): a convolution"),
        "alpha_1_via_lif": (_chain(nir, ("fc", fc()),
                                   ("lif", _lif(nir, tau=np.full(N, np.inf),
                                                r=np.full(N, np.inf)))),
                            "node 'lif' (LIF): tau must be positive and finite; a neuron without "
                            "leak (alpha = 1) is an IF node"),
        "tau_below_dt": (_chain(nir, ("fc", fc()), ("lif", _lif(nir, tau=np.full(N, 5e-5)))),
                         "node 'lif' (LIF): tau < dt"),
        "negative_gain": (_chain(nir, ("fc", fc()), ("lif", _lif(nir, r=np.full(N, -1.0)))),
                          "node 'lif' (LIF): the input gain"),
        "no_weights": (_chain(nir, ("lif", _lif(nir)), n_in=N), "node 'lif' (LIF): a spiking layer "
                                                              "starts with an Affine or Linear"),
        "branch": (branch, "node 'lif' (LIF): expected exactly one successor"),
        "threshold_after_lif": (_chain(nir, ("fc", fc()), ("lif", _lif(nir)),
                                       ("t", nir.Threshold(np.ones(N)))),
                                "node 't' (Threshold): not supported here"),
        "more_inputs_to_output": (_chain(nir, ("fc", fc()), ("lif", _lif(nir)),
                                         more_edges=[("z", "output")],
                                         extra={"z": nir.Affine(np.eye(N), np.ones(N))}),
                                  "node 'output' (Output): expected exactly one predecessor"),
        "node_off_the_chain": (_chain(nir, ("fc", fc()), ("lif", _lif(nir)),
                                      more_edges=[("a", "b"), ("b", "a")],
                                      extra={"a": nir.Linear(np.eye(N)), "b": _lif(nir)}),
                               "node 'a' (Linear): not on the chain from the Input"),
        "edge_to_missing_node": (_chain(nir, ("fc", fc()), ("lif", _lif(nir)),
                                        more_edges=[("lif", "ghost")]),
                                 "the edge ('lif', 'ghost') names a node 'ghost' the graph does "
                                 "not have"),
        "identity_subgraph": (_chain(nir, ("fc", fc()), ("sub", identity), ("lif", _lif(nir))),
                              "subgraph 'sub': its Input feeds its Output directly"),
        "nan_weight": (_chain(nir, ("fc", nir.Linear(np.full((N, F), np.nan))), ("lif", _lif(nir))),
                       "node 'fc' (Linear): its weight has non-finite values"),
        "inf_bias": (_chain(nir, ("fc", nir.Affine(_weights(0, N, F), np.full(N, np.inf))),
                            ("lif", _lif(nir))),
                     "node 'fc' (Affine): its bias has non-finite values"),
        "nan_recurrent_weight": (_chain(nir, ("fc", fc()), ("lif", _lif(nir)),
                                        more_edges=[("lif", "rec"), ("rec", "lif")],
                                        extra={"rec": nir.Linear(np.full((N, N), np.nan))}),
                                 "node 'rec' (Linear): its weight has non-finite values"),
        "nan_v_leak": (_chain(nir, ("fc", fc()), ("lif", _lif(nir, v_leak=nan))),
                       "node 'lif' (LIF): v_leak must be finite"),
        "nan_readout_v_leak": (_chain(nir, ("fc", fc()),
                                      ("li", nir.LI(np.full(N, 5e-4), np.ones(N), nan))),
                               "node 'li' (LI): v_leak must be finite"),
    }


REFUSED = ["v_reset", "delay", "conv", "alpha_1_via_lif", "tau_below_dt",
           "negative_gain", "no_weights", "branch", "threshold_after_lif",
           "more_inputs_to_output", "node_off_the_chain", "edge_to_missing_node",
           "identity_subgraph", "nan_weight", "inf_bias", "nan_recurrent_weight", "nan_v_leak",
           "nan_readout_v_leak"]


@pytest.mark.parametrize("case", REFUSED)
def test_what_has_no_exact_equivalent_is_refused_naming_the_node(nir, case):
    cases = _refused(nir)
    assert sorted(cases) == sorted(REFUSED)
    graph, message = cases[case]
    with pytest.raises(ValueError, match=re.escape(message)):
        torch_ext.from_nir(graph)


def test_metadata_read_with_another_dt_is_refused(nir):
    graph = torch_ext.to_nir(RecurrentLIF(F, N, reset="zero"), dt=1e-4)
    with pytest.raises(ValueError, match=r"node 'lif' \(LIF\): its metadata torch_ext.alpha "
                                         r"disagrees .* dt = 5e-05 \(written with dt = 0.0001"):
        torch_ext.from_nir(graph, dt=5e-5)
    graph.nodes["lif"].v_threshold = graph.nodes["lif"].v_threshold * 2  # edited after export
    with pytest.raises(ValueError, match="torch_ext.theta disagrees"):
        torch_ext.from_nir(graph)


def test_incomplete_metadata_is_refused_naming_the_node(nir):
    graph = torch_ext.to_nir(RecurrentLIF(F, N, recurrent="one_to_one", reset="zero"))
    del graph.nodes["lif"].metadata["torch_ext"]["w_rec"]
    with pytest.raises(ValueError, match=r"node 'lif' \(LIF\): its metadata torch_ext is "
                                         r"incomplete: it has no 'w_rec'"):
        torch_ext.from_nir(graph)


@pytest.mark.parametrize("recurrent, reset, what", [
    ("one_to_one", "zero", "w_rec"), ("all_to_all", "subtract", "w_rec_diagonal"),
    ("none", "subtract", "theta")])
def test_metadata_disagreeing_with_an_edited_recurrent_weight_is_refused(nir, recurrent, reset,
                                                                        what):
    """The exact w_rec (or its diagonal) comes from the metadata: the graph's
    recurrent Linear must still say the same."""
    graph = torch_ext.to_nir(RecurrentLIF(F, N, recurrent=recurrent, reset=reset))
    torch_ext.from_nir(graph)  # as exported: accepted
    cell = "lif" if reset == "zero" else "li"
    message = (rf"node '{cell}' \({cell.upper()}\): its metadata torch_ext.{what} disagrees with "
               r"the weight of its recurrent node 'w_rec' .*edited after export")
    weight = graph.nodes["w_rec"].weight
    edits = [weight * 3]
    if recurrent == "one_to_one":  # off the diagonal, where the metadata has nothing
        edits.append(weight + 0.5 * (1 - np.eye(N, dtype=weight.dtype)))
    for edited in edits:
        graph.nodes["w_rec"].weight = edited
        with pytest.raises(ValueError, match=message):
            torch_ext.from_nir(graph)


def test_readout_metadata_is_checked_and_any_readout_gain_imports(nir):
    """A LeakyIntegrator's metadata must agree with its LI node (edits, another
    dt); an LI readout with tau < dt or r <= 0 is a LeakyIntegrator exactly
    (only spiking layers need 0 <= alpha and a positive gain)."""
    d = torch.float64
    readout = LeakyIntegrator(torch.full((N,), 0.9, dtype=d), torch.full((N,), 2.0, dtype=d),
                              torch.zeros(N, dtype=d))
    graph = torch_ext.to_nir(SpikingSequential(nn.Linear(F, N, dtype=d), readout))
    with pytest.raises(ValueError, match=r"node '1.li' \(LI\): its metadata torch_ext.alpha "
                                         r"disagrees .* dt = 0.001 \(written with dt = 0.0001"):
        torch_ext.from_nir(graph, dt=1e-3)
    graph.nodes["1.li"].r = graph.nodes["1.li"].r * 3
    with pytest.raises(ValueError, match="torch_ext.gain disagrees .* or edited after export"):
        torch_ext.from_nir(graph)
    x = inputs(d)
    for tau, r in ((5e-5, 2.0), (5e-4, -2.0), (5e-4, 0.0)):
        li = nir.LI(tau=np.full(N, tau), r=np.full(N, r), v_leak=np.linspace(-0.5, 0.5, N))
        foreign = _chain(nir, ("fc", nir.Linear(_weights(0, N, F))), ("li", li))
        net = torch_ext.from_nir(foreign)
        torch.testing.assert_close(net(x), run_nir(nir, foreign, x)[0], rtol=1e-9, atol=1e-9)
        assert torch.equal(torch_ext.from_nir(torch_ext.to_nir(net))(x), net(x))


def test_a_readout_with_0_dim_values_takes_the_size_before_it(nir):
    d = torch.float64
    readout = LeakyIntegrator(torch.tensor(0.9, dtype=d), torch.tensor(2.0, dtype=d),
                              torch.tensor(0.1, dtype=d))
    assert repr(readout) == "LeakyIntegrator()"
    net = SpikingSequential(nn.Linear(F, N, dtype=d), readout)
    graph = torch_ext.to_nir(net)
    assert graph.nodes["1.li"].tau.shape == (N,)
    again = torch_ext.from_nir(graph)
    assert again[1].alpha.shape == () and torch.equal(again(inputs(d)), net(inputs(d)))
    with pytest.raises(ValueError, match="LeakyIntegrator: its alpha, gain and leak are 0-dim"):
        torch_ext.to_nir(readout)


def test_a_stack_layer_whose_bias_was_removed_imports_on_its_own(nir):
    stack = RecurrentLIF(F, N, num_layers=2, reset="zero", theta=0.4, dtype=torch.float64)
    graph = torch_ext.to_nir(stack)
    graph.nodes["l1.w_in"] = nir.Linear(graph.nodes["l1.w_in"].weight)  # bias dropped
    net = torch_ext.from_nir(graph)
    assert [m.num_layers for m in net] == [1, 1] and net[1].bias is None
    _assert_same_spikes(nir, graph, net, inputs(torch.float64))


def test_export_refusals(nir):
    mixed = RecurrentLIF(F, N, alpha=torch.tensor([1.0] + [0.9] * (N - 1)))
    with pytest.raises(ValueError, match="RecurrentLIF, layer 0: alpha is 1 for some neurons"):
        torch_ext.to_nir(mixed)
    with pytest.raises(TypeError, match=r"module 1 \(ReLU\) cannot be exported"):
        torch_ext.to_nir(nn.Sequential(RecurrentLIF(F, N), nn.ReLU()))
    with pytest.raises(TypeError, match="RecurrentAdLIF cannot be exported"):
        torch_ext.to_nir(torch_ext.RecurrentAdLIF(F, N))
    with pytest.raises(ValueError, match=r"module 1 \(Linear\) takes 5 features but the module "
                                         r"before it gives 6"):
        torch_ext.to_nir(nn.Sequential(RecurrentLIF(F, N), nn.Linear(5, 2)))
    with pytest.raises(ValueError, match="empty"):
        torch_ext.to_nir(nn.Sequential())
    for dt in (0, -1e-4, float("nan"), True, "1e-4"):
        with pytest.raises(ValueError, match="argument 'dt' must be a positive, finite number"):
            torch_ext.to_nir(RecurrentLIF(F, N), dt=dt)
    with pytest.raises(TypeError, match="'graph_or_path' must be a nir.NIRGraph or the path"):
        torch_ext.from_nir(RecurrentLIF(F, N))


# ---------------------------------------------------------------- files

def test_a_file_that_is_not_a_nir_graph_is_refused_naming_it(nir, tmp_path):
    """An HDF5 file without NIR's 'node' group (h5py's KeyError leaked
    before), a file that is not HDF5 (random bytes, text), a directory and a
    missing file: errors that name the path."""
    h5py = pytest.importorskip("h5py")
    other = tmp_path / "o.h5"
    with h5py.File(other, "w") as f:
        f["x"] = np.arange(3)
    with pytest.raises(ValueError, match=re.escape(f"'{other}' is an HDF5 file but not a NIR "
                                                   "graph")):
        torch_ext.from_nir(other)
    noise = tmp_path / "noise.nir"
    noise.write_bytes(np.random.default_rng(0).bytes(4096))
    text = tmp_path / "model.txt"
    text.write_text("not a graph\n")
    for path in (noise, text):
        with pytest.raises(ValueError, match=re.escape(f"'{path}' is not an HDF5 file, so not a "
                                                       "NIR file")):
            torch_ext.from_nir(str(path))
    with pytest.raises(ValueError, match=re.escape(f"'{tmp_path}' is not a file")):
        torch_ext.from_nir(tmp_path)
    missing = tmp_path / "missing.nir"
    with pytest.raises(FileNotFoundError, match=re.escape(f"'{missing}': no such file")):
        torch_ext.from_nir(missing)


def _retype(h5py, path, node, kind):
    with h5py.File(path, "r+") as f:
        del f[node + "/type"]
        f[node + "/type"] = kind


def test_an_unknown_node_type_in_a_file_is_named(nir, tmp_path):
    """nir.read fails on an unknown node type with a bare AssertionError; the
    file's node types are checked first (nested subgraphs too), naming the
    node and its type."""
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "a.nir"
    nir.write(path, torch_ext.to_nir(RecurrentLIF(3, 4, reset="zero")))
    _retype(h5py, path, "node/nodes/lif", "Bogus")
    with pytest.raises(ValueError, match=re.escape(f"'{path}': node 'lif' has type 'Bogus', "
                                                   "which the installed nir package")):
        torch_ext.from_nir(path)
    lif = nir.LIF(tau=np.full(N, 5e-4), r=np.full(N, 5.0), v_leak=np.zeros(N),
                  v_threshold=np.ones(N), v_reset=np.zeros(N))
    sub = nir.NIRGraph(nodes={"input": nir.Input(np.array([N])), "lif": lif,
                              "output": nir.Output(np.array([N]))},
                       edges=[("input", "lif"), ("lif", "output")])
    graph = nir.NIRGraph(nodes={"input": nir.Input(np.array([F])),
                                "fc": nir.Linear(_weights(0, N, F)), "rnn": sub,
                                "output": nir.Output(np.array([N]))},
                         edges=[("input", "fc"), ("fc", "rnn"), ("rnn", "output")])
    nested = tmp_path / "nested.nir"
    nir.write(nested, graph)
    assert isinstance(torch_ext.from_nir(nested), RecurrentLIF)
    _retype(h5py, nested, "node/nodes/rnn/nodes/lif", "Bogus")
    with pytest.raises(ValueError, match=re.escape("node 'rnn.lif' has type 'Bogus'")):
        torch_ext.from_nir(nested)


def test_what_else_nir_read_raises_names_the_file(nir, tmp_path):
    """A known node type with a field missing: nir.read's own error, wrapped
    in a ValueError naming the file, the original as __cause__."""
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "a.nir"
    nir.write(path, torch_ext.to_nir(RecurrentLIF(3, 4, reset="zero")))
    with h5py.File(path, "r+") as f:
        del f["node/nodes/lif/tau"]
    with pytest.raises(ValueError, match=re.escape(f"'{path}': nir.read failed: ")) as info:
        torch_ext.from_nir(path)
    cause = info.value.__cause__  # nir 1.0.8: TypeError, LIF.__init__() missing 'tau'
    assert cause is not None and f"failed: {type(cause).__name__}: {cause}" in str(info.value)


# ---------------------------------------------------------------- other importers

@pytest.mark.parametrize("reset", ["subtract", "none"])
def test_the_encoding_other_importers_refuse_warns(nir, reset):
    """RecurrentLIF with reset="subtract"/"none" is LI -> Threshold, which
    snnTorch, Norse and SpikingJelly do not import: one UserWarning per call,
    naming the reset and reset="zero" as the alternative."""
    with pytest.warns(UserWarning) as record:
        torch_ext.to_nir(RecurrentLIF(F, N, reset=reset))
    (warning,) = record
    message = str(warning.message)
    assert f"RecurrentLIF has reset='{reset}'" in message
    assert ('reset="zero" exports as a NIR LIF node, which snnTorch, Norse and SpikingJelly '
            "read") in message
    assert warning.filename == __file__  # the caller's line, not torch_ext's
    with pytest.warns(UserWarning) as record:  # two such modules: still one warning
        torch_ext.to_nir(nn.Sequential(RecurrentLIF(F, N, reset=reset), nn.Linear(N, N),
                                       RecurrentLIF(N, N, reset="subtract", num_layers=2)))
    (warning,) = record
    assert (f"module 0 (RecurrentLIF) has reset='{reset}'; module 2 (RecurrentLIF) has "
            "reset='subtract'") in str(warning.message)


def test_the_encodings_other_importers_read_do_not_warn(nir):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch_ext.to_nir(RecurrentLIF(F, N, reset="zero"))
        torch_ext.to_nir(RecurrentLIF(F, N, reset="zero", alpha=1.0))  # IF
        torch_ext.to_nir(nn.Sequential(RecurrentCubaLIF(F, N, reset="zero"), nn.Linear(N, 2)))


# ---------------------------------------------------------------- without nir

def test_without_nir_the_functions_say_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "nir", None)  # `import nir` now raises ImportError
    for call in (lambda: torch_ext.to_nir(RecurrentLIF(F, N)), lambda: torch_ext.from_nir("x.nir")):
        with pytest.raises(ImportError, match=r"needs the 'nir' package.*pip install nir"):
            call()


def test_the_nir_module_loads_without_nir(monkeypatch):
    """torch_ext imports torch_ext._nir; loaded afresh with nir unimportable it
    must load (nir is imported inside the functions) and its functions say
    what to install."""
    monkeypatch.setitem(sys.modules, "nir", None)
    spec = importlib.util.spec_from_file_location("torch_ext._nir_without_nir",
                                                  ROOT / "torch_ext" / "_nir.py")
    fresh = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fresh)
    with pytest.raises(ImportError, match="pip install nir"):
        fresh.to_nir(RecurrentLIF(F, N))


# ---------------------------------------------------------------- docs

@pytest.mark.parametrize("function", [torch_ext.to_nir, torch_ext.from_nir])
def test_docstrings_document_every_argument(function):
    import inspect
    doc = inspect.getdoc(function)
    for name, parameter in inspect.signature(function).parameters.items():
        entry = re.search(rf"\n    {name} \((.*?)(?=\n    \S|\n\n|$)", doc, re.S)
        assert entry, name
        assert parameter.default is inspect._empty or "Default" in entry.group(1), name
    for section in ("Args:", "Returns:", "Raises:", "Example::"):
        assert section in doc


def test_readme_example_runs(nir, tmp_path, monkeypatch):
    section = (ROOT / "README.md").read_text().split("\n## NIR\n", 1)[1].split("\n## ", 1)[0]
    (code,) = re.findall(r"```python\n(.*?)```", section, re.S)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md (NIR)", "exec"), {})
