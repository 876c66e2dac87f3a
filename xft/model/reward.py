"""A reward model (XTuner 0.1.23's ``xtuner.model.reward.RewardModel``, same arguments).

    model = dict(type=RewardModel, loss_type='focal', penalty_type='log_barrier',
                 use_varlen_attn=True, llm=dict(...), lora=dict(...))

The causal LM's decoder reads each sequence and a linear ``v_head`` (hidden -> 1, starting at
zero, as XTuner's) turns the hidden state at one position into the sequence's score: the
position the data marks with a label, the appended ``reward_token_id`` or the answer's last
trained token (``xft.dataset.preference_pairs``). The loss ranks the chosen answer's score above
the rejected one's (``preference_loss.reward_losses``: ranking or focal, plus a penalty that
keeps scores in range). The LM head is not used; in full fine-tuning it is frozen unless tied
to the input embeddings.
"""
import torch
from torch import nn

from xft.utils.constants import IGNORE_INDEX

from .fast_path import hf_model
from .preference import PreferenceModel, chosen_and_rejected
from .preference_loss import check_reward_settings, reward_losses
from .reference import reference_forward
from .sequence_logprobs import accumulation_dtype, count_sequences, final_hidden_states


class RewardModel(PreferenceModel):
    """Scores answers; trained on preference pairs so that chosen answers score higher.

    Args:
        reward_token_id: XTuner's; the data appends it (``build_preference_dataset``), the model
            only records it.
        loss_type: 'ranking' (-logsigmoid(chosen - rejected)) or 'focal' (InternLM2's).
        penalty_type: 'log_barrier' (scores kept inside (-5, 5)), 'L2' or 'none'.
        penalty_weight: the penalty's weight.
        the rest: as ``SupervisedFinetune``.
    """

    def __init__(self, llm, reward_token_id=None, loss_type='ranking', penalty_type='log_barrier',
                 penalty_weight=0.01, **kwargs):
        check_reward_settings(loss_type, penalty_type, penalty_weight)
        super().__init__(llm, **kwargs)
        self.reward_token_id = reward_token_id
        self.loss_type, self.penalty_type, self.penalty_weight = loss_type, penalty_type, penalty_weight
        base = hf_model(self.llm)
        # In float32 (or the model's dtype when wider), as the scores' loss is computed.
        self.v_head = nn.Linear(base.config.hidden_size, 1, bias=False,
                                dtype=accumulation_dtype(base.get_input_embeddings().weight.dtype))
        nn.init.zeros_(self.v_head.weight)
        head = base.get_output_embeddings()
        if head is not None and head.weight is not base.get_input_embeddings().weight:
            head.requires_grad_(False)

    def scores(self, data) -> torch.Tensor:
        """One score per sequence (chosen 0, rejected 0, chosen 1, ...)."""
        input_ids, labels, sequence_index, kwargs = self.split_batch(data)
        hidden = final_hidden_states(self.llm, input_ids, **kwargs)
        positions = (labels.reshape(-1) != IGNORE_INDEX).nonzero().squeeze(1)
        sequences = sequence_index.reshape(-1).index_select(0, positions)
        expected = torch.arange(count_sequences(sequence_index), device=sequences.device)
        if sequences.shape != expected.shape or not bool((sequences == expected).all()):
            raise ValueError('RewardModel needs one labelled position per sequence; build the data '
                             'with build_preference_dataset(is_reward=True)')
        picked = hidden.reshape(-1, hidden.shape[-1]).index_select(0, positions)
        return self.v_head(picked.to(self.v_head.weight.dtype)).squeeze(-1)

    def compute_loss(self, data) -> dict:
        chosen, rejected = chosen_and_rejected(self.scores(data))
        losses, metrics = reward_losses(chosen, rejected, self.loss_type, self.penalty_type,
                                        self.penalty_weight)
        return {'loss': losses.mean(), **metrics}

    def pair_scores(self, data):
        with reference_forward(self):
            return chosen_and_rejected(self.scores(data))
