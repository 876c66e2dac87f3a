"""benchmarks/bench_train_e2e.py on the CPU: it edits only PART 1 of the zoo configs, and its
smoke mode trains one row through tools/train.py on a tiny model and reads tokens/s from the
run's own scalars (the GPU run uses the same code on the 7B-shaped model)."""
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / 'benchmarks'))
import bench_train_e2e as e2e  # noqa: E402


def parts_2_to_5(text):
    return text[text.index('PART 2'):]


@pytest.mark.parametrize('mode', ['qlora', 'lora'])
def test_the_configs_change_only_in_part1(tmp_path, mode):
    shipped = e2e.CONFIGS[mode].read_text()
    path, options = e2e.write_config(mode, 8192, 0.0, '/models/x', '/data/a.json', tmp_path)
    text = path.read_text()
    assert parts_2_to_5(text) == parts_2_to_5(shipped)
    assert "pretrained_model_name_or_path = '/models/x'" in text and 'max_length = 8192' in text
    # lora_dropout: PART 1 sets it where the config has that knob, else one --cfg-options.
    assert ('lora_dropout = 0.0' in text) != (options == ['model.lora.lora_dropout=0.0'])
    assert 'lora_dropout=0.1' in shipped or 'lora_dropout = 0.1' in shipped  # as shipped


def test_measure_sums_tokens_and_time_after_the_warmup():
    rows = [dict(iter=1, time=9.0, tokens_per_sec=10.0, peak_gib=7.0, loss=2.0),
            dict(iter=2, time=1.0, tokens_per_sec=100.0, peak_gib=5.0, loss=1.5),
            dict(iter=3, time=3.0, tokens_per_sec=100.0, peak_gib=6.0, loss=1.0,
                 mfu_of_H200_989TFLOPs_bf16=0.4)]
    got = e2e.measure(rows, warmup=1)
    assert got['tokens_per_s'] == 100.0 and got['measured_iters'] == 2
    assert got['peak_gib'] == 7.0 and got['steady_peak_gib'] == 6.0  # the run's peak, warm-up too
    assert got['mfu_basis'] == 'mfu_of_H200_989TFLOPs_bf16'


def test_smoke_row_through_tools_train(tmp_path, shared_data):
    out = tmp_path / 'out'
    code = e2e.main(['--smoke', '--out', str(out), '--work-root', str(tmp_path / 'runs'),
                     '--modes', 'qlora', '--dropouts', '0.1', '--seqs', '128',
                     '--data', str(shared_data / 'alpaca' / 'alpaca_data_subset.json')])
    assert code == 0, (out / 'e2e_logs.txt').read_text()[-3000:]
    [row] = [json.loads(line) for line in next(out.glob('e2e_*.jsonl')).read_text().splitlines()]
    assert row['system'] == 'xft_e2e' and row['mode'] == 'qlora' and row['seq_len'] == 128
    assert row['config'] == 'llama2_7b_qlora_alpaca_e3' and row['lora_dropout'] == 0.1
    assert row['tokens_per_s'] > 0 and row['measured_iters'] == 3
    assert 'tokens_per_sec' in row['last_log_line']
    # The loop cost against a step row of the same settings, and the table.
    step = out / 'gpu_step.jsonl'
    step.write_text(json.dumps(dict(system='xft', mode='qlora', setting='qlora_128', seq_len=128,
                                    lora_dropout=0.1, tokens_per_s=row['tokens_per_s'] * 1.25,
                                    peak_gib=1.0)) + '\n')
    table = e2e.main(['--summarize', '--out', str(out), '--step-jsonl', str(step)])
    assert table == 0
    combined = [json.loads(line) for line in next(out.glob('results_*.jsonl')).read_text().splitlines()]
    assert [r['system'] for r in combined] == ['xft', 'xft_e2e']
    assert combined[1]['loop_cost'] == pytest.approx(0.25, abs=1e-3)
    assert '| qlora | 128 | xft_e2e (llama2_7b_qlora_alpaca_e3) | 0.1 |' in next(out.glob('e2e_*.md')).read_text()
