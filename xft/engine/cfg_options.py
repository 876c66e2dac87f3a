"""``--cfg-options``: PART 1 variables that reach every dict built from them, and keys checked.

mmengine runs a config file once: ``tokenizer = dict(pretrained_model_name_or_path=
pretrained_model_name_or_path)`` copies the variable's value into the dict at that moment, so
merging ``pretrained_model_name_or_path=DIR`` afterwards changes the top-level variable and
nothing built from it. Here a top-level key that the config file assigns a plain value
(a PART 1 variable) is applied to the file's text instead: the assignment's value is replaced
and the file parsed again, so the model, the tokenizers of the data pipeline and of every hook
see the new value. Dotted keys (``model.lora.r=8``) are merged afterwards, as mmengine does,
and so win over what a variable set.

Every other key is checked before anything is built. A key the config has is fine; a new key
must be an argument of the class or function its dict builds (``type=``), a Runner setting at
the top level, and not a near-miss of a key that is there. Otherwise one line says which
(``model.lora.rr: LoraConfig takes no argument 'rr'; did you mean 'r'?``).
"""
import ast
import inspect
import re

from xft.utils.errors import ConfigError, did_you_mean

# Top-level keys mmengine's Runners read besides their constructor arguments, and xft's own.
RUNNER_EXTRA_KEYS = ('runner_type', 'model_wrapper_cfg', 'compile', 'custom_imports', 'strategy',
                     'find_unused_parameters',
                     # xft's: read by xft.parallel.sequence.setup before the Runner is built
                     'sequence_parallel_size')
# What mmengine's Runner.build_dataloader takes out of train_dataloader before DataLoader(**rest).
_DATALOADER_EXTRA_KEYS = ('dataset', 'sampler', 'batch_sampler', 'collate_fn', 'worker_init_fn')
_DOTTED_NAME = re.compile(r'[A-Za-z_]\w*(\.[A-Za-z_]\w*)*')


# --- PART 1 variables ---------------------------------------------------------------------------

def part1_variables(source: str) -> dict:
    """{name: [value nodes]} of the top-level assignments of plain values in a config's text.

    A plain value is anything but a dict or a call (``tokenizer = dict(...)`` is not a PART 1
    variable: overriding it whole is a dotted-key job).

    >>> sorted(part1_variables("import torch\\nlr = 2e-4\\nmodel = dict(lr=lr)\\nx: int = 1"))
    ['lr', 'x']
    """
    variables = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target, value = node.target, node.value
        else:
            continue
        if isinstance(target, ast.Name) and not isinstance(value, (ast.Dict, ast.Call)):
            variables.setdefault(target.id, []).append(value)
    return variables


def bound_names(source: str) -> set:
    """Names a config's top level imports or assigns: what an override may refer to."""
    names = set()
    for node in ast.parse(source).body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(alias.asname or alias.name).split('.')[0] for alias in node.names}
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {t.id for t in targets if isinstance(t, ast.Name)}
    return names


def render_override(value, original: ast.expr, bound: set) -> str:
    """The source text for a PART 1 override.

    A variable that holds a name (``prompt_template = PROMPT_TEMPLATE.default``, ``torch_dtype =
    torch.bfloat16``) takes a name the config knows (``PROMPT_TEMPLATE.chatml``) as that
    expression; anything else is the value itself (DictAction gives str, int, float, bool,
    None, list or tuple).

    >>> node = ast.parse('PROMPT_TEMPLATE.default', mode='eval').body
    >>> render_override('PROMPT_TEMPLATE.chatml', node, {'PROMPT_TEMPLATE'})
    'PROMPT_TEMPLATE.chatml'
    >>> render_override('chatml', node, {'PROMPT_TEMPLATE'}), render_override(8, node, set())
    ("'chatml'", '8')
    """
    if (isinstance(value, str) and isinstance(original, (ast.Name, ast.Attribute))
            and _DOTTED_NAME.fullmatch(value) and value.split('.')[0] in bound):
        return value
    return repr(value)


def substitute(source: str, overrides: dict) -> str:
    """``source`` with each overridden PART 1 variable's assigned value replaced."""
    variables, bound = part1_variables(source), bound_names(source)
    lines = source.encode('utf-8').splitlines(keepends=True)
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line))
    data = source.encode('utf-8')
    edits = []  # (start byte, end byte, new text); ast columns are UTF-8 byte offsets
    for name, value in overrides.items():
        for node in variables[name]:
            start = starts[node.lineno - 1] + node.col_offset
            end = starts[node.end_lineno - 1] + node.end_col_offset
            edits.append((start, end, render_override(value, node, bound).encode('utf-8')))
    for start, end, text in sorted(edits, reverse=True):
        data = data[:start] + text + data[end:]
    return data.decode('utf-8')


# --- key checks ---------------------------------------------------------------------------------

def check_option_keys(cfg, options: dict) -> None:
    """Raise ConfigError for the first ``--cfg-options`` key that would be ignored or refused."""
    for key in options:
        _check_key(cfg._cfg_dict, key)


