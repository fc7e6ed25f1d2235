"""RecurrentCubaLIF and NIR's CubaLIF, both ways: to_nir writes Affine ->
CubaLIF with the cycle CubaLIF -> Linear(w_rec) -> CubaLIF and an input gain
g = (dt/tau_mem) * r * (dt/tau_syn) * w_in = 1; the graph, run by
tests/test_nir.py's executor (forward Euler, the new current first), spikes
like the module; from_nir(to_nir(m)) is bitwise m (spikes and gradients,
float32 and float64, in memory and through files); foreign CubaLIF graphs
(no metadata, any gain, recurrent Affine biases) import with the spikes of
their NIR semantics; what has no exact equivalent is refused in one line,
naming the node (or, on export, the layer)."""

import numpy as np
import pytest
import torch
from torch import nn

import torch_ext
from torch_ext import RecurrentCubaLIF, RecurrentLIF
from torch_ext._nir import SpikingSequential

from test_nir import (DT, UNREADABLE_WARNING, B, F, N, T, _assert_same_spikes, _chain, _weights,
                      _seeded, _stack_of_mixed_shapes as lif_stack_of_mixed_shapes,
                      assert_graph_runs_like_the_module, assert_round_trip_is_bitwise, inputs,
                      run_nir)

pytestmark = pytest.mark.filterwarnings(UNREADABLE_WARNING)


@pytest.fixture
def nir():
    return pytest.importorskip("nir")


# ---------------------------------------------------------------- models

def _shared_one_to_one(dtype):
    layer = RecurrentCubaLIF(F, N, reset="zero", recurrent="one_to_one", dtype=dtype)
    layer.w_rec = nn.Parameter(torch.tensor(-0.4, dtype=dtype))  # one weight for all, 0-dim
    return layer


def _decays_below_zero(dtype):
    """Trained decays an optimiser step left below 0 (the forward clamps
    them to 0: tau = dt); the metadata keeps the stored values."""
    layer = RecurrentCubaLIF(F, N, reset="zero", learn_alpha=True, learn_alpha_syn=True,
                             theta=0.3, dtype=dtype)
    with torch.no_grad():
        layer.alpha.fill_(-0.05)
        layer.alpha_syn.fill_(-0.02)
    return layer


def _stack_of_mixed_shapes(dtype):
    return lif_stack_of_mixed_shapes(dtype, RecurrentCubaLIF, "alpha_syn", reset="zero",
                                     alpha_syn=0.5)


MODELS = {
    "zero": lambda d: RecurrentCubaLIF(F, N, reset="zero", dtype=d),
    "per_neuron_learnable_atan": lambda d: RecurrentCubaLIF(
        F, N, reset="zero", alpha=torch.linspace(0.5, 0.95, N),
        alpha_syn=torch.linspace(0.2, 0.9, N), theta=torch.linspace(1.5, 3.0, N),
        learn_alpha=True, learn_alpha_syn=True, learn_theta=True, surrogate="atan", slope=3.0,
        detach_reset=True, dtype=d),
    "per_neuron_flag": lambda d: RecurrentCubaLIF(
        F, N, reset="zero", alpha=0.8, alpha_syn=0.6, per_neuron=True, learn_alpha_syn=True,
        dtype=d),
    "one_to_one": lambda d: RecurrentCubaLIF(F, N, reset="zero", recurrent="one_to_one",
                                             learn_theta=True, surrogate="fast_sigmoid", dtype=d),
    "one_to_one_shared_weight": _shared_one_to_one,
    "no_recurrence_no_bias": lambda d: RecurrentCubaLIF(F, N, reset="zero", bias=False,
                                                        recurrent="none", theta=2.0, dtype=d),
    "instantaneous_synapse": lambda d: RecurrentCubaLIF(F, N, reset="zero", alpha_syn=0.0,
                                                        learn_alpha=True, dtype=d),
    "decays_below_zero": _decays_below_zero,
    "stack": lambda d: RecurrentCubaLIF(F, N, reset="zero", num_layers=2, dropout=0.2,
                                        learn_alpha_syn=True, alpha_syn=torch.linspace(0.3, 0.8, N),
                                        theta=0.3, dtype=d),
    "stack_one_to_one": lambda d: RecurrentCubaLIF(F, N, reset="zero", num_layers=2,
                                                   recurrent="one_to_one", dtype=d),
    "stack_of_mixed_shapes": _stack_of_mixed_shapes,
    "sequential_with_readout": lambda d: SpikingSequential(
        RecurrentCubaLIF(F, N, reset="zero", dtype=d), nn.Linear(N, 5, dtype=d),
        RecurrentLIF(5, N, reset="zero", recurrent="one_to_one", dtype=d),
        RecurrentCubaLIF(N, 7, reset="zero", recurrent="none", theta=0.5, dtype=d)),
}
MODELS = {name: _seeded(build) for name, build in MODELS.items()}


