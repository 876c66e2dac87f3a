"""Runnable examples or none: every ``>>>`` example in xft/ runs and gives what it shows.

The modules are found by walking xft/ (no hand-kept list); each must import. A module whose
source holds ``>>>`` example lines must run exactly that many examples: an example doctest
cannot find (in a comment, in a function nested in another) or one marked ``+SKIP`` counts as
not run. Examples need no hub model and no GPU. pytest's own doctest collection stays off: this
test is where examples are run.
"""
import doctest
import importlib
import re
from pathlib import Path

import pytest

from helpers.paths import REPO

PACKAGE = REPO / 'xft'
EXAMPLE_LINE = re.compile(r'^\s*>>>', re.MULTILINE)


def module_name(path):
    parts = path.relative_to(REPO).with_suffix('').parts
    return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def package_files():
    """The .py files of xft's packages. A folder without ``__init__.py`` holds data, not
    modules: xft/tools/config_templates/ keeps config bodies with placeholders."""
    return sorted(path for path in PACKAGE.rglob('*.py') if (path.parent / '__init__.py').is_file())


MODULES = sorted(module_name(path) for path in package_files())
WITH_EXAMPLES = [module_name(path) for path in package_files()
                 if EXAMPLE_LINE.search(path.read_text(encoding='utf-8'))]


def test_the_walk_finds_the_package_and_its_examples():
    assert len(MODULES) == len(package_files()) > 50
    assert {'xft', 'xft.cli', 'xft.model.generation', 'xft.model.chat_template'} <= set(MODULES)
    assert {'xft.model.generation', 'xft.model.chat_template', 'xft.model.fast_path'} <= set(WITH_EXAMPLES)


def test_every_module_imports():
    failures = []
    for name in MODULES:
        try:
            importlib.import_module(name)
        except Exception as error:  # every failure is listed, not only the first
            failures.append(f'{name}: {type(error).__name__}: {error}')
    assert not failures, '\n'.join(failures)


@pytest.mark.parametrize('name', WITH_EXAMPLES)
def test_every_example_runs(name):
    module = importlib.import_module(name)
    shown = len(EXAMPLE_LINE.findall(Path(module.__file__).read_text(encoding='utf-8')))
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f'{name}: {result.failed} of {result.attempted} examples failed'
    assert result.attempted == shown, (f'{name}: {shown} example lines, {result.attempted} run '
                                       '(an example doctest cannot find, or one marked +SKIP)')
