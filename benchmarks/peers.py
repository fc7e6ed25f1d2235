"""The implementations the benchmark compares, all computing the same math:
reset by subtraction of the previous step's spike, reset detached, sigmoid
surrogate with slope 25, recurrent weights with a bias, and an input projection
done once for all T steps. Each returns a function (x [T, B, F]) -> (spikes, membrane), both [T, B, N].
`fused`, `reference` and `python_function` take the layer's name (MODELS):
the adaptive layer's compute its configuration (ADAPTIVE_OPTIONS, learnable
per-neuron alpha, beta, a, b) and return (spikes, membrane, adaptation); the
current-based layer's the LIF configuration with a synapse (alpha_syn) and
return (spikes, membrane, current).

Besides them, `floor` times the matrix products alone that a dense
implementation has to compute."""
import torch

import torch_ext
from benchmarks.python_function import (RecurrentAdLIFFunction, RecurrentCubaLIFFunction,
                                        RecurrentLIFFunction)

OPTIONS = dict(reset="subtract", detach_reset=True, surrogate="sigmoid", slope=25.0)


def make_params(F, N, device, dtype=torch.float32, seed=0):
    """Weights scaled for a spike rate of roughly 10-20 % on randn inputs."""
    g = torch.Generator().manual_seed(seed)
    def p(*shape, scale):
        return (torch.randn(*shape, generator=g) * scale).to(device, dtype).requires_grad_()
    return {"w_in": p(N, F, scale=1.5 / F ** 0.5), "w_rec": p(N, N, scale=0.5 / N ** 0.5),
            "bias": p(N, scale=0.1), "alpha": 0.9, "theta": 1.0}


def _snntorch_loop(params, make_neuron):
    """snnTorch's neuron `make_neuron(snntorch, surrogate, N)` with the same
    math, stepped in a Python loop (its state: spk, mem, or spk, syn, mem);
    its outputs in this package's order (spikes, membrane[, current]).
    Returns None when snnTorch is not installed."""
    try:
        import snntorch
        from snntorch import surrogate
    except ImportError:
        return None
    N = params["w_rec"].shape[0]
    neuron = make_neuron(snntorch, surrogate, N).to(params["w_rec"].device, params["w_rec"].dtype)
    # The recurrent Linear uses our very tensors (not copies), so gradients
    # reach params["w_rec"] and params["bias"] as they do for the other peers.
    del neuron.recurrent.weight, neuron.recurrent.bias
    neuron.recurrent.weight, neuron.recurrent.bias = params["w_rec"], params["bias"]

    def run(x):
        current = x @ params["w_in"].T if params["w_in"] is not None else x
        state = neuron.reset_mem()
        steps = []
        for current_t in current.unbind(0):  # not current[t]: see torch_ext/reference.py
            state = neuron(current_t, *state)
            steps.append(state)
        spk, *rest = (torch.stack(values) for values in zip(*steps))
        return (spk, *reversed(rest))  # (spk, syn, mem) -> spikes, membrane, current

    return run


def snntorch_rleaky(params):
    """snnTorch's RLeaky with the same math (None without snnTorch)."""
    return _snntorch_loop(params, lambda snntorch, surrogate, N: snntorch.RLeaky(
        beta=params["alpha"], threshold=params["theta"], linear_features=N, all_to_all=True,
        reset_mechanism="subtract", reset_delay=True,
        spike_grad=surrogate.sigmoid(slope=OPTIONS["slope"])))


ADAPTIVE_OPTIONS = dict(reset="zero", detach_reset=True, surrogate="sigmoid", slope=25.0)


def make_adaptive_params(F, N, device, dtype=torch.float32, seed=0):
    """The adaptive layer's weights and per-neuron parameters as RecurrentAdLIF
    initialises them (tau_u in [5, 25], tau_w in [60, 300], a in [0, 1] and
    b in [0, 2] times q = 120), learnable; w_in scaled for a spike rate of
    roughly 10-20 % on randn inputs."""
    g = torch.Generator().manual_seed(seed)

    def p(values):
        return values.to(device, dtype).requires_grad_()

    def uniform(low, high):
        return low + (high - low) * torch.rand(N, generator=g)
    return {"w_in": p(torch.randn(N, F, generator=g) * 12.0 / F ** 0.5),
            "w_rec": p(torch.randn(N, N, generator=g) * 1.0 / N ** 0.5),
            "bias": p(torch.randn(N, generator=g) * 0.1),
            "alpha": p(torch.exp(-1 / uniform(5, 25))), "beta": p(torch.exp(-1 / uniform(60, 300))),
            "a": p(120 * uniform(0, 1)), "b": p(120 * uniform(0, 2)), "theta": 1.0}


def make_cuba_params(F, N, device, dtype=torch.float32, seed=0):
    """The LIF benchmark's weights with a synapse, alpha_syn = 0.8: it sums
    the input over about 5 steps (a constant bias over 50 with alpha = 0.9),
    so the weights are scaled by 0.3 and the bias by 0.1 for the LIF
    benchmark's spike rate (16-17 % at its targets)."""
    params = make_params(F, N, device, dtype, seed)
    with torch.no_grad():
        params["w_in"].mul_(0.3)
        params["w_rec"].mul_(0.3)
        params["bias"].mul_(0.1)
    return {**params, "alpha_syn": 0.8}