# ---------------------------------------------------------------- round trip

@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("model", MODELS)
def test_round_trip_is_bitwise(nir, model, dtype, tmp_path):
    assert_round_trip_is_bitwise(nir, MODELS[model](dtype), tmp_path)


def test_node_layout_and_metadata(nir):
    layer = RecurrentCubaLIF(F, N, alpha=0.75, alpha_syn=0.5, theta=1.25, reset="zero",
                             learn_alpha_syn=True, dtype=torch.float32)
    graph = torch_ext.to_nir(layer, dt=1e-3)
    assert list(graph.nodes) == ["input", "w_in", "cubalif", "w_rec", "output"]
    assert sorted(graph.edges) == sorted([("input", "w_in"), ("w_in", "cubalif"),
                                          ("cubalif", "w_rec"), ("w_rec", "cubalif"),
                                          ("cubalif", "output")])
    cell = graph.nodes["cubalif"]
    np.testing.assert_allclose(cell.tau_mem, np.full(N, 1e-3 / 0.25))
    np.testing.assert_allclose(cell.tau_syn, np.full(N, 1e-3 / 0.5))
    np.testing.assert_allclose(cell.r, np.full(N, 4.0))
    np.testing.assert_allclose(cell.w_in, np.full(N, 2.0))
    gain = (1e-3 / cell.tau_mem) * cell.r * (1e-3 / cell.tau_syn) * cell.w_in
    np.testing.assert_allclose(gain, 1.0, rtol=1e-12)
    for field in ("v_leak", "v_reset"):
        assert np.array_equal(getattr(cell, field), np.zeros(N))
    assert np.array_equal(cell.v_threshold, np.full(N, 1.25))
    assert isinstance(graph.nodes["w_in"], nir.Affine)
    assert graph.nodes["w_in"].weight.dtype == np.float32
    assert np.array_equal(graph.nodes["w_rec"].weight, layer.w_rec.detach().numpy())
    meta = cell.metadata["torch_ext"]
    assert (meta["alpha"], meta["alpha_syn"], meta["theta"]) == (
        np.float32(0.75), np.float32(0.5), np.float32(1.25))
    assert (meta["learn_alpha"], meta["learn_alpha_syn"], meta["learn_theta"]) == (
        False, True, False)
    assert (meta["reset"], meta["recurrent"], meta["dt"]) == ("zero", "all_to_all", 1e-3)
    one = torch_ext.to_nir(RecurrentCubaLIF(F, N, reset="zero", recurrent="one_to_one",
                                            bias=False))
    assert isinstance(one.nodes["w_in"], nir.Linear)
    w = one.nodes["w_rec"].weight
    assert np.array_equal(w, np.diag(np.diag(w)))
    none = torch_ext.to_nir(RecurrentCubaLIF(F, N, reset="zero", recurrent="none"))
    assert list(none.nodes) == ["input", "w_in", "cubalif", "output"]
    stack = torch_ext.to_nir(nn.Sequential(RecurrentCubaLIF(F, N, reset="zero", num_layers=2)))
    assert [k for k in stack.nodes if "cubalif" in k] == ["0.l0.cubalif", "0.l1.cubalif"]


