"""benchmarks/bench_sequence_parallel.py on the CPU: its table reads the GPU records right (a long
step that a rank could not finish, one that was skipped, the ratio to one GPU), and its throughput
counts every row a step trains. The smoke mode (`--smoke`: two gloo processes, a tiny model) runs
the same code as the GPU kit; its sequence-parallel numerics are tests/test_sequence_parallel.py's."""
import json
import sys
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / 'benchmarks'))
import bench_sequence_parallel as bench  # noqa: E402


def record(world, sp, seq_len, **fields):
    return dict(world_size=world, sequence_parallel_size=sp, seq_len=seq_len, gpu='NVIDIA H200',
                model='hidden 4096, 32 layers, 32 heads, vocab 32000', **fields)


def test_the_table_marks_unfinished_and_skipped_steps_and_compares_with_one_gpu(tmp_path):
    records = [
        dict(world_size=1, sequence_parallel_size=1, setting='load', load_s=50.0),
        record(1, 1, 32768, setting='qlora_32768', status='ok', step_s=8.0, tokens_per_s=4096.0,
               tokens_per_s_per_gpu=4096.0, peak_gib_per_gpu=12.0),
        record(2, 2, 32768, setting='qlora_32768', status='ok', step_s=5.0, tokens_per_s=6553.6,
               tokens_per_s_per_gpu=3276.8, peak_gib_per_gpu=8.0),
        record(2, 2, 262144, setting='longest', status='started', predicted_s=60.0),
        record(2, 2, 262144, setting='longest', status='ok', step_s=61.0, tokens_per_s=4297.4,
               tokens_per_s_per_gpu=2148.7, peak_gib_per_gpu=50.0),
        record(2, 2, 524288, setting='longest', status='started', predicted_s=300.0),
        record(2, 2, 786432, setting='longest', status='skipped', predicted_s=600.0, cap_s=420.0),
    ]
    jsonl = tmp_path / 'sp.jsonl'
    jsonl.write_text(''.join(json.dumps(r) + '\n' for r in records))
    table = bench.summarize(jsonl, tmp_path / 'sp.md').splitlines()
    rows = [line for line in table if line.startswith('| 1 ') or line.startswith('| 2 ')]
    assert rows == [
        '| 1 | 1 | 32,768 | qlora_32768 | ok | 8.0 | 4096.0 | 4096.0 |  | 12.0 |',
        '| 2 | 2 | 32,768 | qlora_32768 | ok | 5.0 | 6553.6 | 3276.8 | 1.60x | 8.0 |',
        '| 2 | 2 | 262,144 | longest | ok | 61.0 | 4297.4 | 2148.7 |  | 50.0 |',
        '| 2 | 2 | 524,288 | longest | did not finish |  |  |  |  |  |',
        '| 2 | 2 | 786,432 | longest | skipped (predicted 600.0 s > 420.0 s) |  |  |  |  |  |',
    ]
    assert 'model: hidden 4096, 32 layers, 32 heads, vocab 32000; devices: NVIDIA H200' in table[0]


def test_throughput_counts_one_row_per_data_parallel_group():
    four_gpus_sp2 = SimpleNamespace(world=4, sp=2)
    assert bench.throughput(four_gpus_sp2, 1000, 2.0) == dict(tokens_per_s=1000.0, tokens_per_s_per_gpu=250.0)
    one_gpu = SimpleNamespace(world=1, sp=1)
    assert bench.throughput(one_gpu, 1000, 2.0) == dict(tokens_per_s=500.0, tokens_per_s_per_gpu=500.0)
