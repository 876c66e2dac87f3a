"""``xft chat MODEL``: talk to a model in exactly the prompt format it was trained with.

Prompts are built by the training encoder (``xft.model.generation``), so the model sees the
same token ids it learned from, also for earlier turns (their SEP, SUFFIX and EOS included).

Three ways to use it::

    $ python tools/chat.py ~/.cache/xft/smollm2-135m-instruct --adapter work_dirs/hf_adapter \\
          --prompt-template chatml --bits 4
    (interactive: type, then press Enter twice; RESET clears the history, EXIT quits)

    $ python tools/chat.py MODEL --prompt-template chatml --prompt 'Who are you?'
    (answers once and exits)

    $ printf 'Who are you?\\n\\nWhat is the capital of France?\\n' | python tools/chat.py MODEL
    (stdin is not a terminal: blank-line separated turns, one answer per turn, history kept)

Without ``--prompt-template`` the template comes from the training config that pth_to_hf saved
beside the adapter (``xft_config.py``, which merge copies too), so a converted model is asked
exactly as it was trained; else from the tokenizer's own chat_template (``hf_chat_template``); a
tokenizer without one gets the messages as plain text (XTuner's behaviour for base models).
"""
import argparse
import contextlib
import re
import sys
from pathlib import Path

from xft.tools.command import run_command
from xft.tools.notices import quiet_library_notices
from xft.utils.errors import ConfigError, UserError
from xft.utils.templates import USE_TOKENIZER_CHAT_TEMPLATE

EXIT_COMMAND = 'EXIT'
RESET_COMMAND = 'RESET'
HF_CHAT_TEMPLATE = 'hf_chat_template'
TORCH_DTYPES = ('auto', 'float16', 'bfloat16', 'float32')
# XTuner's chat defaults, so a user's habits carry over.
DEFAULT_TEMPERATURE = 0.1
DEFAULT_TOP_K = 40
DEFAULT_TOP_P = 0.75
DEFAULT_MAX_NEW_TOKENS = 2048
BANNER = (f'Type a message and press Enter twice to send it. {RESET_COMMAND} clears the '
          f'history, {EXIT_COMMAND} quits.')


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog='xft chat', description='Chat with a model (and adapter) in its training prompt format.')
    parser.add_argument('model', help='the model folder (a merged model or the adapter\'s base), '
                        'or a .gguf file')
    parser.add_argument('--adapter', help='a PEFT adapter folder to apply (from pth_to_hf)')
    parser.add_argument('--bits', type=int, choices=(4, 8),
                        help='load the model quantized: 4 (NF4, double quant) or 8 bits')
    parser.add_argument('--torch-dtype', choices=TORCH_DTYPES, default='auto',
                        help='weights and compute dtype (default: the model\'s own)')
    parser.add_argument('--prompt-template',
                        help='a PROMPT_TEMPLATE name such as chatml (default: the tokenizer\'s '
                        'own chat_template)')
    system = parser.add_mutually_exclusive_group()
    system.add_argument('--system', help='the system prompt text')
    system.add_argument('--system-template', help='a SYSTEM_TEMPLATE name such as alpaca')
    parser.add_argument('--bot-name', default='BOT',
                        help='fills {bot_name} in a system template (default BOT)')
    parser.add_argument('--stop-words', nargs='+', default=[],
                        help='extra texts that end a reply (the template\'s and EOS always do)')
    parser.add_argument('--max-new-tokens', type=int, default=DEFAULT_MAX_NEW_TOKENS)
    parser.add_argument('--temperature', type=float, default=DEFAULT_TEMPERATURE,
                        help=f'sampling temperature; 0 is greedy (default {DEFAULT_TEMPERATURE})')
    parser.add_argument('--top-k', type=int, default=DEFAULT_TOP_K)
    parser.add_argument('--top-p', type=float, default=DEFAULT_TOP_P)
    parser.add_argument('--repetition-penalty', type=float, default=1.0)
    parser.add_argument('--seed', type=int, default=0, help='random seed for sampling')
    parser.add_argument('--no-streamer', action='store_true',
                        help='print each reply when it is complete instead of as it grows')
    parser.add_argument('--prompt', help='answer this one message and exit')
    parser.add_argument('--trust-remote-code', action='store_true',
                        help='allow model code shipped in the model folder to run (off by default)')
    parser.add_argument('--verbose', action='store_true', help='show library notices too')
    return parser.parse_args(argv)


# --- settings that need no model: checked first, so mistakes fail in a second ----------------

def resolve_chat_template(args):
    """The template to encode with: --prompt-template; else the one the saved training config
    (``xft_config.py``, written by pth_to_hf, copied by merge) names; else the tokenizer's."""
    from xft.dataset.map_fns.template import resolve_template
    from xft.model.export import read_training_template
    if args.prompt_template:
        return resolve_template(args.prompt_template)
    for folder in (args.adapter, args.model):
        template = read_training_template(folder) if folder else None
        if template:
            print(f'using the prompt template of the training config in {folder}',
                  file=sys.stderr)
            return resolve_template(template)
    return resolve_template(HF_CHAT_TEMPLATE)


