"""Several processes through mmengine: data parallelism on gloo (CPU) against one process,
and the DeepSpeed/slurm wiring that needs no accelerator to check.

Two processes with one micro-batch each must train exactly like one process with two
micro-batches per step: the ranks' gradients are averaged (xft's StepDataParallel, the default
for LoRA, or torch's DDP), accumulation averages them too, and the distributed sampler hands
rank r the samples r, r+2, ... of the same shuffled order (one sample per micro-batch, so the
groups are the same). Rows are packed (all of one length), so that the layers' graphs, forced
onto the CPU, replay from the second micro-batch on."""
import json
import shutil
import sys

import pytest
import torch
from helpers.data_parallel import with_cpu_graphs
from helpers.paths import ALPACA_SUBSET
from helpers.training import free_port, logged_losses, run_launched, train_env, train_in_process, write_tiny_config

from xft.engine.checkpoint import load_checkpoint_file
from xft.engine.deepspeed import fill_auto_fields, read_deepspeed_config, shipped_configs, use_deepspeed
from xft.engine.deepspeed.strategy import WorldSizeCheckedDeepSpeedStrategy, saved_world_size
from xft.engine.device import slurm_environment
from xft.utils.errors import ConfigError, UserError

# Dropout off: two ranks draw the same dropout masks, one process draws two different ones.
COMMON = ('train_dataloader.batch_size=1', 'model.lora.lora_dropout=0.0', 'param_scheduler.0.start_factor=1.0',
          'train_dataloader.dataset.max_dataset_length=24', 'log_processor.window_size=1',
          'default_hooks.checkpoint.interval=100')
# Packed rows all have one length: the layers' graphs (forced onto the CPU) replay from the
# second micro-batch on. Unpacked rows of 24 lengths would keep them eager.
PACKED = ('train_dataloader.dataset.pack_to_max_length=True', )


@pytest.fixture(scope='module')
def one_process_run(tmp_path_factory, tiny_llama_dir):
    """The one-process reference: 12 micro-batches of one packed row, two per optimizer step
    (trained in this process; the distributed runs below are the ones that need processes)."""
    folder = tmp_path_factory.mktemp('distributed')
    config = write_tiny_config(folder, tiny_llama_dir, ALPACA_SUBSET)
    work_dir = folder / 'single'
    train_in_process(config, '--work-dir', work_dir, '--cfg-options', *COMMON, *PACKED,
                     'optim_wrapper.accumulative_counts=2', 'train_cfg.max_iters=12')
    return config, work_dir, logged_losses(work_dir)


def run_processes(config, work_dir, *extra, options=(), processes=2, iterations=12):
    """``NPROC_PER_NODE=N xft train ...``: the CLI starts torchrun with ``--launcher pytorch``.
    The same data and optimizer steps on any number of processes: ``iterations`` samples of one
    process, 2 per step."""
    env = train_env(NPROC_PER_NODE=str(processes), PORT=str(free_port()))
    accumulation, iterations = 2 // processes, iterations // processes
    return run_launched([sys.executable, '-m', 'xft.cli', 'train', config, '--work-dir', work_dir,
                         *extra, '--cfg-options', *COMMON, f'optim_wrapper.accumulative_counts={accumulation}',
                         f'train_cfg.max_iters={iterations}', *options], env=env)


def train_two_processes(config, work_dir, *extra, options=(), processes=2):
    result = run_processes(config, work_dir, *extra, options=options, processes=processes)
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stdout + result.stderr


def assert_matches_one_process(work_dir, single: dict, tolerance: float) -> None:
    """Rank 0 logs its own micro-batch: sample 2k-1 of the shared order, trained on the same
    weights as the one-process run's micro-batch 2k-1."""
    distributed = logged_losses(work_dir)
    assert sorted(distributed) == list(range(1, 7))
    for step in range(1, 7):
        assert distributed[step] == pytest.approx(single[2 * step - 1], abs=tolerance), step


def assert_same_weights(single_dir, distributed_dir) -> None:
    one = load_checkpoint_file(single_dir / 'iter_12.pth')['state_dict']
    two = load_checkpoint_file(distributed_dir / 'iter_6.pth')['state_dict']
    assert sorted(one) == sorted(two) and len(one) == 28
    for name in one:
        torch.testing.assert_close(two[name], one[name], atol=2e-6, rtol=1e-4, msg=name)
    # The control: LoRA's B matrices start at zero and moved far beyond the tolerance.
    assert min(one[name].abs().max().item() for name in one if 'lora_B' in name) > 1e-3