def snntorch_rsynaptic(params):
    """snnTorch's RSynaptic with the same math (None without snnTorch)."""
    return _snntorch_loop(params, lambda snntorch, surrogate, N: snntorch.RSynaptic(
        alpha=params["alpha_syn"], beta=params["alpha"], threshold=params["theta"],
        linear_features=N, all_to_all=True, reset_mechanism="subtract", reset_delay=True,
        spike_grad=surrogate.sigmoid(slope=OPTIONS["slope"])))


def floor(params, x_grad=True):
    """run(x, backward): only the matrix products that a dense implementation
    cannot avoid, in the dtype of the others, on operands of the right shapes
    (their values do not change the time of a product):

    - forward: the input projection x @ w_in.T over all T*B rows (the
      forward recurrence is not a dense product: spikes are binary and
      sparse, so an implementation may add only the weight columns of the
      neurons that fired);
    - backward: one [B, N] x [N, N] product per step before the last for the
      reverse recurrence, then grad_x = gU @ w_in, grad_w_in = gU.T @ x and
      grad_w_rec = gU.T @ S, each over all T*B rows.

    Element-wise work (decay, threshold, surrogate) is left out, so the floor
    is a lower bound for every implementation that computes these products
    densely. The adaptive layer needs the same products (its per-neuron
    parameter gradients are element-wise sums). The fused op does not quite: grad_w_rec = gU.T @ S has binary,
    sparse S too, and it adds a row of gU per spike only. Without `x_grad`
    (an input that needs no gradient) grad_x is left out."""
    w_in, w_rec = params["w_in"].detach(), params["w_rec"].detach()

    @torch.no_grad()
    def run(x, backward):
        T, B, F = x.shape
        N = w_in.shape[0]
        rows = x.detach().reshape(T * B, F)
        current = rows @ w_in.T  # also stands in for gU and S below: same shape
        per_step = current.view(T, B, N)
        out = current.new_empty(B, N)  # no allocation inside the timed loop
        if backward:
            for t in range(T - 1, 0, -1):
                torch.mm(per_step[t], w_rec, out=out)
            if x_grad:
                current @ w_in  # grad_x
            current.T @ rows  # grad_w_in
            current.T @ current  # grad_w_rec
    return run


# Each layer, by the benchmark's --model name: its op, its neuron parameters
# in the op's order, the options the peers compute, its hand-written Function,
# its low-memory flag, make_params(F, N, device) and its snnTorch peer
# (params -> fn(x), or None where snnTorch has no such neuron).
MODELS = {
    "lif": dict(op="recurrent_lif", neuron=("alpha", "theta"), options=OPTIONS,
                function=RecurrentLIFFunction, low_memory="save_membrane",
                make_params=make_params, snntorch=snntorch_rleaky, layer="RecurrentLIF",
                snntorch_name="RLeaky"),
    "adaptive": dict(op="recurrent_adlif", neuron=("alpha", "beta", "a", "b", "theta"),
                      options=ADAPTIVE_OPTIONS,
                     function=RecurrentAdLIFFunction, low_memory="save_state",
                     make_params=make_adaptive_params, snntorch=None, layer="RecurrentAdLIF",
                     snntorch_name=None),
    "cuba": dict(op="recurrent_cubalif", neuron=("alpha", "alpha_syn", "theta"), options=OPTIONS,
                 function=RecurrentCubaLIFFunction, low_memory="save_state",
                 make_params=make_cuba_params, snntorch=snntorch_rsynaptic,
                 layer="RecurrentCubaLIF", snntorch_name="RSynaptic"),
}


def _tensors(params, model):
    """The op's arguments after x: w_in, w_rec, bias and the neuron's parameters."""
    return (params["w_in"], params["w_rec"], params["bias"],
            *(params[k] for k in MODELS[model]["neuron"]))


def fused(params, model="lif", low_memory=False):
    """The fused op; low_memory: it keeps only the spikes (save_membrane or
    save_state=False), the backward recomputes the states."""
    spec = MODELS[model]
    op = getattr(torch_ext, spec["op"])
    flag = {spec["low_memory"]: not low_memory}
    return lambda x: op(x, *_tensors(params, model), **flag, **spec["options"])


def reference(params, model="lif", compile=False):
    """The op's plain-PyTorch reference, the expert autograd loop."""
    fn = getattr(torch_ext, MODELS[model]["op"] + "_ref")
    fn = torch.compile(fn) if compile else fn
    return lambda x: fn(x, *_tensors(params, model), **MODELS[model]["options"])


def python_function(params, model="lif"):
    """The hand-written autograd.Function (python_function.py)."""
    spec = MODELS[model]
    return lambda x: spec["function"].apply(x, *_tensors(params, model), spec["options"]["slope"])