def raw_text_template():
    from xft.model.generation import RAW_TEXT_TEMPLATE
    return RAW_TEXT_TEMPLATE


def resolve_system(args):
    from xft.utils.templates import SYSTEM_TEMPLATE
    if args.system_template is None:
        return args.system or ''
    if args.system_template not in SYSTEM_TEMPLATE:
        raise ConfigError(f'unknown system template {args.system_template!r}; known: '
                          f'{", ".join(sorted(SYSTEM_TEMPLATE))}')
    return SYSTEM_TEMPLATE[args.system_template].replace('{bot_name}', args.bot_name)


def _looks_like_hub_name(name):
    return re.fullmatch(r'[\w.\-]+/[\w.\-]+', name) is not None and not Path(name).exists()


def model_location(model):
    """(folder, from_pretrained kwargs): a ``.gguf`` file (from ``xft convert gguf``) is read
    by transformers from its folder with ``gguf_file=``."""
    path = Path(model)
    if path.suffix == '.gguf' and path.is_file():
        return str(path.parent), {'gguf_file': path.name}
    return str(model), {}


def check_model_paths(args):
    """The model is a model folder, a .gguf file or a reachable hub id, the adapter an adapter
    folder: checked before anything loads, each failure one line."""
    from xft.tools.merge import require_model_folder
    if args.adapter and not (Path(args.adapter) / 'adapter_config.json').is_file():
        raise UserError(f'{args.adapter}: not a PEFT adapter folder (no adapter_config.json)')
    if Path(args.model).suffix == '.gguf':
        if not Path(args.model).is_file():
            raise UserError(f'{args.model}: GGUF file not found')
    elif Path(args.model).is_dir():
        require_model_folder(args.model)
    elif _looks_like_hub_name(args.model):
        require_hub_model(args.model)
    else:
        raise UserError(f'{args.model}: model folder not found')


def require_hub_model(name):
    """A hub id is cached or the hub answers; else one line instead of ~50 s of retries."""
    from xft.utils.hub import HubMissing, go_offline, is_cached, offline_reason, probe_hub
    cached, offline = is_cached(name), offline_reason(datasets=False)
    if cached and offline:
        return
    try:
        reason = offline or probe_hub(name)
    except HubMissing as error:
        raise UserError(f'{name}: not a local folder, and {error}') from None
    if reason is None:
        return
    if not cached:
        raise UserError(f'{name}: not a local folder, not in the Hugging Face cache, and the hub '
                        f'cannot be reached ({reason}); give a local model folder, or connect to the '
                        'network (HF_ENDPOINT=URL for a mirror)')
    go_offline()


def quantization_config(bits, dtype):
    """A BitsAndBytesConfig for ``--bits``; one clear line when bitsandbytes cannot do it."""
    if bits is None:
        return None
    try:
        import bitsandbytes  # noqa: F401
    except Exception as error:  # ImportError, or a library that fails to load on this machine
        raise UserError(f'--bits {bits} needs bitsandbytes, which is not usable here '
                        f'({type(error).__name__}: {str(error).splitlines()[0]}); '
                        'pip install bitsandbytes, or drop --bits') from None
    from transformers import BitsAndBytesConfig
    if bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type='nf4',
                              bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype)


def compute_dtype(args, device):
    """The dtype 4-bit layers compute in: --torch-dtype, else the model's own dtype; float16
    only on a GPU (CPU kernels for it are slow), float32 when the model names none."""
    import torch
    if args.torch_dtype != 'auto':
        return getattr(torch, args.torch_dtype)
    from transformers import AutoConfig
    try:
        config = AutoConfig.from_pretrained(str(args.model),
                                            trust_remote_code=args.trust_remote_code)
    except (OSError, ValueError):
        return torch.float32
    dtype = getattr(config, 'dtype', None) or getattr(config, 'torch_dtype', None)
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    if dtype == torch.float16 and device != 'cuda':
        return torch.float32
    return dtype if isinstance(dtype, torch.dtype) else torch.float32


# --- the model ------------------------------------------------------------------------------

def load_tokenizer(args):
    from transformers import AutoTokenizer
    adapter_has_tokenizer = args.adapter and any(
        (Path(args.adapter) / name).is_file() for name in ('tokenizer.json', 'tokenizer_config.json'))
    source, extra = (str(args.adapter), {}) if adapter_has_tokenizer else model_location(args.model)
    return AutoTokenizer.from_pretrained(source, trust_remote_code=args.trust_remote_code, **extra)