# ---------------------------------------------------------------- NIR semantics

@pytest.mark.parametrize("model", MODELS)
def test_the_exported_graph_spikes_like_the_module(nir, model):
    assert_graph_runs_like_the_module(nir, MODELS[model](torch.float64))


@pytest.mark.parametrize("dt", [1e-3, 5e-5])
def test_the_exported_graph_spikes_like_the_module_at_any_dt(nir, dt):
    module = MODELS["per_neuron_learnable_atan"](torch.float64)
    graph = torch_ext.to_nir(module, dt=dt)
    _assert_same_spikes(nir, graph, module, inputs(torch.float64), dt=dt)
    again = torch_ext.from_nir(graph, dt=dt)
    assert torch.equal(again(inputs(torch.float64))[0], module(inputs(torch.float64))[0])


# ---------------------------------------------------------------- foreign graphs

def _cuba(nir, n=N, **changes):
    fields = dict(tau_syn=np.full(n, 3e-4), tau_mem=np.full(n, 5e-4), r=np.full(n, 5.0),
                  v_leak=np.zeros(n), v_threshold=np.ones(n), v_reset=np.zeros(n),
                  w_in=np.ones(n))
    fields.update(changes)
    return nir.CubaLIF(**fields)


def test_a_foreign_cubalif_graph_imports_with_its_spikes(nir):
    """No metadata, per-neuron taus, r and w_in (g != 1, one neuron's w_in
    negative), v_threshold != 1 and a recurrent Affine with a bias (a
    constant input from t = 1 on): a RecurrentCubaLIF with U = v, theta =
    v_threshold, the inputs scaled by g and the biases folded."""
    tau_syn, tau_mem = np.linspace(1.5e-4, 6e-4, N), np.linspace(2e-4, 1e-3, N)
    r, w_in = np.linspace(2.0, 6.0, N), np.array([1.5, 0.8, -0.7, 2.0, 1.0, 1.2])
    cell = _cuba(nir, tau_syn=tau_syn, tau_mem=tau_mem, r=r, w_in=w_in,
                 v_threshold=np.linspace(0.3, 0.7, N))
    fc = nir.Affine(_weights(0, N, F, scale=0.5), _weights(1, N, scale=0.2))
    rec = nir.Affine(_weights(2, N, N, scale=0.4), _weights(3, N, scale=0.2))
    graph = _chain(nir, ("fc", fc), ("cuba", cell), more_edges=[("cuba", "rec"), ("rec", "cuba")],
                   extra={"rec": rec})
    layer = torch_ext.from_nir(graph)
    assert type(layer) is RecurrentCubaLIF and layer.reset == "zero"
    assert layer.recurrent == "all_to_all" and layer.w_in.dtype == torch.float64
    g = (DT / tau_mem) * r * (DT / tau_syn) * w_in
    np.testing.assert_allclose(layer.alpha.numpy(), 1 - DT / tau_mem)
    np.testing.assert_allclose(layer.alpha_syn.numpy(), 1 - DT / tau_syn)
    assert np.array_equal(layer.theta.numpy(), cell.v_threshold)  # not divided by a gain
    np.testing.assert_allclose(layer.w_in.detach().numpy(), g[:, None] * fc.weight)
    np.testing.assert_allclose(layer.w_rec.detach().numpy(), g[:, None] * rec.weight)
    np.testing.assert_allclose(layer.bias.detach().numpy(), g * (fc.bias + rec.bias))
    x = inputs(torch.float64)
    _assert_same_spikes(nir, graph, layer, x)
    # Its membrane is the graph's v.
    layer.return_membrane = True
    torch.testing.assert_close(layer(x)[1], run_nir(nir, graph, x)[1]["cuba"], rtol=0, atol=1e-9)