@pytest.fixture(scope='module')
def step_data_parallel_run(one_process_run):
    """Two processes under xft train's default wrapper for LoRA, the layers replaying graphs."""
    config, single_dir, _ = one_process_run
    work_dir = single_dir.parent / 'step_data_parallel'
    return work_dir, train_two_processes(with_cpu_graphs(config), work_dir, options=PACKED)


def test_two_gloo_processes_train_like_one_process_with_twice_the_accumulation(step_data_parallel_run,
                                                                               one_process_run):
    _, single_dir, single = one_process_run
    work_dir, log = step_data_parallel_run
    assert 'gloo process group: rank 1 of 2' in log
    assert 'StepDataParallel: 2 ranks; 28 trainable tensors' in log and 'CUDA graphs stay on' in log
    # 6 micro-batches of 2 layers, forward and backward, the first one warming up.
    assert 'graph replays: 20' in log and 'CUDA graphs are off' not in log
    # Rank 0 preprocesses the data into the work dir's cache; rank 1 waits and loads it.
    assert (work_dir / 'processed_train_dataset').is_dir()
    assert log.count('processed dataset saved to') == 1
    assert_matches_one_process(work_dir, single, tolerance=2e-5)
    assert_same_weights(single_dir, work_dir)


def test_torch_ddp_trains_like_one_process_and_keeps_the_eager_layers(tmp_path, one_process_run):
    """A config may still name torch's DDP (mmengine's wrapper): same training, no graphs."""
    config, single_dir, single = one_process_run
    work_dir = tmp_path / 'ddp'
    log = train_two_processes(with_cpu_graphs(config), work_dir,
                              options=(*PACKED, 'model_wrapper_cfg.type=MMDistributedDataParallel'))
    assert 'StepDataParallel: 2 ranks' not in log and 'graph replays: 0' in log
    assert 'CUDA graphs are off: a process group exists' in log
    assert_matches_one_process(work_dir, single, tolerance=2e-5)
    assert_same_weights(single_dir, work_dir)


def test_a_resume_with_another_process_count_is_refused_in_one_line(tmp_path, step_data_parallel_run,
                                                                     one_process_run):
    config, _, _ = one_process_run
    saved_dir, _ = step_data_parallel_run
    work_dir = tmp_path / 'resume'
    work_dir.mkdir()
    shutil.copy(saved_dir / 'iter_6.pth', work_dir / 'iter_6.pth')
    (work_dir / 'last_checkpoint').write_text(str(work_dir / 'iter_6.pth'))
    with pytest.raises(UserError) as refused:
        train_in_process(config, '--work-dir', work_dir, '--resume', 'auto', '--cfg-options', *COMMON, *PACKED,
                         'optim_wrapper.accumulative_counts=2', 'train_cfg.max_iters=12')
    message = str(refused.value)
    assert '\n' not in message
    assert message.startswith(f'{work_dir / "iter_6.pth"}: saved by 2 processes, this run has 1; resuming with '
                              'another process count is refused')
    assert message.endswith(f'Resume with 2 processes, or start a new run from its weights with '
                            f'--cfg-options load_from={work_dir / "iter_6.pth"}')
    # Its weights still start a new run on one process.
    run = train_in_process(config, '--work-dir', tmp_path / 'fresh', '--cfg-options', *COMMON, *PACKED,
                           f'load_from={work_dir / "iter_6.pth"}', 'train_cfg.max_iters=1')
    assert 'Load checkpoint from' in run.log


def test_deepspeed_zero2_on_two_gloo_processes_trains_like_one_process(tmp_path, one_process_run):
    # The plain Runner run is the reference: LoRA starts from the seed alone
    # (xft.model.lora.attach_lora), though FlexibleRunner builds the model after other draws.
    config, _, single = one_process_run
    zero_dir = tmp_path / 'zero2'
    log = train_two_processes(config, zero_dir, '--deepspeed', 'deepspeed_zero2', options=PACKED)
    assert ('DeepSpeed ZeRO-2 (deepspeed_zero2): micro batch 1, accumulation 1, clipping 1.0, '
            'fp16 False, bf16 False') in log
    assert_matches_one_process(zero_dir, single, tolerance=2e-5)
    assert single[11] < single[1] - 0.01, 'the weights did not move: the comparison would prove nothing'
    # A DeepSpeed checkpoint is a folder, published by rename like a file.
    assert (zero_dir / 'iter_6.pth').is_dir() and (zero_dir / 'last_checkpoint').read_text().endswith('iter_6.pth')
    # It holds one optimizer partition per rank: a resume on one process is refused.
    assert saved_world_size(zero_dir / 'iter_6.pth') == 2
    strategy = WorldSizeCheckedDeepSpeedStrategy(config=read_deepspeed_config('deepspeed_zero2'),
                                                  work_dir=str(tmp_path / 'strategy'))
    with pytest.raises(UserError, match='iter_6.pth: saved by 2 processes, this run has 1; resuming'):
        strategy.resume(str(zero_dir / 'iter_6.pth'))


