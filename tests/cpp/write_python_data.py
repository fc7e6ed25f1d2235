"""The Python step of the C++ tests (ctest runs it first, as a fixture).

    python tests/cpp/write_python_data.py OUT_DIR

Writes into OUT_DIR:
- digits.pt: scikit-learn's handwritten digits as the Python demo feeds them
  ([n, T=16, 8] row-by-row sequences in [0, 1], labels, the demo's
  train/test split), for the C++ example csrc/examples/train_digits.cpp;
- module_<case>.pt, one per case below: a torch_ext.RecurrentLIF built in
  Python (its constructor options, its state_dict), an input, a state and
  lengths, and what the Python module returns for them: spikes, the final
  state and the gradient of a fixed loss with respect to every parameter and
  the input. tests/cpp/test_module.cpp builds the C++ module from the same
  options, loads the state_dict by name and must return the same.
- adaptive_<case>.pt, the same for torch_ext.RecurrentAdLIF (ADAPTIVE_CASES;
  its state has three parts, v, a, s), for tests/cpp/test_adlif.cpp;
- cuba_<case>.pt, the same for torch_ext.RecurrentCubaLIF (CUBA_CASES; state
  u, j, s), for tests/cpp/test_neurons.cpp;
- state_dict.pt: one module's state_dict alone, as a user saves it for C++
  (torch.save(dict(module.state_dict()), path)), for torch_ext::load_state_dict;
  ordered_state_dict.pt: the same without dict(), which LibTorch cannot read
  (the error must say what to do).
"""
import sys
from pathlib import Path

import torch

import torch_ext
from torch_ext.demo import load_digits_sequences

# name -> (constructor options, T, B, with state, with lengths, unbatched)
# Every option the C++ module has, in float64 (the comparison is exact up to
# summation order).
CASES = {
    "default": (dict(), 9, 3, False, False, False),
    "stack_state_lengths": (dict(num_layers=3, learn_alpha=True, per_neuron=True), 8, 4,
                            True, True, False),
    "one_to_one_zero_reset": (dict(recurrent="one_to_one", reset="zero", detach_reset=True,
                                   surrogate="atan", learn_theta=True), 10, 2, True, False, False),
    "feed_forward_batch_first": (dict(recurrent="none", bias=False, batch_first=True,
                                      surrogate="fast_sigmoid", slope=3.0, alpha=0.8,
                                      theta=0.7), 7, 3, False, True, False),
    "unbatched_stack": (dict(num_layers=2, reset="none", surrogate="triangle",
                             save_membrane=False, learn_alpha=True, learn_theta=True), 6, 1,
                        True, False, True),
    # Dropout in eval mode is the identity (in training the masks are random).
    "stack_dropout_eval": (dict(num_layers=2, dropout=0.5, recurrent="one_to_one"), 8, 3,
                           False, True, False),
    # Recurrent delays: the state's spikes are the spike history [(L,) D, (B,) N].
    "delays_axonal_stack_state_lengths": (dict(num_layers=2, recurrent_delays="axonal",
                                               max_delay=4, delay_sigma=0.7,
                                               learn_delay_spread=True), 9, 4, True, True, False),
    "delays_synaptic_unbatched": (dict(recurrent_delays="synaptic", max_delay=3, delay_sigma=0.3,
                                       delay_init_std=2.0), 8, 1, True, False, True),
}


# The adaptive module's cases, in the same form.
ADAPTIVE_CASES = {
    "default": (dict(), 9, 3, False, False, False),
    "stack_state_lengths": (dict(num_layers=2, tau_u_range=(3.0, 9.0), q=30.0), 8, 4,
                            True, True, False),
    "one_to_one_subtract": (dict(recurrent="one_to_one", reset="subtract", detach_reset=False,
                                 surrogate="atan", theta=0.8, dt=0.5), 10, 2, True, False, False),
    "feed_forward_batch_first": (dict(recurrent="none", bias=False, batch_first=True,
                                      surrogate="fast_sigmoid", slope=3.0, a_range=(0.1, 0.4),
                                      b_range=(0.5, 1.0), tau_w_range=(20.0, 40.0)), 7, 3,
                                 False, True, False),
    "unbatched_stack": (dict(num_layers=2, reset="none", surrogate="triangle"), 6, 1, True,
                        False, True),
    "delays_synaptic_state_lengths": (dict(recurrent_delays="synaptic", max_delay=3,
                                           delay_sigma=0.5, batch_first=True), 8, 3, True, True,
                                      False),
}


# The current-based module's cases, in the same form.
CUBA_CASES = {
    "default": (dict(), 9, 3, False, False, False),
    "stack_state_lengths": (dict(num_layers=2, learn_alpha=True, learn_alpha_syn=True,
                                 per_neuron=True, alpha_syn=0.6), 8, 4, True, True, False),
    "one_to_one_zero_reset": (dict(recurrent="one_to_one", reset="zero", detach_reset=True,
                                   surrogate="atan", learn_theta=True), 10, 2, True, False, False),
    "feed_forward_batch_first": (dict(recurrent="none", bias=False, batch_first=True,
                                      surrogate="fast_sigmoid", slope=3.0, alpha=0.8,
                                      alpha_syn=0.3, theta=0.7, save_state=False), 7, 3, False,
                                 True, False),
    "unbatched_stack": (dict(num_layers=2, reset="none", surrogate="triangle"), 6, 1, True,
                        False, True),
    "delays_axonal_one_to_one": (dict(recurrent="one_to_one", recurrent_delays="axonal",
                                      max_delay=5, delay_sigma=1.0, learn_delay_spread=True),
                                 10, 2, True, True, False),
}

