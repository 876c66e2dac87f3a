"""LayerCheckpointer: recomputation gives the same grads as no checkpointing, replays
dropout masks, and trains layers whose input needs no grad (frozen embeddings)."""
import torch
from torch import nn

from xft.model.kernels import LayerCheckpointer


def block(seed=0, p=0.0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.Dropout(p), nn.GELU(), nn.Linear(16, 8))


def test_grads_equal_plain_backward_with_dropout():
    ref, ck = block(p=0.3), block(p=0.3)
    x = torch.randn(4, 8, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    torch.manual_seed(7)
    ref(x).pow(2).sum().backward()
    torch.manual_seed(7)
    out = LayerCheckpointer()(ck, x2)
    torch.manual_seed(123)  # backward must replay the forward's masks, not draw new ones
    out.pow(2).sum().backward()
    torch.testing.assert_close(x2.grad, x.grad)
    for p_ref, p in zip(ref.parameters(), ck.parameters()):
        torch.testing.assert_close(p.grad, p_ref.grad)


def test_frozen_input_still_trains_the_layer_and_passes_extra_args():
    layer = block()
    x = torch.randn(3, 8)  # like the output of a frozen embedding: no grad

    def fn(hidden, scale):
        return layer(hidden) * scale

    LayerCheckpointer()(fn, x, 2.0).sum().backward()
    assert all(p.grad is not None for p in layer.parameters())
    assert x.grad is None


def test_offload_flag_is_harmless_on_cpu():
    layer = block()
    x = torch.randn(3, 8, requires_grad=True)
    LayerCheckpointer(offload=True)(layer, x).sum().backward()
    assert x.grad is not None
