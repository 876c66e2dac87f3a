"""The preference data path: map fns on the shared pairs, bad rows named, pairs encoded as SFT
would encode the same answer, packing that never cuts a pair, the collate layouts."""
import copy
import json

import datasets
import pytest
import torch

from helpers.preference import EN_PAIRS, ZH_PAIRS, pair_rows
from xft.dataset.collate_fns import preference_collate_fn
from xft.dataset.collate_fns.preference_collate_fn import count_pairs
from xft.dataset.encode import encode_conversation
from xft.dataset.load import read_rows
from xft.dataset.map_fns import (intel_orca_dpo_map_fn, orpo_dpo_mix_40k_map_fn,
                                 sharegpt_preference_map_fn, template_map_fn,
                                 template_map_fn_factory)
from xft.dataset.preference_dataset import build_preference_dataset, load_jsonl_dataset
from xft.dataset.preference_packing import pack_pairs
from xft.dataset.preference_pairs import pair_conversations
from xft.utils import PROMPT_TEMPLATE
from xft.utils.constants import IGNORE_INDEX
from xft.utils.errors import ConfigError, DataError


@pytest.mark.parametrize('relative', [EN_PAIRS, ZH_PAIRS])
def test_every_shared_pair_maps_without_touching_the_row(shared_data, relative):
    rows, _ = read_rows(shared_data / relative)
    assert len(rows) == 250
    for row in rows:
        before = copy.deepcopy(row)
        mapped = sharegpt_preference_map_fn(row)
        assert row == before
        assert mapped['prompt'][-1]['role'] == 'user'
        assert mapped['chosen'] == [{'role': 'assistant', 'content': row['chosen']['value']}]
        assert mapped['rejected'] == [{'role': 'assistant', 'content': row['rejected']['value']}]
        chosen, rejected = pair_conversations(mapped, 'row')
        assert chosen[:-1] == rejected[:-1]
        assert chosen[-1]['output'] == row['chosen']['value']
        assert not any(turn['output_with_loss'] for turn in chosen[:-1]), 'context is not trained'


def test_a_multi_turn_shared_pair_maps_exactly(shared_data):
    rows, _ = read_rows(shared_data / EN_PAIRS)
    row = next(r for r in rows if len(r['conversations']) == 5)
    mapped = sharegpt_preference_map_fn(row)
    roles = {'human': 'user', 'gpt': 'assistant', 'system': 'system'}
    assert mapped['prompt'] == [{'role': roles[m['from']], 'content': m['value']}
                                for m in row['conversations']]
    chosen, _ = pair_conversations(mapped, 'row')
    assert [turn['input'] for turn in chosen] == [m['value'] for m in row['conversations'][0::2]]
    assert [turn['output'] for turn in chosen] == [m['value'] for m in row['conversations'][1::2]] + [
        row['chosen']['value']]


def test_xtuners_hub_layouts_map_to_the_same_format():
    orca = {'system': '', 'question': 'Is the sky blue?', 'chosen': 'Yes, on a clear day.',
            'rejected': 'No.'}
    assert intel_orca_dpo_map_fn(orca) == {
        'prompt': [{'role': 'user', 'content': 'Is the sky blue?'}],
        'chosen': [{'role': 'assistant', 'content': 'Yes, on a clear day.'}],
        'rejected': [{'role': 'assistant', 'content': 'No.'}]}
    mix = {'chosen': [{'role': 'user', 'content': '2 + 2?'}, {'role': 'assistant', 'content': '4'}],
           'rejected': [{'role': 'user', 'content': '2 + 2?'}, {'role': 'assistant', 'content': '5'}]}
    assert orpo_dpo_mix_40k_map_fn(mix) == {
        'prompt': [{'role': 'user', 'content': '2 + 2?'}],
        'chosen': [{'role': 'assistant', 'content': '4'}],
        'rejected': [{'role': 'assistant', 'content': '5'}]}
    for map_fn, row in ((intel_orca_dpo_map_fn, orca), (orpo_dpo_mix_40k_map_fn, mix)):
        with pytest.raises(DataError, match=f'{map_fn.__name__} expects fields'):
            map_fn({f'{key}_x': value for key, value in row.items()})


