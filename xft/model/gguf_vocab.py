"""A Hugging Face tokenizer as the ``tokenizer.ggml.*`` entries of a GGUF file.

llama.cpp (and Ollama, LM Studio, and transformers' own GGUF reader) rebuild the tokenizer from
these entries; no ``tokenizer.json`` travels. Two kinds of vocabulary are written, chosen from
the tokenizer's own ``tokenizer.json`` model:

=============================  ======================  =============================================
tokenizer.json model           ``tokenizer.ggml.model``  what is written
=============================  ======================  =============================================
BPE, byte-level (GPT-2 style)  ``gpt2``                tokens in the byte alphabet, merges, the
                                                       pre-tokenizer's llama.cpp name (``pre``)
BPE with byte fallback         ``llama``               tokens with ``▁``, scores (the merge order:
(SentencePiece, Llama style)                           llama.cpp merges by score), merges too (for
                                                       readers that use them), add_space_prefix
=============================  ======================  =============================================

Token types follow llama.cpp's converter: an added token marked special is CONTROL, another added
token USER_DEFINED, ``<0xNN>`` pieces BYTE, the unknown token UNKNOWN, ids the tokenizer lacks
(an embedding padded past the vocabulary) ``[PAD{id}]`` and UNUSED, the rest NORMAL.

For SmolLM2's tokenizer, ``gguf_vocab(AutoTokenizer.from_pretrained(model_dir),
vocab_size=49152)`` gives ``model='gpt2'``, ``pre='gpt-2'`` and 49,152 tokens.
"""
import json
import re
from dataclasses import dataclass, field
from typing import Optional

from xft.utils.errors import UserError

# gguf.TokenType, spelled here so that reading a tokenizer needs no gguf import.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
BYTE_PIECE = re.compile(r'<0x[0-9A-Fa-f]{2}>')

# The split regexes of the byte-level tokenizers llama.cpp knows, by its pre-tokenizer name
# (facts of those tokenizers' tokenizer.json files; llama.cpp's llama-vocab.cpp holds the same).
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
               r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
SPLIT_PRE_NAMES = {LLAMA3_SPLIT: 'llama-bpe', QWEN2_SPLIT: 'qwen2'}


@dataclass
class GgufVocab:
    """What a GGUF file says about its tokenizer (``tokenizer.ggml.*``)."""

    model: str                      # 'gpt2' or 'llama'
    pre: Optional[str]              # llama.cpp's pre-tokenizer name (gpt2 only)
    tokens: list
    token_types: list
    merges: list
    scores: Optional[list] = None   # llama only
    add_space_prefix: Optional[bool] = None
    special_ids: dict = field(default_factory=dict)   # bos, eos, unk, pad, eot -> id
    add_bos: bool = False
    add_eos: bool = False
    notes: list = field(default_factory=list)   # what a reader of the file should know


def _backend_json(tokenizer):
    backend = getattr(tokenizer, 'backend_tokenizer', None)
    if backend is None:
        raise UserError(f'{type(tokenizer).__name__}: a slow (Python) tokenizer has no '
                        'tokenizer.json to export; save the model with a fast tokenizer')
    return json.loads(backend.to_str())


def merge_pairs(merges):
    """tokenizer.json's merges (``'a b'`` strings or ``[a, b]`` lists) as pairs."""
    pairs = []
    for merge in merges:
        pair = merge.split(' ') if isinstance(merge, str) else list(merge)
        if len(pair) != 2:
            raise UserError(f'tokenizer.json: cannot read merge {merge!r}; expected two pieces')
        pairs.append(tuple(pair))
    return pairs


def merge_strings(pairs):
    """Merges as GGUF stores them, ``'a b'``; a space inside a piece (tokenizer.json's list form
    allows one) is written as U+0120, as llama.cpp's converter does."""
    return [' '.join(''.join(chr(ord(c) + 256) if c == ' ' else c for c in piece)
                     for piece in pair) for pair in pairs]


