"""Map functions: one raw row in, ``{'conversation': [{'system', 'input', 'output'}, ...]}`` out.

``MAP_FN_FIELDS`` below says which fields each one reads (a misnamed field raises DataError
naming them); ``xft list-dataset-format`` prints it.

Every one is registered in ``xft.registry.MAP_FUNC`` under its own name.
"""
from .chat import oasst1_map_fn, openai_map_fn, sharegpt_map_fn, wizardlm_map_fn
from .instruction import (alpaca_map_fn, alpaca_zh_map_fn, arxiv_map_fn, code_alpaca_map_fn,
                          colors_map_fn, crime_kg_assitant_map_fn, default_map_fn,
                          law_reference_map_fn, medical_map_fn, openorca_map_fn, sql_map_fn,
                          stack_exchange_map_fn, tiny_codes_map_fn)
from .pretrain import pretrain_map_fn
from .template import TemplateMapFn, template_map_fn, template_map_fn_factory

# map fn name -> the fields of one raw row it reads. Printed by `xft list-dataset-format`.
MAP_FN_FIELDS = {
    'alpaca_map_fn': 'instruction, input (optional), output',
    'alpaca_zh_map_fn': 'instruction_zh, input_zh (optional), output_zh (or the alpaca names)',
    'code_alpaca_map_fn': 'prompt, completion (or instruction, input, output)',
    'tiny_codes_map_fn': 'prompt, response',
    'arxiv_map_fn': 'abstract, title',
    'colors_map_fn': "description ('Name: text'), color",
    'crime_kg_assitant_map_fn': 'input, output',
    'law_reference_map_fn': 'question, answer',
    'medical_map_fn': 'instruction, input (optional), output (or ShareGPT conversations)',
    'sql_map_fn': 'context, question, answer',
    'openorca_map_fn': 'system_prompt (optional), question, response',
    'stack_exchange_map_fn': 'question, response',
    'default_map_fn': 'input, output',
    'oasst1_map_fn': "text ('### Human: ...### Assistant: ...')",
    'openai_map_fn': 'messages [{role: system|user|assistant, content, loss (optional)}]',
    'sharegpt_map_fn': 'conversations [{from: human|gpt|system|..., value}], system (optional)',
    'wizardlm_map_fn': 'conversations [{from: human|gpt, value}]',
    'pretrain_map_fn': 'text',
}

__all__ = ['MAP_FN_FIELDS', 
    'alpaca_map_fn', 'alpaca_zh_map_fn', 'arxiv_map_fn', 'code_alpaca_map_fn', 'colors_map_fn',
    'crime_kg_assitant_map_fn', 'default_map_fn', 'law_reference_map_fn', 'medical_map_fn',
    'oasst1_map_fn', 'openai_map_fn', 'openorca_map_fn', 'pretrain_map_fn', 'sharegpt_map_fn',
    'sql_map_fn', 'stack_exchange_map_fn', 'tiny_codes_map_fn', 'wizardlm_map_fn',
    'template_map_fn', 'template_map_fn_factory', 'TemplateMapFn',
]