def write_rows(path, rows):
    path.write_text(json.dumps(rows, ensure_ascii=False))
    return path


GOOD = {'conversations': [{'from': 'human', 'value': 'Hi'}], 'chosen': {'from': 'gpt', 'value': 'Hello!'},
        'rejected': {'from': 'gpt', 'value': 'Go away.'}}
BAD_ROWS = [
    ({'conversations': GOOD['conversations'], 'rejected': GOOD['rejected']},
     "sharegpt_preference_map_fn expects fields 'conversations', 'chosen', 'rejected', 'system'; "
     "field 'chosen' is missing (row has 'conversations', 'rejected')"),
    (dict(GOOD, rejected={'from': 'gpt', 'value': '  '}), "the 'rejected' answer is empty"),
    (dict(GOOD, conversations=[{'from': 'human', 'value': 'Hi'}, {'from': 'gpt', 'value': 'Hey'}]),
     "the conversation does not end with a user turn (its last message is from 'assistant'); "
     'the answers must reply to a user'),
]


@pytest.mark.parametrize('bad, message', BAD_ROWS, ids=['no_chosen', 'empty_answer', 'ends_with_assistant'])
def test_a_bad_row_is_named_by_file_and_row_in_one_line(tmp_path, tiny_tokenizer, bad, message):
    path = write_rows(tmp_path / 'pairs.json', [GOOD, GOOD, bad, GOOD])
    with pytest.raises(DataError) as error:
        build_preference_dataset(str(path), tokenizer=tiny_tokenizer, max_length=64,
                                 dataset_map_fn=sharegpt_preference_map_fn)
    # the third row of the file: rows count from 1, as lines do
    assert str(error.value) == f'{path} row 3: {message}'


def test_xtuners_own_format_needs_no_map_fn_and_its_errors_name_the_line(tmp_path, tiny_tokenizer):
    good = {'prompt': [{'role': 'user', 'content': 'Hi'}],
            'chosen': [{'role': 'assistant', 'content': 'Hello!'}],
            'rejected': [{'role': 'assistant', 'content': 'Bye.'}]}
    path = tmp_path / 'pairs.jsonl'
    path.write_text(json.dumps(good) + '\n' + json.dumps({'prompt': good['prompt'], 'chosen': good['chosen']}) + '\n')
    with pytest.raises(DataError, match=rf"^{path} line 2: expected a preference row with fields 'prompt'.*"
                                        r"field 'rejected' is missing \(row has 'prompt', 'chosen'\)$"):
        build_preference_dataset(dict(type=load_jsonl_dataset, data_files=[str(path)]),
                                 tokenizer=tiny_tokenizer, max_length=64,
                                 template_map_fn=dict(type=template_map_fn_factory, template='chatml'))


def test_each_answer_is_encoded_exactly_as_sft_would_encode_it(shared_data, tiny_tokenizer):
    """Same ids and labels as the SFT encoding of the conversation ending in that answer,
    with the earlier assistant turns shown but not trained."""
    raw, _ = read_rows(shared_data / EN_PAIRS)
    rows = [r for r in raw if len(r['conversations']) == 5][:2]
    data = build_preference_dataset(datasets.Dataset.from_list(rows), tokenizer=tiny_tokenizer,
                                     max_length=4096, dataset_map_fn=sharegpt_preference_map_fn,
                                     template_map_fn=template_map_fn_factory(PROMPT_TEMPLATE.chatml))
    for row, encoded in zip(rows, data):
        bounds = encoded['cumulative_len']
        for which, (start, end) in zip(('chosen', 'rejected'), zip(bounds[:-1], bounds[1:])):
            conversation = pair_conversations(sharegpt_preference_map_fn(row), 'row')[which == 'rejected']
            sft = encode_conversation(template_map_fn({'conversation': conversation},
                                                      PROMPT_TEMPLATE.chatml)['conversation'],
                                      tiny_tokenizer, 4096)
            assert encoded['input_ids'][start:end] == sft['input_ids']
            assert encoded['labels'][start:end] == sft['labels']
            trained = [t for t in sft['labels'] if t != IGNORE_INDEX]
            assert tiny_tokenizer.decode(trained) == row[which]['value'] + '<|im_end|>'


