"""Per-sequence log-probabilities of answers, the quantity every preference loss starts from.

DPO compares ``log p(answer | prompt)`` of a chosen and a rejected answer under the policy and
a reference; ORPO uses the same sums (as per-token means) plus the chosen answers' NLL. A
preference batch carries, besides ``input_ids`` and ``labels``, a ``sequence_index`` (B, L):
for each token the answer it belongs to, numbered chosen 0, rejected 0, chosen 1, ... across
the batch, -1 on padding (``xft.dataset.preference_collate``). Labels are IGNORE_INDEX
everywhere but on the answer tokens, and the first token of every sequence is never trained,
so the prediction at position t (scored against ``labels[t + 1]``) never crosses from one
sequence into the next, packed or not.

The fast path's way (``fast_path.causal_lm_loss``): the decoder's final hidden states, then the
head only at the positions that predict a trained token, in chunks, never forming the full
(tokens x vocab) logits. ``LinearLogProbs`` returns one log-probability per trained token and,
for the usual frozen head (LoRA, QLoRA), keeps the gradient direction of each token's
log-probability with respect to its hidden state (one hidden-sized row per trained token, as
the chunked cross-entropy keeps), so backward is a scale. With a trainable head (full
fine-tuning) backward recomputes each chunk's logits instead. A model whose head is not a plain
linear layer takes the model's own logits.
"""
import dataclasses
from typing import Optional

import torch
from torch.nn import functional as F

from xft.utils.constants import IGNORE_INDEX

from .fast_path import _plain_head, hf_model
from .kernels.backend import autocast_dtype
from .loss import chunk_tokens_for, shift_labels

PADDING_SEQUENCE = -1


@dataclasses.dataclass
class SequenceLogProbs:
    """What one forward gives for the answers of a batch, one entry per sequence."""
    sums: torch.Tensor        # (S,) sum of the answer's token log-probabilities (fp32 or wider)
    counts: torch.Tensor      # (S,) its trained tokens
    token_logps: torch.Tensor  # (N,) every trained token's log-probability
    token_sequence: torch.Tensor  # (N,) long: the sequence each of those tokens belongs to

    def means(self) -> torch.Tensor:
        """Per-token mean log-probability of each answer (IPO, ORPO)."""
        return self.sums / self.counts.clamp(min=1)


def trained_positions(labels: torch.Tensor):
    """Flat positions that predict a trained token, and those tokens.

    >>> trained_positions(torch.tensor([[-100, -100, 5, 6], [-100, 7, -100, -100]]))
    (tensor([1, 2, 4]), tensor([5, 6, 7]))
    """
    targets = shift_labels(labels).reshape(-1)
    positions = (targets != IGNORE_INDEX).nonzero().squeeze(1)
    return positions, targets[positions]


def count_sequences(sequence_index: torch.Tensor) -> int:
    """How many answer sequences a batch holds (padding excluded)."""
    return int(sequence_index.max()) + 1 if sequence_index.numel() else 0


