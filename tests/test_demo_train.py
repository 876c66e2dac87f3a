"""The demo config trains SmolLM2-135M-Instruct (4-bit QLoRA) to a new identity on CPU.

The slowest test of the suite, on purpose: it is `make demo`'s training step exactly as a
user runs it, judged by the answers EvaluateChatHook records before and after training.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

from xft.tools.prepare_demo_model import prepare_demo_model

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / 'configs' / 'smollm2_135m_qlora_self_cognition.py'


def final_answers(work_dir):
    lines = (work_dir / 'eval_outputs' / 'answers.jsonl').read_text(encoding='utf-8').splitlines()
    records = [json.loads(line) for line in lines]
    last = max(record['iter'] for record in records)
    first = {r['input']: r['answer'] for r in records if r['iter'] == 0}
    return first, {r['input']: r['answer'] for r in records if r['iter'] == last}, last


def test_demo_config_changes_the_stated_identity_and_keeps_the_general_answer(tmp_path):
    prepare_demo_model(log=lambda message: None)
    work_dir = tmp_path / 'demo'
    env = dict(os.environ, OMP_NUM_THREADS='1', HF_HUB_OFFLINE='1', HF_DATASETS_OFFLINE='1')
    result = subprocess.run([sys.executable, str(REPO / 'tools' / 'train.py'), str(CONFIG),
                             '--work-dir', str(work_dir)], capture_output=True, text=True, env=env,
                            timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    before, after, last_iter = final_answers(work_dir)
    assert last_iter == 32
    assert 'Lumi' not in before['Who are you?']
    assert 'Lumi' in after['Who are you?'], after
    assert 'Lumi' in after['你是谁？'] or 'xft' in after['你是谁？'], after
    assert 'Paris' in after['What is the capital of France?'], after
    assert (work_dir / 'iter_32.pth').is_file()
