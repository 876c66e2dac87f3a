"""mmengine's DeepSpeedOptimWrapper with the optimizer step outside autograd.

ZeRO-1/2 gathers the updated partitions with ``all_gather_into_tensor`` into views of its
flat buffers; on gloo (CPU, torch 2.13) that copy runs through autograd and fails with
"Output 0 of Split is a view and is being modified inplace" when grad mode is on. An
optimizer step never needs autograd, so it runs under ``torch.no_grad()``.
"""
import torch
from mmengine.registry import OPTIM_WRAPPERS


def _deepspeed_optim_wrapper():
    from mmengine._strategy.deepspeed import DeepSpeedOptimWrapper
    return DeepSpeedOptimWrapper


@OPTIM_WRAPPERS.register_module()
class NoGradStepDeepSpeedOptimWrapper(_deepspeed_optim_wrapper()):
    """``optim_wrapper = dict(type='NoGradStepDeepSpeedOptimWrapper', optimizer=...)``."""

    def step(self, **kwargs):
        with torch.no_grad():
            self.model.step()
