"""Render an XTuner-style prompt template as a tokenizer's jinja ``chat_template``.

A model exported by xft should chat in the format it was trained in, also in tools that know
only ``tokenizer.apply_chat_template`` (vLLM, TGI, transformers pipelines). This module writes
the template's strings into such a jinja template:

    system     SYSTEM with {system}
    user       INSTRUCTION with {input} and {round} (1-based; the assistant header is part of it,
               so ``add_generation_prompt`` adds nothing)
    assistant  content + SUFFIX (+ eos_token unless SUFFIX_AS_EOS) + SEP before the next turn

The rendered *text* equals what the training encoder tokenizes. Token ids are equal too when
each boundary between the pieces falls on a special token or a newline (chatml, internlm2_chat,
llama3_chat, ...). Training encodes the prompt and the answer separately, so for a template whose
prompt ends in a space (``default``: ``<|Bot|>:`` then the answer) one tokenizer call over the
joined text may merge across the boundary; xft's own chat and hooks therefore encode with the
training encoder, never with this jinja.

Example::

    >>> print(chat_template_jinja(PROMPT_TEMPLATE.chatml)[:60])
    {%- set ns = namespace(round=0) -%}{%- for message in messag
"""
import json
import string
from pathlib import Path

from xft.utils.templates import USE_TOKENIZER_CHAT_TEMPLATE


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


def chat_template_jinja(template, bos_at_start=True, bos_after_eos=False):
    """The jinja chat_template that renders conversations in ``template``'s format.

    ``bos_at_start`` puts the tokenizer's BOS first (as training encodes when the tokenizer has
    one); ``bos_after_eos`` repeats it at each turn that follows an EOS (XTuner's encoder).
    """
    suffix = template.get('SUFFIX') or ''
    add_eos = not template.get('SUFFIX_AS_EOS', False)
    sep = template.get('SEP') or ''
    user = _format_expression(template['INSTRUCTION'], {
        'input': "message['content']", 'round': '(ns.round | string)'})
    lines = ['{%- set ns = namespace(round=0) -%}']
    if bos_at_start:
        lines.append('{%- if bos_token -%}{{- bos_token -}}{%- endif -%}')
    lines.append('{%- for message in messages -%}')
    if template.get('SYSTEM'):
        system = _format_expression(template['SYSTEM'], {'system': "message['content']"})
        lines.append("{%- if message['role'] == 'system' -%}{{- " + system + ' -}}')
    else:
        lines.append("{%- if message['role'] == 'system' -%}"
                     "{{- raise_exception('this prompt template has no system prompt') -}}")
    lines.append("{%- elif message['role'] == 'user' -%}")
    lines.append('{%- set ns.round = ns.round + 1 -%}')
    lines.append('{{- ' + user + ' -}}')
    lines.append("{%- elif message['role'] == 'assistant' -%}")
    lines.append("{{- message['content'] + " + _literal(suffix) + ' -}}')
    if add_eos:
        lines.append('{{- eos_token -}}')
    if sep:
        lines.append('{%- if not loop.last -%}{{- ' + _literal(sep) + ' -}}')
        if add_eos and bos_after_eos:
            lines.append('{%- if bos_token -%}{{- bos_token -}}{%- endif -%}')
        lines.append('{%- endif -%}')
    elif add_eos and bos_after_eos:
        lines.append('{%- if not loop.last and bos_token -%}{{- bos_token -}}{%- endif -%}')
    lines.append('{%- else -%}'
                 "{{- raise_exception('unknown role ' + message['role']) -}}")
    lines.append('{%- endif -%}')
    lines.append('{%- endfor -%}')
    return ''.join(lines)


def save_tokenizer_with_chat_template(tokenizer, template, save_dir):
    """Save ``tokenizer`` into ``save_dir`` with ``template`` as its chat_template.

    Returns True when a chat_template was written from the template, False when the tokenizer
    was saved as it is (no template, or the ``hf_chat_template`` marker).
    """
    wrote = False
    if template and not defers_to_tokenizer(template):
        tokenizer.chat_template = chat_template_jinja(
            template, bos_at_start=tokenizer.bos_token is not None)
        wrote = True
    tokenizer.save_pretrained(str(Path(save_dir)))
    return wrote
