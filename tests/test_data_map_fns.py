"""Every map fn on real rows: exact output for one row, and every row of each shared set maps.

Sets in /work/shared/data are run whole through their map fn. Map fns whose hub set has no
stand-in there (arxiv, colors, crime_kg_assitant, law_reference, sql, openorca, stack_exchange,
tiny_codes, default) are checked on a row written in their hub set's layout.
"""
import copy

import pytest

from xft.dataset.load import read_rows
from xft.dataset.map_fns import (alpaca_map_fn, alpaca_zh_map_fn, arxiv_map_fn,
                                 code_alpaca_map_fn, colors_map_fn, crime_kg_assitant_map_fn,
                                 default_map_fn, law_reference_map_fn, medical_map_fn,
                                 oasst1_map_fn, openai_map_fn, openorca_map_fn, pretrain_map_fn,
                                 sharegpt_map_fn, sql_map_fn, stack_exchange_map_fn,
                                 tiny_codes_map_fn, wizardlm_map_fn)
from xft.registry import MAP_FUNC
from xft.utils.errors import DataError
from xft.utils.templates import SYSTEM_TEMPLATE

# (map fn, file in /work/shared/data, rows, rows that map to no turn)
SHARED_SETS = [
    (alpaca_map_fn, 'alpaca/alpaca_data_subset.json', 2808, 0),
    (alpaca_map_fn, 'alpaca_gpt4/alpaca_gpt4_en_demo.json', 999, 0),
    (alpaca_map_fn, 'self_cognition/identity.json', 91, 0),
    (alpaca_map_fn, 'self_cognition/self_cognition_zh.json', 80, 0),
    (alpaca_zh_map_fn, 'alpaca_zh/alpaca_gpt4_zh_demo.json', 1000, 0),
    (alpaca_zh_map_fn, 'alpaca_zh/belle_school_math_dev1k.jsonl', 1000, 0),
    (alpaca_zh_map_fn, 'alpaca_zh/belle_open_source_1k.jsonl', 1000, 0),
    (code_alpaca_map_fn, 'code_alpaca/code_alpaca_2k.json', 2017, 0),
    (oasst1_map_fn, 'oasst1_guanaco/openassistant_best_replies_eval.shared318.jsonl', 318, 0),
    (oasst1_map_fn, 'oasst1_guanaco/guanaco_train1k_reconstructed.jsonl', 997, 0),
    (openai_map_fn, 'multi_turn/xtuner_openai_sft.jsonl', 128, 0),
    (openai_map_fn, 'xtuner_examples/demo_data/multi_turn_2/data.json', 2, 0),
    (sharegpt_map_fn, 'multi_turn/sharegpt_zh_1k.shared800.jsonl', 800, 1),
    (sharegpt_map_fn, 'multi_turn/glaive_toolcall_en_demo.json', 300, 0),
    (sharegpt_map_fn, 'self_cognition/fastchat_dummy_conversation.json', 500, 0),
    (wizardlm_map_fn, 'self_cognition/fastchat_dummy_conversation.json', 500, 0),
    (medical_map_fn, 'medical/medical_sft_1K_format.jsonl', 1000, 0),
    (pretrain_map_fn, 'pretrain_text/c4_demo.jsonl', 300, 0),
    (pretrain_map_fn, 'pretrain_text/wiki_demo.txt', 30, 0),
]


@pytest.mark.parametrize('map_fn, relative, rows, empty', SHARED_SETS,
                         ids=[f'{fn.__name__}:{path}' for fn, path, _, _ in SHARED_SETS])
def test_every_row_of_the_shared_set_maps_without_touching_the_row(shared_data, map_fn,
                                                                   relative, rows, empty):
    data, _ = read_rows(shared_data / relative)
    assert len(data) == rows
    without_turns = 0
    for row in data:
        before = copy.deepcopy(row)
        turns = map_fn(row)['conversation']
        assert row == before
        without_turns += not turns
        for turn in turns:
            assert isinstance(turn['input'], str) and isinstance(turn['output'], str)
    # Counted, so that a map fn returning no turns cannot pass the loop above unseen.
    assert without_turns == empty


def first_row(shared_data, relative):
    return read_rows(shared_data / relative)[0][0]


