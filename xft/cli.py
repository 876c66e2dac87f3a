"""The ``xft`` command: ``xft VERB [ARGS...]``, with XTuner's verbs.

Each verb maps to a ``main(argv) -> int`` in the module that does the work; this file only
dispatches, so ``xft train ...`` and ``python tools/train.py ...`` run the same code. Whatever
goes wrong because of the user's input ends in one line on stderr and exit code 2 (the
convention of every verb: ``xft.tools.command``):

    $ xft train no_such_config
    xft train: no_such_config: no such config file, and no config of that name in .../configs (see `xft list-cfg`)
"""
import importlib
import os
import shutil
import subprocess
import sys

from xft.tools.command import EXIT_INTERRUPTED, EXIT_USER_ERROR, fail, run_command
from xft.utils.errors import UserError

# verb -> (module, function, one-line help)
VERBS = {
    'list-cfg': ('xft.tools.cfg_tools', 'list_cfg_main', 'list the configs of the zoo [-p PATTERN]'),
    'copy-cfg': ('xft.tools.cfg_tools', 'copy_cfg_main', 'copy a zoo config to edit: copy-cfg NAME DIR'),
    'train': ('xft.tools.train', 'main',
              'train a config (--max-iters N: a trial run; NPROC_PER_NODE=N: N GPUs/processes)'),
    'convert': (None, None, 'convert pth_to_hf CONFIG PTH OUT | convert merge BASE ADAPTER OUT'
                            ' | convert gguf MODEL OUT.gguf'),
    'chat': ('xft.tools.chat', 'main', 'chat with a model (--adapter, --bits 4, --prompt-template)'),
    'check-custom-dataset': ('xft.tools.dataset_tools', 'check_custom_dataset_main',
                             "check a config's data: every row maps, encodes and trains"),
    'log-dataset': ('xft.tools.dataset_tools', 'log_dataset_main', 'print what the model will see'),
    'list-dataset-format': ('xft.tools.dataset_tools', 'list_dataset_format_main',
                            'list the dataset map functions and the fields they read'),
    'plot-log': ('xft.tools.plot_log', 'main', 'plot the loss and learning-rate curves of a run'),
    'prepare-demo-model': ('xft.tools.prepare_demo_model', 'main', 'convert the embedded SmolLM2 model'),
    'demo': ('xft.tools.demo', 'main', 'prepare, train, convert, merge and chat with the embedded model'),
    'version': (None, None, 'print the version'),
    'help': (None, None, 'print this help, or `xft help VERB` for one verb'),
}

CONVERT_VERBS = {
    'pth_to_hf': ('xft.tools.pth_to_hf', 'main', 'a training checkpoint -> PEFT adapter or HF model'),
    'merge': ('xft.tools.merge', 'main', 'fold a LoRA adapter into its base model'),
    'gguf': ('xft.tools.convert_gguf', 'main',
             'a model folder (or base + --adapter) -> one GGUF file for llama.cpp / Ollama'),
}

# Environment variables XTuner users set for multi-process training (torchrun's arguments).
TORCHRUN_ENV = {'NNODES': ('--nnodes', '1'), 'NODE_RANK': ('--node_rank', '0'),
                'ADDR': ('--master_addr', '127.0.0.1'), 'PORT': ('--master_port', '29500')}


def print_help() -> None:
    print('usage: xft VERB [ARGS...]\n\nverbs:')
    for verb, (_, _, text) in VERBS.items():
        print(f'  {verb:22s}{text}')
    print('\nConfigs are named by file name without .py (`xft list-cfg`) or given as a path.')
    print('Run `xft VERB --help` for the arguments of one verb.')
    print('Exit codes: 0 done; 1 the answer is no (nothing matched, a check failed); 2 bad input,')
    print('said in one line `xft VERB: ...`; 130 interrupted; 128+N stopped by signal N after saving.')


