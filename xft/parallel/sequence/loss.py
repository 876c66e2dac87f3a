"""The loss of a row split over a sequence-parallel group: its token-weighted mean.

Rank ``r`` of the group scores ``n_r`` of the row's ``N`` trained tokens, with a token-loss
sum ``S_r``. The row's loss is ``sum(S_r) / N``, the same number on every rank of the group
(the log shows it, and the NaN guard decides on it in step). Its gradient: each rank runs
backward on its own tokens only, and DDP (or ZeRO) then *averages* the ranks' gradients, so
rank ``r`` must produce ``sp * dS_r / N``: the ``sp`` ranks' average is then ``d(sum S_r) / N``,
the gradient of the row's mean, whatever the split of the trained tokens.

(XTuner's ``reduce_sequence_parallel_loss`` passes the gradient through unchanged, giving rank
``r`` the weight ``1 / n_r`` instead of ``sp / N``: exact only when every rank holds as many
trained tokens, which a long prompt or a padded tail breaks.)
"""
import torch
import torch.distributed as dist

from .groups import get_sequence_parallel_group


class _ReduceLoss(torch.autograd.Function):

    @staticmethod
    def forward(ctx, mean_loss, loss_scale, group):
        scale = torch.as_tensor(loss_scale, dtype=torch.float32, device=mean_loss.device)
        totals = torch.stack([mean_loss.detach().float() * scale, scale])
        dist.all_reduce(totals, group=group)
        total_tokens = totals[1].clamp(min=1.0)
        ctx.weight = scale * dist.get_world_size(group) / total_tokens
        return (totals[0] / total_tokens).to(mean_loss.dtype)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.weight.to(grad.dtype), None, None


def reduce_sequence_parallel_loss(mean_loss: torch.Tensor, loss_scale, sp_group=None) -> torch.Tensor:
    """The group's token-weighted mean of each rank's ``mean_loss`` over ``loss_scale`` tokens.

    ``mean_loss``: this rank's mean over its trained tokens (0 when it has none);
    ``loss_scale``: how many there are. Gradients as the module docstring says.
    """
    group = get_sequence_parallel_group() if sp_group is None else sp_group
    if group is None or dist.get_world_size(group) == 1:
        return mean_loss
    return _ReduceLoss.apply(mean_loss, loss_scale, group)
