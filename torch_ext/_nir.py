"""NIR (the Neuromorphic Intermediate Representation) export and import:
``torch_ext.to_nir`` and ``torch_ext.from_nir`` (README, "NIR").

NIR describes neurons in continuous time; like snnTorch and SpikingJelly this
module reads it with forward Euler and a time step dt::

    v[t] = v[t-1] + dt / tau * (v_leak - v[t-1] + r * I[t])
    spike where v > v_threshold, then v = v_reset

(IF and I nodes: v[t] = v[t-1] + dt * r * I[t]; a cycle of edges is a
one-step delay). A RecurrentLIF layer's membrane U is v / g with the gain
g = r * dt / tau, so alpha = 1 - dt / tau, theta = v_threshold / g and
v_leak / r joins the bias.

A CubaLIF node (tau_syn dI/dt = -I + w_in * x, tau_mem dv/dt = v_leak - v +
r * I), the new current first::

    I[t] = I[t-1] + dt / tau_syn * (-I[t-1] + w_in * x[t])
    v[t] = v[t-1] + dt / tau_mem * (v_leak - v[t-1] + r * I[t])

is a RecurrentCubaLIF layer with reset="zero" (v_reset = 0, v_leak = 0), U =
v, J = (dt / tau_mem) * r * I, alpha_syn = 1 - dt / tau_syn, alpha = 1 - dt /
tau_mem, theta = v_threshold, and every input of the node (its projection,
the recurrent cycle, their biases) scaled per neuron by g = (dt / tau_mem) *
r * (dt / tau_syn) * w_in. The graph is built with the ``nir`` package
directly: nirtorch's tracer (torch.fx) cannot produce the recurrent cycle
that lives inside the fused op, and its generic importer runs the graph
node by node and step by step, where this layer needs the whole cycle as
one ``w_rec``.

``nir`` is optional: it is imported inside the functions, so that
``import torch_ext`` works without it.
"""
import math
import numbers
import os
import warnings
from collections import defaultdict

import numpy as np
import torch
from torch import nn

from ._neurons import NEURONS
from .module import RecurrentCubaLIF, RecurrentLIF

META = "torch_ext"  # this package's entry in a node's metadata: what NIR cannot hold
_SPIKING = (RecurrentLIF, RecurrentCubaLIF)  # the layers to_nir exports and from_nir builds

# Node types NIR defines that from_nir cannot map, and why.
_UNSUPPORTED = {
    "Delay": "a delay line: the only delay of this layer is the one step of its recurrence",
    "Conv1d": "a convolution: RecurrentLIF's weights are dense",
    "Conv2d": "a convolution: RecurrentLIF's weights are dense",
    "SumPool2d": "pooling is not supported",
    "AvgPool2d": "pooling is not supported",
    "Flatten": "a reshape: the layers read flat [N] vectors",
    "Scale": "an element-wise scale between layers is not supported",
    "CubaLI": "a current-based leaky integrator (a synaptic state) is not supported",
    "Identity": "identity nodes are not supported",
}


def _import_nir(caller):
    try:
        import nir
    except ImportError as error:
        raise ImportError(f"torch_ext.{caller} needs the 'nir' package (the Neuromorphic "
                          "Intermediate Representation): pip install nir (or the 'nir' extra: "
                          "pip install 'torch_ext[nir]')") from error
    return nir


def _check_dt(dt, caller):
    if isinstance(dt, bool) or not isinstance(dt, numbers.Real) or not (
            math.isfinite(dt) and dt > 0):
        raise ValueError(f"torch_ext.{caller}: argument 'dt' must be a positive, finite number "
                         f"(the time step NIR's continuous-time nodes are read with), got {dt!r}")
    return float(dt)


class LeakyIntegrator(nn.Module):
    r"""A leaky integrator without spikes, NIR's ``LI`` (or ``I``) node, as
    :func:`torch_ext.from_nir` imports it, typically as a readout::

        v[t] = alpha * v[t-1] + gain * x[t] + leak,   v[0] = 0

    with alpha = 1 - dt / tau, gain = r * dt / tau and leak = dt / tau * v_leak
    (an ``I`` node: alpha = 1, gain = r * dt, leak = 0), each an ``[N]`` buffer
    (any alpha and gain: forward Euler's, tau < dt and r <= 0 included).

    Args:
        alpha (Tensor): ``[N]`` (or 0-dim) decays.
        gain (Tensor): ``[N]`` (or 0-dim) input gains.
        leak (Tensor): ``[N]`` (or 0-dim) constant drives.

    ``forward(x)`` takes time-major ``x`` ``[T, ..., N]`` and returns ``v``,
    the same shape (a plain autograd loop over time).
    """

    def __init__(self, alpha, gain, leak):
        super().__init__()
        self.register_buffer("alpha", torch.as_tensor(alpha).clone())
        self.register_buffer("gain", torch.as_tensor(gain).clone())
        self.register_buffer("leak", torch.as_tensor(leak).clone())

    def forward(self, x):
        drive = x * self.gain + self.leak
        v, out = 0, []
        for d in drive.unbind(0):
            v = self.alpha * v + d
            out.append(v)
        return torch.stack(out) if out else drive

    def features(self):
        """N, or None where alpha, gain and leak are all 0-dim (any N fits)."""
        shape = torch.broadcast_shapes(self.alpha.shape, self.gain.shape, self.leak.shape)
        return shape[-1] if shape else None

    def extra_repr(self):
        n = self.features()
        return "" if n is None else f"{n}"


class SpikingSequential(nn.Sequential):
    """The ``nn.Sequential`` :func:`torch_ext.from_nir` returns for a chain of
    more than one module: each module reads the previous one's output, a
    ``RecurrentLIF`` or ``RecurrentCubaLIF`` passing on its spikes (the first
    element of what it returns). Time-major ``[T, B, F]`` (or ``[T, F]``) in,
    the last module's output out."""

    def forward(self, x):
        for module in self:
            x = module(x)
            if isinstance(module, _SPIKING):
                x = x[0]
        return x


# ---------------------------------------------------------------- export

def _array(tensor):
    """A copy (not a view: the graph must not change with the module) as a
    numpy array of the tensor's dtype; float16/bfloat16 widen to float32."""
    tensor = tensor.detach()
    if tensor.dtype in (torch.float16, torch.bfloat16):
        tensor = tensor.float()
    return tensor.cpu().numpy().copy()


def _meta_value(tensor):
    """A tensor for node metadata: nir.write cannot store 0-dim arrays (it
    compresses every array), numpy scalars it can; both keep the dtype."""
    value = _array(tensor)
    return value[()] if value.ndim == 0 else value


def _per_neuron(tensor, n):
    """An [n] float64 array of a 0-dim or [n] tensor (NIR's parameters are per neuron)."""
    return np.broadcast_to(tensor.detach().double().cpu().numpy(), (n,)).copy()


def _layer_tensors(module, layer):
    """Layer `layer`'s w_in, w_rec, bias (None where absent) and neuron parameters, by name."""
    names = ("w_in", "w_rec", "bias") + NEURONS[module._OP].param_names
    return {name: getattr(module, module._name(name, layer)) for name in names}


def _recurrent_weight(module, w_rec, dtype):
    """The cycle's weight in dtype: w_rec (all-to-all), the diagonal matrix
    of a one-to-one w_rec, or None without recurrence."""
    if module.recurrent == "all_to_all":
        return w_rec.detach().to(dtype)
    if module.recurrent == "one_to_one":
        return torch.diag(w_rec.detach().expand(module.hidden_size).to(dtype))
    return None


