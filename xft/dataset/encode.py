"""Where a sample becomes token ids: templated turns + tokenizer -> ``input_ids``, ``labels``.

Loss falls on each turn's output (which already ends in the template's SUFFIX) and on the EOS
that follows it when the template does not use its SUFFIX as EOS. Everything else -- BOS,
system, user input, SEP -- gets ``IGNORE_INDEX``. A turn whose ``output_with_loss`` is False is
encoded but not trained. The BOS (when the tokenizer has one) opens the sample once, unless
the text already starts with that token.

Example (tiny tokenizer, template chatml, one turn)::

    input_ids: <s> <|im_start|> user \\n Hi <|im_end|> \\n <|im_start|> assistant \\n Hello <|im_end|> \\n
    labels:    -   -            -    -  -  -          -  -            -         -  Hello <|im_end|> -

Two entry points share the same rules: ``encode_conversation`` for one sample (tools, tests)
and ``encode_batch`` for ``datasets.map(batched=True)``, which tokenizes every text of the
batch in one tokenizer call. ``encode_with_chat_template`` renders a conversation with the
tokenizer's own jinja chat_template instead (template ``hf_chat_template``).
"""
from xft.utils.constants import IGNORE_INDEX
from xft.utils.errors import ConfigError, DataError

# Columns the encode step writes. ``num_truncated_tokens`` is read once for the log, then dropped.
ENCODED_COLUMNS = ('input_ids', 'labels', 'length', 'num_trained_tokens', 'num_truncated_tokens')


def special_token_ids(tokenizer):
    """(bos_ids, eos_ids) as lists; empty when the tokenizer has no such token."""
    bos = tokenizer.bos_token_id
    eos = tokenizer.eos_token_id
    return ([] if bos is None else [bos]), ([] if eos is None else [eos])


def encode_conversation(conversation, tokenizer, max_length, input_ids_with_output=True):
    """Encode one templated conversation (list of turns, see conversation.py)."""
    texts = _turn_texts(conversation)
    token_ids = _tokenize(tokenizer, texts)
    return _assemble(conversation, iter(token_ids), special_token_ids(tokenizer), max_length,
                     input_ids_with_output)


def encode_batch(batch, tokenizer, max_length, input_ids_with_output=True):
    """``datasets.map(batched=True)`` form of ``encode_conversation``."""
    conversations = batch['conversation']
    texts = [text for conversation in conversations for text in _turn_texts(conversation)]
    token_ids = iter(_tokenize(tokenizer, texts))
    special = special_token_ids(tokenizer)
    encoded = [_assemble(conversation, token_ids, special, max_length, input_ids_with_output)
               for conversation in conversations]
    return {column: [sample[column] for sample in encoded] for column in ENCODED_COLUMNS}


def _turn_texts(conversation):
    # The order here is the order _assemble consumes token lists in: input, output, sep per turn.
    texts = []
    for turn in conversation:
        texts.extend((turn['input'], turn['output'], turn['sep']))
    return texts


def _tokenize(tokenizer, texts):
    if not texts:
        return []
    backend = getattr(tokenizer, 'backend_tokenizer', None)
    if backend is not None and hasattr(backend, 'encode_batch_fast'):
        # The Rust batch encoder without offsets: the same ids as tokenizer(texts), less work.
        return [encoding.ids for encoding in
                backend.encode_batch_fast(texts, add_special_tokens=False)]
    return tokenizer(texts, add_special_tokens=False)['input_ids']


def _assemble(conversation, token_ids, special, max_length, input_ids_with_output):
    bos, eos = special
    input_ids, labels = [], []
    for turn in conversation:
        input_part, output_part, sep_part = next(token_ids), next(token_ids), next(token_ids)
        input_ids += input_part
        labels += [IGNORE_INDEX] * len(input_part)
        if not input_ids_with_output:
            continue
        trained = turn['output_with_loss']
        input_ids += output_part
        labels += output_part if trained else [IGNORE_INDEX] * len(output_part)
        if turn['need_eos_token'] is not False and turn['output']:
            if not eos:
                raise ConfigError('the tokenizer has no eos_token, but the template needs one '
                                  'after each reply (SUFFIX_AS_EOS is False); set eos_token or '
                                  'use a template whose SUFFIX ends the reply')
            input_ids += eos
            labels += eos if trained else [IGNORE_INDEX] * len(eos)
        input_ids += sep_part
        labels += [IGNORE_INDEX] * len(sep_part)
    # Some tokenizers use a template token as BOS (SmolLM2's BOS is <|im_start|>): when the
    # text already opens with it, adding another would make the sample differ from the model's
    # own chat format.
    if bos and input_ids[:len(bos)] != bos:
        input_ids, labels = bos + input_ids, [IGNORE_INDEX] * len(bos) + labels
    return _finish(input_ids, labels, max_length)