def vocabulary_kind(tokenizer_json):
    """'gpt2' or 'llama' for a tokenizer.json; a UserError for any other model."""
    model = tokenizer_json.get('model') or {}
    kind = model.get('type')
    if kind == 'BPE' and model.get('byte_fallback'):
        return 'llama'
    if kind == 'BPE' and 'ByteLevel' in json.dumps(tokenizer_json.get('pre_tokenizer')):
        return 'gpt2'
    raise UserError(f'tokenizer model {kind!r} (byte_fallback={model.get("byte_fallback")}) '
                    'cannot be exported to GGUF; supported: byte-level BPE (GPT-2, Llama 3, '
                    'Qwen2, SmolLM2) and SentencePiece-style BPE (Llama 2, Mistral)')


def _flatten(pre_tokenizer):
    if not pre_tokenizer:
        return []
    if pre_tokenizer.get('type') == 'Sequence':
        return [step for child in pre_tokenizer['pretokenizers'] for step in _flatten(child)]
    return [pre_tokenizer]


def byte_level_pre_name(pre_tokenizer):
    """llama.cpp's name for a byte-level pre-tokenizer, or None when it is none we know.

    The name decides how llama.cpp splits text before BPE; a wrong one tokenizes differently
    from training without any error, so an unknown shape is refused rather than guessed.
    """
    steps = _flatten(pre_tokenizer)
    kinds = [step.get('type') for step in steps]
    if kinds == ['ByteLevel'] and steps[0].get('use_regex', True):
        return 'gpt-2'
    if kinds == ['Split', 'ByteLevel'] and not steps[1].get('use_regex', True):
        pattern = (steps[0].get('pattern') or {}).get('Regex')
        return SPLIT_PRE_NAMES.get(pattern)
    if (kinds == ['Digits', 'ByteLevel'] and steps[0].get('individual_digits')
            and steps[1].get('use_regex', True)):
        return 'smollm'   # SmolLM's tokenizer.json: single digits, then GPT-2's split
    return None


def spm_prefix_scheme(tokenizer_json):
    """Where the tokenizer writes a ``▁`` before text: 'always' (a Prepend normalizer, Llama 2's
    legacy form: also after each special token), 'first' (Metaspace: only at the start), or
    'never'."""
    text = json.dumps([tokenizer_json.get('normalizer'), tokenizer_json.get('pre_tokenizer')])
    if '"Prepend"' in text:
        return 'always'
    for step in _flatten(tokenizer_json.get('pre_tokenizer')):
        if step.get('type') == 'Metaspace':
            return step.get('prepend_scheme', 'always')
    return 'never'


def merge_scores(tokens, pairs):
    """SentencePiece-style scores from the merge order: llama.cpp joins the adjacent pair whose
    result scores highest, the BPE model the pair with the lowest merge rank; a result token
    scoring minus its first merge rank makes the two agree. Tokens no merge makes score below
    every merge (they are never a merge result)."""
    first_rank = {}
    for rank, (left, right) in enumerate(pairs):
        first_rank.setdefault(left + right, rank)
    floor = -float(len(pairs))
    return [-float(first_rank[token]) if token in first_rank else floor for token in tokens]


def _token_type(index, token, added, unk_id):
    if index == unk_id:
        return UNKNOWN
    if token in added:
        return CONTROL if added[token] else USER_DEFINED
    if BYTE_PIECE.fullmatch(token):
        return BYTE
    return NORMAL


def _adds_special(tokenizer):
    """(adds BOS, adds EOS) as the tokenizer encodes a plain text."""
    with_special = tokenizer('a')['input_ids']
    plain = tokenizer('a', add_special_tokens=False)['input_ids']
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    add_bos = bos is not None and len(with_special) > len(plain) and with_special[0] == bos
    add_eos = eos is not None and len(with_special) > len(plain) and with_special[-1] == eos
    return add_bos, add_eos