def _options_meta(module, index, layer, dt, tensors):
    """The metadata of one layer (tensors: _layer_tensors): its neuron
    parameters as stored (tau = dt / (1 - alpha) rounds), a one-to-one
    w_rec (its diagonal matrix loses a shared 0-dim weight) and the options
    NIR has no field for."""
    params = {name: tensors[name] for name in NEURONS[module._OP].param_names}
    meta = {name: _meta_value(value) for name, value in params.items()}
    meta.update({f"learn_{name}": isinstance(value, nn.Parameter)
                 for name, value in params.items()})
    if module.recurrent == "one_to_one":
        meta["w_rec"] = _meta_value(tensors["w_rec"])
    meta.update({
        "per_neuron": module.per_neuron, "reset": module.reset, "recurrent": module.recurrent,
        "detach_reset": module.detach_reset, "surrogate": module.surrogate,
        "slope": float(module.slope), "module": index, "layer": layer,
        "num_layers": module.num_layers, "dropout": module.dropout, "dt": dt})
    return meta


def _export_projection(nir, add, name, w_in, bias):
    add(name, nir.Affine(_array(w_in), _array(bias)) if bias is not None
        else nir.Linear(_array(w_in)))


def _export_cuba_layer(nir, add, link, module, layer, index, prefix, dt, where):
    """Adds one layer of a RecurrentCubaLIF (reset="zero" only): Affine(w_in,
    bias) -> CubaLIF with the cycle CubaLIF -> Linear(w_rec) -> CubaLIF and
    an input gain g = 1; returns (its first node, its spiking node)."""
    tensors = _layer_tensors(module, layer)
    w_in, w_rec, bias, alpha, alpha_syn, theta = tensors.values()
    n = module.hidden_size
    if module.reset != "zero":
        raise ValueError(
            f"torch_ext.to_nir: {where}: reset='{module.reset}' cannot be exported: NIR's CubaLIF "
            "resets its membrane to v_reset only, and the recurrent cycle, the one other place "
            "a reset could go, feeds the synaptic current J, so a subtraction through it would "
            "be filtered by alpha_syn; reset='zero' exports")
    a, a_syn = _per_neuron(alpha.clamp(0, 1), n), _per_neuron(alpha_syn.clamp(0, 1), n)
    for name, values, tau in (("alpha", a, "tau_mem"), ("alpha_syn", a_syn, "tau_syn")):
        if (values == 1).any():
            raise ValueError(
                f"torch_ext.to_nir: {where}: {name} is 1 for {int((values == 1).sum())} of {n} "
                f"neurons, an infinite {tau} = dt / (1 - {name}); NIR has no current-based IF "
                "node")
    meta = _options_meta(module, index, layer, dt, tensors)
    proj, cell = prefix + "w_in", prefix + "cubalif"
    _export_projection(nir, add, proj, w_in, bias)
    zeros = np.zeros(n)
    # g = (dt / tau_mem) * r * (dt / tau_syn) * w_in = 1: the weights as they are.
    add(cell, nir.CubaLIF(tau_syn=dt / (1 - a_syn), tau_mem=dt / (1 - a), r=1 / (1 - a),
                          v_leak=zeros, v_threshold=_per_neuron(theta, n), v_reset=zeros.copy(),
                          w_in=1 / (1 - a_syn), metadata={META: meta}))
    link(proj, cell)
    weight = _recurrent_weight(module, w_rec, torch.promote_types(w_in.dtype, torch.float32))
    if weight is not None:
        rec = prefix + "w_rec"
        add(rec, nir.Linear(_array(weight)))
        link(cell, rec)
        link(rec, cell)
    return proj, cell


def _export_layer(nir, add, link, module, layer, index, prefix, dt, where):
    """Adds one layer of a RecurrentLIF; returns (its first node, its spiking node)."""
    if isinstance(module, RecurrentCubaLIF):
        return _export_cuba_layer(nir, add, link, module, layer, index, prefix, dt, where)
    tensors = _layer_tensors(module, layer)
    w_in, w_rec, bias, alpha, theta = tensors.values()
    n = module.hidden_size
    a, th = _per_neuron(alpha.clamp(0, 1), n), _per_neuron(theta, n)
    leak_free = a == 1
    if leak_free.any() and not leak_free.all():
        raise ValueError(f"torch_ext.to_nir: {where}: alpha is 1 for some neurons and below 1 for "
                         "others; one layer is one NIR node, and NIR's LIF/LI nodes need "
                         "alpha = 1 - dt/tau < 1 while IF/I nodes have no leak")
    leak_free = bool(leak_free.all())
    # What NIR does not hold, for an exact round trip: alpha and theta as
    # stored (tau = dt / (1 - alpha) rounds), and the training-only options.
    meta = _options_meta(module, index, layer, dt, tensors)
    if module.recurrent == "all_to_all" and module.reset == "subtract":
        meta["w_rec_diagonal"] = _array(torch.diagonal(w_rec))  # w_rec - diag(theta) rounds

    proj = prefix + "w_in"
    _export_projection(nir, add, proj, w_in, bias)
    zeros, one_minus, metadata = np.zeros(n), 1 - a, {META: meta}
    if module.reset == "zero":  # NIR's own reset: v = v_reset = 0 after a spike
        cell = prefix + ("if" if leak_free else "lif")
        if leak_free:
            add(cell, nir.IF(r=np.full(n, 1 / dt), v_threshold=th, v_reset=zeros,
                             metadata=metadata))
        else:
            add(cell, nir.LIF(tau=dt / one_minus, r=1 / one_minus, v_leak=zeros, v_threshold=th,
                              v_reset=zeros, metadata=metadata))
        spikes = cell
    else:  # no reset in NIR: a leaky integrator, a threshold, the reset in the recurrence
        cell, spikes = prefix + ("i" if leak_free else "li"), prefix + "threshold"
        if leak_free:
            add(cell, nir.I(r=np.full(n, 1 / dt), metadata=metadata))
        else:
            add(cell, nir.LI(tau=dt / one_minus, r=1 / one_minus, v_leak=zeros,
                             metadata=metadata))
        add(spikes, nir.Threshold(threshold=th))
        link(cell, spikes)
    link(proj, cell)

    # In the dtype _array writes (float16/bfloat16 as float32): w_rec - theta
    # rounds only as much as from_nir's check of it against the metadata allows.
    dtype = torch.promote_types(w_in.dtype, torch.float32)
    weight = _recurrent_weight(module, w_rec, dtype)
    if module.reset == "subtract":  # U -= theta * S[t-1]: a negative self-weight
        minus = torch.diag(theta.detach().expand(n).to(dtype))
        weight = -minus if weight is None else weight - minus
    if weight is not None:
        rec = prefix + "w_rec"
        add(rec, nir.Linear(_array(weight)))
        link(spikes, rec)
        link(rec, cell)
    return proj, spikes


def _export_li(nir, add, module, name, n, dt, where):
    a, gain, leak = (_per_neuron(t, n) for t in (module.alpha, module.gain, module.leak))
    meta = {META: {"alpha": _meta_value(module.alpha), "gain": _meta_value(module.gain),
                   "leak": _meta_value(module.leak), "dt": dt}}
    if (a == 1).all():
        if (leak != 0).any():
            raise ValueError(f"torch_ext.to_nir: {where}: alpha = 1 with a non-zero "
                             "leak has no NIR node (an I node has no v_leak)")
        add(name, nir.I(r=gain / dt, metadata=meta))
    elif (a == 1).any():
        raise ValueError(f"torch_ext.to_nir: {where}: alpha is 1 for some neurons "
                         "and below 1 for others; LI needs alpha < 1, I has no leak")
    else:
        add(name, nir.LI(tau=dt / (1 - a), r=gain / (1 - a), v_leak=leak / (1 - a), metadata=meta))