LAYERS = {"lif": torch_ext.RecurrentLIF, "adaptive": torch_ext.RecurrentAdLIF,
          "cuba": torch_ext.RecurrentCubaLIF}
# Input weights scaled for a non-trivial spike rate (the adaptive neuron's
# input gain is 1 - alpha; the current-based one sums its input over steps).
DRIVE = {"lif": 2.5, "adaptive": 8.0, "cuba": 1.2}


def module_case(options, T, B, with_state, with_lengths, unbatched, seed, kind="lif"):
    torch.manual_seed(seed)
    F, N = 5, 6
    adaptive = kind == "adaptive"
    module = LAYERS[kind](F, N, dtype=torch.float64, **options).eval()
    with torch.no_grad():  # stronger drive than the default initialisation: more spikes
        for name, p in module.named_parameters():
            if name.startswith("w_in"):
                p.mul_(DRIVE[kind])
            if name.startswith(("alpha", "theta")):
                p.add_(torch.rand_like(p) * 0.1)
            if adaptive and name.startswith("bias"):  # a drive the adaptation cannot silence
                p.fill_(1.5)
            if name.startswith("delay_spread"):  # per-neuron spreads, not the initial zeros
                p.normal_()
    batch_first = options.get("batch_first", False)
    L = options.get("num_layers", 1)
    x_shape = [T, F] if unbatched else ([B, T, F] if batch_first else [T, B, F])
    x = torch.randn(x_shape, dtype=torch.float64).requires_grad_()
    state = None
    if with_state:  # (u, s), (v, a, s) or (u, j, s): real values, binary spikes
        shape = ([L] if L > 1 else []) + ([] if unbatched else [B]) + [N]
        real = [torch.randn(shape, dtype=torch.float64) * 0.5
                for _ in range(len(module._STATE) - 1)]
        if module.recurrent_delays is not None:  # the spike history
            shape = ([L] if L > 1 else []) + [module.max_delay] + shape[len(shape) - (
                1 if unbatched else 2):]
        state = (*real, (torch.rand(shape) > 0.5).double())
    lengths = torch.randint(0, T + 1, (B,)) if with_lengths else None
    if lengths is not None:
        lengths[0] = T  # one full row, and (for B > 2) likely a short one
    spikes, final = module(x, state, lengths)
    # A loss that reaches every output, the final state included.
    g = torch.Generator().manual_seed(seed + 1)
    outputs = (spikes, *final)
    weights = [torch.randn(t.shape, dtype=torch.float64, generator=g) for t in outputs]
    loss = sum((w * t).sum() for w, t in zip(weights, outputs))
    names = [name for name, _ in module.named_parameters()]
    grads = torch.autograd.grad(loss, [p for _, p in module.named_parameters()] + [x])
    case = {
        "options": dict(in_features=F, hidden_size=N, **options),
        "state_dict": {k: v.detach().clone() for k, v in module.state_dict().items()},
        "x": x.detach(),
        "state": list(state) if state else None,
        "lengths": lengths,
        "loss_weights": weights,
        "spikes": spikes.detach(), "final_state": [t.detach() for t in final],
        "grads": dict(zip(names, grads[:-1])), "grad_x": grads[-1],
    }
    if kind == "lif":  # the names tests/cpp/test_module.cpp reads
        case.update(u0=state[0] if state else None, s0=state[1] if state else None,
                    u=final[0].detach(), s=final[1].detach())
    return case


def main(out):
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    train, test = load_digits_sequences(seed=0)
    torch.save({"x_train": train.tensors[0], "y_train": train.tensors[1],
                "x_test": test.tensors[0], "y_test": test.tensors[1]}, out / "digits.pt")
    for seed, (name, case) in enumerate(CASES.items()):
        torch.save(module_case(*case, seed=seed), out / f"module_{name}.pt")
    for seed, (name, case) in enumerate(ADAPTIVE_CASES.items()):
        case = module_case(*case, seed=seed, kind="adaptive")
        # Python tuples are pickled as tuples; the C++ options take lists.
        case["options"] = {k: list(v) if isinstance(v, tuple) else v
                           for k, v in case["options"].items()}
        torch.save(case, out / f"adaptive_{name}.pt")
    for seed, (name, case) in enumerate(CUBA_CASES.items()):
        torch.save(module_case(*case, seed=seed, kind="cuba"), out / f"cuba_{name}.pt")
    layer = torch_ext.RecurrentLIF(3, 4, num_layers=2, learn_alpha=True)
    torch.save(dict(layer.state_dict()), out / "state_dict.pt")
    torch.save(layer.state_dict(), out / "ordered_state_dict.pt")  # LibTorch cannot read this
    print(f"wrote digits.pt, state_dict.pt, {len(CASES)} module, {len(ADAPTIVE_CASES)} "
          f"adaptive and {len(CUBA_CASES)} current-based module cases to {out}")


if __name__ == "__main__":
    main(sys.argv[1])