def gguf_vocab(tokenizer, vocab_size, stop_ids=(), pre=None):
    """The GGUF vocabulary of ``tokenizer`` for a model with ``vocab_size`` embedding rows.

    ``stop_ids``: token ids that end a reply besides the EOS (the training template's stop
    token, such as chatml's ``<|im_end|>`` when the EOS is ``</s>``); the first is written as
    ``eot``, which llama.cpp treats as end of generation. ``pre`` names llama.cpp's
    pre-tokenizer for a byte-level vocabulary whose shape is not recognized.
    """
    tokenizer_json = _backend_json(tokenizer)
    kind = vocabulary_kind(tokenizer_json)
    vocab = tokenizer.get_vocab()
    if max(vocab.values()) >= vocab_size:
        raise UserError(f'the tokenizer has id {max(vocab.values())} but the model only '
                        f'{vocab_size} embedding rows; expected the model\'s own tokenizer')
    by_id = {index: token for token, index in vocab.items()}
    added = {token.content: token.special for token in tokenizer.added_tokens_decoder.values()}
    unk_id = tokenizer.unk_token_id
    tokens, types = [], []
    for index in range(vocab_size):
        token = by_id.get(index)
        if token is None:
            tokens.append(f'[PAD{index}]')
            types.append(UNUSED)
        else:
            tokens.append(token)
            types.append(_token_type(index, token, added, unk_id))
    pairs = merge_pairs(tokenizer_json['model'].get('merges') or [])
    result = GgufVocab(model=kind, pre=None, tokens=tokens, token_types=types,
                       merges=merge_strings(pairs))
    if kind == 'gpt2':
        result.pre = pre or byte_level_pre_name(tokenizer_json.get('pre_tokenizer'))
        if result.pre is None:
            shape = json.dumps(tokenizer_json.get('pre_tokenizer'))[:120]
            raise UserError(f'the tokenizer\'s pre-tokenizer is not one llama.cpp is known to '
                            f'split the same way ({shape}); pass --tokenizer-pre NAME '
                            '(llama.cpp\'s name, e.g. gpt-2, llama-bpe, qwen2) if you know it')
    else:
        result.scores = merge_scores(tokens, pairs)
        scheme = spm_prefix_scheme(tokenizer_json)
        result.add_space_prefix = scheme != 'never'
        if scheme == 'first':
            result.notes.append(
                'llama.cpp writes a space before text that follows a special token; this '
                'tokenizer only at the start, so a prompt with special tokens mid-text (a chat '
                'template\'s) can tokenize differently there than in training')
    result.special_ids = special_token_ids(tokenizer, stop_ids)
    result.add_bos, result.add_eos = _adds_special(tokenizer)
    return result


def special_token_ids(tokenizer, stop_ids=()):
    """bos/eos/unk/pad ids of the tokenizer, and ``eot``: the first stop id that is not the EOS."""
    ids = {name: getattr(tokenizer, f'{name}_token_id', None)
           for name in ('bos', 'eos', 'unk', 'pad')}
    ids = {name: index for name, index in ids.items() if index is not None}
    extra = [index for index in stop_ids if index != ids.get('eos')]
    if extra:
        ids['eot'] = extra[0]
    return ids


def add_vocab(writer, vocab):
    """Write ``vocab`` into a ``gguf.GGUFWriter``."""
    writer.add_tokenizer_model(vocab.model)
    if vocab.pre:
        writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.token_types)
    if vocab.scores is not None:
        writer.add_token_scores(vocab.scores)
    if vocab.merges:
        writer.add_token_merges(vocab.merges)
    if vocab.add_space_prefix is not None:
        writer.add_add_space_prefix(vocab.add_space_prefix)
    for name, index in vocab.special_ids.items():
        getattr(writer, f'add_{name}_token_id')(index)
    writer.add_add_bos_token(vocab.add_bos)
    writer.add_add_eos_token(vocab.add_eos)