def to_nir(module, dt=1e-4):
    """Exports a ``RecurrentLIF`` or ``RecurrentCubaLIF`` (any ``num_layers``),
    or an ``nn.Sequential`` of those, ``nn.Linear`` and the
    ``LeakyIntegrator`` readouts :func:`from_nir` makes, as a NIR graph; each
    layer reads the spikes of the module before it.

    Per ``RecurrentLIF`` layer: the input projection is an ``Affine(w_in,
    bias)`` node (``Linear(w_in)`` without a bias); ``reset="zero"`` is a
    ``LIF(tau = dt / (1 - alpha), r = 1 / (1 - alpha), v_leak = 0,
    v_threshold = theta, v_reset = 0)`` node (``IF(r = 1 / dt)`` for alpha =
    1) with the recurrence as a cycle ``LIF -> Linear(w_rec) -> LIF``;
    ``"subtract"`` and ``"none"``, which NIR's resetting LIF cannot express,
    are ``LI -> Threshold`` (``I`` for alpha = 1) with the cycle ``Threshold
    -> Linear(w_rec - diag(theta)) -> LI`` (``Linear(w_rec)`` for
    ``"none"``); the common importers (snnTorch, Norse, SpikingJelly) have no
    mapping for LI and Threshold, so that encoding warns (a ``UserWarning``,
    once per call). Per ``RecurrentCubaLIF`` layer (``reset="zero"`` only):
    ``Affine(w_in, bias) -> CubaLIF(tau_syn = dt / (1 - alpha_syn), tau_mem =
    dt / (1 - alpha), r = 1 / (1 - alpha), w_in = 1 / (1 - alpha_syn), v_leak
    = 0, v_threshold = theta, v_reset = 0)`` with the cycle ``CubaLIF ->
    Linear(w_rec) -> CubaLIF``. A one-to-one ``w_rec`` is a diagonal
    ``Linear``. Parameters are ``[N]`` arrays (a scalar alpha, alpha_syn or
    theta is broadcast); weights keep the module's dtype (float16/bfloat16
    become float32). Under forward Euler with ``dt`` the graph spikes like
    the module.

    alpha (alpha_syn) and theta as stored, and what NIR has no field for
    (``surrogate``, ``slope``, ``detach_reset``, the ``learn_*`` flags,
    ``per_neuron``, ``recurrent``, ``num_layers``, ``dropout``) go into the
    neuron node's ``metadata["torch_ext"]``, from which :func:`from_nir`
    rebuilds the module exactly. ``batch_first``, ``return_membrane``,
    ``backend`` and ``save_membrane``/``save_state`` say how the module is
    called, not what it computes, and are not written.

    Args:
        module (nn.Module): a ``RecurrentLIF`` or ``RecurrentCubaLIF``, or an
            ``nn.Sequential`` of those, ``nn.Linear`` and ``LeakyIntegrator``
            modules.
        dt (float): the time step, in seconds, the graph is meant to be run
            with. Default: ``1e-4`` (snnTorch's and SpikingJelly's).

    Returns:
        A ``nir.NIRGraph`` with one ``Input`` and one ``Output`` node.

    Raises:
        ImportError: the ``nir`` package is not installed.
        TypeError: a module of another type (NIR has no adaptive LIF node).
        ValueError: a ``dt`` that is not positive and finite, an empty
            ``nn.Sequential``, sizes that do not chain, a ``RecurrentLIF``
            layer whose alpha is 1 for some neurons only (NIR's LIF needs
            alpha < 1, its IF has no leak), a ``RecurrentCubaLIF`` layer with
            ``reset="subtract"`` or ``"none"`` or with alpha or alpha_syn 1
            (an infinite tau: NIR has no current-based IF), a first
            ``LeakyIntegrator`` with only 0-dim values (no N), a layer with
            recurrent delays (``recurrent_delays``: NIR's Delay node is
            integer-valued, and no importer runs one in a recurrent
            cycle); each naming the layer.

    Warns:
        UserWarning: a ``RecurrentLIF`` with ``reset="subtract"`` or
            ``"none"`` (the ``LI -> Threshold`` encoding, which snnTorch,
            Norse and SpikingJelly do not read); ``reset="zero"`` exports as
            NIR's ``LIF``, which they do.

    Example::

        >>> layer = torch_ext.RecurrentLIF(10, 32, reset="zero")
        >>> graph = torch_ext.to_nir(layer)
        >>> nir.write("layer.nir", graph)
        >>> again = torch_ext.from_nir("layer.nir")   # the same spikes and gradients
    """
    nir = _import_nir("to_nir")
    dt = _check_dt(dt, "to_nir")
    if isinstance(module, nn.Sequential):
        if len(module) == 0:
            raise ValueError("torch_ext.to_nir: the nn.Sequential is empty")
        items = [(f"{i}.", m) for i, m in enumerate(module)]
    else:
        items = [("", module)]

    nodes, edges, unreadable = {}, [], []

    def add(name, node):
        nodes[name] = node

    def link(a, b):
        edges.append((a, b))

    first, last, size = None, None, None
    for index, (prefix, m) in enumerate(items):
        where = f"module {index} ({type(m).__name__})" if prefix else type(m).__name__
        if isinstance(m, _SPIKING):
            ins, outs = m.in_features, m.hidden_size
        elif isinstance(m, nn.Linear):
            ins, outs = m.in_features, m.out_features
        elif isinstance(m, LeakyIntegrator):
            ins = outs = m.features() or size  # 0-dim values fit the module before
            if ins is None:
                raise ValueError(f"torch_ext.to_nir: {where}: its alpha, gain and leak are 0-dim "
                                 "and nothing before it gives the number of neurons NIR needs")
        else:
            raise TypeError(f"torch_ext.to_nir: {where} cannot be exported: expected a "
                            "RecurrentLIF, a RecurrentCubaLIF, an nn.Linear or a LeakyIntegrator")
        if size is not None and ins != size:
            raise ValueError(f"torch_ext.to_nir: {where} takes {ins} features but the module "
                             f"before it gives {size}")
        if isinstance(m, _SPIKING) and m.recurrent_delays is not None:
            # NIR's Delay node holds integer delays of a node's output; a
            # learnt real delay read through a kernel of width 1 + delay_sigma
            # is not what it computes, and no importer reads a Delay node
            # inside a recurrent cycle.
            raise ValueError(f"torch_ext.to_nir: {where} has recurrent delays "
                             f"(recurrent_delays={m.recurrent_delays!r}), which NIR cannot "
                             "express: its Delay node holds integer delays only and no "
                             "importer runs one inside a recurrent cycle")
        if isinstance(m, _SPIKING):
            ends = []
            for layer in range(m.num_layers):
                sub = prefix + (f"l{layer}." if m.num_layers > 1 else "")
                ends.append(_export_layer(nir, add, link, m, layer, index, sub, dt,
                                          f"{where}, layer {layer}"))
            if isinstance(m, RecurrentLIF) and m.reset != "zero":
                unreadable.append(f"{where} has reset='{m.reset}'")
        else:
            name = prefix + ("linear" if isinstance(m, nn.Linear) else "li")
            if isinstance(m, nn.Linear):
                _export_projection(nir, add, name, m.weight, m.bias)
            else:
                _export_li(nir, add, m, name, outs, dt, where)
            ends = [(name, name)]
        for start, end in ends:  # each module (each layer of a stack) reads the one before
            if last is None:
                first, in_size = start, ins
            else:
                link(last, start)
            last = end
        size = outs
    nodes = {"input": nir.Input(input_type=np.array([in_size])), **nodes,
             "output": nir.Output(output_type=np.array([size]))}
    edges = [("input", first)] + edges + [(last, "output")]
    graph = nir.NIRGraph(nodes=nodes, edges=edges, metadata={"exporter": "torch_ext", "dt": dt})
    if unreadable:
        warnings.warn(
            f"torch_ext.to_nir: {'; '.join(unreadable)}: NIR's LIF node resets to v_reset, so "
            "this reset is written as LI (I for alpha = 1) -> Threshold with the reset in the "
            "recurrent weight, a graph that snnTorch, Norse and SpikingJelly do not import "
            "(torch_ext.from_nir does); reset=\"zero\" exports as a NIR LIF node, which "
            "snnTorch, Norse and SpikingJelly read (README, \"NIR\", says how exactly)",
            UserWarning, stacklevel=2)
    return graph


