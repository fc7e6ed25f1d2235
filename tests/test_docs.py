"""help() documents every argument, the return value, the errors and an
example, for the modules, their forwards, from_snntorch, the ops and their
references."""
import inspect
import pydoc
import re

import pytest

import torch_ext
from torch_ext import RecurrentLIF

DOCUMENTED = {
    "RecurrentLIF": (RecurrentLIF, RecurrentLIF.__init__),
    "RecurrentLIF.forward": (RecurrentLIF.forward, RecurrentLIF.forward),
    "RecurrentLIF.from_snntorch": (RecurrentLIF.from_snntorch, RecurrentLIF.from_snntorch),
    "recurrent_lif": (torch_ext.recurrent_lif, torch_ext.recurrent_lif),
    "recurrent_lif_ref": (torch_ext.recurrent_lif_ref, torch_ext.recurrent_lif_ref),
    "RecurrentAdLIF": (torch_ext.RecurrentAdLIF, torch_ext.RecurrentAdLIF.__init__),
    "RecurrentAdLIF.forward": (torch_ext.RecurrentAdLIF.forward, torch_ext.RecurrentAdLIF.forward),
    "recurrent_adlif": (torch_ext.recurrent_adlif, torch_ext.recurrent_adlif),
    "recurrent_adlif_ref": (torch_ext.recurrent_adlif_ref, torch_ext.recurrent_adlif_ref),
    "RecurrentCubaLIF": (torch_ext.RecurrentCubaLIF, torch_ext.RecurrentCubaLIF.__init__),
    "RecurrentCubaLIF.forward": (torch_ext.RecurrentCubaLIF.forward,
                                 torch_ext.RecurrentCubaLIF.forward),
    "RecurrentCubaLIF.from_snntorch": (torch_ext.RecurrentCubaLIF.from_snntorch,
                                       torch_ext.RecurrentCubaLIF.from_snntorch),
    "recurrent_cubalif": (torch_ext.recurrent_cubalif, torch_ext.recurrent_cubalif),
    "recurrent_cubalif_ref": (torch_ext.recurrent_cubalif_ref, torch_ext.recurrent_cubalif_ref),
}


@pytest.mark.parametrize("name", DOCUMENTED)
def test_docstring_names_every_argument_with_returns_raises_and_example(name):
    documented, signature_of = DOCUMENTED[name]
    doc = inspect.getdoc(documented)
    assert doc, f"{name} has no docstring"
    parameters = [p for p in inspect.signature(signature_of).parameters if p not in ("self", "cls")]
    for parameter in parameters:
        # Each argument has its own entry, "name (type): ...", in the Args
        # section; an argument with a default says it.
        match = re.search(rf"\n    {parameter} \((.*?)(?=\n    \S|\n\n|$)", doc, re.S)
        assert match, f"{name}: argument {parameter!r} is not documented"
        if inspect.signature(signature_of).parameters[parameter].default is not inspect._empty:
            assert "default" in match.group(1).lower(), f"{name}: {parameter!r} has no default"
    for section in ("Args:", "Raises:", "Example::"):
        assert section in doc, f"{name}: no {section!r} section"
    # A class returns itself.
    assert "Returns:" in doc or name in ("RecurrentLIF", "RecurrentAdLIF", "RecurrentCubaLIF")


def test_help_of_the_module_shows_the_constructor_and_forward():
    text = pydoc.render_doc(RecurrentLIF, renderer=pydoc.plaintext)
    for part in ("num_layers (int)", "recurrent (str)", "save_membrane (bool)", "state (tuple or None)",
                 "from_snntorch(linear, rleaky", "Default: ``0.9``"):
        assert part in text


def test_readme_usage_example_runs():
    """The README's "Using it" example, as a user copies it."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("\n## Using it\n", 1)[1].split("\n## ", 1)[0]
    code = re.findall(r"```python\n(.*?)```", section, re.S)[0]
    exec(compile(code, "README.md (Using it)", "exec"), {})
