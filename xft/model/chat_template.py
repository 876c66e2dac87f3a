"""Render an XTuner-style prompt template as a tokenizer's jinja ``chat_template``.

A model exported by xft should chat in the format it was trained in, also in tools that know
only ``tokenizer.apply_chat_template`` (vLLM, TGI, transformers pipelines). This module writes
the template's strings into such a jinja template:

    system     SYSTEM with {system}
    user       INSTRUCTION with {input} and {round} (1-based; the assistant header is part of it,
               so ``add_generation_prompt`` adds nothing)
    assistant  content + SUFFIX (+ eos_token unless SUFFIX_AS_EOS) + SEP

The rendered *text* always equals what the training encoder tokenizes. Training tokenizes the
pieces (prompt, reply, SEP) separately while ``apply_chat_template`` tokenizes the joined text
once, so the *ids* are equal when no token merges across a boundary. Measured with SmolLM2's
tokenizer: equal for 23 of the 28 templates (chatml included); chatglm2, wizardcoder,
deepseek_v2, cohere_chat and llama3_chat differ where a newline or space ends one piece and
the next begins with one. xft's own chat and hooks therefore encode with the training encoder,
never with this jinja.

Example (a tokenizer with no vocabulary renders text all the same)::

    >>> from tokenizers import Tokenizer, models
    >>> from transformers import PreTrainedTokenizerFast
    >>> from xft.utils import PROMPT_TEMPLATE
    >>> tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.BPE()), bos_token='<s>')
    >>> tokenizer.chat_template = chat_template_jinja(PROMPT_TEMPLATE.chatml)
    >>> tokenizer.apply_chat_template([{'role': 'user', 'content': 'Hi'}], tokenize=False)
    '<s><|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n'
    >>> tokenizer.bos_token = '<|im_start|>'  # SmolLM2's BOS opens the text already: not doubled
    >>> tokenizer.apply_chat_template([{'role': 'user', 'content': 'Hi'}], tokenize=False)
    '<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n'
"""
import json
import string
from pathlib import Path

from xft.utils.templates import USE_TOKENIZER_CHAT_TEMPLATE

# What the template step writes for a system text when a template has no SYSTEM field.
DEFAULT_SYSTEM_FORMAT = '{system}\n'


def defers_to_tokenizer(template):
    """True for the ``hf_chat_template`` marker: the tokenizer's own jinja is the template."""
    return bool(template) and bool(template.get(USE_TOKENIZER_CHAT_TEMPLATE, False))


def _literal(text):
    """A jinja string literal holding exactly ``text``."""
    return json.dumps(text, ensure_ascii=False)


def _format_expression(format_string, fields):
    """A jinja expression rendering ``format_string.format(**fields)``, fields being jinja."""
    parts = []
    for literal_text, field_name, _spec, _conversion in string.Formatter().parse(format_string):
        if literal_text:
            parts.append(_literal(literal_text))
        if field_name is not None:
            if field_name not in fields:
                raise ValueError(f'prompt template field {{{field_name}}} has no chat role value')
            parts.append(fields[field_name])
    return ' + '.join(parts) if parts else '""'


def _literal_prefix(format_string):
    """The text of ``format_string`` before its first field."""
    for literal_text, field_name, _spec, _conversion in string.Formatter().parse(format_string):
        return literal_text if field_name is not None else format_string
    return ''


