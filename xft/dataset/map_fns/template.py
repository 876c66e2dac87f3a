"""The template step: wrap each turn's text in a prompt template's strings.

It builds new turns (the input row is never written into): ``input`` becomes
SYSTEM (when the turn has a system text) + INSTRUCTION, ``output`` gains SUFFIX, and each turn
records whether an EOS follows (``not SUFFIX_AS_EOS``) and which SEP follows it. What is
trained is decided later, in ``xft.dataset.encode``: output (+ SUFFIX, + EOS), never the rest.
"""
from mmengine.utils.misc import get_object_from_string

from xft.utils.errors import ConfigError, did_you_mean
from xft.utils.templates import PROMPT_TEMPLATE, USE_TOKENIZER_CHAT_TEMPLATE


def resolve_template(template):
    """Accept a template dict, a PROMPT_TEMPLATE name ('chatml') or a dotted path to one."""
    if isinstance(template, str):
        if template in PROMPT_TEMPLATE:
            return PROMPT_TEMPLATE[template]
        found = get_object_from_string(template) if '.' in template else None
        if found is None:
            raise ConfigError(f'unknown prompt template {template!r}'
                              f'{did_you_mean(template.split(".")[-1], PROMPT_TEMPLATE)} (known: '
                              f'{", ".join(sorted(PROMPT_TEMPLATE))})')
        template = found
    if not isinstance(template, dict):
        raise ConfigError(f'a prompt template must be a dict or a name, got '
                          f'{type(template).__name__}')
    if not template.get(USE_TOKENIZER_CHAT_TEMPLATE) and 'INSTRUCTION' not in template:
        raise ConfigError(f'prompt template has no INSTRUCTION: {dict(template)}')
    return template


def uses_tokenizer_chat_template(template):
    return bool(template.get(USE_TOKENIZER_CHAT_TEMPLATE))


def template_map_fn(example, template):
    """Apply ``template`` to ``example['conversation']`` (normalized turns, see conversation.py).

    Before (a turn after alpaca_map_fn)::

        {'system': '', 'input': 'Give three tips for staying healthy.\\n', 'output': '1.Eat ...',
         'output_with_loss': True, 'need_eos_token': None, 'sep': ''}

    After, with PROMPT_TEMPLATE.chatml::

        {'system': '', 'input': '<|im_start|>user\\nGive three tips for staying healthy.\\n'
                                '<|im_end|>\\n<|im_start|>assistant\\n',
         'output': '1.Eat ...<|im_end|>', 'output_with_loss': True,
         'need_eos_token': False, 'sep': '\\n'}
    """
    template = resolve_template(template)
    if uses_tokenizer_chat_template(template):
        # Rendering needs the tokenizer; the encode step does it (encode.py).
        return {'conversation': [dict(turn) for turn in example['conversation']]}
    instruction = template['INSTRUCTION']
    system_format = template.get('SYSTEM', '{system}\n')
    suffix = template.get('SUFFIX', '') or ''
    eos_after_output = not template.get('SUFFIX_AS_EOS', False)
    sep = template.get('SEP', '') or ''
    turns = []
    for position, turn in enumerate(example['conversation']):
        # .get: callers outside the pipeline may pass turns that are not normalized yet.
        text = _format(instruction, input=turn.get('input') or '', round=position + 1)
        if turn.get('system'):
            text = _format(system_format, system=turn['system']) + text
        output = turn['output'] + suffix if turn.get('output') else ''
        need_eos = turn.get('need_eos_token')
        turns.append(dict(turn, input=text, output=output,
                          need_eos_token=eos_after_output if need_eos is None else need_eos,
                          sep=sep))
    return {'conversation': turns}


def _format(pattern, **values):
    try:
        return pattern.format(**values)
    except (KeyError, IndexError) as error:
        raise ConfigError(f'prompt template string {pattern!r} has an unknown placeholder '
                          f'{error}; allowed: {{system}}, {{input}}, {{round}}') from None


class TemplateMapFn:
    """``template_map_fn`` bound to one template; what ``template_map_fn_factory`` returns.

    A small class rather than a partial so the data pipeline can ask it whether the template
    defers to the tokenizer's chat_template.
    """

    def __init__(self, template):
        self.template = resolve_template(template)

    @property
    def uses_tokenizer_chat_template(self):
        return uses_tokenizer_chat_template(self.template)

    def __call__(self, example):
        return template_map_fn(example, self.template)

    def __repr__(self):
        return f'TemplateMapFn({dict(self.template)!r})'


def template_map_fn_factory(template):
    """XTuner's name: ``template_map_fn=dict(type=template_map_fn_factory, template=...)``."""
    return TemplateMapFn(template)
