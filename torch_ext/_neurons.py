"""The neuron models of the C++ registry (csrc/neurons/registry.h) as Python
data: each model's op name, its parameters (name, default, whether it is a
decay in [0, 1]) and states (the initial value's and the output's names) in
the op's order, its low-memory flag and its option defaults. The functional
ops, their references, the checks and the tests all read this one table,
which torch_ext._C builds from the registry, so Python cannot drift from C++."""
from typing import NamedTuple, Tuple

from . import _C


class Param(NamedTuple):
    name: str
    default: float
    decay: bool  # its values must lie in [0, 1] (else: finite)


class State(NamedTuple):
    initial: str  # the initial value's argument, [B, N]
    output: str   # the output's name, [T, B, N]


class Neuron(NamedTuple):
    op: str                    # torch.ops.torch_ext.<op>
    params: Tuple[Param, ...]  # the op's order
    states: Tuple[State, ...]  # besides the spikes, the op's order
    save_flag: str             # the low-memory flag (False: keep only the spikes)
    reset: str                 # reset's default
    detach_reset: bool         # detach_reset's default

    @property
    def param_names(self):
        return tuple(p.name for p in self.params)

    @property
    def initial_names(self):
        """The initial state's arguments, s0 last: ("u0", "s0"), ..."""
        return tuple(s.initial for s in self.states) + ("s0",)


NEURONS = {
    spec["op"]: Neuron(spec["op"], tuple(Param(*p) for p in spec["params"]),
                       tuple(State(*s) for s in spec["states"]), spec["save_flag"],
                       spec["reset"], spec["detach_reset"])
    for spec in _C.NEURONS
}