def load_model(args):
    import torch
    from transformers import AutoModelForCausalLM

    from xft.model.quantization import keep_4bit_weights_trainable_on_cpu

    dtype = 'auto' if args.torch_dtype == 'auto' else getattr(torch, args.torch_dtype)
    device = 'cuda' if torch.cuda.is_available() else 'cpu'
    try:
        folder, extra = model_location(args.model)
        model = AutoModelForCausalLM.from_pretrained(
            folder, **extra, dtype=dtype, device_map={'': device},
            quantization_config=quantization_config(
                args.bits, compute_dtype(args, device) if args.bits else None),
            trust_remote_code=args.trust_remote_code)
    except (OSError, ValueError) as error:
        raise UserError(f'{args.model}: cannot load the model: '
                        f'{str(error).strip().splitlines()[0]}') from None
    # Same 4-bit kernels as training (bitsandbytes would otherwise repack weights for CPU
    # inference on the first forward, which computes slightly differently).
    keep_4bit_weights_trainable_on_cpu(model)
    if args.adapter:
        from peft import PeftModel

        from xft.model.vocab import grow_base_to_adapter
        grow_base_to_adapter(model, args.adapter)  # an adapter that trained added tokens' rows
        model = PeftModel.from_pretrained(model, str(args.adapter), is_trainable=False)
    model.eval()
    model.generation_config.use_cache = True
    return model


# --- the conversation -----------------------------------------------------------------------

class ChatSession:
    """A conversation: its history and how to answer the next message."""

    def __init__(self, model, tokenizer, template, system, settings, stop_words, stream):
        self.model, self.tokenizer, self.template = model, tokenizer, template
        self.system, self.settings, self.stop_words, self.stream = (
            system, settings, stop_words, stream)
        self.history = []

    def reset(self):
        self.history = []

    def answer(self, message):
        from xft.model.generation import encode_for_generation, generate_reply
        prompt_ids = encode_for_generation(self.history, message, self.template, self.tokenizer,
                                           system=self.system)
        reply = generate_reply(self.model, self.tokenizer, prompt_ids, self.settings,
                               self.stop_words, stream=self.stream)
        self.history.append((message, reply))
        return reply


def split_turns(text):
    """Blank-line separated messages (the scripted stdin format)."""
    return [block.strip('\n') for block in re.split(r'\n(?:[ \t]*\n)+', text) if block.strip()]


def read_message(read_line=None):
    """Lines until an empty one ("double Enter"); None at end of input."""
    read_line = read_line or input
    lines = []
    while True:
        try:
            line = read_line('' if lines else '\n>>> ')
        except EOFError:
            return '\n'.join(lines) if lines else None
        if line == '' and lines:
            return '\n'.join(lines)
        if line != '':
            lines.append(line)


def run_interactive(session, streaming):
    print(BANNER)
    while True:
        message = read_message()
        if message is None or message.strip() == EXIT_COMMAND:
            return
        if message.strip() == RESET_COMMAND:
            session.reset()
            print('(history cleared)')
            continue
        reply = session.answer(message)
        print('' if streaming else reply)


def run_scripted(session, messages, streaming):
    for message in messages:
        reply = session.answer(message)
        print('' if streaming else reply, flush=True)


def prepare_session(args):
    """Check the settings, load tokenizer and model; a ChatSession ready to answer."""
    check_model_paths(args)  # before the heavy imports: a typo fails at once
    template = resolve_chat_template(args)
    system = resolve_system(args)
    quantization_config(args.bits, None)  # fail before loading when bitsandbytes is unusable
    from transformers import set_seed

    from xft.model.generation import GenerationSettings, stop_words_for
    set_seed(args.seed)
    print(f'loading {args.model}' + (f' + {args.adapter}' if args.adapter else '') +
          (f' in {args.bits} bits' if args.bits else '') + ' ...', file=sys.stderr, flush=True)
    tokenizer = load_tokenizer(args)
    if template.get(USE_TOKENIZER_CHAT_TEMPLATE) and not getattr(tokenizer, 'chat_template', None):
        # XTuner's behaviour for a base model: the text goes in as it is. Said out loud, since
        # a fine-tuned model asked without its template answers badly.
        print('no --prompt-template given and the tokenizer has no chat_template: messages '
              'are sent as plain text', file=sys.stderr)
        template = raw_text_template()
    model = load_model(args)
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens,
                                  temperature=args.temperature, top_k=args.top_k,
                                  top_p=args.top_p, repetition_penalty=args.repetition_penalty)
    stream = None if args.no_streamer else (lambda text: print(text, end='', flush=True))
    return ChatSession(model, tokenizer, template, system, settings,
                       stop_words_for(template, tokenizer, args.stop_words), stream)


def chat(args):
    # Libraries imported while loading may print to stdout (DeepSpeed announces its
    # accelerator there); stdout carries only replies, so scripts can read them.
    with contextlib.redirect_stdout(sys.stderr):
        session = prepare_session(args)
    streaming = not args.no_streamer
    if args.prompt is not None:
        run_scripted(session, [args.prompt], streaming)
    elif not sys.stdin.isatty():
        run_scripted(session, split_turns(sys.stdin.read()), streaming)
    else:
        run_interactive(session, streaming)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    quiet_library_notices(verbose='--verbose' in argv)
    return run_command('chat', chat, parse_args(argv))


if __name__ == '__main__':
    raise SystemExit(main())