def test_a_foreign_cubalif_chain_with_a_readout_layer(nir):
    """Linear -> CubaLIF (one-to-one cycle, a Linear without bias) -> Affine
    -> a 7-neuron CubaLIF output layer, float32 weights (a float32 module),
    the second layer's recurrent Affine with a bias but no weights."""
    n_out = 7
    hidden = _cuba(nir, tau_syn=np.full(N, 4e-4), r=np.full(N, 3.0), w_in=np.full(N, 2.0),
                   v_threshold=np.full(N, 0.2))
    out = _cuba(nir, n_out, tau_syn=np.full(n_out, 2e-4), tau_mem=np.full(n_out, 3e-4),
                r=np.full(n_out, 2.5), v_threshold=np.full(n_out, 0.25))
    f32 = lambda a: np.asarray(a, dtype=np.float32)  # noqa: E731
    graph = _chain(
        nir, ("fc0", nir.Linear(f32(_weights(0, N, F, scale=0.6)))), ("hidden", hidden),
        ("fc1", nir.Affine(f32(_weights(1, n_out, N)), f32(_weights(2, n_out, scale=0.2)))),
        ("out", out),
        more_edges=[("hidden", "self"), ("self", "hidden"), ("out", "rec"), ("rec", "out")],
        extra={"self": nir.Linear(f32(np.diag(np.linspace(-0.5, 0.5, N)))),
               "rec": nir.Affine(f32(np.zeros((n_out, n_out))), f32(np.full(n_out, 0.1)))},
        n_out=n_out)
    net = torch_ext.from_nir(graph)
    assert [type(m) for m in net] == [RecurrentCubaLIF, RecurrentCubaLIF]
    assert net[0].recurrent == "one_to_one" and net[0].bias is None
    assert net[1].hidden_size == n_out and net[1].w_in.dtype == torch.float32
    assert net[0].alpha.shape == () and net[1].alpha_syn.shape == ()  # shared: 0-dim
    x = inputs(torch.float32, seed=4)
    # float32 module against float64 NIR semantics: no membrane within 1e-6
    # of its threshold (checked), so no spike can flip.
    _assert_same_spikes(nir, graph, net, x)
    again = torch_ext.from_nir(torch_ext.to_nir(net))  # now with metadata: bitwise
    assert torch.equal(again(x), net(x))


def test_a_foreign_cubalif_in_a_nested_subgraph(nir):
    """The layout some exporters write: the recurrent layer as a subgraph."""
    cell = _cuba(nir, w_in=np.full(N, 1.5), v_threshold=np.full(N, 0.5))
    w_rec = nir.Linear(_weights(1, N, N, scale=0.3))
    sub = nir.NIRGraph(nodes={"input": nir.Input(np.array([N])), "cuba": cell, "w_rec": w_rec,
                              "output": nir.Output(np.array([N]))},
                       edges=[("input", "cuba"), ("cuba", "w_rec"), ("w_rec", "cuba"),
                              ("cuba", "output")])
    fc = nir.Affine(_weights(0, N, F), _weights(2, N, scale=0.2))
    graph = nir.NIRGraph(nodes={"input": nir.Input(np.array([F])), "fc": fc, "rnn": sub,
                                "output": nir.Output(np.array([N]))},
                         edges=[("input", "fc"), ("fc", "rnn"), ("rnn", "output")])
    layer = torch_ext.from_nir(graph)
    assert type(layer) is RecurrentCubaLIF and layer.recurrent == "all_to_all"
    flat = _chain(nir, ("fc", fc), ("cuba", cell), more_edges=[("cuba", "w_rec"),
                                                               ("w_rec", "cuba")],
                  extra={"w_rec": w_rec})
    _assert_same_spikes(nir, flat, layer, inputs(torch.float64))


