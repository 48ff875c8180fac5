"""The examples in normlab's docstrings run and print what they show (``doctest``, one test per module).

Every module of the package is imported and searched (classes, functions and methods defined in it, and
docstrings assembled at import time such as ``BatchNorm1d.__doc__``); a module with no example is not a test.
Outputs are compared with ELLIPSIS and NORMALIZE_WHITESPACE; the examples seed their generators and round what
they print, so the comparison is exact otherwise.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import normlab

OPTIONS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
# modules whose import has side effects outside normlab (the CLI entry point runs the command)
NOT_IMPORTED = {"normlab.__main__"}
# what a module's examples need beyond normlab's own dependencies
NEEDS = {"normlab.interop.pytorch": "torch"}


def _modules_with_examples() -> list[str]:
    finder = doctest.DocTestFinder(exclude_empty=True)
    names = []
    for info in pkgutil.walk_packages(normlab.__path__, prefix="normlab."):
        if info.name in NOT_IMPORTED:
            continue
        module = importlib.import_module(info.name)
        if any(test.examples for test in finder.find(module)):
            names.append(info.name)
    package_tests = finder.find(normlab)
    if any(test.examples for test in package_tests):
        names.insert(0, "normlab")
    return names


MODULES = _modules_with_examples()


def test_the_priority_api_has_examples():
    """The docstrings a learner reads first carry examples (so the parametrized test below covers them)."""
    for name in [
        "normlab.train.loop",  # fit
        "normlab.nn.norm",  # BatchNorm1d/2d, LayerNorm, GroupNorm
        "normlab.nn.variants",  # BatchRenorm2d
        "normlab.functional.norm",  # batch_norm_forward/backward
        "normlab.interop.fold",  # fold_batch_norm
        "normlab.interop.pytorch",  # to_torch
        "normlab.doctor.core",  # doctor
        "normlab.data.images",  # ImageFolder
    ]:
        assert name in MODULES, f"{name} has no docstring example"


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name, tmp_path, monkeypatch):
    if name in NEEDS:
        pytest.importorskip(NEEDS[name], reason=f"the examples of {name} need {NEEDS[name]}")
    monkeypatch.chdir(tmp_path)  # an example that writes a file writes it here
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=OPTIONS)
    tests = [test for test in finder.find(module) if test.examples]
    for test in tests:
        runner.run(test)
    results = runner.summarize(verbose=False)
    assert results.attempted > 0
    assert results.failed == 0, (
        f"{results.failed} of {results.attempted} examples of {name} failed (see above)"
    )
