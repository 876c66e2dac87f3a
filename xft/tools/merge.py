"""``xft convert merge BASE ADAPTER SAVE_DIR``: fold a LoRA adapter into its base model.

The base is loaded once, in its own dtype (``dtype='auto'``: a bf16 checkpoint stays bf16), the
adapter is applied and merged (``W + scale * B @ A``), and the result is saved as sharded
safetensors with a tokenizer: the adapter folder's when it has one (pth_to_hf writes it there
with the training chat_template), else the base's.

Example::

    $ python tools/merge.py ~/.cache/xft/smollm2-135m-instruct work_dirs/hf_adapter \\
          work_dirs/merged --max-shard-size 2GB
"""
import argparse
import shutil
import sys
import time
from pathlib import Path

from xft.tools.command import run_command
from xft.tools.notices import quiet_library_notices
from xft.utils.errors import UserError

DEVICES = ('cpu', 'cuda', 'auto')


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog='xft convert merge', description='Merge a PEFT LoRA adapter into its base model.')
    parser.add_argument('base', help='the base model folder (or hub name)')
    parser.add_argument('adapter', help='the PEFT adapter folder (from pth_to_hf)')
    parser.add_argument('save_dir', help='the folder to write the merged model to')
    parser.add_argument('--max-shard-size', default='2GB',
                        help='largest safetensors shard (default 2GB)')
    parser.add_argument('--device', choices=DEVICES, default='cpu',
                        help='where to merge: cpu (default), cuda, or auto (accelerate device map)')
    parser.add_argument('--safe-serialization', dest='safe_serialization', default=True,
                        action=argparse.BooleanOptionalAction,
                        help='write safetensors (default) or, with --no-safe-serialization, .bin')
    parser.add_argument('--trust-remote-code', action='store_true',
                        help='allow model code shipped in the base folder to run (off by default)')
    parser.add_argument('--verbose', action='store_true', help='show library notices too')
    return parser.parse_args(argv)


def _device_map(device):
    if device == 'cuda':
        import torch
        if not torch.cuda.is_available():
            raise UserError('--device cuda: no CUDA device is available; use --device cpu')
        return {'': 0}
    return device if device == 'auto' else {'': 'cpu'}


def load_merged_model(base, adapter, device='cpu', trust_remote_code=False):
    """``base`` with ``adapter`` folded in, in memory (the base's own dtype)."""
    if not (Path(adapter) / 'adapter_config.json').is_file():
        raise UserError(f'{adapter}: not a PEFT adapter folder (no adapter_config.json)')
    if not Path(base).is_dir():
        raise UserError(f'{base}: base model folder not found (merge needs the base model on disk)')
    require_model_folder(base)
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from xft.model.vocab import grow_base_to_adapter
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(base), dtype='auto', device_map=_device_map(device),
            trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:
        raise UserError(f'{base}: cannot load the base model: '
                        f'{str(error).splitlines()[0]}') from None
    grow_base_to_adapter(model, adapter)  # an adapter that trained added tokens' rows
    model = PeftModel.from_pretrained(model, str(adapter), is_trainable=False)
    return model.merge_and_unload()


def merge_adapter(base, adapter, save_dir, max_shard_size='2GB', device='cpu',
                  safe_serialization=True, trust_remote_code=False):
    """Merge ``adapter`` into ``base`` and save model + tokenizer to ``save_dir``."""
    merged = load_merged_model(base, adapter, device=device, trust_remote_code=trust_remote_code)
    from transformers import AutoTokenizer

    from xft.dataset.map_fns.template import resolve_template
    from xft.model.chat_template import add_stop_tokens_to_generation_config
    from xft.model.export import TRAINING_CONFIG_FILENAME, read_training_template
    merged.save_pretrained(str(save_dir), max_shard_size=max_shard_size,
                           safe_serialization=safe_serialization)
    has_tokenizer = any((Path(adapter) / name).is_file()
                        for name in ('tokenizer.json', 'tokenizer_config.json'))
    tokenizer = AutoTokenizer.from_pretrained(str(adapter if has_tokenizer else base),
                                              trust_remote_code=trust_remote_code)
    tokenizer.save_pretrained(str(save_dir))
    training_config = Path(adapter) / TRAINING_CONFIG_FILENAME
    if training_config.is_file():  # the merged model keeps its provenance and template
        shutil.copyfile(training_config, Path(save_dir) / TRAINING_CONFIG_FILENAME)
        template = read_training_template(adapter)
        if template is not None:
            add_stop_tokens_to_generation_config(save_dir, resolve_template(template), tokenizer)
    return Path(save_dir)


def require_model_folder(folder) -> None:
    """A Hugging Face model folder holds config.json; say what the folder is instead."""
    folder = Path(folder)
    if (folder / 'config.json').is_file():
        return
    if (folder / 'adapter_config.json').is_file():
        raise UserError(f'{folder}: a PEFT adapter folder, not a model folder (no config.json); give '
                        'the base model here and the adapter with --adapter')
    raise UserError(f'{folder}: no config.json in this folder; expected a Hugging Face model folder '
                    '(config.json and the weights), e.g. the output of xft convert merge')


def merge(args) -> None:
    started = time.perf_counter()
    merge_adapter(args.base, args.adapter, args.save_dir, max_shard_size=args.max_shard_size,
                  device=args.device, safe_serialization=args.safe_serialization,
                  trust_remote_code=args.trust_remote_code)
    print(f'saved the merged model to {args.save_dir} in {time.perf_counter() - started:.1f} s')


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    quiet_library_notices(verbose='--verbose' in argv)
    return run_command('convert merge', merge, parse_args(argv))


if __name__ == '__main__':
    raise SystemExit(main())
