"""``xft convert pth_to_hf CONFIG PTH SAVE_DIR``: a training checkpoint becomes an HF folder.

A LoRA/QLoRA checkpoint becomes a PEFT adapter folder (``adapter_config.json`` +
``adapter_model.safetensors``) that ``PeftModel.from_pretrained`` and
``AutoPeftModelForCausalLM`` load; a full fine-tune becomes a full model folder with sharded
safetensors. Either way the tokenizer is saved beside it (with a ``chat_template`` rendering the
config's prompt template, when there is one) and so is the config. The base model is built on the
meta device only: no weights are loaded twice and no GPU is needed (see ``xft.model.export``).

Example::

    $ python tools/pth_to_hf.py configs/smollm2_135m_qlora_self_cognition.py \\
          work_dirs/smollm2_135m_qlora_self_cognition/iter_40.pth work_dirs/hf_adapter
    [1/4] reading config configs/smollm2_135m_qlora_self_cognition.py ...
    [2/4] reading checkpoint work_dirs/smollm2_135m_qlora_self_cognition/iter_40.pth ...
          128 tensors, 1,843,200 parameters, LoRA adapter
    [3/4] writing PEFT adapter to work_dirs/hf_adapter (base built on the meta device) ...
    [4/4] saving tokenizer and config ...
    saved a PEFT adapter to work_dirs/hf_adapter in 1.9 s
"""
import argparse
import sys

from mmengine.config import DictAction

from xft.tools.command import run_command
from xft.tools.notices import quiet_library_notices
from xft.utils.errors import UserError
from xft.utils.progress import StepProgress

STEPS = 4


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog='xft convert pth_to_hf', description='Convert an xft training checkpoint to a Hugging Face '
        'PEFT adapter (LoRA/QLoRA) or a full model folder (full fine-tune).')
    parser.add_argument('config', help='the training config (a path or a config zoo name)')
    parser.add_argument('pth_model', help='the checkpoint, e.g. work_dirs/<cfg>/iter_500.pth')
    parser.add_argument('save_dir', help='the folder to write')
    parser.add_argument('--fp32', action='store_true',
                        help='save float32 weights (default: the dtype the config trains in, '
                        'fp16 when it names none; LoRA adapters keep their trained dtype)')
    parser.add_argument('--max-shard-size', default='2GB',
                        help='largest safetensors shard of a full model (default 2GB)')
    parser.add_argument('--safe-serialization', dest='safe_serialization', default=True,
                        action=argparse.BooleanOptionalAction,
                        help='write safetensors (default) or, with --no-safe-serialization, .bin')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, default=None,
                        help='override config entries as for training, e.g. '
                        'pretrained_model_name_or_path=DIR model.lora.r=16')
    parser.add_argument('--verbose', action='store_true', help='show library notices too')
    return parser.parse_args(argv)



def convert(args):
    # Imported here so that --help and argument errors answer at once.
    import torch

    from xft.engine.checkpoint import read_checkpoint_state_dict
    from xft.engine.config import load_config, resolve_config
    from xft.engine.model_sources import check_model_sources
    from xft.model.export import (export_weights, is_lora_state_dict, llm_state_dict, require_llm,
                                  save_tokenizer_and_config)

    progress = StepProgress(STEPS)
    progress.step(f'reading config {args.config}')
    cfg = load_config(args.config, args.cfg_options)
    require_llm(cfg)
    check_model_sources(cfg, resolve_config(args.config))  # the base's config.json, the tokenizer

    progress.step(f'reading checkpoint {args.pth_model}')
    checkpoint = read_checkpoint_state_dict(args.pth_model)
    # Trained weights outside the LLM (a reward model's value head) have no place in an adapter
    # or an HF causal LM: refuse rather than drop them.
    outside = sorted(key for key in checkpoint if not key.startswith('llm.'))
    if outside:
        raise UserError(f'{args.pth_model}: holds trained weights outside model.llm ({outside[0]!r}, '
                        "e.g. a reward model's value head), which an adapter or HF model cannot "
                        'carry; converting reward models is not supported yet')
    state_dict = llm_state_dict(checkpoint)
    lora = is_lora_state_dict(state_dict)
    # Tied weights (embeddings and head) share one tensor: count it once.
    n_params = sum({t.data_ptr(): t.numel() for t in state_dict.values()}.values())
    print(f'      {len(state_dict)} tensors, {n_params:,} parameters, '
          f'{"LoRA adapter" if lora else "full model"}', flush=True)

    dtype = torch.float32 if args.fp32 else None
    progress.step(f'writing {"PEFT adapter" if lora else "full model"} to {args.save_dir} '
                  '(base built on the meta device)')
    export_weights(cfg, state_dict, args.save_dir, dtype=dtype, max_shard_size=args.max_shard_size,
                   safe_serialization=args.safe_serialization)
    del state_dict

    progress.step('saving tokenizer and config')
    save_tokenizer_and_config(cfg, args.save_dir, lora)
    kind = 'a PEFT adapter' if lora else 'a full model'
    print(f'saved {kind} to {args.save_dir} in {progress.elapsed():.1f} s', flush=True)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    quiet_library_notices(verbose='--verbose' in argv)
    return run_command('convert pth_to_hf', convert, parse_args(argv))


if __name__ == '__main__':
    raise SystemExit(main())