def encode_pretokenized(input_ids, labels, vocab_size, max_length):
    """A row that already holds token ids (``do_dataset_tokenization=False``): checked, then cut
    to ``max_length`` (when given) like an encoded sample. Without ``labels`` every token trains,
    as in plain-text pre-training; given labels pair with the ids one to one.

    >>> row = encode_pretokenized([5, 6, 7], None, vocab_size=10, max_length=2)
    >>> row['input_ids'], row['labels'], row['num_truncated_tokens']
    ([5, 6], [5, 6], 1)
    >>> encode_pretokenized([5, 12], None, vocab_size=10, max_length=None)
    Traceback (most recent call last):
    ...
    xft.utils.errors.DataError: token id 12 at position 1 is outside the tokenizer's vocabulary (0-9)
    """
    if not isinstance(input_ids, list) or not input_ids or not all(_is_id(i) for i in input_ids):
        raise DataError(f'input_ids must be a non-empty list of token ids, got {_short(input_ids)}')
    if vocab_size is not None:
        for position, token in enumerate(input_ids):
            if token >= vocab_size:
                raise DataError(f"token id {token} at position {position} is outside the tokenizer's "
                                f'vocabulary (0-{vocab_size - 1})')
    if labels is None:
        labels = list(input_ids)
    elif not isinstance(labels, list) or len(labels) != len(input_ids):
        raise DataError(f'labels must pair with input_ids one to one: {len(input_ids)} input_ids, '
                        f'labels {_short(labels)}')
    elif not all(label == IGNORE_INDEX or _is_id(label) for label in labels):
        raise DataError(f'labels must be token ids or {IGNORE_INDEX} (not trained), got {_short(labels)}')
    return _finish(input_ids, labels, max_length or len(input_ids))


def _is_id(value):
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _short(value):
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + '...'


def _finish(input_ids, labels, max_length):
    num_truncated = max(0, len(input_ids) - max_length)
    if num_truncated:
        input_ids, labels = input_ids[:max_length], labels[:max_length]
    return {'input_ids': input_ids, 'labels': labels, 'length': len(input_ids),
            'num_trained_tokens': sum(label != IGNORE_INDEX for label in labels),
            'num_truncated_tokens': num_truncated}


# --- the tokenizer's own chat_template --------------------------------------------------------

def conversation_to_messages(conversation):
    """Turns (system/input/output) -> OpenAI-style messages for ``apply_chat_template``."""
    messages = []
    for turn in conversation:
        if turn['system']:
            messages.append({'role': 'system', 'content': turn['system']})
        messages.append({'role': 'user', 'content': turn['input']})
        messages.append({'role': 'assistant', 'content': turn['output']})
    return messages


def encode_with_chat_template(conversation, tokenizer, max_length, input_ids_with_output=True):
    """Encode un-templated turns by rendering them with ``tokenizer.chat_template``.

    The trained span of each reply is the text the template adds for the assistant message,
    without its trailing whitespace (the SEP), found by rendering the conversation up to the
    reply with and without it. The whole text is tokenized once, so the ids equal those of
    ``apply_chat_template(messages, tokenize=True)``; labels come from the character offsets.
    """
    if not getattr(tokenizer, 'chat_template', None):
        raise ConfigError("prompt template 'hf_chat_template' needs a tokenizer with a "
                          'chat_template, and this tokenizer has none')
    if not getattr(tokenizer, 'is_fast', False):
        raise ConfigError("prompt template 'hf_chat_template' needs a fast tokenizer "
                          '(character offsets)')
    messages = conversation_to_messages(conversation)
    if not input_ids_with_output:
        first_reply = next(i for i, m in enumerate(messages) if m['role'] == 'assistant')
        text = _render(tokenizer, messages[:first_reply], add_generation_prompt=True)
        input_ids = _encode_text(tokenizer, text)[0]
        return _finish(input_ids, [IGNORE_INDEX] * len(input_ids), max_length)
    _check_generation_prompt(tokenizer, messages)
    trained_spans = []
    assistant_positions = [i for i, m in enumerate(messages) if m['role'] == 'assistant']
    for turn, position in zip(conversation, assistant_positions):
        prompt = _render(tokenizer, messages[:position], add_generation_prompt=True)
        with_reply = _render(tokenizer, messages[:position + 1], add_generation_prompt=False)
        if not with_reply.startswith(prompt):
            raise ConfigError('the chat_template renders a prompt that is not a prefix of the '
                              'prompt plus the reply; its replies cannot be located for the loss')
        reply_end = len(with_reply.rstrip())
        if turn['output_with_loss'] and reply_end > len(prompt):
            trained_spans.append((len(prompt), reply_end))
    text = _render(tokenizer, messages, add_generation_prompt=False)
    input_ids, offsets = _encode_text(tokenizer, text)
    labels = [token if _inside(span, trained_spans) else IGNORE_INDEX
              for token, span in zip(input_ids, offsets)]
    return _finish(input_ids, labels, max_length)


def _check_generation_prompt(tokenizer, messages):
    first_user = messages[:1] if messages[0]['role'] == 'user' else messages[:2]
    if _render(tokenizer, first_user, True) == _render(tokenizer, first_user, False):
        raise ConfigError('the chat_template ignores add_generation_prompt, so the assistant '
                          'header cannot be told apart from the reply; use a prompt template '
                          'instead of hf_chat_template')


def _render(tokenizer, messages, add_generation_prompt):
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False,
                                             add_generation_prompt=add_generation_prompt)
    except Exception as error:  # jinja raises its own exception types
        raise DataError(f'the chat_template cannot render this conversation: {error}') from None


def _encode_text(tokenizer, text):
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return encoding['input_ids'], encoding['offset_mapping']


def _inside(token_span, spans):
    start, end = token_span
    return end > start and any(lo <= start and end <= hi for lo, hi in spans)