def test_alpaca(shared_data):
    row = first_row(shared_data, 'code_alpaca/code_alpaca_2k.json')
    assert alpaca_map_fn(row) == {'conversation': [{
        'system': '',
        'input': 'What are the distinct values from the given list?\n'
                 'dataList = [3, 9, 3, 5, 7, 9, 5]',
        'output': 'The distinct values from the given list are 3, 5, 7 and 9.'}]}
    assert alpaca_map_fn(dict(row, output='<nooutput>')) == {'conversation': []}


def test_alpaca_zh_reads_zh_fields_and_the_plain_layout(shared_data):
    row = first_row(shared_data, 'alpaca_zh/belle_open_source_1k.jsonl')
    turn = alpaca_zh_map_fn(row)['conversation'][0]
    assert turn['input'] == row['instruction'] + '\n' and turn['output'] == row['output']
    zh = {'instruction_zh': '说你好。', 'input_zh': '', 'output_zh': '你好。'}
    assert alpaca_zh_map_fn(zh)['conversation'][0]['output'] == '你好。'


def test_code_alpaca_reads_both_layouts(shared_data):
    row = first_row(shared_data, 'code_alpaca/code_alpaca_2k.json')
    turn = code_alpaca_map_fn(row)['conversation'][0]
    assert turn['system'] == SYSTEM_TEMPLATE.coder
    assert turn['input'] == ('What are the distinct values from the given list?\n'
                             'dataList = [3, 9, 3, 5, 7, 9, 5]')
    h4 = {'prompt': 'Sum a list in Python.', 'completion': 'sum(xs)'}
    assert code_alpaca_map_fn(h4)['conversation'][0]['output'] == 'sum(xs)'


def test_oasst1_splits_turns_and_drops_the_unanswered_last_prompt(shared_data):
    rows, _ = read_rows(shared_data / 'oasst1_guanaco/openassistant_best_replies_eval'
                        '.shared318.jsonl')
    unanswered = next(row for row in rows if row['text'].rstrip().rsplit('###', 1)[-1]
                      .lstrip().startswith('Human:'))
    turns = oasst1_map_fn(unanswered)['conversation']
    human_turns = unanswered['text'].count('### Human:')
    assert len(turns) == human_turns - 1
    assert turns[0]['input'] == unanswered['text'].split('### Assistant:')[0] \
        .replace('### Human:', '').strip()


def test_oasst1_keeps_markdown_headings_inside_a_reply():
    text = '### Human: Format it.### Assistant: ### Title\nBody'
    assert oasst1_map_fn({'text': text})['conversation'] == [
        {'system': '', 'input': 'Format it.', 'output': '### Title\nBody',
         'output_with_loss': True}]


def test_openai_honours_the_loss_flag(shared_data):
    row = first_row(shared_data, 'xtuner_examples/demo_data/multi_turn_2/data.json')
    messages = copy.deepcopy(row['messages'])
    messages[2]['loss'] = False
    turns = openai_map_fn({'messages': messages})['conversation']
    assert [t['output_with_loss'] for t in turns] == [False, True]
    assert turns[0]['system'] == 'You are a helpful AI assistant.'
    assert turns[1]['input'] == 'How to study English?'
    # None (a row without the key, after Arrow filled it in) and 'true' both mean trained.
    messages[2]['loss'] = None
    messages[4]['loss'] = 'false'
    turns = openai_map_fn({'messages': messages})['conversation']
    assert [t['output_with_loss'] for t in turns] == [True, False]


def test_openai_bare_list_lines(shared_data):
    row = first_row(shared_data, 'multi_turn/xtuner_openai_sft.jsonl')
    turns = openai_map_fn(row)['conversation']
    assert len(turns) == 1 and turns[0]['output'] == row['messages'][1]['content']


def test_sharegpt_and_medical(shared_data):
    row = first_row(shared_data, 'medical/medical_sft_1K_format.jsonl')
    turns = sharegpt_map_fn(row)['conversation']
    assert turns[0]['input'] == row['conversations'][0]['value']
    assert turns[0]['output'] == row['conversations'][1]['value']
    assert medical_map_fn(row)['conversation'][0]['system'] == SYSTEM_TEMPLATE.medical
    tool_row = first_row(shared_data, 'multi_turn/glaive_toolcall_en_demo.json')
    assert sharegpt_map_fn(tool_row)['conversation']