def test_which_cubalif_is_a_recurrent_lif(nir):
    """A CubaLIF without metadata is a RecurrentLIF only where that is exact:
    alpha_syn = 0 for every neuron (tau_syn = dt; the CUBA equations are
    then the LIF's, J = I, and v_leak is a constant input) and a positive
    gain (the LIF mapping divides the threshold by it). Otherwise a
    RecurrentCubaLIF: a synapse on some neurons only, a non-positive gain
    (its inputs are scaled by g, v and the threshold stay), a tau_syn written
    in float32 a little above dt (a small alpha_syn, kept)."""
    x = inputs(torch.float64)
    fc = nir.Affine(_weights(0, N, F), _weights(1, N, scale=0.2))
    rec = {"rec": nir.Linear(_weights(2, N, N, scale=0.3))}
    cycle = [("cell", "rec"), ("rec", "cell")]
    some = np.full(N, DT)
    some[:2] = 3e-4
    negative = np.ones(N)
    negative[0] = -1.0
    cases = {
        "instantaneous": (_cuba(nir, tau_syn=np.full(N, DT), v_leak=np.full(N, 0.1),
                                v_threshold=np.full(N, 0.6)), RecurrentLIF),
        "synapse_on_some": (_cuba(nir, tau_syn=some, v_threshold=np.full(N, 0.6)),
                            RecurrentCubaLIF),
        "negative_gain": (_cuba(nir, tau_syn=np.full(N, DT), w_in=negative,
                                v_leak=np.full(N, 0.1), v_threshold=np.full(N, 0.6)),
                          RecurrentCubaLIF),
        "zero_gain": (_cuba(nir, tau_syn=np.full(N, DT), w_in=np.zeros(N),
                            v_threshold=np.full(N, -0.5)), RecurrentCubaLIF),
    }
    for name, (cell, kind) in cases.items():
        graph = _chain(nir, ("fc", fc), ("cell", cell), more_edges=cycle, extra=rec)
        layer = torch_ext.from_nir(graph)
        assert type(layer) is kind, name
        if kind is RecurrentCubaLIF:
            assert layer.theta.item() == cell.v_threshold[0]
        if name == "zero_gain":  # no input reaches v: it spikes at every step (v = 0 > -0.5)
            assert torch.equal(layer(x)[0], torch.ones(T, B, N, dtype=torch.float64))
            assert torch.equal(run_nir(nir, graph, x)[0], layer(x)[0])
        else:
            _assert_same_spikes(nir, graph, layer, x)
    f32 = np.float32(1e-3)
    assert float(f32) > 1e-3  # written in float32, tau_syn = dt reads a little above dt
    graph = _chain(nir, ("fc", fc), ("cell", _cuba(nir, tau_syn=np.full(N, f32, np.float32),
                                                   tau_mem=np.full(N, 5e-3))))
    layer = torch_ext.from_nir(graph, dt=1e-3)
    assert type(layer) is RecurrentCubaLIF and 0 < layer.alpha_syn.item() < 1e-7
    _assert_same_spikes(nir, graph, layer, x, dt=1e-3)


# ---------------------------------------------------------------- refusals