class _LinearLogProbFn(torch.autograd.Function):
    """log_softmax(hidden @ weight.T)[target] for each row of ``hidden``, chunked."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk_tokens):
        dtype = autocast_dtype(hidden)
        want_hidden, want_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        # With a frozen head the hidden-state gradient direction is stored now (one row per
        # token, as linear_cross_entropy does); a trainable head needs the softmax again in
        # backward anyway, so then both grads are recomputed there.
        keep_direction = want_hidden and not want_weight
        with torch.autocast(hidden.device.type, enabled=False):
            logps, direction = _chunked_logps(hidden, weight, targets, chunk_tokens, dtype,
                                              keep_direction)
        ctx.chunk_tokens, ctx.dtype = chunk_tokens, dtype
        ctx.dtypes = (hidden.dtype, weight.dtype)
        if keep_direction:
            ctx.save_for_backward(direction)
        elif want_hidden or want_weight:
            ctx.save_for_backward(hidden, weight, targets)
        ctx.mode = 'direction' if keep_direction else ('recompute' if want_hidden or want_weight
                                                      else 'none')
        return logps

    @staticmethod
    def backward(ctx, grad_logps):
        if ctx.mode == 'direction':
            (direction,) = ctx.saved_tensors
            grad = direction * grad_logps.to(direction.dtype)[:, None]
            return grad.to(ctx.dtypes[0]), None, None, None
        if ctx.mode == 'none':
            return None, None, None, None
        hidden, weight, targets = ctx.saved_tensors
        with torch.autocast(hidden.device.type, enabled=False):
            grad_hidden, grad_weight = _chunked_grads(
                hidden, weight, targets, grad_logps, ctx.chunk_tokens, ctx.dtype,
                ctx.needs_input_grad[0], ctx.needs_input_grad[1])
        return (None if grad_hidden is None else grad_hidden.to(ctx.dtypes[0]),
                None if grad_weight is None else grad_weight.to(ctx.dtypes[1]), None, None)


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """Log-probabilities are taken in float32, or in the model's dtype when that is wider.

    >>> accumulation_dtype(torch.bfloat16), accumulation_dtype(torch.float64)
    (torch.float32, torch.float64)
    """
    return torch.promote_types(dtype, torch.float32)


def _chunk_logits(hidden, w, start, chunk_tokens, dtype):
    h = hidden[start:start + chunk_tokens].to(dtype)
    # The head's output in the compute dtype, then widened: the rounding transformers applies.
    return h, (h @ w.t()).to(accumulation_dtype(dtype))


def _chunked_logps(hidden, weight, targets, chunk_tokens, dtype, keep_direction):
    w = weight.to(dtype)
    logps = torch.empty(hidden.shape[0], dtype=accumulation_dtype(dtype), device=hidden.device)
    direction = torch.empty(hidden.shape, dtype=dtype, device=hidden.device) \
        if keep_direction else None
    for start in range(0, hidden.shape[0], chunk_tokens):
        _, logits = _chunk_logits(hidden, w, start, chunk_tokens, dtype)
        t = targets[start:start + chunk_tokens]
        lse = torch.logsumexp(logits, dim=-1)
        logps[start:start + len(t)] = logits.gather(1, t[:, None]).squeeze(1) - lse
        if keep_direction:
            # d logp / d logits = onehot - softmax; times the head: d logp / d hidden.
            grad_logits = logits.sub_(lse[:, None]).exp_().neg_()
            grad_logits[torch.arange(len(t), device=t.device), t] += 1.0
            torch.matmul(grad_logits.to(dtype), w, out=direction[start:start + len(t)])
    return logps, direction


def _chunked_grads(hidden, weight, targets, grad_logps, chunk_tokens, dtype, want_hidden,
                   want_weight):
    w = weight.to(dtype)
    grad_hidden = torch.empty(hidden.shape, dtype=dtype, device=hidden.device) \
        if want_hidden else None
    grad_weight = torch.zeros(weight.shape, dtype=accumulation_dtype(dtype), device=weight.device) \
        if want_weight else None
    for start in range(0, hidden.shape[0], chunk_tokens):
        h, logits = _chunk_logits(hidden, w, start, chunk_tokens, dtype)
        t = targets[start:start + chunk_tokens]
        lse = torch.logsumexp(logits, dim=-1)
        grad_logits = logits.sub_(lse[:, None]).exp_().neg_()
        grad_logits[torch.arange(len(t), device=t.device), t] += 1.0
        grad_logits.mul_(grad_logps[start:start + len(t), None].to(grad_logits.dtype))
        if want_hidden:
            torch.matmul(grad_logits.to(dtype), w, out=grad_hidden[start:start + len(t)])
        if want_weight:
            grad_weight.addmm_(grad_logits.t(), h.to(grad_weight.dtype))
    return grad_hidden, grad_weight


def linear_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                    chunk_tokens: Optional[int] = None) -> torch.Tensor:
    """``log_softmax(hidden @ weight.T, -1)[i, targets[i]]`` for each row i, in chunks.

    hidden: (N, D) the states that predict the N targets; weight: (V, D) the head.

    >>> h, w, t = torch.randn(5, 8), torch.randn(11, 8), torch.tensor([1, 2, 3, 4, 10])
    >>> ref = torch.log_softmax(h @ w.T, -1).gather(1, t[:, None]).squeeze(1)
    >>> bool(torch.allclose(linear_logprobs(h, w, t, chunk_tokens=2), ref, atol=1e-6))
    True
    """
    chunk_tokens = chunk_tokens or chunk_tokens_for(hidden.shape[0])
    return _LinearLogProbFn.apply(hidden, weight, targets, chunk_tokens)


def final_hidden_states(llm, input_ids, **forward_kwargs) -> torch.Tensor:
    """The decoder's last hidden states (B, L, D) of a causal LM (peft-wrapped or not)."""
    decoder = hf_model(llm).get_decoder()
    return decoder(input_ids=input_ids, use_cache=False, **forward_kwargs).last_hidden_state


def sequence_logprobs(llm, input_ids: torch.Tensor, labels: torch.Tensor,
                      sequence_index: torch.Tensor, chunked: bool = True,
                      **forward_kwargs) -> SequenceLogProbs:
    """Per-sequence sums of the answer tokens' log-probabilities under ``llm``.

    ``chunked`` (the fast path): the head runs only where a trained token is predicted, in
    chunks. Otherwise, or when the model's head is not a plain linear layer, the model's own
    logits are taken. ``forward_kwargs`` (attention_mask, position_ids, ...) go to the model.
    """
    positions, targets = trained_positions(labels)
    head = _plain_head(hf_model(llm)) if chunked else None
    if head is not None:
        hidden = final_hidden_states(llm, input_ids, **forward_kwargs)
        picked = hidden.reshape(-1, hidden.shape[-1]).index_select(0, positions)
        token_logps = linear_logprobs(picked, head.weight, targets)
    else:
        logits = llm(input_ids=input_ids, use_cache=False, **forward_kwargs).logits
        picked = logits.reshape(-1, logits.shape[-1]).index_select(0, positions)
        token_logps = F.log_softmax(picked.to(accumulation_dtype(picked.dtype)), dim=-1).gather(
            1, targets[:, None]).squeeze(1)
    token_sequence = sequence_index.reshape(-1).index_select(0, positions)
    return sum_by_sequence(token_logps, token_sequence, count_sequences(sequence_index))


def sum_by_sequence(token_logps, token_sequence, n_sequences) -> SequenceLogProbs:
    """Gather per-token values into per-sequence sums and counts.

    >>> out = sum_by_sequence(torch.tensor([-1., -2., -4.]), torch.tensor([0, 0, 1]), 2)
    >>> out.sums, out.counts
    (tensor([-3., -4.]), tensor([2., 1.]))
    """
    if bool((token_sequence < 0).any()):
        raise ValueError('a trained token lies on padding (sequence_index -1): the batch was '
                         'not made by preference_collate_fn')
    dtype = accumulation_dtype(token_logps.dtype)
    zeros = torch.zeros(n_sequences, dtype=dtype, device=token_logps.device)
    sums = zeros.index_add(0, token_sequence, token_logps.to(dtype))
    counts = zeros.index_add(0, token_sequence, torch.ones_like(token_logps, dtype=dtype))
    return SequenceLogProbs(sums, counts, token_logps, token_sequence)
