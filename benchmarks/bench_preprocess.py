"""Data-pipeline throughput: tokenize and pack the largest alpaca set on 1 and 2 processes.

    .venv/bin/python benchmarks/bench_preprocess.py [--repeats 5] [--max-length 2048]

Runs ``run_pipeline`` (load -> alpaca_map_fn -> chatml template -> encode -> pack) with
SmolLM2-135M-Instruct's tokenizer (``xft prepare-demo-model``), or the tests' tiny BPE tokenizer
when that is not prepared, on ``/work/shared/data/alpaca/alpaca_data_subset.json`` (2,808 rows)
and on that set repeated 8 times (22,464 rows; below 5,000 rows per worker the pipeline stays
in one process, see MIN_ROWS_PER_PROCESS). Writes rows/s and tokens/s of the fastest repeat
(the least disturbed by other jobs on a shared machine; every timing is kept too) to
benchmarks/results/preprocess_<date>.json.
"""
import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('HF_DATASETS_OFFLINE', '1')

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / 'shared' / 'data' / 'alpaca' / 'alpaca_data_subset.json'
RESULTS = ROOT / 'benchmarks' / 'results'
REPEAT = 8


def load_tokenizer():
    from xft.tools.prepare_demo_model import demo_model_path, is_prepared
    folder = demo_model_path()
    if is_prepared(folder):
        from transformers import AutoTokenizer
        return AutoTokenizer.from_pretrained(str(folder)), f'SmolLM2-135M-Instruct ({folder})'
    sys.path.insert(0, str(ROOT / 'tests'))
    from conftest import build_tiny_tokenizer
    return build_tiny_tokenizer(), 'tiny byte-level BPE, vocab 512 (SmolLM2 not prepared)'


def measure(tokenizer, source, label, processes, max_length, repeats):
    import datasets
    from xft.dataset.map_fns import alpaca_map_fn, template_map_fn_factory
    from xft.dataset.options import PipelineOptions
    from xft.dataset.pipeline import run_pipeline
    datasets.disable_progress_bars()
    options = PipelineOptions(
        tokenizer=tokenizer, max_length=max_length, dataset_map_fn=alpaca_map_fn,
        template_map_fn=template_map_fn_factory('chatml'), pack_to_max_length=True,
        map_num_proc=processes)
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        data, stats = run_pipeline(source, options)
        seconds.append(time.perf_counter() - start)
    best = min(seconds)
    return {
        'data': label, 'processes': processes, 'seconds_best': round(best, 3),
        'seconds_median': round(statistics.median(seconds), 3),
        'seconds_all': [round(s, 3) for s in seconds],
        'rows': stats.rows_loaded, 'tokens': stats.tokens_kept, 'packed_rows': len(data),
        'rows_per_s': round(stats.rows_loaded / best, 1),
        'tokens_per_s': round(stats.tokens_kept / best, 1),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--max-length', type=int, default=2048)
    args = parser.parse_args()
    import datasets
    import torch
    import transformers
    tokenizer, tokenizer_name = load_tokenizer()
    from xft.dataset.load import load_source
    repeated = datasets.concatenate_datasets([load_source(DATA)] * REPEAT)
    runs = [measure(tokenizer, source, label, processes, args.max_length, args.repeats)
            for source, label in ((DATA, 'alpaca_data_subset.json'),
                                  (repeated, f'alpaca_data_subset.json x{REPEAT}'))
            for processes in (1, 2)]
    today = datetime.date.today().isoformat()
    result = {
        'date': today, 'data': str(DATA), 'tokenizer': tokenizer_name,
        'max_length': args.max_length, 'steps': 'load, alpaca_map_fn, chatml template, encode, '
        'pack (shuffled)', 'cpu_count': os.cpu_count(), 'python': platform.python_version(),
        'versions': {'datasets': datasets.__version__, 'transformers': transformers.__version__,
                     'torch': torch.__version__},
        'load_average_before': os.getloadavg(),
        'note': 'CPU cores are shared with other jobs on this machine; timings are noisy.',
        'runs': runs,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f'preprocess_{today}.json'
    out.write_text(json.dumps(result, indent=1) + '\n')
    for run in runs:
        print(f"{run['data']}, {run['processes']} process(es): {run['rows_per_s']} rows/s, "
              f"{run['tokens_per_s']} tokens/s ({run['seconds_best']} s for {run['rows']} rows,"
              f" {run['tokens']} tokens)")
    print(f'wrote {out}')


if __name__ == '__main__':
    main()