def chat_template_jinja(template):
    """The jinja chat_template that renders conversations in ``template``'s format.

    It follows the training encoder (``xft.dataset.encode``) exactly: the tokenizer's BOS opens
    the text unless the text already opens with it (SmolLM2's BOS is ``<|im_start|>``); each
    reply is followed by SUFFIX, the EOS unless SUFFIX_AS_EOS, and SEP; a system text without
    a SYSTEM field in the template is written as ``{system}\n``, as the template step does.
    """
    suffix = template.get('SUFFIX') or ''
    add_eos = not template.get('SUFFIX_AS_EOS', False)
    sep = template.get('SEP') or ''
    system_format = template.get('SYSTEM') or DEFAULT_SYSTEM_FORMAT
    user = _format_expression(template['INSTRUCTION'], {
        'input': "message['content']", 'round': '(ns.round | string)'})
    system = _format_expression(system_format, {'system': "message['content']"})
    first_prefix = ('(' + _literal(_literal_prefix(system_format)) + " if messages[0]['role'] == "
                    "'system' else " + _literal(_literal_prefix(template['INSTRUCTION'])) + ')')
    return ''.join([
        '{%- set ns = namespace(round=0) -%}',
        '{%- if bos_token and messages and not ' + first_prefix + '.startswith(bos_token) -%}'
        '{{- bos_token -}}{%- endif -%}',
        '{%- for message in messages -%}',
        "{%- if message['role'] == 'system' -%}{{- " + system + ' -}}',
        "{%- elif message['role'] == 'user' -%}",
        '{%- set ns.round = ns.round + 1 -%}',
        '{{- ' + user + ' -}}',
        "{%- elif message['role'] == 'assistant' -%}",
        "{{- message['content'] + " + _literal(suffix) + ' -}}',
        '{{- eos_token -}}' if add_eos else '',
        '{{- ' + _literal(sep) + ' -}}' if sep else '',
        "{%- else -%}{{- raise_exception('unknown role ' + message['role']) -}}",
        '{%- endif -%}',
        '{%- endfor -%}',
    ])


def save_tokenizer_with_chat_template(tokenizer, template, save_dir):
    """Save ``tokenizer`` into ``save_dir`` with ``template`` as its chat_template.

    Returns True when a chat_template was written from the template, False when the tokenizer
    was saved as it is (no template, or the ``hf_chat_template`` marker).
    """
    wrote = False
    if template and not defers_to_tokenizer(template):
        tokenizer.chat_template = chat_template_jinja(template)
        wrote = True
    tokenizer.save_pretrained(str(Path(save_dir)))
    return wrote


def stop_token_ids(template, tokenizer):
    """Ids of the template's STOP_WORDS that are one token each (``<|im_end|>``, ``<eoa>``)."""
    ids = []
    for word in (template or {}).get('STOP_WORDS', None) or []:
        encoded = tokenizer(word, add_special_tokens=False)['input_ids']
        if len(encoded) == 1:
            ids.append(encoded[0])
    return ids


def _read_generation_config(folder):
    from transformers import GenerationConfig
    try:
        return GenerationConfig.from_pretrained(str(folder))
    except OSError:  # the folder holds none
        return None


def add_stop_tokens_to_generation_config(save_dir, template, tokenizer, base=None):
    """Make ``generate()`` of a saved model stop where the training template ends a reply.

    Tools that know only the model folder (transformers pipelines, vLLM, TGI) stop at
    ``generation_config.eos_token_id``; when a template ends replies with its own token
    (internlm2_chat's ``<|im_end|>`` while the tokenizer's EOS is ``</s>``) they would run on
    past the answer. Rewrites ``generation_config.json`` in ``save_dir`` (an adapter folder has
    none: it starts from ``base``'s, the model the adapter applies to), also filling in the
    tokenizer's pad id when the config names none. Returns the eos ids.
    """
    from transformers import GenerationConfig
    config = _read_generation_config(save_dir)
    if config is None and base is not None:
        config = _read_generation_config(base)
    config = config or GenerationConfig()
    current = config.eos_token_id
    current = ([] if current is None else
               list(current) if isinstance(current, (list, tuple)) else [current])
    if not current and tokenizer.eos_token_id is not None:
        current = [tokenizer.eos_token_id]
    wanted = list(dict.fromkeys(current + stop_token_ids(template, tokenizer)))
    changed = False
    if wanted and wanted != current:
        config.eos_token_id = wanted if len(wanted) > 1 else wanted[0]
        changed = True
    if config.pad_token_id is None and tokenizer.pad_token_id is not None:
        config.pad_token_id = tokenizer.pad_token_id
        changed = True
    if changed or not (Path(save_dir) / 'generation_config.json').is_file():
        config.save_pretrained(str(save_dir))
    return wanted
