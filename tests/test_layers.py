"""The layers of xft (``xft.LAYERS``): no module imports from a layer above its own.

Every ``import`` and ``from ... import`` of every module under xft/ is read with ``ast``, the
ones inside functions too (a lazy import is still a dependency), relative imports resolved.
"""
import ast
from pathlib import Path

import pytest

from xft import LAYERS

PACKAGE = Path(__file__).resolve().parents[1] / 'xft'


def module_name(path: Path, root: Path) -> str:
    """'xft.dataset.map_fns' for xft/dataset/map_fns/__init__.py, 'xft.cli' for xft/cli.py."""
    parts = list(path.relative_to(root.parent).with_suffix('').parts)
    if parts[-1] == '__init__':
        parts.pop()
    return '.'.join(parts)


def imported_modules(path: Path, root: Path):
    """(line, module) for each import in the file; ``from xft import tools`` gives 'xft.tools'."""
    name = module_name(path, root)
    package = name if path.name == '__init__.py' else name.rpartition('.')[0]
    for node in ast.walk(ast.parse(path.read_text(encoding='utf-8'), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ''
            if node.level:
                anchor = package.split('.')[:len(package.split('.')) - (node.level - 1)]
                base = '.'.join(anchor + ([node.module] if node.module else []))
            # `from xft import tools` imports a top-level module: name it, so it gets its layer.
            targets = [f'{base}.{alias.name}' for alias in node.names] if base == root.name \
                else [base]
            for target in targets:
                yield node.lineno, target


def layer_of(module: str, root_name: str = 'xft'):
    """The layer index of an xft module (0 is the lowest); None outside xft."""
    parts = module.split('.')
    if parts[0] != root_name:
        return None
    if len(parts) == 1:
        return 0
    for index, names in enumerate(LAYERS):
        if parts[1] in names:
            return index
    return 0  # a name imported from the root itself (`from xft import __version__`)


def layer_violations(root: Path = PACKAGE) -> list:
    """'xft/model/export.py line 32: model imports xft.engine.config (engine, a higher layer)'."""
    found = []
    for path in sorted(root.rglob('*.py')):
        own = layer_of(module_name(path, root), root.name)
        for line, target in imported_modules(path, root):
            other = layer_of(target, root.name)
            if other is not None and other > own:
                found.append(f'{path.relative_to(root.parent)} line {line}: {LAYERS[own][0]} '
                             f'imports {target} ({LAYERS[other][0]}, a higher layer)')
    return found


def test_no_module_imports_from_a_higher_layer():
    assert layer_violations() == []


def test_every_top_level_name_has_a_layer():
    placed = {name for names in LAYERS for name in names}
    top = {path.stem for path in PACKAGE.glob('*.py') if path.name != '__init__.py'}
    top |= {path.parent.name for path in PACKAGE.glob('*/__init__.py')}
    assert top - placed == set(), 'add the new top-level module to xft.LAYERS'


# --- the checker itself, on a synthetic package holding the two imports xft once had -----------

def write(root: Path, relative: str, text: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    for folder in path.relative_to(root.parent).parents:
        init = root.parent / folder / '__init__.py'
        if folder != Path('.') and not init.exists():
            init.write_text('')
    path.write_text(text)


@pytest.fixture
def fake_xft(tmp_path):
    root = tmp_path / 'xft'
    write(root, 'model/export.py', 'import torch\n\nfrom xft.engine.config import load_config\n'
                                   'from xft.utils.errors import UserError\n')
    write(root, 'engine/hooks/plot_hook.py',
          'from xft.model import SupervisedFinetune\n\n\n'
          'def after_train():\n'
          '    from xft.tools.plot_log import plot_scalars\n'
          '    return plot_scalars\n')
    write(root, 'dataset/map_fns/chat.py', 'from ...engine import runner\nfrom . import _fields\n'
                                           'from .. import encode\n')
    write(root, 'engine/device.py', 'from xft import tools\nfrom xft import __version__\n')
    return root


def test_the_checker_names_each_upward_import_with_its_file_and_line(fake_xft):
    assert layer_violations(fake_xft) == [
        'xft/dataset/map_fns/chat.py line 1: dataset imports xft.engine (engine, a higher layer)',
        'xft/engine/device.py line 1: engine imports xft.tools (tools, a higher layer)',
        'xft/engine/hooks/plot_hook.py line 5: engine imports xft.tools.plot_log '
        '(tools, a higher layer)',
        'xft/model/export.py line 3: model imports xft.engine.config (engine, a higher layer)',
    ]


def test_relative_imports_resolve_against_the_package(fake_xft):
    chat = fake_xft / 'dataset/map_fns/chat.py'
    assert list(imported_modules(chat, fake_xft)) == [
        (1, 'xft.engine'), (2, 'xft.dataset.map_fns'), (3, 'xft.dataset')]
