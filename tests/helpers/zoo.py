"""Helpers for the zoo, CLI and docs tests: run a zoo config on the tiny model and small data.

A zoo config names a hub model and a hub dataset in PART 1. ``swap_part1`` rewrites those PART 1
lines (and nothing else) so the same file runs offline on the tiny random Llama and a small
file of the right format cut from /work/shared/data (``small_data_files``).
"""
import json
import re
from pathlib import Path

# Small derived fixtures: dataset key of the zoo -> (source in /work/shared/data, rows kept).
SMALL_DATA_SOURCES = {
    'alpaca': ('alpaca/alpaca_data_subset.json', 16),
    'alpaca_zh': ('alpaca_zh/alpaca_gpt4_zh_demo.json', 16),
    'code_alpaca': ('code_alpaca/code_alpaca_2k.json', 16),
    'oasst1': ('oasst1_guanaco/openassistant_best_replies_eval.shared318.jsonl', 16),
}
# PART 1 values that make any zoo config small enough for two CPU cores.
# warmup_ratio: mmengine turns the warm-up into int(warmup_ratio * epochs * iterations per epoch)
# iterations and refuses 0, which a 0.03 ratio gives on a few-row file.
SMALL_SETTINGS = dict(max_length=512, batch_size=2, accumulative_counts=1, save_steps=2,
                      warmup_ratio=0.5)


def swap_part1(text: str, **values) -> str:
    """Replace the single-line PART 1 assignments ``name = ...`` with ``name = repr(value)``.

    >>> swap_part1("max_length = 2048\\nx = max_length\\n", max_length=128)
    'max_length = 128\\nx = max_length\\n'
    """
    for name, value in values.items():
        pattern = re.compile(rf'^{re.escape(name)} = .*$', re.MULTILINE)
        text, count = pattern.subn(lambda _: f'{name} = {value!r}', text)
        if count != 1:
            raise AssertionError(f'expected one line `{name} = ...`, found {count}')
    return text


def _rows(path: Path):
    text = path.read_text(encoding='utf-8')
    try:  # a JSON array, whatever the suffix (the MedQA2019 .jsonl files are one)
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def small_data_files(shared_data: Path, out_dir: Path) -> dict:
    """{zoo dataset key: small local file in that dataset's layout} written into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {}
    for key, (source, count) in SMALL_DATA_SOURCES.items():
        rows = _rows(shared_data / source)[:count]
        path = out_dir / f'{key}{Path(source).suffix}'
        if path.suffix == '.jsonl':
            path.write_text(''.join(json.dumps(row, ensure_ascii=False) + '\n' for row in rows))
        else:
            path.write_text(json.dumps(rows, ensure_ascii=False))
        files[key] = path

    # OpenAI messages: XTuner's multi-turn demo (with a system prompt and a loss=false turn)
    # plus single-turn rows of openai_sft.jsonl (bare message lists there).
    demo = _rows(shared_data / 'xtuner_examples/demo_data/multi_turn_2/data.json')
    single = _rows(shared_data / 'multi_turn/xtuner_openai_sft.jsonl')[:14]
    messages = demo + [{'messages': row} for row in single]
    files['custom_sft'] = out_dir / 'messages.jsonl'
    files['custom_sft'].write_text(''.join(json.dumps(row, ensure_ascii=False) + '\n'
                                           for row in messages))

    # Conversation format: single-turn MedQA2019 rows and XTuner's multi-turn toy rows.
    medqa = _rows(shared_data / 'internlm_tutorial_medqa2019/MedQA2019-structured-train.jsonl')[:8]
    multi = _rows(shared_data / 'xtuner_examples/toy_data/toy_custom_multi_turn_data.json')
    files['custom_conversation'] = out_dir / 'conversations.json'
    files['custom_conversation'].write_text(json.dumps(medqa + multi, ensure_ascii=False))

    # Preference pairs: ShareGPT rows as they are, and the same pairs as chat-message lists
    # that differ in the last message (orpo-dpo-mix-40k's and UltraFeedback's layout).
    pairs = _rows(shared_data / 'preference/dpo_zh_demo_250.json')[:16]
    files['custom_preference'] = out_dir / 'pairs.json'
    files['custom_preference'].write_text(json.dumps(pairs, ensure_ascii=False))
    roles = {'human': 'user', 'gpt': 'assistant', 'system': 'system'}
    as_messages = []
    for row in pairs:
        prompt = [{'role': roles[m['from']], 'content': m['value']} for m in row['conversations']]
        as_messages.append({key: prompt + [{'role': 'assistant', 'content': row[key]['value']}]
                            for key in ('chosen', 'rejected')})
    for key in ('orpo_dpo_mix', 'ultrafeedback'):
        files[key] = out_dir / f'{key}.jsonl'
        files[key].write_text(''.join(json.dumps(row, ensure_ascii=False) + '\n' for row in as_messages))

    # Plain text, one sample per non-empty line.
    lines = (shared_data / 'pretrain_text/tinyshakespeare.txt').read_text().splitlines()
    files['custom_pretrain'] = out_dir / 'corpus.txt'
    files['custom_pretrain'].write_text('\n'.join([line for line in lines if line.strip()][:48]) + '\n')
    return files


def tiny_config_text(config_path: Path, model_dir: Path, data_file: Path, **extra) -> str:
    """A zoo config's text with PART 1 pointing at the tiny model, small data and small sizes."""
    values = dict(pretrained_model_name_or_path=str(model_dir), data_path=str(data_file),
                  **SMALL_SETTINGS)
    values.update(extra)
    return swap_part1(Path(config_path).read_text(), **values)


def dataset_key(config_name: str) -> str:
    """'llama2_7b_chat_qlora_code_alpaca_e3' -> 'code_alpaca'; a twin such as
    'internlm_7b_qlora_oasst1' gives its zoo config's."""
    from xft.tools.gen_configs import entry_named

    entry = entry_named(config_name)
    if entry is None:
        raise AssertionError(f'{config_name}: not a config the generator writes')
    return entry.dataset.key
