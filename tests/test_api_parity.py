"""The Python and C++ APIs offer the same options, with the same names and
defaults: the C++ option structs (read from the public header, the macros
expanded) against the Python signatures, for every module and functional
op. The few differences are listed here with their reason, so that the two
cannot drift apart unnoticed."""
import inspect
import re
from pathlib import Path

import pytest

import torch_ext
from torch_ext._neurons import NEURONS

HEADER = Path(__file__).resolve().parents[1] / "csrc" / "include" / "torch_ext" / "torch_ext.h"

# Python-only module arguments, and why C++ has none.
PYTHON_ONLY = {
    "device": "a LibTorch module is moved with module->to(device)",
    "dtype": "a LibTorch module is cast with module->to(dtype)",
    "backend": "the plain-PyTorch reference (backend='autograd') is Python code",
}

# Functional options whose default is spelled differently, and why.
DIFFERENT_DEFAULTS = {
    "delay_sigma": "C++ takes a tensor or none (= 0); Python also a float, 0.0 by default",
}

MODULES = {"RecurrentLIF": "RecurrentLIFOptions", "RecurrentAdLIF": "RecurrentAdLIFOptions",
           "RecurrentCubaLIF": "RecurrentCubaLIFOptions"}
FUNCTIONAL = {"recurrent_lif": "RecurrentLIFFuncOptions",
              "recurrent_adlif": "RecurrentAdLIFFuncOptions",
              "recurrent_cubalif": "RecurrentCubaLIFFuncOptions"}


def cpp_value(text):
    """A C++ default as the Python value it stands for."""
    text = text.strip()
    if text == "std::nullopt":
        return None
    if text in ("true", "false"):
        return text == "true"
    if text.startswith('"'):
        return text.strip('"')
    vector = re.fullmatch(r"std::vector<double>\{(.*)\}", text)
    if vector:
        return tuple(float(v) for v in vector.group(1).split(","))
    return float(text) if "." in text else int(text)


def cpp_options():
    """{struct name: {option: default (or inspect._empty)}} from the header,
    TORCH_EXT_*_OPTIONS macros expanded."""
    source = HEADER.read_text()
    macros = {}
    for name, params, body in re.findall(
            r"#define (TORCH_EXT_\w+_OPTIONS)(?:\(([^)]*)\))?((?:.*\\\n)*.*)", source):
        macros[name] = ([p.strip() for p in params.split(",")] if params else [],
                        body.replace("\\\n", "\n"))

    def fields(body):
        found = {}
        for line in body.split("\n"):
            line = line.strip()
            use = re.fullmatch(r"(TORCH_EXT_\w+_OPTIONS)(?:\((.*)\))?;", line)
            if use:
                names, text = macros[use.group(1)]
                args = [a.strip() for a in use.group(2).split(",")] if use.group(2) else []
                for param, arg in zip(names, args):
                    text = re.sub(rf"\b{param}\b", arg, text)
                found.update(fields(text.replace(";", ";\n")))
                continue
            arg = re.fullmatch(r"TORCH_ARG\((.+), (\w+)\)(?: = (.+))?;?", line.rstrip(";"))
            if arg:
                found[arg.group(2)] = (cpp_value(arg.group(3)) if arg.group(3)
                                       else inspect.Parameter.empty)
        return found

    return {name: fields(body)
            for name, body in re.findall(r"struct (\w+Options) \{(.*?)\n\};", source, re.S)}


CPP = cpp_options()


def python_defaults(function, skip=()):
    return {name: p.default for name, p in inspect.signature(function).parameters.items()
            if name not in ("self",) + tuple(skip)}


def same(a, b):
    if isinstance(a, tuple) or isinstance(b, tuple):
        return tuple(a) == tuple(b)
    return a == b and type(a) is type(b) if isinstance(a, bool) or isinstance(b, bool) else a == b


@pytest.mark.parametrize("module", MODULES)
def test_modules_have_the_same_options_and_defaults(module):
    python = python_defaults(getattr(torch_ext, module).__init__)
    cpp = CPP[MODULES[module]]
    assert set(python) - set(cpp) == set(PYTHON_ONLY) & set(python), \
        f"{module}: options only in Python: {sorted(set(python) - set(cpp))}"
    assert set(cpp) <= set(python), f"{module}: options only in C++: {set(cpp) - set(python)}"
    for name, default in cpp.items():
        assert same(default, python[name]), \
            f"{module}: option {name!r} defaults to {python[name]!r} in Python, {default!r} in C++"


@pytest.mark.parametrize("op", FUNCTIONAL)
def test_functional_ops_have_the_same_options_and_defaults(op):
    neuron = NEURONS[op]
    # The tensors and parameters are the C++ function's own arguments; the
    # rest (initial state, options, the low-memory flag, lengths) its options.
    python = python_defaults(getattr(torch_ext, op),
                             skip=("x", "w_in", "w_rec", "bias", *neuron.param_names))
    cpp = CPP[FUNCTIONAL[op]]
    assert set(python) == set(cpp), f"{op}: {set(python) ^ set(cpp)}"
    for name, default in cpp.items():
        if name in DIFFERENT_DEFAULTS:
            continue
        assert same(default, python[name]), (op, name, default, python[name])


def test_the_header_was_read():
    """The parser sees every option struct, and the macros' options."""
    assert set(CPP) == set(MODULES.values()) | set(FUNCTIONAL.values())
    assert CPP["RecurrentAdLIFOptions"]["reset"] == "zero"
    assert CPP["RecurrentCubaLIFOptions"]["recurrent"] == "all_to_all"
    assert CPP["RecurrentAdLIFOptions"]["tau_u_range"] == (5.0, 25.0)