# ---------------------------------------------------------------- import

def _flatten(nir, graph, prefix=""):
    """(nodes, edges) with every nested NIRGraph replaced by its own nodes
    (named "<subgraph>.<node>"): edges into a subgraph go to what its Input
    feeds, edges out of it leave from what feeds its Output."""
    nodes, edges, entries, exits = {}, [], {}, {}
    for a, b in graph.edges:
        for end in (a, b):
            if end not in graph.nodes:
                raise ValueError(f"torch_ext.from_nir: the edge ('{prefix + a}', '{prefix + b}') "
                                 f"names a node '{prefix + end}' the graph does not have")
    for name, node in graph.nodes.items():
        if isinstance(node, nir.NIRGraph):
            inner, inner_edges = _flatten(nir, node, prefix + name + ".")
            ins = [k for k, v in node.nodes.items() if isinstance(v, nir.Input)]
            outs = [k for k, v in node.nodes.items() if isinstance(v, nir.Output)]
            if len(ins) != 1 or len(outs) != 1:
                raise ValueError(f"torch_ext.from_nir: subgraph '{prefix + name}' must have one "
                                 f"Input and one Output node, has {len(ins)} and {len(outs)}")
            entry, exit_ = prefix + name + "." + ins[0], prefix + name + "." + outs[0]
            entries[name] = [b for a, b in inner_edges if a == entry]
            exits[name] = [a for a, b in inner_edges if b == exit_]
            if exit_ in entries[name]:
                raise ValueError(f"torch_ext.from_nir: subgraph '{prefix + name}': its Input feeds "
                                 "its Output directly, an identity, which is not supported")
            nodes.update({k: v for k, v in inner.items() if k not in (entry, exit_)})
            edges += [(a, b) for a, b in inner_edges if a != entry and b != exit_]
        else:
            nodes[prefix + name] = node
    for a, b in graph.edges:
        for source in exits.get(a, [prefix + a]):
            for target in entries.get(b, [prefix + b]):
                edges.append((source, target))
    return nodes, edges


def _values(values):
    """An [N] array as a short phrase for a one-line message (never N values)."""
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size == 0:
        return "no values"
    bad = int((~np.isfinite(values)).sum())
    if bad:
        return f"{bad} non-finite value{'s' if bad > 1 else ''} (NaN or inf) of {values.size}"
    if (values == values[0]).all():
        return f"{float(values[0])!r}" + (f" for all {values.size}" if values.size > 1 else "")
    return f"values from {float(values.min())!r} to {float(values.max())!r} ({values.size})"


class _Graph:
    """The flattened graph with its neighbours, and the checks that name nodes."""

    def __init__(self, nir, nodes, edges):
        self.nir, self.nodes = nir, nodes
        self.succ, self.pred = defaultdict(list), defaultdict(list)
        for a, b in edges:
            self.succ[a].append(b)
            self.pred[b].append(a)

    def kind(self, name):
        return type(self.nodes[name]).__name__

    def fail(self, name, why):
        raise ValueError(f"torch_ext.from_nir: node '{name}' ({self.kind(name)}): {why}")

    def only(self, names, name, what):
        """The single element of names (the successors or predecessors of
        name), or an error saying which nodes were found."""
        if len(names) != 1:
            self.fail(name, f"expected exactly one {what}, found {sorted(names) or 'none'}: "
                            "from_nir reads a chain of layers")
        return names[0]

    def per_neuron(self, name, field, n, finite=True):
        value = np.asarray(getattr(self.nodes[name], field), dtype=np.float64)
        try:
            value = np.broadcast_to(value, (n,)).copy()
        except ValueError:
            self.fail(name, f"{field} has shape {list(value.shape)}, expected [{n}] (its input "
                            f"has {n} features)")
        if finite and not np.isfinite(value).all():
            self.fail(name, f"{field} must be finite, got {_values(value)}")
        return value

    def metadata(self, name):
        """The node's metadata["torch_ext"] (what to_nir wrote), or None."""
        return (getattr(self.nodes[name], "metadata", None) or {}).get(META)

    def meta(self, name, key):
        """One entry of the node's torch_ext metadata, which it has."""
        if key not in self.metadata(name):
            self.fail(name, f"its metadata {META} is incomplete: it has no '{key}'")
        return self.metadata(name)[key]

    def meta_values(self, name, key, n, shapes=((), None)):
        """A numeric metadata entry of one of `shapes` (None: [n]), finite,
        as a float64 array; anything else (edited metadata) names the node."""
        value = np.asarray(self.meta(name, key))
        allowed = [(n,) if shape is None else shape for shape in shapes]
        if value.dtype.kind not in "biuf" or value.shape not in allowed:
            self.fail(name, f"its metadata {META}.{key} must be numbers of shape "
                            f"{' or '.join(str(list(a)) for a in allowed)}, got "
                            f"{value.dtype} of shape {list(value.shape)}")
        value = value.astype(np.float64)
        if not np.isfinite(value).all():
            self.fail(name, f"its metadata {META}.{key} must be finite, got {_values(value)}")
        return value

    def meta_flag(self, name, key):
        value = self.meta(name, key)
        if not isinstance(value, (bool, np.bool_)):
            self.fail(name, f"its metadata {META}.{key} must be a bool, got {value!r}")
        return bool(value)

    def meta_number(self, name, key):
        return float(self.meta_values(name, key, 1, shapes=((),)))

    def check_meta(self, name, what, exact, derived, dt, against="its parameters"):
        """An error unless the metadata's exact values (broadcast to the shape
        of derived) agree with those the nodes give at this dt, to the rounding
        of the export."""
        written = float(self.metadata(name).get("dt", float("nan")))
        exact = np.broadcast_to(np.asarray(exact, dtype=np.float64), np.shape(derived))
        if not np.allclose(exact, derived, rtol=1e-5, atol=1e-7):
            self.fail(name, f"its metadata {META}.{what} disagrees with {against} at dt = {dt} "
                            f"(written with dt = {written}, or edited after export)")


def _weight(graph, name):
    node = graph.nodes[name]
    weight = np.asarray(node.weight)
    if weight.ndim != 2:
        graph.fail(name, f"the weight must be 2-dimensional, got shape {list(weight.shape)}")
    bias = np.asarray(node.bias) if isinstance(node, graph.nir.Affine) else None
    if bias is not None and bias.shape != (weight.shape[0],):
        graph.fail(name, f"the bias has shape {list(bias.shape)}, expected [{weight.shape[0]}]")
    for field, value in (("weight", weight), ("bias", bias)):
        if value is not None and not np.isfinite(value).all():
            graph.fail(name, f"its {field} has non-finite values (NaN or inf)")
    return weight, bias


# tau = dt written in float32 (snnTorch 1.0's Leaky(beta=0), or its Synaptic's
# instantaneous synapse, alpha = 0) reads back rounded, up to half a float32
# ulp (2**-24 relative) below or above dt: within a few ulps, tau is dt.
_FLOAT32_ROUNDING = 1e-6


