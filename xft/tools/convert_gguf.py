"""``xft convert gguf MODEL_DIR OUT.gguf``: a model folder (or base + adapter) as one GGUF file.

For llama.cpp, Ollama and LM Studio. The file carries what those engines need to chat like
training did, with no edits: the tokenizer, its special tokens, the training template as
``tokenizer.chat_template`` (read from the ``xft_config.py`` that pth_to_hf and merge save beside
the weights; ``--prompt-template`` overrides it) and the template's stop token as ``eot``.

Example::

    $ xft convert gguf work_dirs/merged work_dirs/model-q8_0.gguf --outtype q8_0
    [1/4] reading work_dirs/merged ...
    ...
    wrote work_dirs/model-q8_0.gguf: 30 tensors, 145 MiB, Q8_0 x 21, F32 x 9 in 3.1 s
    $ xft convert gguf BASE OUT.gguf --adapter work_dirs/hf_adapter      # merged in memory first
"""
import argparse
import sys
from pathlib import Path

from xft.tools.command import run_command
from xft.tools.notices import quiet_library_notices
from xft.utils.errors import UserError
from xft.utils.progress import StepProgress

OUTTYPES = ('f16', 'bf16', 'q8_0')
TOKENIZER_FILES = ('tokenizer.json', 'tokenizer_config.json')
INSTALL_HINT = 'pip install gguf==0.19.0 (see requirements/demo.txt)'
STEPS = 3


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog='xft convert gguf',
        description='Write a Llama-family model (llama, mistral, qwen2) as a GGUF file with its '
        'tokenizer, training chat template and stop tokens.')
    parser.add_argument('model', help='a merged or full model folder, or the base of --adapter')
    parser.add_argument('out', help='the .gguf file to write')
    parser.add_argument('--outtype', choices=OUTTYPES, default='f16',
                        help='weight type: f16 (default), bf16, or q8_0 (8-bit, about half the '
                        'size); norms and biases stay float32')
    parser.add_argument('--adapter', help='a PEFT adapter folder (from pth_to_hf), merged into '
                        'the model in memory first')
    parser.add_argument('--prompt-template', help='a PROMPT_TEMPLATE name for the chat template '
                        '(default: the training config saved beside the adapter or model, else '
                        'the tokenizer\'s own chat_template)')
    parser.add_argument('--tokenizer-pre', help='llama.cpp\'s pre-tokenizer name (gpt-2, '
                        'llama-bpe, qwen2, ...) for a byte-level tokenizer xft does not recognize')
    parser.add_argument('--name', help='general.name in the file (default: the file name)')
    return parser.parse_args(argv)



def _require_gguf():
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise UserError(f'package gguf is not installed; run: {INSTALL_HINT}') from None


def _check_paths(args):
    if not Path(args.model).is_dir():
        raise UserError(f'{args.model}: model folder not found')
    if not (Path(args.model) / 'config.json').is_file():
        raise UserError(f'{args.model}: no config.json; expected a Hugging Face model folder')
    if args.adapter and not (Path(args.adapter) / 'adapter_config.json').is_file():
        raise UserError(f'{args.adapter}: not a PEFT adapter folder (no adapter_config.json)')
    if not Path(args.out).parent.is_dir():
        raise UserError(f'{args.out}: folder {Path(args.out).parent} does not exist')
    if Path(args.out).suffix != '.gguf':
        raise UserError(f'{args.out}: expected a file name ending in .gguf')


def _read_config(folder):
    from transformers import AutoConfig
    try:
        return AutoConfig.from_pretrained(str(folder))
    except (OSError, ValueError) as error:
        raise UserError(f'{folder}: cannot read config.json: '
                        f'{str(error).splitlines()[0]}') from None


def tokenizer_folder(model, adapter=None):
    """The adapter's tokenizer when it saved one (it carries the training chat_template)."""
    if adapter and any((Path(adapter) / name).is_file() for name in TOKENIZER_FILES):
        return Path(adapter)
    return Path(model)


def resolve_export_template(args):
    """(template dict or None, where it came from) for the file's chat template."""
    from xft.dataset.map_fns.template import resolve_template
    from xft.model.export import read_training_template
    if args.prompt_template:
        return resolve_template(args.prompt_template), f'--prompt-template {args.prompt_template}'
    for folder in (args.adapter, args.model):
        template = read_training_template(folder) if folder else None
        if template:
            return resolve_template(template), f'the training config in {folder}'
    return None, None