def test_deepspeed_auto_fields_come_from_the_xft_config():
    assert shipped_configs() == ['deepspeed_zero1', 'deepspeed_zero2', 'deepspeed_zero2_offload',
                                 'deepspeed_zero3', 'deepspeed_zero3_offload']
    cfg = dict(train_dataloader=dict(batch_size=4),
               optim_wrapper=dict(type='AmpOptimWrapper', dtype='float16', accumulative_counts=16,
                                  clip_grad=dict(max_norm=0.5)))
    for name in shipped_configs():
        raw = read_deepspeed_config(name)
        assert 'auto' in json.dumps(raw)
        filled = fill_auto_fields(raw, cfg, cuda=True)
        assert 'auto' not in json.dumps(filled), name
        assert (filled['train_micro_batch_size_per_gpu'], filled['gradient_accumulation_steps'],
                filled['gradient_clipping']) == (4, 16, 0.5)
        assert (filled['fp16']['enabled'], filled['bf16']['enabled']) == (True, False)
        assert filled['zero_optimization']['stage'] == int(name[len('deepspeed_zero')])
    # On CPU, or with the plain OptimWrapper, training stays in the model's dtype.
    cpu = fill_auto_fields(read_deepspeed_config('deepspeed_zero2'), cfg, cuda=False)
    assert (cpu['fp16']['enabled'], cpu['bf16']['enabled']) == (False, False)
    assert 'offload_param' in read_deepspeed_config('deepspeed_zero3_offload')['zero_optimization']


def test_deepspeed_values_that_contradict_the_config_are_refused(tmp_path):
    explicit = dict(read_deepspeed_config('deepspeed_zero2'), train_micro_batch_size_per_gpu=8)
    cfg = dict(train_dataloader=dict(batch_size=4), optim_wrapper=dict(type='OptimWrapper'))
    with pytest.raises(ConfigError, match='train_micro_batch_size_per_gpu=8 contradicts '
                                          'train_dataloader.batch_size=4'):
        fill_auto_fields(explicit, cfg, cuda=False)
    custom = tmp_path / 'mine.json'
    custom.write_text(json.dumps(dict(explicit, train_micro_batch_size_per_gpu=4)))
    assert fill_auto_fields(read_deepspeed_config(str(custom)), cfg, cuda=False)['gradient_accumulation_steps'] == 1
    with pytest.raises(ConfigError, match='no shipped config of that name'):
        read_deepspeed_config('deepspeed_zero9')


def test_deepspeed_needs_a_launcher():
    from mmengine.config import Config
    cfg = Config(dict(launcher='none', train_dataloader=dict(batch_size=1),
                      optim_wrapper=dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=1e-3))))
    with pytest.raises(ConfigError, match='--deepspeed needs several processes: start with NPROC_PER_NODE=N'):
        use_deepspeed(cfg, 'deepspeed_zero2')
    cfg.launcher = 'pytorch'
    use_deepspeed(cfg, 'deepspeed_zero3')
    assert cfg.runner_type == 'FlexibleRunner' and cfg.strategy.config['zero_optimization']['stage'] == 3
    assert cfg.strategy.type == 'WorldSizeCheckedDeepSpeedStrategy'
    assert cfg.optim_wrapper == dict(type='NoGradStepDeepSpeedOptimWrapper', optimizer=dict(type='AdamW', lr=1e-3))


def test_slurm_variables_become_torch_distributed_ones():
    env = slurm_environment({'SLURM_PROCID': '5', 'SLURM_NTASKS': '8', 'SLURM_LOCALID': '1',
                             'SLURM_NODELIST': 'gpu[01-02]', 'MASTER_PORT': '29700'}, hostnames=['gpu01', 'gpu02'])
    assert env == {'RANK': '5', 'WORLD_SIZE': '8', 'LOCAL_RANK': '1', 'MASTER_ADDR': 'gpu01', 'MASTER_PORT': '29700'}
    with pytest.raises(UserError, match='SLURM_PROCID is not set; start the job with srun'):
        slurm_environment({})
