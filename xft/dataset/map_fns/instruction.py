"""Single-turn instruction sets (one row = one question and one answer).

Each function is a pure function of one row: it reads the row, never writes into it, and
returns ``{'conversation': [{'system', 'input', 'output'}]}``.
"""
from xft.registry import register_map_fn
from xft.utils.templates import SYSTEM_TEMPLATE

from ._fields import require_text

# Alpaca marks rows whose task has no textual answer this way; XTuner drops them.
ALPACA_NO_OUTPUT = '<nooutput>'


def _single_turn(system, input_text, output):
    return {'conversation': [{'system': system, 'input': input_text, 'output': output}]}


def _instruction_and_input(instruction, input_text):
    return f'{instruction}\n{input_text}'


@register_map_fn(fields=('instruction', 'input (optional)', 'output'))
def alpaca_map_fn(example):
    """tatsu-lab/alpaca: ``instruction``, ``input`` (may be empty), ``output``.

    Before (alpaca_data_subset.json)::

        {'instruction': 'Give three tips for staying healthy.', 'input': '',
         'output': '1.Eat a balanced diet and make sure to include plenty of fruits ...'}

    After::

        {'conversation': [{'system': '', 'input': 'Give three tips for staying healthy.\\n',
                           'output': '1.Eat a balanced diet and make sure ...'}]}

    Rows whose output is ``<nooutput>`` map to an empty conversation and are dropped (and counted).
    """
    output = require_text(example, 'output', alpaca_map_fn)
    if output == ALPACA_NO_OUTPUT:
        return {'conversation': []}
    instruction = require_text(example, 'instruction', alpaca_map_fn)
    input_text = require_text(example, 'input', alpaca_map_fn, default='')
    return _single_turn('', _instruction_and_input(instruction, input_text), output)


@register_map_fn(fields=('instruction_zh', 'input_zh (optional)', 'output_zh'),
                 alternative=('instruction', 'input (optional)', 'output'))
def alpaca_zh_map_fn(example):
    """silk-road/alpaca-data-gpt4-chinese: ``instruction_zh``, ``input_zh``, ``output_zh``.

    Before::

        {'instruction_zh': '保持健康的三个提示。', 'input_zh': '',
         'output_zh': '以下是保持健康的三个提示：...'}

    After::

        {'conversation': [{'system': '', 'input': '保持健康的三个提示。\\n',
                           'output': '以下是保持健康的三个提示：...'}]}

    Rows without the ``*_zh`` fields are read with the plain alpaca names (``instruction``,
    ``input``, ``output``), the layout of the shared stand-in ``alpaca_zh/alpaca_gpt4_zh_demo.json``.
    """
    if example.get('instruction_zh') is None and example.get('instruction') is not None:
        return alpaca_map_fn(example)
    instruction = require_text(example, 'instruction_zh', alpaca_zh_map_fn)
    input_text = require_text(example, 'input_zh', alpaca_zh_map_fn, default='')
    output = require_text(example, 'output_zh', alpaca_zh_map_fn)
    return _single_turn('', _instruction_and_input(instruction, input_text), output)


@register_map_fn(fields=('prompt', 'completion'),
                 alternative=('instruction', 'input (optional)', 'output'))
def code_alpaca_map_fn(example):
    """HuggingFaceH4/CodeAlpaca_20K: ``prompt``, ``completion``; system = SYSTEM_TEMPLATE.coder.

    Before::

        {'prompt': 'Create an array of length 5 which contains all even numbers between 1 and 10.',
         'completion': 'arr = [2, 4, 6, 8, 10]'}

    After::

        {'conversation': [{'system': SYSTEM_TEMPLATE.coder,
                           'input': 'Create an array of length 5 which contains ...',
                           'output': 'arr = [2, 4, 6, 8, 10]'}]}

    Rows in the upstream sahil280114/codealpaca layout (``instruction``, ``input``, ``output``,
    the shared ``code_alpaca/code_alpaca_2k.json``) are read too.
    """
    if example.get('prompt') is None and example.get('instruction') is not None:
        instruction = require_text(example, 'instruction', code_alpaca_map_fn)
        input_text = require_text(example, 'input', code_alpaca_map_fn, default='')
        prompt = _instruction_and_input(instruction, input_text) if input_text else instruction
        return _single_turn(SYSTEM_TEMPLATE.coder, prompt,
                            require_text(example, 'output', code_alpaca_map_fn))
    return _single_turn(
        SYSTEM_TEMPLATE.coder,
        require_text(example, 'prompt', code_alpaca_map_fn),
        require_text(example, 'completion', code_alpaca_map_fn))


