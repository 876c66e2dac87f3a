"""The examples in the fast path's docstrings run (pytest's own doctest collection is off,
since some modules' docstrings show output that is not a doctest)."""
import doctest
import importlib

import pytest

MODULES = [
    'xft.model.fast_path', 'xft.model.loss', 'xft.engine.device',
    'xft.model.kernels.backend', 'xft.model.kernels.checkpoint', 'xft.model.kernels.graphs',
    'xft.model.kernels.lora_linear', 'xft.model.kernels.lora_mlp',
    'xft.model.kernels.lora_projections', 'xft.model.kernels.rms_norm', 'xft.model.kernels.rope',
    'xft.model.kernels.swap', 'xft.model.kernels.swiglu',
]


@pytest.mark.parametrize('name', MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0, f'{name}: {result.failed} of {result.attempted} examples failed'
    assert result.attempted > 0, f'{name} has no examples'
