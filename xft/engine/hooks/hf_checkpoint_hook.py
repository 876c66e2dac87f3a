"""HFCheckpointHook: at the end of training, the trained weights as a Hugging Face folder.

What ``xft convert pth_to_hf`` writes from a checkpoint, written from the model in memory
through the same functions (``xft.model.export.export_weights`` and
``save_tokenizer_and_config``): a PEFT adapter folder for LoRA/QLoRA, a full model folder (with
tokenizer) for full fine-tuning, and the training config beside it. The default folder is
``WORK_DIR/hf_model`` (XTuner's). A run stopped before its last iteration (a signal) writes
nothing and says so: its checkpoint is what to continue from.

Config (XTuner's)::

    custom_hooks = [dict(type=HFCheckpointHook)]             # or out_dir='path/to/folder'
"""
import os.path as osp

from mmengine.dist import get_rank
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper


def _partitioned_engine(runner):
    """The DeepSpeed engine when ZeRO-3 partitions the weights (else None)."""
    engine = getattr(runner.model, 'model', None)
    partitioned = getattr(engine, 'zero_optimization_partition_weights', None)
    return engine if callable(partitioned) and partitioned() else None


def trained_state_dict(runner) -> dict:
    """The trained weights (``llm.``-prefixed, as in a checkpoint), whole, on rank 0.

    ZeRO-3 gathers them from every rank (a collective: all ranks call this); elsewhere each
    rank holds them whole and ``SupervisedFinetune.state_dict`` keeps only the trained ones.
    """
    engine = _partitioned_engine(runner)
    if engine is not None:
        state = engine._zero3_consolidated_16bit_state_dict(exclude_frozen_parameters=True)
    else:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        state = model.state_dict()
    return {key: value.detach().cpu() for key, value in (state or {}).items()}


class HFCheckpointHook(Hook):
    """Write the trained model as an HF folder once training has finished."""

    # mmengine's table: lower runs first. 95 (XTuner's): after the checkpoint hook (VERY_LOW =
    # 90), so the run's last checkpoint is already safe if the export fails.
    priority = 95

    def __init__(self, out_dir=None):
        self.out_dir = out_dir

    def after_run(self, runner) -> None:
        from xft.model.export import export_weights, llm_state_dict, save_tokenizer_and_config

        if runner.iter < runner.max_iters:
            print_log(f'HFCheckpointHook: the run stopped at iteration {runner.iter} of {runner.max_iters}; '
                      'no Hugging Face folder written (continue from its checkpoint)', logger='current')
            return
        state = trained_state_dict(runner)
        if get_rank() != 0:
            return
        out_dir = self.out_dir or osp.join(runner.work_dir, 'hf_model')
        lora = export_weights(runner.cfg, llm_state_dict(state), out_dir)
        save_tokenizer_and_config(runner.cfg, out_dir, lora)
        print_log(f'HFCheckpointHook: wrote {"a PEFT adapter" if lora else "a full model"} to {out_dir}',
                  logger='current')
