"""Shared fixtures: offline, CPU, one thread, tiny models built on the spot.

The code behind them lives in plain modules under tests/helpers/; this file only registers
the fixtures, so that each session-scoped one is built once per worker and shared by every
module that asks for it.
"""
import os

# Set before transformers/datasets are imported by any test module.
os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('HF_DATASETS_OFFLINE', '1')
os.environ.setdefault('TRANSFORMERS_NO_ADVISORY_WARNINGS', '1')

import pytest  # noqa: E402  (after the environment above)
import torch  # noqa: E402

from helpers import faults, models  # noqa: E402
from helpers.paths import SHARED_DATA  # noqa: E402

torch.set_num_threads(1)


# The longest test of the suite (the demo's real training, minutes on two cores).
LONGEST = 'test_demo_train.py::test_demo_config_changes_the_stated_identity_and_keeps_the_general_answer'


def pytest_collection_modifyitems(items):
    """Real-model (``slow``) tests first, the longest of all first of them: with two xdist
    workers a test of minutes that starts last finishes last, whatever the rest takes."""
    items.sort(key=lambda item: (not item.nodeid.endswith(LONGEST), item.get_closest_marker('slow') is None))


@pytest.fixture(autouse=True)
def _datasets_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv('HF_DATASETS_CACHE', str(tmp_path_factory.mktemp('hf_datasets_cache')))


@pytest.fixture(scope='session')
def tiny_tokenizer():
    return models.build_tiny_tokenizer()


@pytest.fixture(scope='session')
def tiny_llama_dir(tmp_path_factory, tiny_tokenizer):
    """A folder holding a tiny random Llama and its tokenizer, loadable by from_pretrained."""
    return models.save_tiny_llama(tmp_path_factory.mktemp('tiny_llama'), tiny_tokenizer)


@pytest.fixture(scope='session')
def shared_data():
    if not SHARED_DATA.is_dir():
        pytest.fail(f'shared data folder not found at {SHARED_DATA}')
    return SHARED_DATA


@pytest.fixture(scope='session')
def reference_run(tmp_path_factory, tiny_llama_dir, shared_data):
    """The uninterrupted reference schedule (helpers.faults.REFERENCE_OPTIONS), trained once per
    worker: (config, work dir, {iteration: loss})."""
    return faults.reference_run(tmp_path_factory.mktemp('reference'), tiny_llama_dir)