@register_map_fn(fields=('prompt', 'response'))
def tiny_codes_map_fn(example):
    """nampdn-ai/tiny-codes: ``prompt``, ``response``; system = SYSTEM_TEMPLATE.coder.

    Before::

        {'prompt': 'Write a Python function that returns the square of x.',
         'response': 'def square(x):\\n    return x * x'}

    After::

        {'conversation': [{'system': SYSTEM_TEMPLATE.coder,
                           'input': 'Write a Python function that returns the square of x.',
                           'output': 'def square(x):\\n    return x * x'}]}
    """
    return _single_turn(
        SYSTEM_TEMPLATE.coder,
        require_text(example, 'prompt', tiny_codes_map_fn),
        require_text(example, 'response', tiny_codes_map_fn))


@register_map_fn(fields=('abstract', 'title'))
def arxiv_map_fn(example):
    """arxiv metadata title generation: ``abstract`` -> ``title``; system = arxiv_gentile.

    Before::

        {'abstract': 'We propose a new network architecture, the Transformer, ...',
         'title': 'Attention Is All You Need'}

    After::

        {'conversation': [{'system': SYSTEM_TEMPLATE.arxiv_gentile,
                           'input': 'We propose a new network architecture, ...',
                           'output': 'Attention Is All You Need'}]}
    """
    return _single_turn(
        SYSTEM_TEMPLATE.arxiv_gentile,
        require_text(example, 'abstract', arxiv_map_fn),
        require_text(example, 'title', arxiv_map_fn))


@register_map_fn(fields=("description ('Name: text')", 'color'))
def colors_map_fn(example):
    """burkelibbey/colors: ``description`` ('Name: text'), ``color``; system = colorist.

    The part of the description before the first ':' is the colour's name and is dropped.

    Before::

        {'description': 'Medium aquamarine: A soft, cool hue of green and blue.', 'color': '#66cdaa'}

    After::

        {'conversation': [{'system': SYSTEM_TEMPLATE.colorist,
                           'input': 'A soft, cool hue of green and blue.', 'output': '#66cdaa'}]}
    """
    description = require_text(example, 'description', colors_map_fn)
    text = ':'.join(description.split(':')[1:]).strip()
    return _single_turn(SYSTEM_TEMPLATE.colorist, text,
                        require_text(example, 'color', colors_map_fn))


@register_map_fn(fields=('input', 'output'))
def crime_kg_assitant_map_fn(example):
    """CrimeKgAssitant (XTuner's spelling): ``input``, ``output``; system = lawyer.

    Before::

        {'input': '醉驾怎么处罚？', 'output': '醉酒驾驶机动车的，处拘役，并处罚金。'}

    After::

        {'conversation': [{'system': SYSTEM_TEMPLATE.lawyer, 'input': '醉驾怎么处罚？',
                           'output': '醉酒驾驶机动车的，处拘役，并处罚金。'}]}
    """
    return _single_turn(
        SYSTEM_TEMPLATE.lawyer,
        require_text(example, 'input', crime_kg_assitant_map_fn),
        require_text(example, 'output', crime_kg_assitant_map_fn))


@register_map_fn(fields=('question', 'answer'))
def law_reference_map_fn(example):
    """Law reference Q&A: ``question``, ``answer``; system = lawyer.

    Before::

        {'question': '借款合同的诉讼时效是多久？', 'answer': '向人民法院请求保护民事权利的诉讼时效期间为三年。'}

    After::

        {'conversation': [{'system': SYSTEM_TEMPLATE.lawyer, 'input': '借款合同的诉讼时效是多久？',
                           'output': '向人民法院请求保护民事权利的诉讼时效期间为三年。'}]}
    """
    return _single_turn(
        SYSTEM_TEMPLATE.lawyer,
        require_text(example, 'question', law_reference_map_fn),
        require_text(example, 'answer', law_reference_map_fn))


@register_map_fn(fields=('instruction', 'input (optional)', 'output'),
                 alternative=('conversations (ShareGPT)',))
