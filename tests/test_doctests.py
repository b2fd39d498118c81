"""The examples in the docstrings run and print what they show (doctest, on the installed
package)."""

import doctest
import importlib

import pytest

MODULES = [
    "fastdmf",
    "fastdmf.api",
    "fastdmf.batch",
    "fastdmf.checkpoint",
    "fastdmf.config",
    "fastdmf.objective",
    "fastdmf.problem",
    "fastdmf.theory",
    "fastdmf.sklearn",
    "fastdmf.diagonal",
    "fastdmf.diagonal_theory",
    "fastdmf.baselines.basis_pursuit",
    "fastdmf.baselines.frobenius",
    "fastdmf.baselines.nuclear",
    "fastdmf.baselines.schatten",
    "fastdmf.baselines.softimpute",
    "fastdmf.experiments.dynamics",
    "fastdmf.experiments.paper",
    "fastdmf.experiments.sweep",
    "fastdmf.experiments.sweep_table",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    examples = sum(len(t.examples) for t in doctest.DocTestFinder().find(module))
    assert examples > 0, f"{name} has no examples: take it off the list"
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0


def test_every_module_with_examples_is_listed():
    import pathlib

    import fastdmf

    root = pathlib.Path(fastdmf.__file__).parent
    found = {
        ".".join(("fastdmf", *path.relative_to(root).with_suffix("").parts)).removesuffix(
            ".__init__"
        )
        for path in root.rglob("*.py")
        if ">>>" in path.read_text()
    }
    assert found == set(MODULES)