def _decay(graph, name, field, tau, dt):
    """alpha = 1 - dt / tau of a spiking layer (tau finite and positive,
    checked): an error where tau < dt (alpha < 0) beyond float32 rounding,
    which is clamped to alpha = 0 (tau = dt)."""
    alpha = 1 - dt / tau
    if (alpha < -_FLOAT32_ROUNDING).any():
        graph.fail(name, f"{field} < dt = {dt} for {int((alpha < -_FLOAT32_ROUNDING).sum())} of "
                         f"{alpha.size} neurons: forward Euler gives a decay 1 - dt/{field} < 0 "
                         "(pass the dt the graph was made for)")
    return np.maximum(alpha, 0)


def _membrane_units(graph, name, n, dt, spiking=True):
    """(alpha, gain g = dv/dI per step, leak = dt / tau * v_leak, the constant
    drive of v per step) of a LIF, IF, LI or I node, [n] float64 each: v[t] =
    alpha v[t-1] + g I[t] + leak. A spiking layer's alpha must be in [0, 1]
    and its g positive (U = v / g, theta = v_threshold / g); a readout (a
    LeakyIntegrator) represents any alpha and g."""
    nir, node = graph.nir, graph.nodes[name]
    if isinstance(node, (nir.IF, nir.I)):
        alpha, gain, leak = np.ones(n), graph.per_neuron(name, "r", n) * dt, np.zeros(n)
    else:
        tau = graph.per_neuron(name, "tau", n, finite=False)
        if not (np.isfinite(tau).all() and (tau > 0).all()):
            graph.fail(name, "tau must be positive and finite; a neuron without leak "
                             "(alpha = 1) is an IF node (or I, without reset)")
        alpha, gain = 1 - dt / tau, graph.per_neuron(name, "r", n) * dt / tau
        if spiking:  # the layer clamps alpha into [0, 1]
            alpha = _decay(graph, name, "tau", tau, dt)
        leak = graph.per_neuron(name, "v_leak", n) * dt / tau
    if not np.isfinite(gain).all() or (spiking and not (gain > 0).all()):
        graph.fail(name, "the input gain r * dt / tau (r * dt for IF and I) must be "
                         f"{'positive and ' if spiking else ''}finite, got {_values(gain)}")
    return alpha, gain, leak


def _cuba_units(graph, name, n, dt):
    """(alpha, alpha_syn, g, leak) of a CubaLIF node, [n] float64 each, under
    forward Euler with the new current first: with J = (dt / tau_mem) * r *
    I, J[t] = alpha_syn J[t-1] + g x[t] and v[t] = alpha v[t-1] + J[t] +
    leak, where g = (dt / tau_mem) * r * (dt / tau_syn) * w_in (any finite
    value: it scales the inputs, v and the threshold stay as they are) and
    leak = dt / tau_mem * v_leak."""
    taus = {}
    for field in ("tau_syn", "tau_mem"):
        tau = graph.per_neuron(name, field, n)
        if not (tau > 0).all():
            graph.fail(name, f"{field} must be positive, got {_values(tau)}")
        taus[field] = tau
    alpha_syn = _decay(graph, name, "tau_syn", taus["tau_syn"], dt)
    alpha = _decay(graph, name, "tau_mem", taus["tau_mem"], dt)
    r, w_in = graph.per_neuron(name, "r", n), graph.per_neuron(name, "w_in", n)
    gain = (dt / taus["tau_mem"]) * r * (dt / taus["tau_syn"]) * w_in
    if not np.isfinite(gain).all():
        graph.fail(name, "the input gain (dt/tau_mem) * r * (dt/tau_syn) * w_in must be finite, "
                         f"got {_values(gain)}")
    leak = graph.per_neuron(name, "v_leak", n) * dt / taus["tau_mem"]
    return alpha, alpha_syn, gain, leak


def _check_v_reset(graph, cell, n):
    v_reset = graph.per_neuron(cell, "v_reset", n)
    if (v_reset != 0).any():
        graph.fail(cell, f"v_reset = {_values(v_reset)}: the layers reset to 0 (reset='zero'); "
                         "another reset value has no exact equivalent")


def _cycle(graph, proj, cell, spikes, n):
    """The optional recurrent cycle of a layer: from its spiking node spikes
    through one Affine/Linear back into its neuron node cell. Returns (the
    recurrent node or None, its weight, its bias, the node after the layer)."""
    nir, nodes = graph.nir, graph.nodes
    if cell in graph.succ[spikes]:
        graph.fail(cell, "a recurrent edge without a weight node is not supported")
    rec = [s for s in graph.succ[spikes] if graph.succ[s] == [cell]
           and isinstance(nodes[s], (nir.Affine, nir.Linear))]
    if len(rec) > 1:
        graph.fail(cell, f"more than one recurrent weight node: {rec}")
    rec = rec[0] if rec else None
    if sorted(graph.pred[cell]) != sorted([proj] + ([rec] if rec else [])):
        graph.fail(cell, f"its inputs are {graph.pred[cell]}: a layer reads one weight node "
                         f"('{proj}') and at most one recurrent cycle from its own spikes")
    w_rec = rec_bias = None
    if rec is not None:
        graph.only(graph.pred[rec], rec, "predecessor (the layer's spikes)")
        w_rec, rec_bias = _weight(graph, rec)
        if w_rec.shape != (n, n):
            graph.fail(rec, f"a recurrent weight must be [{n}, {n}], got {list(w_rec.shape)}")
    after = graph.only([s for s in graph.succ[spikes] if s != rec], spikes, "successor")
    return rec, w_rec, rec_bias, after


def _recurrence(layer, w_rec):
    """Without metadata: a diagonal recurrent weight is one_to_one ([N])."""
    if w_rec is not None and np.array_equal(w_rec, np.diag(np.diag(w_rec))):
        layer["options"]["recurrent"], w_rec = "one_to_one", np.diag(w_rec).copy()
    else:
        layer["options"]["recurrent"] = "all_to_all" if w_rec is not None else "none"
    layer["w_rec"] = w_rec


def _scalar_if_shared(values):
    """One value for all neurons is a scalar, as the layer's default."""
    return values[:1].reshape(()) if (values == values[0]).all() else values


def _read_layer(graph, proj, cell, dt):
    """One spiking layer: the projection proj, the neuron node cell
    (LIF/IF/CubaLIF, or LI/I followed by a Threshold) and an optional cycle
    back into cell. Returns (layer description, name of the node after it).

    A CubaLIF is a RecurrentCubaLIF layer, except a foreign one (no metadata)
    whose synapse is instantaneous (alpha_syn = 0 for every neuron: tau_syn
    = dt, or below it by float32 rounding) and whose gain is positive: then
    J[t] = I[t] + S[t-1] @ w_rec.T and the CUBA equations are the LIF's, a
    RecurrentLIF layer (one state less) represents it exactly, as for LIF."""
    nir, nodes = graph.nir, graph.nodes
    node = nodes[cell]
    w_in, bias = _weight(graph, proj)
    n = w_in.shape[0]
    if n == 0:
        graph.fail(cell, f"a spiking layer of no neurons (the weight of '{proj}' has shape "
                         f"{list(w_in.shape)})")
    if isinstance(node, nir.CubaLIF):
        alpha, alpha_syn, gain, leak = _cuba_units(graph, cell, n, dt)
        if graph.metadata(cell) is not None or (alpha_syn != 0).any() or not (gain > 0).all():
            return _read_cuba_layer(graph, proj, cell, dt, w_in, bias,
                                    (alpha, alpha_syn, gain, leak))
    elif graph.metadata(cell) is not None and "alpha_syn" in graph.metadata(cell):
        graph.fail(cell, f"its metadata {META} is a RecurrentCubaLIF layer's (it has "
                         f"'alpha_syn'), which a {graph.kind(cell)} node does not encode")
    if isinstance(node, (nir.LI, nir.I)):
        spikes = graph.only(graph.succ[cell], cell, "successor (its Threshold)")
        graph.only(graph.pred[spikes], spikes, "predecessor (its LI or I node)")
        threshold = graph.per_neuron(spikes, "threshold", n)
    else:
        spikes = cell
        _check_v_reset(graph, cell, n)
        threshold = graph.per_neuron(cell, "v_threshold", n)
    if not isinstance(node, nir.CubaLIF):
        alpha, gain, leak = _membrane_units(graph, cell, n, dt)
    offset, theta = leak / gain, threshold / gain  # in the membrane's units U = v / g
    if not np.isfinite(theta).all():
        graph.fail(cell, "the threshold in the membrane's units, v_threshold / (r * dt / tau), "
                         f"must be finite, got {_values(theta)}")
    rec, w_rec, rec_bias, after = _cycle(graph, proj, cell, spikes, n)

    extra = [b for b in (rec_bias, None if (offset == 0).all() else offset) if b is not None]
    if extra:  # a bias of the recurrent Affine and v_leak are constant drives
        bias = _plus_bias(bias, n, sum(extra))
    layer = {"cls": RecurrentLIF, "w_in": w_in, "bias": bias, "n": n, "name": cell,
             "options": {"reset": "zero" if spikes == cell else "none"}}
    if graph.metadata(cell) is None:
        _recurrence(layer, w_rec)
        layer["alpha"], layer["theta"] = _scalar_if_shared(alpha), _scalar_if_shared(theta)
        return layer, after
    return _from_metadata(graph, layer, {"alpha": alpha, "theta": theta}, w_rec, rec, dt), after


