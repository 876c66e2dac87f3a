"""--cfg-options: a PART 1 variable reaches every entry built from it; every other key is checked
against what the config and the classes it builds accept; imported names resolve when the config
loads. Each mistake is one ConfigError line with the closest known name."""
import pytest

from xft.engine.config import load_config
from xft.engine.model_sources import named_models
from xft.utils.errors import ConfigError
from xft.utils.templates import PROMPT_TEMPLATE
from helpers.newcomer import REPO, tiny_config

MISSION = REPO / 'configs' / 'internlm_7b_qlora_oasst1.py'


def config_error(*args) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(*args)
    message = str(caught.value)
    assert '\n' not in message
    return message


def test_a_part1_variable_reaches_every_entry_built_from_it(tmp_path):
    folder = str(tmp_path / 'model')
    cfg = load_config(str(MISSION), {'pretrained_model_name_or_path': folder, 'max_length': 512,
                                     'data_path': 'local.jsonl',
                                     'prompt_template': 'PROMPT_TEMPLATE.chatml'})
    # The model, the data pipeline's tokenizer, the tokenizer conversions save, both hooks'.
    assert named_models(cfg) == {folder: [
        'tokenizer.pretrained_model_name_or_path',
        'model.llm.pretrained_model_name_or_path',
        'train_dataloader.dataset.tokenizer.pretrained_model_name_or_path',
        'custom_hooks.0.tokenizer.pretrained_model_name_or_path',
        'custom_hooks.1.tokenizer.pretrained_model_name_or_path']}
    assert cfg.train_dataloader.dataset.max_length == 512
    assert cfg.train_dataloader.dataset.dataset.path == 'local.jsonl'
    # A name the config imports stays that object, in the data pipeline and in the hook.
    assert cfg.train_dataloader.dataset.template_map_fn.template == PROMPT_TEMPLATE.chatml
    assert cfg.custom_hooks[1]['prompt_template'] == PROMPT_TEMPLATE.chatml
    # The config still comes from the user's file, and its text is not touched.
    assert cfg.filename == str(MISSION)
    assert "pretrained_model_name_or_path = 'internlm/internlm-7b'" in MISSION.read_text()


def test_a_dotted_key_wins_over_the_variable_it_was_built_from(tmp_path):
    cfg = load_config(str(MISSION), {'pretrained_model_name_or_path': 'a/model',
                                     'tokenizer.pretrained_model_name_or_path': 'b/tokenizer'})
    assert cfg.model.llm.pretrained_model_name_or_path == 'a/model'
    assert cfg.tokenizer.pretrained_model_name_or_path == 'b/tokenizer'


@pytest.mark.parametrize('option, expected', [
    ({'model.lora.rr': 8}, "--cfg-options model.lora.rr: LoraConfig takes no argument 'rr'; "
                           "did you mean 'r'?"),
    ({'max_lenght': 512}, "--cfg-options max_lenght: the config has no variable 'max_lenght' and "
                          "it is not a Runner setting; did you mean 'max_length'?"),
    ({'train_dataloader.batch_sise': 2}, "--cfg-options train_dataloader.batch_sise: DataLoader "
                                         "takes no argument 'batch_sise'; did you mean 'batch_size'?"),
    ({'default_hooks.logger.intervall': 1}, "--cfg-options default_hooks.logger.intervall: "
                                            "LoggerHook takes no argument 'intervall'; did you mean "
                                            "'interval'?"),
    ({'custom_hooks.7.max_new_tokens': 4}, '--cfg-options custom_hooks.7.max_new_tokens: '
                                           "custom_hooks is a list of 3; expected an index 0..2, got '7'"),
    ({'lr.warmup': 1}, '--cfg-options lr.warmup: lr is a number (0.0002), not a dict'),
])
def test_an_unknown_key_is_one_line_with_the_closest_name(option, expected):
    assert config_error(str(MISSION), option) == expected


def test_new_keys_the_built_classes_accept_are_fine():
    cfg = load_config(str(MISSION), {
        'train_cfg.max_iters': 3,                              # TrainLoop's own argument
        'train_cfg.val_interval': 1,                           # ... passed on to IterBasedTrainLoop
        'custom_hooks.1.max_new_tokens': 4,                    # EvaluateChatHook
        'train_dataloader.dataset.max_dataset_length': 10,     # process_hf_dataset
        'train_dataloader.pin_memory': True,                   # torch's DataLoader
        'log_processor.window_size': 1,                        # mmengine's LogProcessor
        'randomness.seed': 3, 'work_dir': 'somewhere',         # Runner settings
        'sequence_parallel_size': 2})                          # xft's own top-level setting
    assert cfg.train_cfg.max_iters == 3 and cfg.custom_hooks[1]['max_new_tokens'] == 4
    assert cfg.sequence_parallel_size == 2


def test_an_unknown_template_in_a_config_names_the_line_and_the_closest_template(tmp_path):
    config = tiny_config(tmp_path, tmp_path / 'model')
    config.write_text(config.read_text().replace('PROMPT_TEMPLATE.chatml', 'PROMPT_TEMPLATE.chatmll'))
    line = next(number for number, text in enumerate(config.read_text().splitlines(), start=1)
                if 'chatmll' in text)
    assert config_error(str(config)) == (f"{config} line {line}: PROMPT_TEMPLATE has no 'chatmll'; "
                                         "did you mean 'chatml'?")


def test_an_unknown_template_through_cfg_options_says_so(tmp_path):
    message = config_error(str(MISSION), {'prompt_template': 'PROMPT_TEMPLATE.chatmll'})
    assert message.startswith(f"{MISSION}: PROMPT_TEMPLATE has no 'chatmll'; did you mean 'chatml'?")
    assert "--cfg-options prompt_template='PROMPT_TEMPLATE.chatmll'" in message


def test_a_misspelt_import_names_the_module_and_the_closest_name(tmp_path):
    config = tiny_config(tmp_path, tmp_path / 'model')
    config.write_text(config.read_text().replace('import alpaca_map_fn,', 'import alpaca_mapfn,')
                      .replace('dataset_map_fn=alpaca_map_fn', 'dataset_map_fn=alpaca_mapfn'))
    message = config_error(str(config))
    assert message.startswith(f'{config} line ')
    assert message.endswith("xft.dataset.map_fns has no 'alpaca_mapfn'; did you mean 'alpaca_map_fn'?")


def test_an_inheriting_config_says_which_keys_to_set(tmp_path):
    (tmp_path / 'base.py').write_text("model_path = 'org/model'\n"
                                      "model = dict(name_or_path=model_path)\n")
    child = tmp_path / 'child.py'
    child.write_text("_base_ = ['base.py']\nmodel_path = 'org/model'\n")
    message = config_error(str(child), {'model_path': '/local'})
    assert message.startswith(f'{child} inherits from other files (_base_ / read_base)')
    assert message.endswith('(model_path reaches model.name_or_path)')
