"""What DPO, ORPO and RewardModel share: a SupervisedFinetune trained on batches of pairs.

The llm is built, quantized, given LoRA and the fast path exactly as for SFT
(``SupervisedFinetune``), so every ``model.llm`` / ``lora`` / ``use_activation_checkpointing`` /
``use_fast_path`` setting means the same. The batch comes from ``preference_collate_fn``: its
``sequence_index`` numbers the answers (chosen 0, rejected 0, chosen 1, ...), packed or not, and
attention keeps each answer to itself (``packed_attention_kwargs``).

The unit of a preference loss is the pair: each model returns the mean over the pairs of its
micro-batch, and ``count_loss_units`` says how many pairs a batch holds, for a training loop
that weighs micro-batches by their share of the optimizer step (as token-weighted SFT does
with tokens). Logged metrics (reward accuracy, rewards, margins) are per micro-batch.

``forward(mode='predict')`` returns one ``{'chosen': ..., 'rejected': ...}`` score per pair (the
implicit rewards of DPO and ORPO, the reward model's scores), which
``xft.engine.preference_metric.PreferenceAccuracy`` turns into held-out accuracy.
"""
import torch

from xft.dataset.collate_fns.preference_collate_fn import SEQUENCE_INDEX, count_pairs

from .packed_attention import packed_attention_kwargs
from .sequence_logprobs import sequence_logprobs
from .sft import SupervisedFinetune


class PreferenceModel(SupervisedFinetune):
    """Base of the preference models; see the module docstring. Not used in configs itself."""

    def forward(self, data, data_samples=None, mode='loss'):
        if mode == 'loss':
            return self.compute_loss(data)
        if mode == 'predict':
            return self.predict(data)
        return super().forward(self.without_sequence_index(data), data_samples, mode)

    @staticmethod
    def without_sequence_index(data) -> dict:
        return {key: value for key, value in data.items() if key != SEQUENCE_INDEX}

    def split_batch(self, data, llm=None):
        """(input_ids, labels, sequence_index, forward kwargs of ``llm``) of a preference batch.

        The policy's kwargs are SFT's (``forward_kwargs``: attention kept inside each packed
        sequence); a separate reference model gets those of its own attention implementation.
        """
        count_pairs(data)  # a batch from another collate fn is refused in one line
        plain = self.without_sequence_index(data)
        if llm is None or llm is self.llm:
            kwargs = self.forward_kwargs(plain)
        else:
            kwargs = packed_attention_kwargs(plain, llm.config._attn_implementation, dtype=llm.dtype)
        return kwargs.pop('input_ids'), kwargs.pop('labels'), data[SEQUENCE_INDEX], kwargs

    def logprobs(self, llm, data):
        """Per-sequence answer log-probabilities of ``llm`` on a preference batch."""
        input_ids, labels, sequence_index, kwargs = self.split_batch(data, llm)
        return sequence_logprobs(llm, input_ids, labels, sequence_index,
                                 chunked=self.fast_path is not None, **kwargs)

    @staticmethod
    def count_loss_units(data_batch) -> int:
        """Pairs in a collated batch: what the loss of a micro-batch is the mean over."""
        return count_pairs(data_batch)

    def predict(self, data) -> list:
        with torch.no_grad():
            chosen, rejected = self.pair_scores(data)
        return [{'chosen': float(c), 'rejected': float(r)} for c, r in zip(chosen, rejected)]

    def pair_scores(self, data):
        """(chosen, rejected) scores of every pair, higher meaning preferred."""
        raise NotImplementedError(f'{type(self).__name__} defines no pair scores')


def chosen_and_rejected(values: torch.Tensor):
    """Per-sequence values (chosen 0, rejected 0, chosen 1, ...) -> (chosen, rejected)."""
    if values.shape[0] % 2:
        raise ValueError(f'a preference batch holds whole pairs; got {values.shape[0]} sequences')
    return values[0::2], values[1::2]