def _plus_bias(bias, n, extra):
    """bias (None: zeros) + extra, in float64: constant inputs joining the layer's bias."""
    return (np.zeros(n) if bias is None else bias.astype(np.float64)) + extra


def _read_cuba_layer(graph, proj, cell, dt, w_in, bias, units):
    """One RecurrentCubaLIF layer (reset="zero") from proj's weight and bias
    (as _read_layer read them): U = v, theta = v_threshold, the inputs
    (projection, cycle, their biases) scaled by the gain g. With to_nir's
    metadata g must be 1 (as written) and the weights are taken as they are,
    for a bitwise round trip."""
    alpha, alpha_syn, gain, leak = units
    n = w_in.shape[0]
    _check_v_reset(graph, cell, n)
    theta = graph.per_neuron(cell, "v_threshold", n)
    synaptic = (leak != 0) & (alpha_syn != 0)
    if synaptic.any():
        graph.fail(cell, f"v_leak != 0 with a real synapse (tau_syn > dt) for "
                         f"{int(synaptic.sum())} of {n} neurons: v_leak drives the membrane "
                         "directly, while a RecurrentCubaLIF's constant input (its bias) reaches "
                         "it through the synaptic current, filtered by alpha_syn; no exact "
                         "equivalent (v_leak = 0, or tau_syn = dt, imports)")
    rec, w_rec, rec_bias, after = _cycle(graph, proj, cell, cell, n)
    meta = graph.metadata(cell) is not None
    exact = meta or (gain == 1).all()  # with metadata g is 1 (checked below)

    def scale(w):
        if w is None or exact:
            return w
        return w.astype(np.float64) * (gain[:, None] if w.ndim == 2 else gain)

    if rec_bias is not None:  # a constant input at every step, t = 1 included
        bias = _plus_bias(bias, n, rec_bias)
    bias = scale(bias)
    if (leak != 0).any():  # alpha_syn = 0 there: J = I, a constant drive of v
        bias = _plus_bias(bias, n, leak)
    layer = {"cls": RecurrentCubaLIF, "w_in": scale(w_in), "bias": bias, "n": n, "name": cell,
             "options": {"reset": "zero"}}
    if not meta:
        _recurrence(layer, scale(w_rec))
        layer.update(alpha=_scalar_if_shared(alpha), alpha_syn=_scalar_if_shared(alpha_syn),
                     theta=_scalar_if_shared(theta))
        return layer, after
    layer = _from_metadata(graph, layer,
                           {"alpha": alpha, "alpha_syn": alpha_syn, "theta": theta}, w_rec,
                           rec, dt)
    if not np.allclose(gain, 1, rtol=0, atol=1e-6):
        written = float(graph.metadata(cell).get("dt", float("nan")))
        graph.fail(cell, f"its input gain (dt/tau_mem) * r * (dt/tau_syn) * w_in is "
                         f"{_values(gain)}, not the 1 to_nir writes with its metadata {META} "
                         f"(written with dt = {written}, read with dt = {dt}, or edited after "
                         "export)")
    return layer, after


def _from_metadata(graph, layer, derived, w_rec, rec, dt):
    """The exact layer from to_nir's metadata, checked against the nodes'
    own parameters (`derived`: each neuron parameter of the layer's model as
    the nodes give it), the recurrent weight included (a graph edited after
    export, or read with another dt, would otherwise import values that
    disagree with what it says)."""
    name, n = layer["name"], layer["n"]
    get = lambda key: graph.meta(name, key)  # noqa: E731
    params = NEURONS[layer["cls"]._OP].params
    exact = {p.name: graph.meta_values(name, p.name, n) for p in params}
    for p in params:  # a decay as stored may lie outside [0, 1]: the nodes hold it clamped
        stored = np.clip(exact[p.name], 0, 1) if p.decay else exact[p.name]
        graph.check_meta(name, p.name, stored, derived[p.name], dt)
    exact_theta = exact["theta"]
    reset = str(get("reset"))
    if (reset == "zero") != (layer["options"]["reset"] == "zero"):
        graph.fail(name, f"its metadata says reset='{reset}', which a "
                         f"{graph.kind(name)} node does not encode")
    recurrent = str(get("recurrent"))
    if recurrent not in ("all_to_all", "one_to_one", "none"):
        graph.fail(name, f"its metadata says recurrent='{recurrent}', which is not a recurrence")
    if w_rec is None and (recurrent != "none" or reset == "subtract"):
        graph.fail(name, f"its metadata says recurrent='{recurrent}', reset='{reset}', but it has "
                         "no recurrent cycle")
    if recurrent == "none" and w_rec is not None and reset != "subtract":
        graph.fail(name, "its metadata says recurrent='none' but it has a recurrent cycle")
    # The exact w_rec (or its diagonal) comes from the metadata; the graph's
    # recurrent weight, w_rec - diag(theta) for reset="subtract", must agree.
    minus = (np.broadcast_to(exact_theta.astype(np.float64), (n,)) if reset == "subtract"
             else np.zeros(n))
    against = f"the weight of its recurrent node '{rec}'"
    if recurrent == "none":
        if w_rec is not None:  # "subtract": the reset's -diag(theta) only
            graph.check_meta(name, "theta", np.diag(-minus), w_rec, dt, against)
        w_rec = None
    elif recurrent == "one_to_one":
        exact_w = graph.meta_values(name, "w_rec", n)
        graph.check_meta(name, "w_rec", np.diag(np.broadcast_to(exact_w, (n,)) - minus), w_rec,
                         dt, against)
        w_rec = exact_w
    elif reset == "subtract":  # w_rec - diag(theta) rounds: the exact diagonal back
        diagonal = graph.meta_values(name, "w_rec_diagonal", n, shapes=(None,))
        graph.check_meta(name, "w_rec_diagonal", diagonal - minus, np.diagonal(w_rec), dt, against)
        w_rec = w_rec.copy()
        np.fill_diagonal(w_rec, diagonal)
    layer.update(exact, w_rec=w_rec, stack=tuple(int(graph.meta_number(name, key))
                                                 for key in ("module", "layer", "num_layers")))
    flag = lambda key: graph.meta_flag(name, key)  # noqa: E731
    layer["options"] = {
        "reset": reset, "recurrent": recurrent, "detach_reset": flag("detach_reset"),
        "surrogate": str(get("surrogate")), "slope": graph.meta_number(name, "slope"),
        **{f"learn_{p.name}": flag(f"learn_{p.name}") for p in params},
        "per_neuron": flag("per_neuron"), "dropout": graph.meta_number(name, "dropout")}
    return layer


