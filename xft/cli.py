"""The ``xft`` command: ``xft VERB [ARGS...]``, with XTuner's verbs.

Each verb maps to a ``main(argv) -> int`` in the module that does the work; this file
only dispatches, so ``xft train ...`` and ``python tools/train.py ...`` run the same code.
"""
import importlib
import os
import shutil
import subprocess
import sys

# verb -> (module, function, one-line help)
VERBS = {
    'train': ('xft.tools.train', 'main', 'train a config (NPROC_PER_NODE=N for several GPUs/processes)'),
    'convert': (None, None, 'convert pth_to_hf CONFIG PTH OUT | convert merge BASE ADAPTER OUT'),
    'chat': ('xft.tools.chat', 'main', 'chat with a model (with --adapter, --bits 4, --prompt-template)'),
    'list-cfg': ('xft.tools.cfg_tools', 'list_cfg_main', 'list the configs of the zoo [-p PATTERN]'),
    'copy-cfg': ('xft.tools.cfg_tools', 'copy_cfg_main', 'copy a zoo config: copy-cfg NAME DIR'),
    'check-custom-dataset': ('xft.dataset.tools', 'check_custom_dataset_main', 'validate a config\'s data'),
    'log-dataset': ('xft.dataset.tools', 'log_dataset_main', 'print what the model will see'),
    'list-dataset-format': ('xft.dataset.tools', 'list_dataset_format_main', 'list the dataset map functions'),
    'prepare-demo-model': ('xft.tools.prepare_demo_model', 'main', 'convert the embedded SmolLM2 model'),
    'demo': ('xft.tools.demo', 'main', 'prepare, train, convert, merge and chat with the embedded model'),
    'plot-log': ('xft.tools.plot_log', 'main', 'plot the loss and learning-rate curves of a run'),
    'version': (None, None, 'print the version'),
    'help': (None, None, 'print this help'),
}

CONVERT_VERBS = {
    'pth_to_hf': ('xft.tools.pth_to_hf', 'main'),
    'merge': ('xft.tools.merge', 'main'),
}


def print_help() -> None:
    print('usage: xft VERB [ARGS...]\n\nverbs:')
    for verb, (_, _, text) in VERBS.items():
        print(f'  {verb:22s}{text}')
    print('\nRun `xft VERB --help` for the arguments of one verb.')


def run_verb(module_name: str, function_name: str, argv: list) -> int:
    module = importlib.import_module(module_name)
    return int(getattr(module, function_name)(argv) or 0)


def launch_torchrun(argv: list) -> int:
    """``NPROC_PER_NODE=N xft train ...`` starts N processes through torchrun, as XTuner does."""
    nproc = os.environ['NPROC_PER_NODE']
    torchrun = shutil.which('torchrun') or None
    command = [torchrun] if torchrun else [sys.executable, '-m', 'torch.distributed.run']
    command += [f'--nproc_per_node={nproc}', f'--nnodes={os.environ.get("NNODES", "1")}',
                f'--node_rank={os.environ.get("NODE_RANK", "0")}',
                f'--master_addr={os.environ.get("ADDR", "127.0.0.1")}',
                f'--master_port={os.environ.get("PORT", "29500")}',
                '-m', 'xft.tools.train', *argv, '--launcher', 'pytorch']
    return subprocess.call(command)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ('help', '-h', '--help'):
        print_help()
        return 0
    verb, rest = argv[0], argv[1:]
    if verb in ('version', '--version', '-v'):
        from xft import __version__
        print(__version__)
        return 0
    if verb == 'train' and os.environ.get('NPROC_PER_NODE') and '--launcher' not in rest:
        return launch_torchrun(rest)
    if verb == 'convert':
        if not rest or rest[0] not in CONVERT_VERBS:
            print(f'xft convert: expected one of {", ".join(CONVERT_VERBS)}, e.g. '
                  '`xft convert pth_to_hf CONFIG PTH OUT`', file=sys.stderr)
            return 2
        module_name, function_name = CONVERT_VERBS[rest[0]]
        return run_verb(module_name, function_name, rest[1:])
    if verb not in VERBS:
        print(f'xft: unknown verb {verb!r}; run `xft help` for the list', file=sys.stderr)
        return 2
    module_name, function_name, _ = VERBS[verb]
    return run_verb(module_name, function_name, rest)


if __name__ == '__main__':
    raise SystemExit(main())
