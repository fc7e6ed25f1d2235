"""Test helpers written once for every neuron model of the registry
(torch_ext._neurons.NEURONS): random inputs of any model, its fused op and
reference, gradients of a random loss, and the comparison of the two."""
import collections

import torch

import torch_ext
from torch_ext._neurons import NEURONS

OPS = tuple(NEURONS)  # "recurrent_lif", "recurrent_adlif", "recurrent_cubalif"
FUSED = {op: getattr(torch_ext, op) for op in OPS}
REFERENCE = {op: getattr(torch_ext, op + "_ref") for op in OPS}
RESETS = ("subtract", "zero", "none")
SURROGATES = ("sigmoid", "fast_sigmoid", "atan", "triangle")
RECURRENCES = ("all_to_all", "one_to_one", "none")

# Where each parameter's random values lie: decays in (0, 1), the adaptive
# couplings of either sign (the op takes any finite value), thresholds around 1.
PARAM_RANGES = dict(alpha=(0.45, 0.85), beta=(0.6, 0.95), a=(-0.3, 0.6), b=(0.2, 1.2),
                    alpha_syn=(0.3, 0.7), theta=(0.8, 1.2))
PARAM_FLOATS = dict(alpha=0.6, beta=0.85, a=0.3, b=0.4, alpha_syn=0.5, theta=1.0)
# Input scales that give each model a non-trivial spike rate: the adaptive
# neuron takes its input with the gain 1 - alpha, the CUBA neuron sums it
# over about 1 / (1 - alpha_syn) steps.
INPUT_SCALE = dict(recurrent_lif=1.0, recurrent_adlif=2.5, recurrent_cubalif=0.6)


def args_type(op):
    """The op's positional tensor arguments as a NamedTuple type (iterable,
    so fn(*args) works; args._replace(s0=...) gives a copy)."""
    neuron = NEURONS[op]
    return collections.namedtuple(
        f"{op}_args", ("x", "w_in", "w_rec", "bias", *neuron.param_names, *neuron.initial_names))


def make_inputs(op, T=10, B=3, F=5, N=4, *, dtype=torch.float64, w_in=True,
                recurrent="all_to_all", bias=True, params="neuron", state=False,
                requires_grad=True, seed=0, device="cpu"):
    """Random inputs of `op` giving a non-trivial spike rate. params:
    "neuron" (each parameter an [N] tensor), "scalar" (0-dim tensors),
    "float" (Python floats), or a dict name -> one of those. state: the
    initial states (random) and s0 (binary, as a continued sequence passes it)."""
    neuron = NEURONS[op]
    g = torch.Generator().manual_seed(seed)

    def leaf(t):
        return t.to(dtype=dtype, device=device).requires_grad_(requires_grad)

    def randn(*shape, scale=1.0, shift=0.0):
        return leaf(torch.randn(shape, generator=g, dtype=torch.float64) * scale + shift)

    def uniform(shape, low, high):
        return leaf(torch.rand(shape, generator=g, dtype=torch.float64) * (high - low) + low)

    scale = INPUT_SCALE[op]
    F = F if w_in else N
    x = randn(T, B, F, scale=1.5 * scale, shift=0.4 * scale)
    w_in = randn(N, F, scale=1.2 / F ** 0.5) if w_in else None
    w_rec = {"all_to_all": lambda: randn(N, N, scale=0.6 * scale / N ** 0.5),
             "one_to_one": lambda: randn(N, scale=0.6 * scale), "none": lambda: None}[recurrent]()
    bias = randn(N, scale=0.4 * scale, shift=0.2 * scale) if bias else None
    kinds = params if isinstance(params, dict) else dict.fromkeys(neuron.param_names, params)
    values = {}
    for name in neuron.param_names:
        low, high = PARAM_RANGES[name]
        kind = kinds[name]
        values[name] = (PARAM_FLOATS[name] if kind == "float"
                        else uniform((N,) if kind == "neuron" else (), low, high))
    initial = dict.fromkeys(neuron.initial_names)
    if state:
        for name in neuron.initial_names[:-1]:
            initial[name] = randn(B, N, scale=0.8)
        initial["s0"] = leaf((torch.rand(B, N, generator=g) > 0.5).double())
    return args_type(op)(x, w_in, w_rec, bias, **values, **initial)


def grad_inputs(args):
    return [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]


def grad_names(args):
    return [name for name, a in zip(args._fields, args)
            if isinstance(a, torch.Tensor) and a.requires_grad]


def run_with_grads(fn, args, seed=1, **options):
    """The outputs and the gradients of a random linear function of all of them."""
    outputs = fn(*args, **options)
    g = torch.Generator().manual_seed(seed)
    compute = outputs[1].dtype
    loss = sum((out.to(compute) * torch.randn(out.shape, generator=g, dtype=torch.float64)
                .to(device=out.device, dtype=compute)).sum() for out in outputs)
    inputs = grad_inputs(args)
    if not loss.requires_grad:  # the reference's empty outputs (T = 0) have no graph
        return outputs, [torch.zeros_like(a) for a in inputs]
    grads = torch.autograd.grad(loss, inputs, allow_unused=True)
    return outputs, [torch.zeros_like(a) if g is None else g for a, g in zip(inputs, grads)]


def assert_matches_reference(op, args, rtol=1e-10, atol=1e-10, **options):
    """The fused op and the reference: the same spikes, states and gradient
    of every tensor argument, in float64 (up to rounding: atol relative to
    the tensor's largest entry where that is above 1, since an entry that is
    a cancelling sum of many terms carries their rounding, not its own).
    Returns the spikes."""
    outputs, g_f = run_with_grads(FUSED[op], args, **options)
    ref, g_r = run_with_grads(REFERENCE[op], args, **options)
    theta = args.theta.detach() if isinstance(args.theta, torch.Tensor) else args.theta
    # No membrane within rounding of the threshold, where the two could differ by a spike.
    assert (ref[1].detach() - theta).abs().min() > 1e-8, "pick inputs without near-ties"
    assert torch.equal(outputs[0], ref[0])
    def scaled(want):
        finite = want.detach()[want.detach().isfinite()]
        return atol * max(1.0, finite.abs().max().item() if finite.numel() else 0.0)

    for state, got, want in zip(NEURONS[op].states, outputs[1:], ref[1:]):
        torch.testing.assert_close(got, want, rtol=rtol, atol=scaled(want), msg=state.output)
    for name, got, want in zip(grad_names(args), g_f, g_r):
        torch.testing.assert_close(got, want, rtol=rtol, atol=scaled(want),
                                   msg=lambda m, name=name: f"gradient of {name}: {m}")
    return outputs[0]
