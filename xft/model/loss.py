"""Causal-LM cross-entropy straight from hidden states, never holding the full fp32 logits.

`model(..., labels=...)` in transformers builds logits for every token (tokens x vocab in the
compute dtype), upcasts them to fp32 and keeps both for backward: at 8k tokens and a 32k
vocabulary that is 1.5 GiB, and at 128k tokens 24 GiB. `linear_cross_entropy` walks the tokens
in chunks: per chunk it forms the logits, takes the loss and, at once, the gradient of the loss
with respect to the chunk's hidden states (softmax minus one-hot, times the head weight), then
drops the logits. Backward only scales the stored gradient. Memory beyond the inputs: one
chunk of logits plus a gradient the size of the hidden states.

Loss convention equals transformers' `ForCausalLMLoss`: the prediction at position t is scored
against `labels[t + 1]`, tokens labelled `IGNORE_INDEX` are skipped, and the loss is the mean
over scored tokens (or the sum divided by `num_items_in_batch` when given).
"""
from typing import Optional, Tuple

import torch
from torch.nn import functional as F

from xft.utils.constants import IGNORE_INDEX

from .kernels.backend import autocast_dtype

# Rows of logits formed at once: an eighth of the batch's tokens, between 256 and 1024.
# 1024 x 32k vocab is 128 MiB in fp32 (plus its bf16 source and grad), small next to a long
# row's other buffers; short rows take smaller chunks, because there the loss's buffers come
# on top of the CUDA-graph pool (xft.model.kernels.graphs), and 256-row matmuls still run
# at speed.
MIN_CHUNK_TOKENS, MAX_CHUNK_TOKENS = 256, 1024
DEFAULT_CHUNK_TOKENS = None


def chunk_tokens_for(n_tokens: int) -> int:
    """The default chunk for a batch of `n_tokens` tokens.

    >>> chunk_tokens_for(2048), chunk_tokens_for(4096), chunk_tokens_for(65536)
    (256, 512, 1024)
    """
    return max(MIN_CHUNK_TOKENS, min(MAX_CHUNK_TOKENS, n_tokens // 8))


def shift_labels(labels: torch.Tensor) -> torch.Tensor:
    """Labels aligned with the positions that predict them (last position scores nothing).

    >>> shift_labels(torch.tensor([[5, 6, 7]]))
    tensor([[   6,    7, -100]])
    """
    return F.pad(labels[..., 1:], (0, 1), value=IGNORE_INDEX)


def count_trained_tokens(labels: torch.Tensor) -> int:
    """How many positions of a (batch, seq) label tensor carry loss once shifted: the
    denominator of the mean causal-LM loss, and what an optimizer step's token count sums.
    The first label of each row is never scored (nothing predicts it).

    >>> count_trained_tokens(torch.tensor([[5, 6, -100, 7], [-100, -100, 8, -100]]))
    3
    """
    return int((labels[..., 1:] != IGNORE_INDEX).sum())


class _LinearCrossEntropyFn(torch.autograd.Function):

    @staticmethod
    def forward(ctx, hidden, weight, targets, divisor, chunk_tokens):
        device_type = hidden.device.type
        # Under autocast the head runs in autocast's dtype, as nn.Linear would; autocast is
        # then switched off so the chunked matmuls writing into preallocated outputs see
        # one dtype.
        dtype = autocast_dtype(hidden)
        with torch.autocast(device_type, enabled=False):
            loss, grad_hidden, grad_weight = _chunked_loss_and_grads(
                hidden, weight, targets, chunk_tokens, dtype,
                want_hidden=ctx.needs_input_grad[0], want_weight=ctx.needs_input_grad[1])
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.divisor = divisor
        ctx.dtypes = (hidden.dtype, weight.dtype)
        return loss / divisor

    @staticmethod
    def backward(ctx, grad_loss):
        grad_hidden, grad_weight = ctx.saved_tensors
        scale = grad_loss / ctx.divisor
        gh = gw = None
        if grad_hidden is not None:
            gh = (grad_hidden * scale.to(grad_hidden.dtype)).to(ctx.dtypes[0])
        if grad_weight is not None:
            gw = (grad_weight * scale).to(ctx.dtypes[1])
        return gh, gw, None, None, None


def _chunked_loss_and_grads(hidden, weight, targets, chunk_tokens, dtype, want_hidden,
                            want_weight):
    """Sum of token losses, and its grads w.r.t. hidden (in `dtype`) and weight (fp32)."""
    n_tokens = hidden.shape[0]
    w = weight.to(dtype)
    loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
    grad_hidden = torch.empty(hidden.shape, dtype=dtype,
                              device=hidden.device) if want_hidden else None
    grad_weight = torch.zeros(weight.shape, dtype=torch.float32,
                              device=weight.device) if want_weight else None
    for start in range(0, n_tokens, chunk_tokens):
        h = hidden[start:start + chunk_tokens].to(dtype)
        t = targets[start:start + chunk_tokens]
        logits = (h @ w.t()).float()  # the rounding transformers' head applies
        valid = t != IGNORE_INDEX
        safe_t = torch.where(valid, t, 0)
        lse = torch.logsumexp(logits, dim=-1)
        picked = logits.gather(1, safe_t[:, None]).squeeze(1)
        loss += torch.where(valid, lse - picked, 0.0).sum()
        if not (want_hidden or want_weight):
            continue
        # d(sum of token losses)/d(logits) = softmax - onehot, zero on ignored rows.
        grad_logits = logits.sub_(lse[:, None]).exp_()
        grad_logits[torch.arange(len(t), device=t.device), safe_t] -= 1.0
        grad_logits.mul_(valid[:, None])
        grad_logits = grad_logits.to(dtype)
        if want_hidden:
            torch.matmul(grad_logits, w, out=grad_hidden[start:start + chunk_tokens])
        if want_weight:
            grad_weight.addmm_(grad_logits.t().float(), h.float())
    return loss, grad_hidden, grad_weight


def linear_cross_entropy(hidden: torch.Tensor,
                         weight: torch.Tensor,
                         labels: torch.Tensor,
                         num_items_in_batch: Optional[int] = None,
                         chunk_tokens: Optional[int] = DEFAULT_CHUNK_TOKENS) -> Tuple[torch.Tensor, int]:
    """Mean causal-LM loss of `hidden @ weight.T` against `labels`, chunked over tokens.

    hidden: (batch, seq, dim) final hidden states; weight: (vocab, dim) the LM head;
    labels: (batch, seq) token ids with `IGNORE_INDEX` where no loss falls (not yet shifted).
    Returns `(loss, n_tokens)`, n_tokens being the number of scored tokens.

    >>> h, w = torch.randn(1, 5, 8), torch.randn(11, 8)
    >>> labels = torch.tensor([[1, 2, 3, -100, 4]])
    >>> loss, n = linear_cross_entropy(h, w, labels, chunk_tokens=2)
    >>> ref = F.cross_entropy((h @ w.T)[0, :-1], labels[0, 1:], ignore_index=-100)
    >>> n, bool(torch.allclose(loss, ref))
    (3, True)
    """
    targets = shift_labels(labels).reshape(-1)
    flat = hidden.reshape(-1, hidden.shape[-1])
    n_tokens = int((targets != IGNORE_INDEX).sum())
    divisor = num_items_in_batch if num_items_in_batch is not None else max(n_tokens, 1)
    chunk_tokens = chunk_tokens or chunk_tokens_for(flat.shape[0])
    loss = _LinearCrossEntropyFn.apply(flat, weight, targets, float(divisor), chunk_tokens)
    return loss, n_tokens
