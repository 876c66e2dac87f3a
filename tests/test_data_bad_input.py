"""Bad input fails with one line naming the file and the row or line, never a skipped row."""
import json
import time

import pytest

from xft.dataset import process_hf_dataset
from xft.dataset.map_fns import alpaca_map_fn, openai_map_fn, template_map_fn_factory
from xft.utils.errors import ConfigError, DataError


def run(path, tokenizer, **kwargs):
    kwargs.setdefault('pack_to_max_length', False)
    return process_hf_dataset(path, tokenizer, 128, **kwargs)


def one_line_error(error_type, call):
    with pytest.raises(error_type) as caught:
        call()
    message = str(caught.value)
    assert '\n' not in message
    return message


def test_malformed_json_line(tmp_path, tiny_tokenizer):
    path = tmp_path / 'data.jsonl'
    path.write_text('{"conversation": [{"input": "a", "output": "b"}]}\n'
                    '{"conversation": [{"input": "a", "output": "b"}\n')
    message = one_line_error(DataError, lambda: run(path, tiny_tokenizer))
    assert message.startswith(f'{path} line 2: invalid JSON')


def test_misnamed_field_names_the_row_and_the_expected_fields(tmp_path, tiny_tokenizer):
    path = tmp_path / 'data.json'
    path.write_text(json.dumps([{'instruction': 'a', 'input': '', 'output': 'b'},
                                {'instruction': 'a', 'input': '', 'answer': 'b'}]))
    message = one_line_error(DataError, lambda: run(path, tiny_tokenizer,
                                                    dataset_map_fn=alpaca_map_fn))
    assert message.startswith(f'{path} row 2: alpaca_map_fn expects fields '
                              "'instruction', 'input', 'output'; field 'output' is missing")


def test_rows_without_conversation_and_no_map_fn(tmp_path, tiny_tokenizer):
    path = tmp_path / 'data.jsonl'
    path.write_text('{"question": "a", "answer": "b"}\n')
    message = one_line_error(DataError, lambda: run(path, tiny_tokenizer))
    assert message.startswith(f"{path} line 1: no dataset_map_fn is set, so rows need a "
                              "'conversation' field")


def test_empty_conversation(tmp_path, tiny_tokenizer):
    path = tmp_path / 'data.json'
    path.write_text(json.dumps([{'conversation': [{'input': 'a', 'output': 'b'}]},
                                {'conversation': []}]))
    message = one_line_error(DataError, lambda: run(path, tiny_tokenizer))
    assert message == f"{path} row 2: 'conversation' is empty"


def test_empty_messages_for_openai_map_fn(tmp_path, tiny_tokenizer):
    path = tmp_path / 'data.jsonl'
    path.write_text('{"messages": []}\n')
    message = one_line_error(DataError, lambda: run(path, tiny_tokenizer,
                                                    dataset_map_fn=openai_map_fn))
    assert message == f"{path} line 1: openai_map_fn: field 'messages' is an empty conversation"


def test_non_string_field_in_every_row(tmp_path, tiny_tokenizer):
    path = tmp_path / 'data.json'
    path.write_text(json.dumps([{'conversation': [{'input': 'a', 'output': 5}]}]))
    message = one_line_error(DataError, lambda: run(path, tiny_tokenizer))
    assert message == f"{path} row 1: turn 0 field 'output' is int, expected a string"


def test_non_string_field_in_one_row(tmp_path, tiny_tokenizer):
    path = tmp_path / 'data.jsonl'
    path.write_text('{"instruction": "a", "input": "", "output": "b"}\n'
                    '{"instruction": "a", "input": "", "output": 7}\n')
    message = one_line_error(DataError, lambda: run(path, tiny_tokenizer,
                                                    dataset_map_fn=alpaca_map_fn))
    assert message == (f"{path} line 2: field 'output' is number, but {path} line 1 has str")


def test_non_utf8_file(tmp_path, tiny_tokenizer):
    path = tmp_path / 'data.jsonl'
    path.write_bytes('{"text": "ok"}\n{"text": "caf'.encode() + b'\xe9"}\n')
    message = one_line_error(DataError, lambda: run(path, tiny_tokenizer))
    assert message.startswith(f'{path} line 2: not UTF-8 text')


def test_unknown_template_name(tmp_path, tiny_tokenizer):
    path = tmp_path / 'data.json'
    path.write_text(json.dumps([{'conversation': [{'input': 'a', 'output': 'b'}]}]))
    message = one_line_error(ConfigError, lambda: run(
        path, tiny_tokenizer,
        template_map_fn=dict(type=template_map_fn_factory, template='internlm3_chat')))
    assert message.startswith("unknown prompt template 'internlm3_chat'; did you mean "
                              "'internlm_chat'? (known: ")


def test_hub_name_offline_fails_fast(tiny_tokenizer):
    start = time.monotonic()
    message = one_line_error(DataError, lambda: run('timdettmers/openassistant-guanaco',
                                                    tiny_tokenizer))
    assert time.monotonic() - start < 5
    assert message.startswith("dataset 'timdettmers/openassistant-guanaco' is not a local file "
                              'or folder and the Hugging Face hub cannot be reached')


def test_missing_data_file_in_a_load_dataset_config(tmp_path, tiny_tokenizer):
    from datasets import load_dataset
    missing = tmp_path / 'nope.json'
    message = one_line_error(DataError, lambda: run(
        dict(type=load_dataset, path='json', data_files=dict(train=str(missing))),
        tiny_tokenizer))
    assert message == f'{missing}: no such data file'


def test_row_that_is_not_an_object(tmp_path, tiny_tokenizer):
    path = tmp_path / 'data.jsonl'
    path.write_text('{"text": "a"}\n42\n')
    message = one_line_error(DataError, lambda: run(path, tiny_tokenizer))
    assert message == f'{path} line 2: expected a JSON object, got int'


def test_unsupported_file_type(tmp_path, tiny_tokenizer):
    path = tmp_path / 'data.xlsx'
    path.write_bytes(b'PK')
    message = one_line_error(DataError, lambda: run(path, tiny_tokenizer))
    assert message.startswith(f"{path}: unsupported file type '.xlsx'")


def test_hub_dataset_config_offline_fails_fast(tiny_tokenizer):
    from datasets import load_dataset
    start = time.monotonic()
    message = one_line_error(DataError, lambda: run(
        dict(type=load_dataset, path='timdettmers/openassistant-guanaco'), tiny_tokenizer))
    assert time.monotonic() - start < 5
    assert "'timdettmers/openassistant-guanaco'" in message


def test_one_pretty_printed_object_is_not_rows(tmp_path, tiny_tokenizer):
    path = tmp_path / 'data.json'
    path.write_text(json.dumps({'conversation': [{'input': 'a', 'output': 'b'}]}, indent=2))
    message = one_line_error(DataError, lambda: run(path, tiny_tokenizer))
    assert message.startswith(f'{path}: holds one JSON object; expected a JSON array of rows')