def _read_li(graph, name, n, dt, dtype):
    """A LeakyIntegrator: v itself is the output, any alpha and gain are exact."""
    values = _membrane_units(graph, name, n, dt, spiking=False)
    if graph.metadata(name) is not None:  # to_nir's exact values, if they agree
        exact = [np.asarray(graph.meta(name, key)) for key in ("alpha", "gain", "leak")]
        for key, value, derived in zip(("alpha", "gain", "leak"), exact, values):
            graph.check_meta(name, key, value, derived, dt)
        values = exact
    return LeakyIntegrator(*(torch.tensor(v, dtype=dtype) for v in values))


def _linear(w, b, dtype):
    module = nn.Linear(w.shape[1], w.shape[0], bias=b is not None, dtype=dtype)
    with torch.no_grad():
        module.weight.copy_(torch.from_numpy(w))
        if b is not None:
            module.bias.copy_(torch.from_numpy(b))
    return module


def _build_layers(group, dtype):
    """One RecurrentLIF or RecurrentCubaLIF from the descriptions of its
    consecutive layers."""
    first = group[0]
    cls = first["cls"]
    options = dict(first["options"])
    dropout = options.pop("dropout", 0.0)
    as_tensor = lambda v: torch.tensor(np.asarray(v), dtype=dtype)  # noqa: E731
    # The constructor checks the decays in [0, 1]; a trained one may lie
    # outside (the forward clamps it): the exact values are copied in below.
    params = NEURONS[cls._OP].params
    keys = tuple(p.name for p in params)
    values = {p.name: as_tensor(first[p.name]).clamp(0, 1) if p.decay else as_tensor(first[p.name])
              for p in params}
    module = cls(first["w_in"].shape[1], first["n"], bias=first["bias"] is not None,
                 num_layers=len(group), dropout=dropout if len(group) > 1 else 0.0,
                 dtype=dtype, **values, **options)
    with torch.no_grad():
        for layer, part in enumerate(group):
            for key in ("w_in", "bias", "w_rec") + keys:
                if part[key] is None:
                    continue
                name, value = module._name(key, layer), as_tensor(part[key])
                current = getattr(module, name)
                if current.shape == value.shape:
                    current.copy_(value)
                else:  # a shape other than the first layer's (0-dim w_rec, alpha, theta) stays
                    setattr(module, name,
                            nn.Parameter(value) if isinstance(current, nn.Parameter) else value)
    return module


def _stacks(parts):
    """Groups consecutive layer descriptions that to_nir wrote from one
    RecurrentLIF or RecurrentCubaLIF with num_layers > 1 and that still share
    its class, options and bias=True/False (an edited graph may not);
    everything else stays alone."""
    groups = []
    for part in parts:
        stack = part.get("stack") if isinstance(part, dict) else None
        if (stack is not None and stack[1] > 0 and groups and isinstance(groups[-1], list)
                and groups[-1][-1].get("stack") == (stack[0], stack[1] - 1, stack[2])
                and groups[-1][-1]["cls"] is part["cls"]
                and groups[-1][-1]["options"] == part["options"]
                and (groups[-1][-1]["bias"] is None) == (part["bias"] is None)):
            groups[-1].append(part)
        else:
            groups.append([part] if isinstance(part, dict) else part)
    return groups


def _node_types(nir):
    """The node types (class names) the installed nir package can read."""
    return {name for name, value in vars(nir).items()
            if isinstance(value, type) and issubclass(value, nir.NIRNode)
            and value is not nir.NIRNode}


def _read_file(nir, path):
    """nir.read(path), with errors that name the file: a missing file, one
    that is not HDF5 or not a NIR graph, node types the installed nir does
    not know (named, nested subgraphs included: nir.read itself fails with a
    bare AssertionError), and whatever else nir.read raises (as __cause__)."""
    import h5py  # a dependency of nir

    shown = os.fspath(path)
    where = f"torch_ext.from_nir: '{shown}'"
    if not os.path.exists(path):
        raise FileNotFoundError(f"{where}: no such file")
    if not os.path.isfile(path):
        raise ValueError(f"{where} is not a file (a NIR file is one HDF5 file, as nir.write "
                         "writes it)")
    try:
        is_hdf5 = h5py.is_hdf5(path)
    except OSError as error:  # unreadable
        raise ValueError(f"{where} cannot be read: {error}") from error
    if not is_hdf5:
        raise ValueError(f"{where} is not an HDF5 file, so not a NIR file (nir.write writes HDF5)")
    known = _node_types(nir)
    try:
        with h5py.File(path, "r") as f:
            root = f.get("node")
            if not isinstance(root, h5py.Group) or not isinstance(root.get("type"), h5py.Dataset):
                raise ValueError(f"{where} is an HDF5 file but not a NIR graph: it has no "
                                 f"'node' group with a 'type' (it has {sorted(f.keys())})")
            todo = [("", root)]
            while todo:  # every node, nested subgraphs included
                name, group = todo.pop()
                kind = group.get("type")
                kind = kind[()] if isinstance(kind, h5py.Dataset) else None
                kind = kind.decode("utf8", "replace") if isinstance(kind, bytes) else kind
                label = f"node '{name}'" if name else "the graph's root node"
                if not isinstance(kind, str):
                    raise ValueError(f"{where}: {label} has no node type: not a NIR graph")
                if kind not in known:
                    raise ValueError(f"{where}: {label} has type '{kind}', which the installed "
                                     f"nir package ({getattr(nir, 'version', '?')}) does not "
                                     "know")
                if kind == "NIRGraph":
                    nodes = group.get("nodes")
                    if not isinstance(nodes, h5py.Group):
                        raise ValueError(f"{where}: {label} is a NIRGraph without nodes: not a "
                                         "NIR graph")
                    todo += [(f"{name}.{key}" if name else key, value)
                             for key, value in nodes.items() if isinstance(value, h5py.Group)]
    except ValueError:
        raise
    except Exception as error:  # noqa: BLE001  (h5py's errors: named, with the cause)
        raise ValueError(f"{where} cannot be read as a NIR file: {type(error).__name__}: "
                         f"{error}") from error
    try:
        return nir.read(path)
    except Exception as error:  # noqa: BLE001  (nir.read's own, kept as the cause)
        raise ValueError(f"{where}: nir.read failed: {type(error).__name__}: {error}") from error


