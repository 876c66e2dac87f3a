"""Whether the fused Triton kernels can run on a tensor.

Triton is optional: the CPU development and CI machines have none, and every op in this
package then falls back to its plain torch reference. A tensor takes the Triton path only
when it lives on a CUDA device and Triton imports.
"""
import torch

try:  # Triton ships with CUDA builds of torch only.
    import triton  # noqa: F401
    import triton.language as tl  # noqa: F401
except ImportError:  # pragma: no cover - depends on the machine
    triton = None
    tl = None


def autocast_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype a plain linear layer would compute `x` in: autocast's when it is on.

    The fused ops switch autocast off inside (their in-place matmul-adds need one dtype) and
    cast to this themselves.

    >>> autocast_dtype(torch.zeros(1))
    torch.float32
    >>> with torch.autocast('cpu', dtype=torch.bfloat16):
    ...     autocast_dtype(torch.zeros(1))
    torch.bfloat16
    """
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return x.dtype


def use_triton(*tensors: torch.Tensor) -> bool:
    """True when Triton imports and every tensor lives on a CUDA device.

    >>> use_triton(torch.zeros(2))
    False
    """
    return triton is not None and all(t.is_cuda for t in tensors)