def test_the_tokenizers_chat_template_renders_pairs_when_no_template_is_given(tmp_path, tiny_tokenizer):
    tokenizer = copy.deepcopy(tiny_tokenizer)
    tokenizer.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
                               "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}"
                               "<|im_start|>assistant\n{% endif %}")
    path = write_rows(tmp_path / 'pairs.json', [GOOD])
    row = build_preference_dataset(str(path), tokenizer=tokenizer, max_length=64,
                                   dataset_map_fn=sharegpt_preference_map_fn)[0]
    start, middle, end = row['cumulative_len']
    for (a, b), answer in (((start, middle), 'Hello!'), ((middle, end), 'Go away.')):
        trained = [t for t in row['labels'][a:b] if t != IGNORE_INDEX]
        assert tokenizer.decode(trained) == answer + '<|im_end|>'
        assert tokenizer.decode(row['input_ids'][a:b]).startswith('<|im_start|>user\nHi<|im_end|>')


def test_truncation_and_dropped_pairs_are_counted(tmp_path, tiny_tokenizer):
    from xft.dataset.preference_dataset import run_preference_pipeline
    from xft.dataset.preference_options import PreferenceOptions
    long_prompt = dict(GOOD, conversations=[{'from': 'human', 'value': 'word ' * 200}])
    path = write_rows(tmp_path / 'pairs.json', [GOOD, long_prompt, GOOD])
    options = PreferenceOptions(tokenizer=tiny_tokenizer, max_length=40,
                                dataset_map_fn=sharegpt_preference_map_fn,
                                template_map_fn=template_map_fn_factory('chatml'))
    data, stats = run_preference_pipeline(str(path), options)
    assert (stats.rows_loaded, stats.pairs_truncated, stats.pairs_without_answer, stats.pairs_kept) == (3, 1, 1, 2)
    assert len(data) == 2
    assert all(b - a <= 40 for bounds in data['cumulative_len'] for a, b in zip(bounds[:-1], bounds[1:]))


def test_packing_keeps_every_pair_whole_and_every_token(shared_data, tiny_tokenizer):
    unpacked = pair_rows(shared_data, tiny_tokenizer, count=None, max_length=160)
    packed = pair_rows(shared_data, tiny_tokenizer, count=None, max_length=160, use_varlen_attn=True,
                       max_packed_length=1000, shuffle_before_pack=False)
    assert len(packed) < len(unpacked) / 2.5
    assert sum(len(r['input_ids']) for r in packed) == sum(len(r['input_ids']) for r in unpacked)
    pairs = []
    for row in packed:
        bounds = row['cumulative_len']
        assert len(row['input_ids']) <= 1000 and bounds[0] == 0 and bounds[-1] == len(row['input_ids'])
        assert (len(bounds) - 1) % 2 == 0, 'whole pairs only'
        assert all(row['labels'][b] == IGNORE_INDEX for b in bounds[:-1])
        for i in range(0, len(bounds) - 1, 2):
            pairs.append(row['input_ids'][bounds[i]:bounds[i + 2]])
    assert pairs == [r['input_ids'] for r in unpacked], 'in order, unchanged'


def test_a_packed_row_too_short_for_a_pair_is_refused(tiny_tokenizer, tmp_path):
    with pytest.raises(ConfigError, match='max_packed_length=100 cannot hold a pair of two '
                                          'max_length=64 sequences; use at least 128'):
        build_preference_dataset(str(write_rows(tmp_path / 'p.json', [GOOD])), tokenizer=tiny_tokenizer,
                                 max_length=64, use_varlen_attn=True, max_packed_length=100)
    with pytest.raises(ConfigError, match='set exactly one of is_dpo and is_reward'):
        build_preference_dataset(str(tmp_path / 'p.json'), tokenizer=tiny_tokenizer, max_length=64,
                                 is_dpo=True, is_reward=True)
    with pytest.raises(ConfigError, match='build_preference_dataset got unknown arguments: pack_to_max_len'):
        build_preference_dataset(str(tmp_path / 'p.json'), tokenizer=tiny_tokenizer, max_length=64,
                                 pack_to_max_len=True)