def test_wizardlm_rejects_other_speakers():
    with pytest.raises(DataError, match="wizardlm_map_fn: message 0 is from 'system'"):
        wizardlm_map_fn({'conversations': [{'from': 'system', 'value': 'x'}]})


def test_pretrain(shared_data):
    row = first_row(shared_data, 'pretrain_text/c4_demo.jsonl')
    assert pretrain_map_fn(row) == {'conversation': [{
        'system': '', 'input': '', 'output': row['text'].strip(), 'need_eos_token': False}]}


HUB_LAYOUT_ROWS = [
    (arxiv_map_fn, {'abstract': 'We propose the Transformer.', 'title': 'Attention'},
     SYSTEM_TEMPLATE.arxiv_gentile, 'We propose the Transformer.', 'Attention'),
    (colors_map_fn, {'description': 'Medium aquamarine: A soft, cool hue.', 'color': '#66cdaa'},
     SYSTEM_TEMPLATE.colorist, 'A soft, cool hue.', '#66cdaa'),
    (crime_kg_assitant_map_fn, {'input': '醉驾怎么处罚？', 'output': '处拘役。'},
     SYSTEM_TEMPLATE.lawyer, '醉驾怎么处罚？', '处拘役。'),
    (law_reference_map_fn, {'question': '诉讼时效多久？', 'answer': '三年。'},
     SYSTEM_TEMPLATE.lawyer, '诉讼时效多久？', '三年。'),
    (sql_map_fn, {'context': 'CREATE TABLE head (age INTEGER)', 'question': 'How many?',
                  'answer': 'SELECT COUNT(*) FROM head'},
     SYSTEM_TEMPLATE.sql, 'CREATE TABLE head (age INTEGER)\nHow many?',
     'SELECT COUNT(*) FROM head'),
    (openorca_map_fn, {'system_prompt': 'Be exact.', 'question': 'Capital of France?',
                       'response': 'Paris.'}, 'Be exact.', 'Capital of France?', 'Paris.'),
    (stack_exchange_map_fn, {'question': 'Undo a commit?', 'response': 'git reset HEAD~1'},
     '', 'Undo a commit?', 'git reset HEAD~1'),
    (tiny_codes_map_fn, {'prompt': 'Square x.', 'response': 'x * x'},
     SYSTEM_TEMPLATE.coder, 'Square x.', 'x * x'),
    (default_map_fn, {'input': 'Hi', 'output': 'Hello'}, '', 'Hi', 'Hello'),
]


@pytest.mark.parametrize('map_fn, row, system, input_text, output', HUB_LAYOUT_ROWS,
                         ids=[case[0].__name__ for case in HUB_LAYOUT_ROWS])
def test_hub_layout_map_fns(map_fn, row, system, input_text, output):
    before = copy.deepcopy(row)
    assert map_fn(row) == {'conversation': [{'system': system, 'input': input_text,
                                             'output': output}]}
    assert row == before


@pytest.mark.parametrize('map_fn, row', [(case[0], case[1]) for case in HUB_LAYOUT_ROWS]
                         + [(alpaca_map_fn, {'instruction': 'x', 'input': '', 'output': 'y'})],
                         ids=[case[0].__name__ for case in HUB_LAYOUT_ROWS] + ['alpaca'])
def test_a_misnamed_field_names_the_expected_fields(map_fn, row):
    wrong = {f'{key}_x': value for key, value in row.items()}
    with pytest.raises(DataError, match=f'{map_fn.__name__} expects fields'):
        map_fn(wrong)


def test_every_map_fn_is_registered():
    names = ['alpaca_map_fn', 'alpaca_zh_map_fn', 'arxiv_map_fn', 'code_alpaca_map_fn',
             'colors_map_fn', 'crime_kg_assitant_map_fn', 'default_map_fn',
             'law_reference_map_fn', 'medical_map_fn', 'oasst1_map_fn', 'openai_map_fn',
             'openorca_map_fn', 'pretrain_map_fn', 'sharegpt_map_fn', 'sql_map_fn',
             'stack_exchange_map_fn', 'tiny_codes_map_fn', 'wizardlm_map_fn']
    assert all(MAP_FUNC.get(name) is not None for name in names)