def _refused(nir):
    n = 40  # a layer large enough that printing its values would show
    fc = lambda: nir.Affine(_weights(0, n, F), np.zeros(n))  # noqa: E731

    def layer(cell, **graph):
        return _chain(nir, ("fc", fc()), ("cuba", cell), n_out=n, **graph)

    def full(value):
        return np.full(n, value)

    def cuba(**changes):
        return _cuba(nir, n, **changes)

    def reshaped(field, size):
        cell = cuba()
        setattr(cell, field, np.ones(size))  # the node's own check runs only at construction
        return cell

    ramp = np.linspace(0.1, 0.5, n)
    return {
        "v_leak_with_synapse": (layer(cuba(v_leak=ramp)),
                                "v_leak != 0 with a real synapse (tau_syn > dt) for 40 of 40 "
                                "neurons"),
        "v_reset": (layer(cuba(v_reset=ramp)),
                    "v_reset = values from 0.1 to 0.5 (40): the layers reset to 0"),
        "tau_syn_below_dt": (layer(cuba(tau_syn=full(5e-5))),
                             "tau_syn < dt = 0.0001 for 40 of 40 neurons: forward Euler gives a "
                             "decay 1 - dt/tau_syn < 0"),
        "tau_mem_below_dt": (layer(cuba(tau_mem=np.where(ramp > 0.3, 5e-5, 5e-4))),
                             "tau_mem < dt = 0.0001 for 20 of 40 neurons"),
        "tau_mem_not_positive": (layer(cuba(tau_mem=full(0.0))), "tau_mem must be positive"),
        "tau_syn_infinite": (layer(cuba(tau_syn=full(np.inf))),
                             "tau_syn must be finite, got 40 non-finite values (NaN or inf) of 40"),
        "r_nan": (layer(cuba(r=np.where(ramp > 0.3, np.nan, 5.0))),
                  "r must be finite, got 20 non-finite values"),
        "w_in_inf": (layer(cuba(w_in=full(np.inf))), "w_in must be finite"),
        "v_threshold_nan": (layer(cuba(v_threshold=full(np.nan))), "v_threshold must be finite"),
        "w_in_shape": (layer(reshaped("w_in", n + 1)),
                       "w_in has shape [41], expected [40]"),
        "r_shape": (layer(reshaped("r", 2)), "r has shape [2], expected [40]"),
        "taus_shape": (_chain(nir, ("fc", fc()), ("cuba", _cuba(nir, n - 1)), n_out=n),
                       "tau_syn has shape [39], expected [40]"),
        "no_weights": (_chain(nir, ("cuba", cuba()), n_in=n, n_out=n),
                       "a spiking layer starts with an Affine or Linear node"),
        "recurrent_weight_shape": (layer(cuba(), more_edges=[("cuba", "rec"), ("rec", "cuba")],
                                         extra={"rec": nir.Linear(np.ones((n, 3)))}),
                                   "node 'rec' (Linear): a recurrent weight must be [40, 40]"),
    }


REFUSED = ["v_leak_with_synapse", "v_reset", "tau_syn_below_dt", "tau_mem_below_dt",
           "tau_mem_not_positive", "tau_syn_infinite", "r_nan", "w_in_inf", "v_threshold_nan",
           "w_in_shape", "r_shape", "taus_shape", "no_weights", "recurrent_weight_shape"]


def _one_line(error):
    message = str(error.value)
    assert "\n" not in message and len(message) < 500, message
    return message


@pytest.mark.parametrize("case", REFUSED)
def test_what_has_no_exact_equivalent_is_refused_naming_the_node(nir, case):
    cases = _refused(nir)
    assert sorted(cases) == sorted(REFUSED)
    graph, message = cases[case]
    with pytest.raises(ValueError) as error:
        torch_ext.from_nir(graph)
    node = "rec" if case == "recurrent_weight_shape" else "cuba"
    prefix = f"torch_ext.from_nir: node '{node}' ({type(graph.nodes[node]).__name__}): "
    assert _one_line(error).startswith(prefix)
    assert message in str(error.value)


def _exported(**kwargs):
    torch.manual_seed(0)
    return torch_ext.to_nir(RecurrentCubaLIF(F, N, reset="zero", **kwargs))