@pytest.mark.parametrize('reward_token_id', [-1, 7])
def test_reward_rows_label_one_position_per_sequence(shared_data, tiny_tokenizer, reward_token_id):
    # Long enough that no answer is cut: the last trained token is then the end of turn.
    dpo = pair_rows(shared_data, tiny_tokenizer, count=3, max_length=4096)
    reward = pair_rows(shared_data, tiny_tokenizer, count=3, is_dpo=False, is_reward=True,
                       reward_token_id=reward_token_id, max_length=4096)
    for dpo_row, row in zip(dpo, reward):
        bounds = row['cumulative_len']
        for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
            labelled = [p for p in range(a, b) if row['labels'][p] != IGNORE_INDEX]
            assert len(labelled) == 1
            if reward_token_id >= 0:
                assert labelled == [b - 1] and row['input_ids'][b - 1] == reward_token_id
            else:  # the answer's last trained token: its end of turn
                da, db = dpo_row['cumulative_len'][i:i + 2]
                last = max(p for p in range(da, db) if dpo_row['labels'][p] != IGNORE_INDEX) - da
                assert labelled == [a + last] and row['input_ids'][a + last] == tiny_tokenizer.convert_tokens_to_ids('<|im_end|>')


def test_held_out_pairs_are_set_aside_from_training(tmp_path, tiny_tokenizer):
    rows = [dict(GOOD, chosen={'from': 'gpt', 'value': f'Answer {i}.'}) for i in range(20)]
    path = write_rows(tmp_path / 'pairs.json', rows)
    parts = {subset: build_preference_dataset(str(path), tokenizer=tiny_tokenizer, max_length=64,
                                              dataset_map_fn=sharegpt_preference_map_fn,
                                              template_map_fn=template_map_fn_factory('chatml'), held_out=0.25,
                                              subset=subset)
             for subset in ('train', 'held_out')}
    decoded = {subset: {tiny_tokenizer.decode(r['input_ids']) for r in part} for subset, part in parts.items()}
    assert len(parts['train']) == 15 and len(parts['held_out']) == 5
    assert not decoded['train'] & decoded['held_out']


def test_collate_layouts_number_the_sequences_in_pair_order(shared_data, tiny_tokenizer):
    rows = pair_rows(shared_data, tiny_tokenizer, count=4)
    split = preference_collate_fn(rows)['data']
    lengths = [b - a for r in rows for a, b in zip(r['cumulative_len'][:-1], r['cumulative_len'][1:])]
    assert split['input_ids'].shape == (8, max(lengths))
    assert split['sequence_index'].tolist() == [[i] * n + [-1] * (max(lengths) - n)
                                                for i, n in enumerate(lengths)]
    packed_rows = list(pack_pairs(datasets.Dataset.from_list(rows), 2 * max(r['length'] for r in rows)))
    packed = preference_collate_fn(packed_rows, use_varlen_attn=True)['data']
    flat = packed['sequence_index'][packed['sequence_index'] >= 0]
    assert torch.equal(flat, torch.repeat_interleave(torch.arange(8), torch.tensor(lengths)))
    assert count_pairs({'data': split}) == count_pairs(packed) == 4
    positions = packed['position_ids'][0].tolist()
    assert positions[:lengths[0] + 1] == list(range(lengths[0])) + [0], 'positions restart'
    with pytest.raises(ConfigError, match='needs rows of whole preference pairs'):
        preference_collate_fn([{'input_ids': [1, 2], 'labels': [-100, 2]}])


@pytest.mark.parametrize('name', ['xft.model.sequence_logprobs', 'xft.model.preference_loss',
                                  'xft.dataset.preference_packing',
                                  'xft.dataset.collate_fns.preference_collate_fn',
                                  'xft.engine.preference_metric', 'xft.model.reference_cache'])
def test_docstring_examples(name):
    import doctest
    import importlib
    result = doctest.testmod(importlib.import_module(name))
    assert result.failed == 0 and result.attempted > 0, name
