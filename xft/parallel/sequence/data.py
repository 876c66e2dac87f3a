"""Rows made ready for splitting: lengths padded to a multiple of the sequence-parallel size."""
import torch

from .groups import get_sequence_parallel_world_size


def padded_length(length: int, sp: int) -> int:
    """The smallest multiple of ``sp`` at least ``length``.

    >>> padded_length(13, 4), padded_length(12, 4)
    (16, 12)
    """
    return -(-length // sp) * sp


def pad_for_sequence_parallel(tensor: torch.Tensor, padding_value, dim: int = -1, sp: int = None) -> torch.Tensor:
    """``tensor`` padded with ``padding_value`` along ``dim`` to a multiple of ``sp`` (the
    sequence-parallel size by default); returned as it is when it already is one.

    >>> pad_for_sequence_parallel(torch.tensor([[5, 6, 7]]), -100, sp=2)
    tensor([[   5,    6,    7, -100]])
    """
    sp = get_sequence_parallel_world_size() if sp is None else sp
    length = tensor.shape[dim]
    missing = padded_length(length, sp) - length
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor, tensor.new_full(shape, padding_value)], dim=dim)


def pad_cumulative_len_for_sequence_parallel(cumulative_len, width: int):
    """Sample boundaries of rows padded to ``width`` tokens: the padded tail becomes one more
    sample (so varlen kernels and block masks cover the whole row). Returns new tensors.

    >>> pad_cumulative_len_for_sequence_parallel([torch.tensor([0, 3, 7])], 8)
    [tensor([0, 3, 7, 8], dtype=torch.int32)]
    """
    padded = []
    for boundaries in cumulative_len:
        boundaries = torch.as_tensor(boundaries, dtype=torch.int32).cpu()
        if int(boundaries[-1]) < width:
            boundaries = torch.cat([boundaries, torch.tensor([width], dtype=torch.int32)])
        padded.append(boundaries)
    return padded
