"""ThroughputHook: FLOP counts by hand, token and pair counting of padded and packed batches,
and a real mmengine Runner on the tiny Llama logging tokens/s (no MFU on CPU)."""
import dataclasses

import pytest
import torch
from mmengine.model import BaseModel
from mmengine.runner import Runner
from peft import LoraConfig, get_peft_model
from torch.utils.data import DataLoader
from transformers import AutoModelForCausalLM

from xft.engine.hooks.throughput_hook import (ModelShape, ThroughputHook, batch_tokens_and_pairs,
                                              peak_tflops, shape_of, step_flops)


def test_lora_backward_counts_no_weight_grads_for_frozen_weights():
    base = ModelShape(num_layers=2, hidden_size=8, vocab_size=10, linear_params_per_layer=100)
    full = dataclasses.replace(base, full_finetune=True)
    lora = dataclasses.replace(base, lora_params=30)
    n, pairs = 4, 10
    linears, head, attn = 2 * 100 * n * 2, 2 * 8 * 10 * n, 4 * pairs * 8 * 2
    assert step_flops(full, n, pairs)[0] == 3 * (linears + head) + 3 * attn
    assert step_flops(lora, n, pairs)[0] == 2 * (linears + head) + 3 * attn + 3 * 2 * 30 * n
    model, hardware = step_flops(dataclasses.replace(lora, checkpointing=True), n, pairs)
    assert hardware - model == linears + attn + 2 * 30 * n  # recomputation, head excluded


def test_padded_and_packed_batches():
    padded = {'input_ids': torch.ones(2, 5, dtype=torch.long),
              'attention_mask': torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]])}
    assert batch_tokens_and_pairs(padded) == (7, 15 + 3)
    packed = {'input_ids': torch.ones(1, 6, dtype=torch.long),
              'attention_mask': torch.ones(1, 6, dtype=torch.long),
              'cumulative_len': [torch.tensor([0, 2, 6])]}
    assert batch_tokens_and_pairs(packed) == (6, 3 + 10)  # samples of 2 and 4 tokens


def test_peak_lookup():
    assert peak_tflops('NVIDIA H100 80GB HBM3') == 989.0
    assert peak_tflops('NVIDIA A100-SXM4-80GB') == 312.0
    assert peak_tflops('cpu') is None


class ToySFT(BaseModel):
    """The shape of SupervisedFinetune that the hook reads: an `llm` attribute."""

    def __init__(self, llm):
        super().__init__()
        self.llm = llm

    def forward(self, data, data_samples=None, mode='loss'):
        out = self.llm(input_ids=data['input_ids'], attention_mask=data['attention_mask'],
                       labels=data['input_ids'])
        return {'loss': out.loss}


def collate(rows):
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r)
        mask[i, :len(r)] = 1
    return {'data': {'input_ids': ids, 'attention_mask': mask}, 'data_samples': None}


def test_runner_logs_tokens_per_second(tiny_llama_dir, tmp_path):
    llm = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={'use_reentrant': False})
    llm = get_peft_model(llm, LoraConfig(r=4, lora_alpha=8, target_modules=['q_proj', 'v_proj']))
    rows = [[5, 6, 7, 8, 9], [5, 6], [7, 8, 9], [10, 11, 12, 13]]
    hook = ThroughputHook()
    runner = Runner(model=ToySFT(llm), work_dir=str(tmp_path),
                    train_dataloader=DataLoader(rows, batch_size=2, collate_fn=collate),
                    train_cfg=dict(by_epoch=False, max_iters=2),
                    optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.01)),
                    custom_hooks=[hook], default_hooks=dict(logger=dict(type='LoggerHook',
                                                                        interval=1)),
                    default_scope='mmengine')
    runner.train()
    shape = hook.shape
    cfg = llm.config
    kv_out = cfg.num_key_value_heads * cfg.hidden_size // cfg.num_attention_heads
    per_layer = 4 * (64 + 64) + 4 * (64 + kv_out)  # r=4 adapters on q_proj and v_proj
    assert shape.lora_params == 2 * per_layer and shape.checkpointing
    assert not shape.full_finetune and shape.num_layers == 2
    hub = runner.message_hub
    seconds = hub.get_scalar('train/time').current()
    # The last batch holds rows 3 and 4: 3 + 4 real tokens.
    assert hub.get_scalar('train/tokens_per_sec').current() == pytest.approx(7 / seconds)
    expected_tflops = step_flops(shape, 7, 6 + 10)[1] / seconds / 1e12
    assert hub.get_scalar('train/tflops').current() == pytest.approx(expected_tflops)
    assert not any(key.startswith('train/mfu') for key in hub.log_scalars)  # no CUDA: no peak
    log = (next(tmp_path.rglob('*.log'))).read_text()
    assert 'tokens_per_sec' in log


def test_shape_of_full_finetune(tiny_llama_dir):
    llm = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    shape = shape_of(ToySFT(llm))
    assert shape.full_finetune and shape.lora_params == 0 and not shape.checkpointing


def test_a_zoo_config_logs_tokens_per_second_in_its_log_line(tmp_path, tiny_llama_dir, shared_data):
    """A zoo config as shipped (no ThroughputHook in it) through `xft train`: `train` adds the
    hook, and each logged line carries tokens/s beside loss and lr."""
    import contextlib
    import io
    import json
    import re
    from pathlib import Path

    from helpers.zoo import small_data_files, tiny_config_text
    from xft import cli

    shipped = Path(__file__).resolve().parents[1] / 'configs/llama/llama2_7b/llama2_7b_qlora_alpaca_e3.py'
    assert 'ThroughputHook' not in shipped.read_text()
    data = small_data_files(shared_data, tmp_path / 'data')['alpaca']
    config = tmp_path / shipped.name
    config.write_text(tiny_config_text(shipped, tiny_llama_dir, data, max_length=128))
    work_dir = tmp_path / 'run'
    output = io.StringIO()
    with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
        code = cli.main(['train', str(config), '--work-dir', str(work_dir), '--cfg-options',
                         'train_cfg.max_epochs=None', 'train_cfg.max_iters=2',
                         'default_hooks.logger.interval=1', 'custom_hooks.1.max_new_tokens=4',
                         'train_dataloader.dataset.max_dataset_length=16',
                         'train_dataloader.dataset.map_num_proc=1'])
    assert code == 0, output.getvalue()[-3000:]
    log = next(work_dir.glob('*/*.log')).read_text()
    lines = [line for line in log.splitlines() if 'Iter(train)' in line]
    assert len(lines) == 2
    for line in lines:
        assert re.search(r'lr: \S+', line) and re.search(r'loss: \d', line), line
        rate = float(re.search(r'tokens_per_sec: ([\d.]+)', line).group(1))
        assert rate > 0, line
    rows = [json.loads(row) for row in next(work_dir.glob('*/vis_data/scalars.json')).read_text().splitlines()]
    assert [row['iter'] for row in rows if 'tokens_per_sec' in row] == [1, 2]
