"""Every docstring example in the package runs and prints what it says (data and explain have
their own doctest runs in their test files)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import layerscope

OWN_RUNS = ("layerscope.data", "layerscope.explain")


def _modules() -> list[str]:
    names = []
    for info in pkgutil.walk_packages(layerscope.__path__, "layerscope."):
        if info.name.startswith(OWN_RUNS) or info.name.endswith("__main__"):
            continue
        names.append(info.name)
    return sorted(names)


@pytest.mark.parametrize("name", _modules())
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
                             verbose=False, report=True)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"