def test_edited_metadata_is_refused_naming_the_node(nir):
    """The metadata must agree with the nodes: another dt, an edited
    threshold, time constant, gain (r, w_in) or recurrent weight, a
    metadata entry removed, a reset edited, the metadata moved onto a LIF."""
    def refused(graph, pattern, dt=DT):
        with pytest.raises(ValueError, match=r"node 'cubalif' \(CubaLIF\): " + pattern) as error:
            torch_ext.from_nir(graph, dt=dt)
        _one_line(error)

    graph = _exported()
    torch_ext.from_nir(graph)  # as exported: accepted
    refused(graph, r"its metadata torch_ext.alpha disagrees .* dt = 5e-05 \(written with "
                   r"dt = 0.0001", dt=5e-5)
    edits = {
        "v_threshold": (2, "its metadata torch_ext.theta disagrees"),
        "tau_syn": (1.5, "its metadata torch_ext.alpha_syn disagrees"),
        "tau_mem": (1.5, "its metadata torch_ext.alpha disagrees"),
        "r": (2, r"its input gain \(dt/tau_mem\) \* r \* \(dt/tau_syn\) \* w_in is 2.0.* for all "
                 r"6, not the 1 to_nir writes .*or edited after export"),
        "w_in": (0.5, "its input gain"),
    }
    for field, (factor, pattern) in edits.items():
        graph = _exported()
        node = graph.nodes["cubalif"]
        setattr(node, field, getattr(node, field) * factor)
        refused(graph, pattern)
    graph = _exported(recurrent="one_to_one")
    graph.nodes["w_rec"].weight = graph.nodes["w_rec"].weight * 3
    refused(graph, "its metadata torch_ext.w_rec disagrees with the weight of its recurrent node "
                   "'w_rec'")
    graph = _exported()
    del graph.nodes["cubalif"].metadata["torch_ext"]["alpha_syn"]
    refused(graph, "its metadata torch_ext is incomplete: it has no 'alpha_syn'")
    graph = _exported()
    graph.nodes["cubalif"].metadata["torch_ext"]["reset"] = "subtract"
    refused(graph, "its metadata says reset='subtract', which a CubaLIF node does not encode")
    graph = _exported(recurrent="none")
    graph.nodes["cubalif"].metadata["torch_ext"]["recurrent"] = "all_to_all"
    refused(graph, "its metadata says recurrent='all_to_all', reset='zero', but it has no "
                   "recurrent cycle")
    graph = _exported()
    cell = graph.nodes["cubalif"]
    graph.nodes["cubalif"] = nir.LIF(tau=cell.tau_mem, r=cell.r, v_leak=cell.v_leak,
                                     v_threshold=cell.v_threshold, v_reset=cell.v_reset,
                                     metadata=cell.metadata)
    with pytest.raises(ValueError, match=r"node 'cubalif' \(LIF\): its metadata torch_ext is a "
                                         r"RecurrentCubaLIF layer's"):
        torch_ext.from_nir(graph)


def test_export_refusals_name_the_layer(nir):
    for reset in ("subtract", "none"):
        with pytest.raises(ValueError) as error:
            torch_ext.to_nir(RecurrentCubaLIF(F, N, reset=reset))
        assert _one_line(error).startswith(
            f"torch_ext.to_nir: RecurrentCubaLIF, layer 0: reset='{reset}' cannot be exported")
        for words in ("feeds the synaptic current J", "filtered by alpha_syn",
                      "reset='zero' exports"):
            assert words in str(error.value)
    stack = RecurrentCubaLIF(F, N, reset="zero", num_layers=2)
    stack.alpha_syn_l1 = torch.tensor(1.0)
    with pytest.raises(ValueError, match=r"RecurrentCubaLIF, layer 1: alpha_syn is 1 for 6 of 6 "
                                         r"neurons, an infinite tau_syn .* NIR has no "
                                         r"current-based IF node"):
        torch_ext.to_nir(stack)
    some = RecurrentCubaLIF(F, N, reset="zero", alpha=torch.tensor([1.0] + [0.9] * (N - 1)))
    with pytest.raises(ValueError, match=r"module 1 \(RecurrentCubaLIF\), layer 0: alpha is 1 for "
                                         r"1 of 6 neurons, an infinite tau_mem"):
        torch_ext.to_nir(nn.Sequential(nn.Linear(F, F), some))
    above = RecurrentCubaLIF(F, N, reset="zero", learn_alpha=True)
    with torch.no_grad():
        above.alpha.fill_(1.02)  # the forward clamps it to 1: no leak
    with pytest.raises(ValueError, match="alpha is 1 for 6 of 6 neurons"):
        torch_ext.to_nir(above)