def chat_template_text(template, tokenizer):
    """The jinja for ``tokenizer.chat_template``: the training template's, else the tokenizer's."""
    from xft.model.chat_template import chat_template_jinja, defers_to_tokenizer
    if template and not defers_to_tokenizer(template):
        return chat_template_jinja(template)
    return getattr(tokenizer, 'chat_template', None)


def generation_stop_ids(model_folder, template, tokenizer):
    """Ids that end a reply: the folder's generation_config eos ids and the template's stop
    tokens (one-token STOP_WORDS), EOS first."""
    from transformers import GenerationConfig

    from xft.model.chat_template import stop_token_ids
    try:
        eos = GenerationConfig.from_pretrained(str(model_folder)).eos_token_id
    except OSError:
        eos = None
    eos = [] if eos is None else list(eos) if isinstance(eos, (list, tuple)) else [eos]
    ids = ([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []) + eos
    return list(dict.fromkeys(ids + stop_token_ids(template, tokenizer)))


def model_tensors(args, progress):
    """(config, SourceTensors): merged in memory with --adapter, else read lazily."""
    from xft.model.gguf_export import tensors_of_safetensors, tensors_of_state_dict
    if args.adapter:
        from xft.tools.merge import load_merged_model
        progress.step(f'merging {args.adapter} into {args.model} in memory')
        merged = load_merged_model(args.model, args.adapter)
        return merged.config, tensors_of_state_dict(merged.state_dict())
    progress.step(f'reading the weights of {args.model}')
    if any(Path(args.model).glob('*.safetensors')):
        return _read_config(args.model), tensors_of_safetensors(args.model)
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(str(args.model), dtype='auto')
    return model.config, tensors_of_state_dict(model.state_dict())


def convert(args):
    from transformers import AutoTokenizer

    from xft.model.gguf_export import architecture_of, size_text, write_gguf
    from xft.model.gguf_vocab import gguf_vocab

    _check_paths(args)
    _require_gguf()
    progress = StepProgress(STEPS)
    progress.step(f'reading {args.model}')
    spec = architecture_of(_read_config(args.model))   # refuse before loading any weight
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_folder(args.model, args.adapter)))
    template, template_source = resolve_export_template(args)
    jinja = chat_template_text(template, tokenizer)
    stop_ids = generation_stop_ids(args.model, template, tokenizer)

    config, sources = model_tensors(args, progress)
    vocab = gguf_vocab(tokenizer, config.vocab_size, stop_ids=stop_ids, pre=args.tokenizer_pre)
    print(f'      {spec.gguf_arch.lower()}, {len(sources)} tensors, tokenizer {vocab.model}'
          f'{f" ({vocab.pre})" if vocab.pre else ""}, {len(vocab.tokens):,} tokens', flush=True)
    _describe_template(template_source, jinja, vocab, tokenizer)
    for note in vocab.notes:
        print(f'      note: {note}', flush=True)

    progress.step(f'writing {args.out} ({args.outtype})')
    report = write_gguf(args.out, config, sources, vocab, chat_template=jinja,
                        outtype=args.outtype, name=args.name,
                        log=lambda line: print(line, flush=True))
    types = ', '.join(f'{name} x {count}' for name, count in sorted(report.types.items()))
    print(f'wrote {report.path}: {report.n_tensors} tensors, {size_text(report.nbytes)}, '
          f'{types} in {progress.elapsed():.1f} s', flush=True)


def _describe_template(template_source, jinja, vocab, tokenizer):
    if template_source:
        print(f'      chat template: from {template_source}', flush=True)
    elif jinja:
        print('      chat template: the tokenizer\'s own', flush=True)
    else:
        print('      chat template: none (no training config beside the model, no '
              'chat_template in the tokenizer; pass --prompt-template NAME)', flush=True)
    names = {key: tokenizer.convert_ids_to_tokens(index)
             for key, index in vocab.special_ids.items()}
    print('      special tokens: ' + ', '.join(f'{key} {name!r}' for key, name in names.items()),
          flush=True)


def main(argv=None) -> int:
    quiet_library_notices()
    return run_command('convert gguf', convert, parse_args(sys.argv[1:] if argv is None else argv))


if __name__ == '__main__':
    raise SystemExit(main())
