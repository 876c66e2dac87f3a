"""The commands on preference data and models: the data verbs, the held-out metric, conversion."""
import contextlib
import io
import json
import re

import torch

from helpers.zoo import tiny_config_text
from xft import cli
from xft.engine.preference_metric import PreferenceAccuracy

ZOO_DPO = 'configs/smollm2/smollm2_135m_instruct/smollm2_135m_instruct_dpo_qlora_custom_preference_e1.py'
ZOO_REWARD = 'configs/smollm2/smollm2_135m_instruct/smollm2_135m_instruct_reward_qlora_custom_preference_e1.py'
GOOD = {'conversations': [{'from': 'human', 'value': 'Name a primary color.'}],
        'chosen': {'from': 'gpt', 'value': 'Red.'}, 'rejected': {'from': 'gpt', 'value': 'Green.'}}


def run(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(argv)
    return code, out.getvalue(), err.getvalue()


def zoo_config(tmp_path, tiny_llama_dir, rows, zoo=ZOO_DPO):
    data = tmp_path / 'pairs.json'
    data.write_text(json.dumps(rows))
    config = tmp_path / 'pref.py'
    from pathlib import Path
    repo = Path(__file__).resolve().parents[1]
    config.write_text(tiny_config_text(repo / zoo, tiny_llama_dir, data, max_length=64, held_out=0.25,
                                       max_packed_length=256))
    return config


def test_check_custom_dataset_shows_each_step_of_the_pairs_and_counts(tmp_path, tiny_llama_dir):
    config = zoo_config(tmp_path, tiny_llama_dir, [GOOD] * 8)
    code, out, err = run(['check-custom-dataset', str(config)])
    assert code == 0, err
    for stage in ('load', 'map', 'template', 'encode', 'pack'):
        assert f'--- after {stage}:' in out
    assert 'pair 0 chosen' in out and 'pair 0 rejected' in out and '«Red.<|im_end|>»' in out
    # Every row is checked, the two held out too; about 65 tokens a pair, 3 to a 256-token row.
    assert 'counts: 8 rows loaded' in out and '8 pairs kept' in out and 'packed into 3 rows' in out
    assert 'no problems found' in out


def test_a_bad_pair_ends_the_data_verbs_in_one_line_naming_file_and_row(tmp_path, tiny_llama_dir):
    """check-custom-dataset reads every row, the held-out ones too; log-dataset the training rows."""
    bad = dict(GOOD, chosen={'from': 'gpt', 'value': ''})
    config = zoo_config(tmp_path, tiny_llama_dir, [GOOD, GOOD, bad, GOOD, GOOD])
    code, _, err = run(['check-custom-dataset', str(config)])
    assert code == 2  # bad input (xft/tools/README.md: the exit convention)
    assert err.strip().splitlines() == [
        f"xft check-custom-dataset: {tmp_path / 'pairs.json'} row 3: the 'chosen' answer is empty"]
    config = zoo_config(tmp_path, tiny_llama_dir, [bad] * 5)
    code, _, err = run(['log-dataset', str(config)])
    assert code == 2
    assert re.fullmatch(rf"xft log-dataset: {re.escape(str(tmp_path / 'pairs.json'))} row \d: "
                        r"the 'chosen' answer is empty\n", err)


def test_log_dataset_shows_every_sequence_of_a_packed_row(tmp_path, tiny_llama_dir):
    config = zoo_config(tmp_path, tiny_llama_dir, [GOOD] * 8)
    code, out, _ = run(['log-dataset', str(config), '--show', 'masked_text'])
    assert code == 0
    # 6 training pairs of about 65 tokens packed into rows of 256 tokens: several per row.
    assert '--- pair 0 chosen' in out and '--- pair 2 rejected' in out
    assert out.count('«Red.<|im_end|>»') == out.count('«Green.<|im_end|>»') >= 3


def test_held_out_accuracy_counts_ties_as_wrong():
    metric = PreferenceAccuracy()
    metric.process({}, [{'chosen': 1.0, 'rejected': 0.0}, {'chosen': 0.0, 'rejected': 0.0}])
    metric.process({}, [{'chosen': -2.0, 'rejected': 1.0}, {'chosen': 0.5, 'rejected': 0.25}])
    result = metric.evaluate(4)
    assert result['preference/accuracy'] == 0.5 and result['preference/pairs'] == 4
    assert result['preference/margin'] == (1.0 + 0 - 3.0 + 0.25) / 4


def test_a_reward_checkpoint_is_refused_by_pth_to_hf_rather_than_losing_its_head(tmp_path, tiny_llama_dir):
    config = zoo_config(tmp_path, tiny_llama_dir, [GOOD] * 8, zoo=ZOO_REWARD)
    checkpoint = tmp_path / 'iter_1.pth'
    torch.save({'state_dict': {'llm.base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight':
                               torch.zeros(64, 64), 'v_head.weight': torch.zeros(1, 64)}}, checkpoint)
    code, _, err = run(['convert', 'pth_to_hf', str(config), str(checkpoint), str(tmp_path / 'out')])
    assert code != 0
    assert "holds trained weights outside model.llm ('v_head.weight'" in err
    assert 'Traceback' not in err and not (tmp_path / 'out').exists()
