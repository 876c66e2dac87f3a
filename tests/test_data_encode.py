"""Encode: which tokens carry loss, BOS/EOS/SEP handling, truncation and drop counts."""
import pytest

from xft.dataset.conversation import normalize_conversation
from xft.dataset.encode import encode_conversation
from xft.dataset.map_fns import template_map_fn
from xft.utils.constants import IGNORE_INDEX
from xft.utils.errors import ConfigError
from xft.utils.templates import PROMPT_TEMPLATE

TWO_TURNS = [
    {'system': 'Be brief.', 'input': 'Who are you?', 'output': 'A poet.'},
    {'input': 'Write a line.', 'output': 'To be or not.'},
]


def templated(turns, template):
    conversation = normalize_conversation(turns, 'test', allow_empty=False)
    return template_map_fn({'conversation': conversation}, template)['conversation']


def trained_text(tokenizer, sample):
    return [tokenizer.decode([t]) for t, label in zip(sample['input_ids'], sample['labels'])
            if label != IGNORE_INDEX]


def trained_runs(sample):
    """Maximal runs of consecutive trained token ids."""
    runs, current = [], []
    for token, label in zip(sample['input_ids'], sample['labels']):
        if label != IGNORE_INDEX:
            assert label == token
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return runs


def test_two_turn_chatml_trains_exactly_outputs_and_suffix(tiny_tokenizer):
    sample = encode_conversation(templated(TWO_TURNS, PROMPT_TEMPLATE.chatml), tiny_tokenizer, 512)
    encode = lambda text: tiny_tokenizer(text, add_special_tokens=False)['input_ids']  # noqa
    assert trained_runs(sample) == [encode('A poet.<|im_end|>'), encode('To be or not.<|im_end|>')]
    # chatml uses its SUFFIX as EOS: no </s> anywhere.
    assert tiny_tokenizer.eos_token_id not in sample['input_ids']
    assert sample['num_trained_tokens'] == sum(len(run) for run in trained_runs(sample))


def test_full_sequence_is_bos_then_the_templated_text(tiny_tokenizer):
    sample = encode_conversation(templated(TWO_TURNS, PROMPT_TEMPLATE.chatml), tiny_tokenizer, 512)
    expected_text = ('<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWho are you?'
                     '<|im_end|>\n<|im_start|>assistant\nA poet.<|im_end|>\n'
                     '<|im_start|>user\nWrite a line.<|im_end|>\n<|im_start|>assistant\n'
                     'To be or not.<|im_end|>\n')
    assert sample['input_ids'][0] == tiny_tokenizer.bos_token_id
    assert sample['input_ids'].count(tiny_tokenizer.bos_token_id) == 1
    assert tiny_tokenizer.decode(sample['input_ids'][1:]) == expected_text


def test_default_template_adds_trained_eos_after_each_output_and_untrained_sep(tiny_tokenizer):
    sample = encode_conversation(templated(TWO_TURNS, PROMPT_TEMPLATE.default), tiny_tokenizer, 512)
    eos = tiny_tokenizer.eos_token_id
    runs = trained_runs(sample)
    assert len(runs) == 2 and all(run[-1] == eos for run in runs)
    # SEP ('\n') follows each EOS and is not trained.
    for position, token in enumerate(sample['input_ids']):
        if token == eos:
            assert sample['input_ids'][position + 1] == tiny_tokenizer.convert_tokens_to_ids('Ċ')
            assert sample['labels'][position + 1] == IGNORE_INDEX
    # BOS once, at the start only.
    assert sample['input_ids'].count(tiny_tokenizer.bos_token_id) == 1


def test_output_with_loss_false_is_encoded_but_not_trained(tiny_tokenizer):
    turns = [dict(TWO_TURNS[0], output_with_loss=False), TWO_TURNS[1]]
    sample = encode_conversation(templated(turns, PROMPT_TEMPLATE.chatml), tiny_tokenizer, 512)
    text = ''.join(trained_text(tiny_tokenizer, sample))
    assert text == 'To be or not.<|im_end|>'
    assert 'A poet.' in tiny_tokenizer.decode(sample['input_ids'])


def test_tokenizer_without_bos_gets_no_bos(tiny_tokenizer):
    import copy
    no_bos = copy.deepcopy(tiny_tokenizer)
    no_bos.bos_token = None
    sample = encode_conversation(templated(TWO_TURNS, PROMPT_TEMPLATE.chatml), no_bos, 512)
    assert sample['input_ids'][0] == no_bos.convert_tokens_to_ids('<|im_start|>')
    assert tiny_tokenizer.bos_token_id not in sample['input_ids']


def test_template_needing_eos_with_tokenizer_without_eos_is_a_config_error(tiny_tokenizer):
    import copy
    no_eos = copy.deepcopy(tiny_tokenizer)
    no_eos.eos_token = None
    with pytest.raises(ConfigError, match='eos_token'):
        encode_conversation(templated(TWO_TURNS, PROMPT_TEMPLATE.default), no_eos, 512)


def test_truncation_cuts_to_max_length_and_counts_the_cut(tiny_tokenizer):
    full = encode_conversation(templated(TWO_TURNS, PROMPT_TEMPLATE.chatml), tiny_tokenizer, 512)
    cut = encode_conversation(templated(TWO_TURNS, PROMPT_TEMPLATE.chatml), tiny_tokenizer, 20)
    assert cut['input_ids'] == full['input_ids'][:20]
    assert cut['length'] == 20
    assert cut['num_truncated_tokens'] == full['length'] - 20
    assert full['num_truncated_tokens'] == 0


def test_prompt_only_encoding_for_evaluation(tiny_tokenizer):
    sample = encode_conversation(templated(TWO_TURNS[:1], PROMPT_TEMPLATE.chatml), tiny_tokenizer,
                                 512, input_ids_with_output=False)
    assert sample['num_trained_tokens'] == 0
    assert tiny_tokenizer.decode(sample['input_ids']).endswith('<|im_start|>assistant\n')
