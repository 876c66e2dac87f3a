"""Names that say what they hold, each with one home: the pad id, the NaN-loss error, the one
environment-flag parser, and the hub check that reads huggingface_hub's own offline switch."""
import socket

import pytest

import xft.dataset.load as load
from xft.utils.env import env_flag
from xft.utils.errors import DataError, UserError


def test_default_pad_token_index_is_what_collate_pads_input_ids_with():
    from xft.dataset.collate_fns import default_collate_fn
    from xft.utils import DEFAULT_PAD_TOKEN_INDEX
    batch = default_collate_fn([{'input_ids': [5, 6], 'labels': [5, 6]},
                                {'input_ids': [7], 'labels': [7]}])['data']
    assert batch['input_ids'][1, 1].item() == DEFAULT_PAD_TOKEN_INDEX == 0
    assert batch['attention_mask'][1, 1].item() == 0 and batch['labels'][1, 1].item() == -100


def test_one_nonfinite_loss_error_in_one_module():
    import xft.engine.faults as faults
    import xft.engine.nonfinite as nonfinite
    assert issubclass(nonfinite.NonFiniteLossError, UserError)
    assert not hasattr(faults, 'NonFiniteLossError') and not hasattr(nonfinite, 'NonFiniteLoss')


@pytest.mark.parametrize('value, expected', [('1', True), (' TRUE ', True), ('yes', True),
                                             ('On', True), ('0', False), ('false', False),
                                             ('no', False), ('maybe', False), ('', None)])
def test_env_flag_spellings(monkeypatch, value, expected):
    monkeypatch.setenv('XFT_TEST_FLAG', value)
    assert env_flag('XFT_TEST_FLAG') is (False if expected is None else expected)
    assert env_flag('XFT_TEST_FLAG', default=True) is (True if expected is None else expected)


@pytest.fixture
def online(monkeypatch):
    """The hub switched on as far as every flag goes, and no socket may be opened by xft."""
    from huggingface_hub import constants
    monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', False)
    monkeypatch.delenv('HF_HUB_OFFLINE', raising=False)
    monkeypatch.delenv('HF_DATASETS_OFFLINE', raising=False)

    def no_probe(*args, **kwargs):
        raise AssertionError('xft opened a socket to probe the hub')
    monkeypatch.setattr(socket, 'create_connection', no_probe)


def test_offline_is_huggingface_hubs_constant_or_a_flag_set_later(online, monkeypatch):
    assert not load.hub_offline()
    monkeypatch.setenv('HF_DATASETS_OFFLINE', '1')
    assert load.hub_offline()
    monkeypatch.delenv('HF_DATASETS_OFFLINE')
    from huggingface_hub import constants
    monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', True)
    assert load.hub_offline()


def test_online_the_hub_is_asked_and_an_unreachable_one_is_one_line(online, monkeypatch):
    asked = []

    def unreachable(name, **kwargs):
        asked.append(name)
        raise ConnectionError("Couldn't reach 'org/set' on the Hub (LocalEntryNotFoundError)")
    monkeypatch.setattr(load.datasets, 'load_dataset', unreachable)
    # The quick probe (xft.utils.hub, through huggingface_hub's client) says the hub answers.
    monkeypatch.setattr(load, 'probe_hub', lambda name, repo_type: None)
    with pytest.raises(DataError) as error:
        load.load_hub('org/set')
    assert asked == ['org/set']
    assert str(error.value) == (
        "dataset 'org/set' is not a local file or folder and the Hugging Face hub cannot be "
        "reached (Couldn't reach 'org/set' on the Hub (LocalEntryNotFoundError)); download it, "
        'or point the config at a local file (PART 1 data_path, or --cfg-options data_path=FILE)')
