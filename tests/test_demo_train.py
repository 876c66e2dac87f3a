"""The demo config trains SmolLM2-135M-Instruct (4-bit QLoRA) to a new identity on CPU.

The slowest test of the suite, on purpose: it is `make demo`'s training step, the shipped
config unedited, judged by the answers EvaluateChatHook records before and after training.
It runs in this process through tools/train.py's own functions (no Python start).
"""
import json

import pytest
from helpers.paths import REPO
from helpers.training import train_in_process

from xft.tools.prepare_demo_model import prepare_demo_model

CONFIG = REPO / 'configs' / 'smollm2_135m_qlora_self_cognition.py'


def final_answers(work_dir):
    lines = (work_dir / 'eval_outputs' / 'answers.jsonl').read_text(encoding='utf-8').splitlines()
    records = [json.loads(line) for line in lines]
    last = max(record['iter'] for record in records)
    first = {r['input']: r['answer'] for r in records if r['iter'] == 0}
    return first, {r['input']: r['answer'] for r in records if r['iter'] == last}, last


@pytest.mark.slow
def test_demo_config_changes_the_stated_identity_and_keeps_the_general_answer(tmp_path):
    prepare_demo_model(log=lambda message: None)
    work_dir = tmp_path / 'demo'
    train_in_process(CONFIG, '--work-dir', work_dir)
    before, after, last_iter = final_answers(work_dir)
    assert last_iter == 32
    assert 'Lumi' not in before['Who are you?']
    assert 'Lumi' in after['Who are you?'], after
    assert 'Lumi' in after['你是谁？'] or 'xft' in after['你是谁？'], after
    assert 'Paris' in after['What is the capital of France?'], after
    assert (work_dir / 'iter_32.pth').is_file()
