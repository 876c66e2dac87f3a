"""benchmarks/bench_multi_gpu.py on the CPU: the configs it writes, the commands it starts, the
numbers it derives, and its checks run for real (gloo, two processes, the tiny model); the GPU
run uses the same code on the 7B-shaped model."""
import json
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / 'benchmarks'))
import bench_multi_gpu as multi  # noqa: E402


def parts_2_to_5(text):
    return text[text.index('PART 2'):]


@pytest.mark.parametrize('mode', ['qlora', 'lora', 'full'])
def test_the_configs_change_only_in_part1(tmp_path, mode):
    path, options = multi.write_config(mode, 8192, '/models/x', '/data/a.json', tmp_path)
    text, shipped = path.read_text(), multi.CONFIGS[mode].read_text()
    assert parts_2_to_5(text) == parts_2_to_5(shipped)
    assert "pretrained_model_name_or_path = '/models/x'" in text and 'max_length = 8192' in text
    if mode == 'full':
        assert options == [] and 'lora' not in parts_2_to_5(text).lower().replace('lora_', '')
    else:  # adapter dropout off, in PART 1 where the config has the knob, else as an option
        assert ('lora_dropout = 0.0' in text) != (options == ['model.lora.lora_dropout=0.0'])
    assert float(multi.config_lr(path)) == {'qlora': 2e-4, 'lora': 2e-4, 'full': 2e-5}[mode]


def test_commands_one_gpu_plain_several_through_torchrun():
    options = ['a=1']
    plain = multi.train_command('c.py', 'w', 1, 'ddp', options)
    assert plain[1].endswith('tools/train.py') and '--launcher' not in plain and plain[-2:] == ['--cfg-options', 'a=1']
    two = multi.train_command('c.py', 'w', 2, 'ddp', options)
    assert two[1:5] == ['-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2']
    assert two[two.index('--launcher') + 1] == 'pytorch' and '--deepspeed' not in two
    zero = multi.train_command('c.py', 'w', 1, 'zero3_offload', options)  # ZeRO on one process: torchrun too
    assert '--nproc_per_node=1' in zero and zero[zero.index('--deepspeed') + 1] == 'deepspeed_zero3_offload'
    torch_ddp = multi.train_command('c.py', 'w', 2, 'ddp_torch', options)
    assert torch_ddp[-1] == 'model_wrapper_cfg.type=MMDistributedDataParallel'
    env = multi.devices_env({'X': '1'}, 2, cuda=True)
    assert env['CUDA_VISIBLE_DEVICES'] == '0,1' and env['NCCL_NVLS_ENABLE'] == '0'
    assert env['TORCH_SYMM_MEM_DISABLE_MULTICAST'] == '1' and env['NVSHMEM_DISABLE_NVLS'] == '1'
    assert 'log_processor.window_size=1' in multi.run_options(32, 16)


def test_a_speed_row_reads_rank_0s_scalars(tmp_path, monkeypatch):
    """Two runs (1 and 2 GPUs) whose logs are written by a stand-in for the training command."""
    args = multi.argparse.Namespace(model_dir='/m', data='/d.json', dtype=None, work_root=str(tmp_path / 'runs'),
                                    warmup=1, measured=2, accumulation=2, extra_options=[], run_timeout_s=10)
    ctx = dict(folder=tmp_path, env={}, cuda=False, logs=tmp_path / 'logs.txt', gpu='cpu', day='today')
    speeds = {1: 1000.0, 2: 950.0}

    def fake_run(command, env, timeout, log_file, title):
        work_dir = Path(command[command.index('--work-dir') + 1])
        world = 2 if '--nproc_per_node=2' in command else 1
        scalars = work_dir / '20261207_000000' / 'vis_data' / 'scalars.json'
        scalars.parent.mkdir(parents=True)
        rows = [dict(iter=i, time=1.0, tokens_per_sec=speeds[world] / (10 if i == 1 else 1),
                     peak_gib=6.0 + 0.1 * world, loss=2.0) for i in (1, 2, 3)]
        scalars.write_text(''.join(json.dumps(r) + '\n' for r in rows))
        log = 'StepDataParallel: 2 ranks; ...; CUDA graphs stay on' if world == 2 else 'Distributed training is not used'
        return 'rc=0', log, 1.0

    monkeypatch.setattr(multi, 'run', fake_run)
    one = multi.speed_row(args, ctx, 'ddp', 'lora', 2048, 1)
    two = multi.speed_row(args, ctx, 'ddp', 'lora', 2048, 2)
    multi.add_scaling(one, one)
    multi.add_scaling(two, one)
    assert (one['tokens_per_s'], one['scaling_efficiency'], one['wrapper']) == (1000.0, 1.0, 'none')
    assert two['tokens_per_s_per_gpu'] == 950.0 and two['tokens_per_s'] == 1900.0  # the warm-up row is left out
    assert two['scaling_efficiency'] == 0.95 and two['peak_gib_vs_1gpu'] == pytest.approx(0.1)
    assert (two['strategy'], two['world_size'], two['cuda_graphs'], two['wrapper']) == ('ddp', 2, 'on',
                                                                                         'StepDataParallel')
    table = multi.summarize([one, two], tmp_path / 'table.md')
    assert '| ddp | lora | 2,048 | 2 | 1,900 | 950 | 95.0% | 6.20 | +0.10 | on | rc=0  |' in table


def test_weights_are_compared_relative_to_each_tensor():
    one = {'a.lora_B': torch.tensor([1.0, -2.0]), 'a.lora_A': torch.tensor([0.5, 0.5])}
    many = {'a.lora_B': torch.tensor([1.0, -2.02]), 'a.lora_A': torch.tensor([0.5, 0.5])}
    compared = multi.compare_weights(one, many)
    assert compared['max_rel_weight_diff'] == pytest.approx(0.01, rel=1e-4)
    assert compared['tensors'] == 2 and compared['lora_B_min_max_abs'] == 2.0


@pytest.mark.kit
def test_the_checks_on_two_gloo_processes(tmp_path, shared_data):
    out = tmp_path / 'out'
    # Only the equality phase: the resume refusal it would add is tests/test_distributed.py's
    # (the same code path), and each more launch costs the suite ~15 s of both cores.
    code = multi.main(['--smoke', '--out', str(out), '--work-root', str(tmp_path / 'runs'), '--phases', 'equality',
                       '--data', str(shared_data / 'alpaca' / 'alpaca_data_subset.json')])
    records = [json.loads(line) for line in next(out.glob('multi_gpu_*.jsonl')).read_text().splitlines()]
    assert code == 0, (out / 'multi_gpu_logs.txt').read_text()[-3000:]
    equality, = records
    # float32 on the CPU: two processes make exactly the steps of one with twice the accumulation
    # (each rank's gradient is twice its share, averaged: powers of two, no rounding).
    assert equality['check'] == 'equality' and equality['passed'] and equality['compared_losses'] == 4
    assert equality['max_loss_diff'] == 0.0 and equality['max_rel_weight_diff'] == 0.0
    assert equality['lora_B_min_max_abs'] > 1e-4  # the weights moved