def print_convert_help() -> None:
    print('usage: xft convert {pth_to_hf,merge,gguf} ARGS...\n')
    for verb, (_, _, text) in CONVERT_VERBS.items():
        print(f'  {verb:12s}{text}')
    print('\nRun `xft convert pth_to_hf --help` (or merge, gguf) for the arguments.')


def load_verb(verb: str, module_name: str, function_name: str):
    """The verb's function, or a UserError saying why it is not available."""
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        missing = getattr(error, 'name', None) or str(error)
        raise UserError(f'this command is not available: cannot import {missing!r} ({error})') from None
    function = getattr(module, function_name, None)
    if function is None:
        raise UserError(f'this command is not available: {module_name} has no {function_name}()')
    return function


def run_verb(verb: str, module_name: str, function_name: str, argv: list) -> int:
    """Run one verb; user errors and interrupts become one line and an exit code."""
    return run_command(verb, lambda: load_verb(verb, module_name, function_name)(argv))


def torchrun_command(argv: list, environ=None) -> list:
    """The torchrun command ``NPROC_PER_NODE=N xft train ARGS`` runs (XTuner's variables).

    >>> torchrun_command(['cfg'], {'NPROC_PER_NODE': '2'})[-5:]
    ['-m', 'xft.tools.train', 'cfg', '--launcher', 'pytorch']
    """
    environ = os.environ if environ is None else environ
    nproc = environ['NPROC_PER_NODE'].strip()
    if not nproc.isdigit() or int(nproc) < 1:
        raise UserError(f'NPROC_PER_NODE must be a positive number of processes, got {nproc!r}')
    torchrun = shutil.which('torchrun')
    command = [torchrun] if torchrun else [sys.executable, '-m', 'torch.distributed.run']
    command.append(f'--nproc_per_node={nproc}')
    for name, (flag, default) in TORCHRUN_ENV.items():
        command.append(f'{flag}={environ.get(name, default)}')
    return command + ['-m', 'xft.tools.train', *argv, '--launcher', 'pytorch']


def launch_torchrun(argv: list) -> int:
    """Check the config once here (one line if it is wrong, not one per process and torchrun's
    report), then start the processes."""
    try:
        command = torchrun_command(argv)
    except UserError as error:
        return fail('train', str(error))
    checked = run_command('train', lambda: load_verb('train', 'xft.tools.train', 'check_before_launch')(argv))
    if checked:
        return checked
    try:
        return subprocess.call(command)
    except KeyboardInterrupt:
        return fail('train', 'interrupted', EXIT_INTERRUPTED)


def wants_distributed(rest: list) -> bool:
    if '--launcher' in rest or any(arg in ('-h', '--help') for arg in rest):
        return False
    return bool(os.environ.get('NPROC_PER_NODE', '').strip())


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ('-h', '--help'):
        print_help()
        return 0
    verb, rest = argv[0], argv[1:]
    if verb == 'help':
        if not rest:
            print_help()
            return 0
        return main([*rest[:2], '--help'])  # `xft help convert merge` too
    if verb in ('version', '--version', '-v'):
        from xft import __version__
        print(__version__)
        return 0
    if verb == 'convert':
        if not rest or rest[0] in ('-h', '--help'):
            print_convert_help()
            return 0 if rest else 2
        if rest[0] not in CONVERT_VERBS:
            return fail('convert', f'unknown conversion {rest[0]!r}; expected one of '
                                   f'{", ".join(CONVERT_VERBS)}, e.g. `xft convert pth_to_hf CONFIG PTH OUT`',
                        EXIT_USER_ERROR)
        module_name, function_name, _ = CONVERT_VERBS[rest[0]]
        return run_verb(f'convert {rest[0]}', module_name, function_name, rest[1:])
    if verb not in VERBS:
        return fail('', f'unknown verb {verb!r}; run `xft help` for the list')
    if verb == 'train' and wants_distributed(rest):
        return launch_torchrun(rest)
    module_name, function_name, _ = VERBS[verb]
    return run_verb(verb, module_name, function_name, rest)


if __name__ == '__main__':
    raise SystemExit(main())
