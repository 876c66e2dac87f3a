"""Continuing an adapter through the CLI, and XTuner's two remaining SFT hooks.

A run trains 3 steps with ``HFCheckpointHook`` and ``VarlenAttnArgsToMessageHubHook``;
``xft convert pth_to_hf`` turns its checkpoint into an adapter (the hook wrote the same one);
``xft train CFG --cfg-options model.peft_model=ADAPTER`` continues from it: its first loss is the
adapter's loss on that batch, computed by plain peft, not the fresh LoRA's (the base model's)."""
import contextlib
import io
import json
import subprocess
import sys

import pytest
import torch
from helpers.training import TINY_CONFIG as TEMPLATE, logged_losses, run_train, train_env
from mmengine.config import Config
from mmengine.registry import DATASETS
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from xft.dataset.collate_fns import default_collate_fn
from xft.engine.hooks.varlen_attn_args_hook import NOTHING_TO_DO
from xft.tools import pth_to_hf

# Every iteration trains on the same batch of both rows; each iteration's loss is logged.
OPTIONS = ('train_dataloader.batch_size=2', 'optim_wrapper.optimizer.lr=0.01', 'param_scheduler.0.start_factor=1.0',
           'log_processor.window_size=1')


@pytest.fixture(scope='module')
def trained(tmp_path_factory, tiny_llama_dir, shared_data):
    folder = tmp_path_factory.mktemp('continue')
    rows = json.loads((shared_data / 'alpaca' / 'alpaca_data_subset.json').read_text())[:2]
    data = folder / 'two_rows.json'
    data.write_text(json.dumps(rows))
    text = (TEMPLATE.read_text().replace('@MODEL@', str(tiny_llama_dir)).replace('@DATA@', str(data))
            .replace('@LORA@', 'lora').replace('@QUANTIZATION@', 'None'))
    config = folder / 'tiny_lora.py'
    config.write_text(text)
    hooked = folder / 'tiny_lora_hooks.py'
    hooked.write_text(text + ('\nfrom xft.engine.hooks import HFCheckpointHook, VarlenAttnArgsToMessageHubHook\n'
                              'custom_hooks = [dict(type=HFCheckpointHook),\n'
                              '                dict(type=VarlenAttnArgsToMessageHubHook)]\n'))
    work_dir = folder / 'first'
    result = run_train(hooked, '--work-dir', work_dir, '--cfg-options', *OPTIONS, 'train_cfg.max_iters=3',
                       'default_hooks.checkpoint.interval=3')
    adapter = folder / 'adapter'
    assert pth_to_hf.main([str(config), str(work_dir / 'iter_3.pth'), str(adapter)]) == 0
    return config, work_dir, adapter, result.stdout + result.stderr


def test_hf_checkpoint_hook_writes_what_pth_to_hf_writes(trained):
    _, work_dir, adapter, _ = trained
    written = load_file(work_dir / 'hf_model' / 'adapter_model.safetensors')
    converted = load_file(adapter / 'adapter_model.safetensors')
    assert sorted(written) == sorted(converted) and len(written) == 28
    for name in written:
        torch.testing.assert_close(written[name], converted[name], msg=name)
    assert (work_dir / 'hf_model' / 'tokenizer.json').is_file() and (work_dir / 'hf_model' / 'xft_config.py').is_file()


def test_varlen_hook_says_once_that_it_has_nothing_to_do(trained):
    _, _, _, log = trained
    assert log.count(NOTHING_TO_DO) == 1


def adapter_loss_on_both_rows(config, base_dir, adapter):
    """Plain peft: the adapter's mean token loss on the batch holding both rows."""
    cfg = Config.fromfile(str(config))
    dataset = DATASETS.build(dict(cfg.train_dataloader.dataset))
    batch = default_collate_fn([dataset[i] for i in range(len(dataset))])['data']
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32),
                                      str(adapter))
    with torch.no_grad():
        return float(model(input_ids=batch['input_ids'], attention_mask=batch['attention_mask'],
                           labels=batch['labels']).loss)


def test_xft_train_continues_from_the_adapter(tmp_path, trained, tiny_llama_dir):
    config, first_dir, adapter, _ = trained
    work_dir = tmp_path / 'continued'
    result = subprocess.run([sys.executable, '-m', 'xft.cli', 'train', str(config), '--work-dir', str(work_dir),
                             '--cfg-options', *OPTIONS, 'train_cfg.max_iters=1', f'model.peft_model={adapter}'],
                            capture_output=True, text=True, env=train_env(), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f'LoRA starts from the adapter {adapter} (28 tensors)' in result.stdout + result.stderr
    continued = logged_losses(work_dir)[1]
    fresh = logged_losses(first_dir)[1]  # a fresh LoRA starts as the base model (B = 0)
    assert continued == pytest.approx(adapter_loss_on_both_rows(config, tiny_llama_dir, adapter), abs=1e-5)
    assert continued < fresh - 0.05, (continued, fresh)


def test_an_adapter_of_another_rank_stops_xft_train_with_one_line(tmp_path, trained):
    """In this process (a Python start would cost more than the refusal)."""
    from xft import cli
    config, _, adapter, _ = trained
    output = io.StringIO()
    with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
        code = cli.main(['train', str(config), '--work-dir', str(tmp_path), '--cfg-options', 'model.lora.r=4',
                         f'model.peft_model={adapter}'])
    assert code != 0
    assert output.getvalue().strip().splitlines()[-1] == (
        f'xft train: model.peft_model={adapter}: the adapter has r=8; model.lora has r=4; '
        'make model.lora describe the adapter')
    assert 'Traceback' not in output.getvalue()