def from_nir(graph_or_path, dt=1e-4):
    """Imports a NIR graph (or a file ``nir.write`` wrote) as torch modules.

    It reads a chain from the ``Input`` node to the ``Output`` node (nested
    subgraphs, as some exporters write recurrent layers, are inlined):

    - ``Affine``/``Linear`` -> ``CubaLIF``, with an optional cycle from its
      spikes through one ``Linear``/``Affine`` back into it: a
      ``RecurrentCubaLIF`` layer (``reset="zero"``; a diagonal recurrent
      weight is ``recurrent="one_to_one"``), hidden or the last layer;
    - ``Affine``/``Linear`` -> ``LIF`` or ``IF``, or -> ``LI``/``I`` ->
      ``Threshold``, with an optional cycle the same way: a ``RecurrentLIF``
      layer (``reset="zero"`` for LIF/IF, ``"none"`` for LI/I + Threshold);
      so is a ``CubaLIF`` without this package's metadata whose synapse is
      instantaneous (tau_syn = dt for every neuron: alpha_syn = 0, where the
      CUBA equations are the LIF's) and whose gain is positive;
    - ``Affine``/``Linear`` followed by anything else: an ``nn.Linear``;
    - ``LI``/``I`` without a Threshold: a ``LeakyIntegrator`` (readouts).

    Under forward Euler with ``dt``, a LIF-type neuron's membrane U = v / g
    with g = r * dt / tau: alpha = 1 - dt / tau, theta = v_threshold / g, and
    v_leak / r plus the bias of a recurrent ``Affine`` join the layer's bias.
    A ``CubaLIF``'s membrane U is v: alpha = 1 - dt / tau_mem, alpha_syn = 1 -
    dt / tau_syn, theta = v_threshold, and every input of the node (the
    projection, the cycle, the bias of either, which is a constant input at
    every step) is scaled per neuron by g = (dt / tau_mem) * r * (dt /
    tau_syn) * w_in. The imported module spikes like the graph. A graph
    :func:`to_nir` wrote carries alpha (alpha_syn), theta and the
    training-only options in its metadata: the module comes back exactly
    (bitwise the same spikes and gradients, stacks as one ``num_layers``
    module), after a check that the metadata still agrees with the nodes at
    this ``dt``. Other graphs get the layer's defaults for what NIR does not
    say (``surrogate="sigmoid"``, ``detach_reset=False``, the neuron
    parameters as buffers, 0-dim when all neurons share the value). The
    dtype is float64 if a weight is float64, else float32. Modules are
    time-major (``batch_first=False``).

    Args:
        graph_or_path (nir.NIRGraph or str or os.PathLike): the graph, or the
            path of a NIR file.
        dt (float): the time step, in seconds, to discretise with. Default:
            ``1e-4`` (snnTorch's and SpikingJelly's).

    Returns:
        The module: a ``RecurrentLIF``, ``RecurrentCubaLIF``, ``nn.Linear`` or
        ``LeakyIntegrator`` for a chain of one, else a ``SpikingSequential``
        (an ``nn.Sequential`` whose layers pass their spikes on).

    Raises:
        ImportError: the ``nir`` package is not installed.
        TypeError: ``graph_or_path`` is neither a ``nir.NIRGraph`` nor a path.
        FileNotFoundError: no file at the path.
        ValueError: naming the file: not HDF5, not a NIR graph, a node type
            the installed ``nir`` does not know (naming the node), anything
            else ``nir.read`` raises (kept as ``__cause__``). Naming the node,
            in one line: what has no exact equivalent (``v_reset`` != 0, on a
            ``CubaLIF`` ``v_leak`` != 0 with tau_syn > dt, ``Delay``,
            convolutions, pooling, ``Flatten``, ``Scale``, ``CubaLI``, a
            ``LIF`` with an infinite tau, which is an ``IF``, in a spiking
            layer tau, tau_mem or tau_syn < dt or, for LIF-type nodes, a
            non-positive gain), NaN or inf values, parameter arrays not of the
            layer's size, a graph that is not a chain (branches, several
            inputs, nodes off the chain, edges to missing nodes), a neuron
            without a weight node before it, metadata that is incomplete or
            disagrees with the nodes (the recurrent weight and a CubaLIF's
            gain too).

    Example::

        >>> graph = nir.read("network.nir")          # e.g. written by snnTorch
        >>> net = torch_ext.from_nir(graph)
        >>> out = net(torch.randn(100, 8, graph.nodes["input"].input_type["input"][0]))
    """
    nir = _import_nir("from_nir")
    dt = _check_dt(dt, "from_nir")
    if isinstance(graph_or_path, (str, os.PathLike)):
        graph_or_path = _read_file(nir, graph_or_path)
    if not isinstance(graph_or_path, nir.NIRGraph):
        raise TypeError("torch_ext.from_nir: argument 'graph_or_path' must be a nir.NIRGraph or "
                        f"the path of a NIR file, got {type(graph_or_path).__name__}")
    graph = _Graph(nir, *_flatten(nir, graph_or_path))
    for name in graph.nodes:
        if graph.kind(name) in _UNSUPPORTED:
            graph.fail(name, _UNSUPPORTED[graph.kind(name)])
    inputs = [k for k, v in graph.nodes.items() if isinstance(v, nir.Input)]
    outputs = [k for k, v in graph.nodes.items() if isinstance(v, nir.Output)]
    if len(inputs) != 1 or len(outputs) != 1:
        raise ValueError("torch_ext.from_nir: the graph must have one Input and one Output node, "
                         f"has {inputs or 'no Input'} and {outputs or 'no Output'}")
    weights = [np.asarray(v.weight) for v in graph.nodes.values()
               if isinstance(v, (nir.Affine, nir.Linear))]
    dtype = torch.float64 if any(w.dtype == np.float64 for w in weights) else torch.float32
    np_dtype = np.float64 if dtype == torch.float64 else np.float32

    # A walk along the chain; every node on it has one predecessor (a layer's
    # neuron node also its recurrent one), so the walk cannot loop.
    parts = []
    size = int(np.asarray(graph.nodes[inputs[0]].input_type["input"]).prod())
    current = graph.only(graph.succ[inputs[0]], inputs[0], "successor")
    while current != outputs[0]:
        node = graph.nodes[current]
        graph.only(graph.pred[current], current, "predecessor")
        if isinstance(node, (nir.Affine, nir.Linear)):
            w, b = _weight(graph, current)
            if w.shape[1] != size:
                graph.fail(current, f"its weight takes {w.shape[1]} features, the node before "
                                    f"it gives {size}")
            after = graph.only(graph.succ[current], current, "successor")
            spiking = isinstance(graph.nodes[after], (nir.LIF, nir.IF, nir.CubaLIF)) or (
                isinstance(graph.nodes[after], (nir.LI, nir.I))
                and any(isinstance(graph.nodes[s], nir.Threshold) for s in graph.succ[after]))
            if spiking:
                layer, current = _read_layer(graph, current, after, dt)
                for key in ("w_in", "bias", "w_rec"):
                    if layer[key] is not None:
                        layer[key] = np.asarray(layer[key]).astype(np_dtype)
                parts.append(layer)
            else:
                parts.append(_linear(w.astype(np_dtype), None if b is None else b.astype(np_dtype),
                                     dtype))
                current = after
            size = w.shape[0]
        elif isinstance(node, (nir.LI, nir.I)):
            parts.append(_read_li(graph, current, size, dt, dtype))
            current = graph.only(graph.succ[current], current, "successor")
        elif isinstance(node, (nir.LIF, nir.IF, nir.CubaLIF)):
            graph.fail(current, "a spiking layer starts with an Affine or Linear node (its w_in)")
        else:
            graph.fail(current, "not supported here: expected Affine, Linear, LIF, IF, CubaLIF, "
                                "LI or I (+ Threshold)")
    if not parts:
        raise ValueError("torch_ext.from_nir: the graph has no node between Input and Output")
    # The walk checked every node's successors, so what the Input reaches is
    # the chain and its cycles; the Output and the nodes it did not reach
    # could still add inputs the modules would not compute.
    graph.only(graph.pred[outputs[0]], outputs[0], "predecessor")
    reached, frontier = set(inputs), list(inputs)
    while frontier:
        for name in graph.succ[frontier.pop()]:
            if name not in reached:
                reached.add(name)
                frontier.append(name)
    for name in graph.nodes:
        if name not in reached:
            graph.fail(name, "not on the chain from the Input to the Output: from_nir reads one "
                             "chain of layers")
    modules = [_build_layers(g, dtype) if isinstance(g, list) else g for g in _stacks(parts)]
    return modules[0] if len(modules) == 1 else SpikingSequential(*modules)
