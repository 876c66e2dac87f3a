"""What ``xft train`` does before the model loads, so a data mistake costs seconds, not a load.

The training data goes through the whole pipeline (load, map, template, encode, pack) with
``xft check-custom-dataset``'s checks: a bad row stops the run here, naming the file and row;
rows dropped or cut and tokenizer problems are warnings. The processed rows are saved in
``<work_dir>/processed_train_dataset`` (``process_hf_dataset(cache_dir=...)``), where the Runner
loads them from instead of processing again, and so does a resumed run whose data and options
are unchanged. (The models the config names are checked before this, by ``build_train_config``:
``xft.engine.model_sources``.)

With several processes (``--launcher``) this is left to ``share_preprocessing``: rank 0
processes while the others wait, inside the Runner.
"""
import json
import logging
from pathlib import Path

from mmengine.logging import print_log

from xft.utils.errors import DataError, UserError

CACHE_DIRNAME = 'processed_train_dataset'


def prepare_train_data(cfg) -> None:
    """Process the training data now; the Runner loads the result (module docstring)."""
    if cfg.get('launcher', 'none') != 'none':
        return
    for entry, cache_dir in _pipeline_entries(cfg):
        entry['cache_dir'] = entry.get('cache_dir') or str(cache_dir)
        problems = _process(entry)
        for problem in problems:
            print_log(f'[xft data] {problem}', logger='current', level=logging.WARNING)


def _pipeline_entries(cfg):
    """(process_hf_dataset entry, its cache folder) of the training data; none for other datasets
    (a user's own type, preference pairs)."""
    from xft.tools.dataset_tools import dataset_entries
    loader = cfg.get('train_dataloader')
    if not isinstance(loader, dict) or not isinstance(loader.get('dataset'), dict):
        return []
    from xft.tools.dataset_tools import is_packed_repo_entry, is_preference_entry
    try:
        entries = dataset_entries(cfg)
    except UserError:  # a dataset type of the user's own: the Runner builds it as it is
        return []
    # Preference pairs and InternLM-repo folders have no cache to hand over: the Runner
    # builds them, and their bad rows stop it there in one line all the same.
    entries = [entry for entry in entries if not (is_preference_entry(entry) or is_packed_repo_entry(entry))]
    if not entries:
        return []
    folder = Path(cfg.work_dir) / CACHE_DIRNAME
    if len(entries) == 1:
        return [(entries[0], folder)]
    return [(entry, folder / str(number)) for number, entry in enumerate(entries)]


def _process(entry) -> list:
    """Build one process_hf_dataset entry (which saves it to its cache_dir); the problems that
    its logged counts (rows dropped or cut, a warning already) do not show."""
    from xft.dataset.pipeline import CACHE_META_FILE, PipelineStats, process_hf_dataset
    from xft.tools.dataset_tools import pipeline_inputs, problems_found, tokenizer_problems

    # As the Runner builds it: nested dicts (the raw dataset, the tokenizer) go in as dicts.
    process_hf_dataset(**{key: value for key, value in entry.items() if key != 'type'})
    stats = PipelineStats(**json.loads((Path(entry['cache_dir']) / CACHE_META_FILE).read_text())['stats'])
    _, options = pipeline_inputs(entry)
    if stats.samples_kept == 0:
        raise DataError(f'{_source_name(entry)}: no sample is left to train on '
                        f'({"; ".join(problems_found(stats, options))})')
    return tokenizer_problems(options)


def _source_name(entry) -> str:
    dataset = entry.get('dataset')
    if isinstance(dataset, dict):
        dataset = dataset.get('path') or dataset.get('data_files') or 'the training data'
    return str(dataset)