def _check_key(root, key: str) -> None:
    node, path = root, []
    for part in key.split('.'):
        where = '.'.join(path)
        if isinstance(node, (list, tuple)):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f'--cfg-options {key}: {where} is a list of {len(node)}; '
                                  f'expected an index 0..{len(node) - 1}, got {part!r}')
            node = node[int(part)]
        elif isinstance(node, dict):
            if part not in node:
                _check_new_key(node, part, path, key)
                return  # below a new key there is nothing to compare with
            node = dict.__getitem__(node, part)
        else:
            raise ConfigError(f'--cfg-options {key}: {where} is {_kind(node)}, not a dict')
        path.append(part)


def _check_new_key(node: dict, name: str, path: list, key: str) -> None:
    if not path:
        accepted = runner_keys()
        if name not in accepted:
            raise ConfigError(f'--cfg-options {key}: the config has no variable {name!r} and it is '
                              f'not a Runner setting{did_you_mean(name, [*node, *accepted])}')
        return
    builder = _builder_of(node, path)
    accepted = accepted_arguments(builder) if builder is not None else None
    if accepted is not None:
        if name not in accepted:
            raise ConfigError(f'--cfg-options {key}: {_name_of(builder)} takes no argument {name!r}'
                              f'{did_you_mean(name, [*accepted, *node])}')
        return
    suggestion = did_you_mean(name, list(node))
    if suggestion and builder is None:  # an untyped dict: a near-miss of a key it has is a typo
        raise ConfigError(f'--cfg-options {key}: {".".join(path)} has no {name!r}{suggestion}')


def runner_keys() -> set:
    """Top-level keys mmengine's Runner and FlexibleRunner read."""
    from mmengine.runner import FlexibleRunner, Runner
    keys = set(RUNNER_EXTRA_KEYS)
    for runner in (Runner, FlexibleRunner):
        keys |= set(inspect.signature(runner.__init__).parameters) - {'self'}
    return keys


def _builder_of(node: dict, path: list):
    """What builds this dict: its ``type``, what mmengine builds a few untyped Runner dicts
    with, or None."""
    kind = dict.get(node, 'type')
    if kind is not None:
        return resolve_type(kind)
    if path == ['log_processor']:
        from mmengine.runner import LogProcessor
        return LogProcessor
    if path == ['randomness']:
        from mmengine.runner import Runner
        return Runner.set_randomness
    if path == ['train_dataloader']:
        return _DataLoaderSettings
    return None


class _DataLoaderSettings:
    """Stands for what ``train_dataloader=dict(...)`` accepts (see ``accepted_arguments``)."""


def accepted_arguments(builder):
    """The keyword names ``builder`` accepts, or None when it takes ``**kwargs`` we cannot follow.

    A class's ``**kwargs`` are followed up its base classes' ``__init__`` (TrainLoop passes
    them to IterBasedTrainLoop).
    """
    if builder is _DataLoaderSettings:
        from torch.utils.data import DataLoader
        return accepted_arguments(DataLoader) | set(_DATALOADER_EXTRA_KEYS)
    if inspect.isclass(builder):
        names = set()
        for klass in builder.__mro__:
            if '__init__' not in vars(klass) or klass is object:
                continue
            parameters = _parameters(vars(klass)['__init__'])
            if parameters is None:
                return None
            names |= {p.name for p in parameters[1:] if p.kind in _NAMED}
            if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
                return names
        return None
    parameters = _parameters(builder)
    if parameters is None or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    return {p.name for p in parameters if p.kind in _NAMED}


_NAMED = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def _parameters(function):
    try:
        return list(inspect.signature(function).parameters.values())
    except (TypeError, ValueError):  # builtins without a signature
        return None


def resolve_type(kind):
    """The class or function a ``type=`` names: lazy import, registry name or the object."""
    from mmengine.config.lazy import LazyAttr, LazyObject
    if isinstance(kind, (LazyObject, LazyAttr)):
        return kind.build()
    if isinstance(kind, str):
        return _registered(kind)
    return kind if callable(kind) else None


def _registered(name: str):
    """A registry name (``'OptimWrapper'``) looked up in mmengine's registries, else None."""
    from mmengine import registry
    for attribute in dir(registry):
        candidate = getattr(registry, attribute)
        if isinstance(candidate, registry.Registry):
            found = candidate.get(name) if name in candidate.module_dict or '.' in name else None
            if found is not None:
                return found
    return None


def _name_of(builder) -> str:
    if builder is _DataLoaderSettings:
        return 'DataLoader'
    return getattr(builder, '__qualname__', None) or getattr(builder, '__name__', str(builder))


def _kind(value) -> str:
    if value is None:
        return 'None'
    if isinstance(value, bool):
        return 'a bool'
    if isinstance(value, (int, float)):
        return f'a number ({value})'
    if isinstance(value, str):
        return f'a string ({value!r})'
    return f'a {type(value).__name__}'