def medical_map_fn(example):
    """shibing624/medical (finetune): ``instruction``, ``input``, ``output``; system = medical.

    Before::

        {'instruction': '血热的临床表现是什么?', 'input': '',
         'output': '初发或复发病不久。皮疹发展迅速，呈点滴状、钱币状或混合状。'}

    After::

        {'conversation': [{'system': SYSTEM_TEMPLATE.medical, 'input': '血热的临床表现是什么?\\n',
                           'output': '初发或复发病不久。皮疹发展迅速，呈点滴状、钱币状或混合状。'}]}

    Rows in ShareGPT layout (``conversations``, the shared ``medical/medical_sft_1K_format.jsonl``)
    are read as ShareGPT turns, with the medical system prompt on the first turn.
    """
    if example.get('conversations') is not None and example.get('instruction') is None:
        from .chat import sharegpt_map_fn
        turns = sharegpt_map_fn(example)['conversation']
        if not turns[0]['system']:
            turns[0] = dict(turns[0], system=SYSTEM_TEMPLATE.medical)
        return {'conversation': turns}
    instruction = require_text(example, 'instruction', medical_map_fn)
    input_text = require_text(example, 'input', medical_map_fn, default='')
    return _single_turn(SYSTEM_TEMPLATE.medical,
                        _instruction_and_input(instruction, input_text),
                        require_text(example, 'output', medical_map_fn))


@register_map_fn(fields=('context', 'question', 'answer'))
def sql_map_fn(example):
    """b-mc2/sql-create-context: ``context``, ``question``, ``answer``; system = sql.

    Before::

        {'context': 'CREATE TABLE head (age INTEGER)',
         'question': 'How many heads of the departments are older than 56 ?',
         'answer': 'SELECT COUNT(*) FROM head WHERE age > 56'}

    After::

        {'conversation': [{'system': SYSTEM_TEMPLATE.sql,
                           'input': 'CREATE TABLE head (age INTEGER)\\nHow many heads ...',
                           'output': 'SELECT COUNT(*) FROM head WHERE age > 56'}]}
    """
    context = require_text(example, 'context', sql_map_fn)
    question = require_text(example, 'question', sql_map_fn)
    return _single_turn(SYSTEM_TEMPLATE.sql, f'{context}\n{question}',
                        require_text(example, 'answer', sql_map_fn))


@register_map_fn(fields=('system_prompt (optional)', 'question', 'response'))
def openorca_map_fn(example):
    """Open-Orca/OpenOrca: ``system_prompt``, ``question``, ``response``.

    Before::

        {'system_prompt': 'You are an AI assistant. Provide a detailed answer.',
         'question': 'What is the capital of France?', 'response': 'The capital of France is Paris.'}

    After::

        {'conversation': [{'system': 'You are an AI assistant. Provide a detailed answer.',
                           'input': 'What is the capital of France?',
                           'output': 'The capital of France is Paris.'}]}
    """
    return _single_turn(
        require_text(example, 'system_prompt', openorca_map_fn, default=''),
        require_text(example, 'question', openorca_map_fn),
        require_text(example, 'response', openorca_map_fn))


@register_map_fn(fields=('question', 'response'))
def stack_exchange_map_fn(example):
    """Stack Exchange paired data: ``question``, ``response``.

    Before::

        {'question': 'How do I undo the most recent local commits in Git?',
         'response': 'Use git reset HEAD~1.'}

    After::

        {'conversation': [{'system': '', 'input': 'How do I undo the most recent local commits in Git?',
                           'output': 'Use git reset HEAD~1.'}]}
    """
    return _single_turn(
        '', require_text(example, 'question', stack_exchange_map_fn),
        require_text(example, 'response', stack_exchange_map_fn))


@register_map_fn(fields=('input', 'output'))
def default_map_fn(example):
    """Rows that already hold one ``input`` and one ``output``.

    Before (xtuner_examples, single turn)::

        {'input': 'Give three tips for staying healthy.', 'output': '1.Eat a balanced diet ...'}

    After::

        {'conversation': [{'system': '', 'input': 'Give three tips for staying healthy.',
                           'output': '1.Eat a balanced diet ...'}]}
    """
    return _single_turn(
        '', require_text(example, 'input', default_map_fn),
        require_text(example, 'output', default_map_fn))
