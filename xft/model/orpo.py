"""ORPO (Hong et al. 2024; XTuner 0.1.23's ``xtuner.model.orpo.ORPO``, same arguments).

    model = dict(type=ORPO, beta=0.1, use_varlen_attn=True, llm=dict(...))

No reference model: one forward of the policy over the pair batch gives every answer token's
log-probability (``xft.model.sequence_logprobs``, chunked on the fast path), from which come
both terms: the chosen answers' NLL (the mean over their tokens, as SFT on them would give)
and the odds-ratio term ``-beta * logsigmoid(log odds(chosen) - log odds(rejected))`` on the
per-token mean log-probabilities (``preference_loss.orpo_odds_ratio``).
"""
from xft.utils.errors import ConfigError

from .preference import PreferenceModel, chosen_and_rejected
from .preference_loss import orpo_odds_ratio
from .reference import reference_forward


class ORPO(PreferenceModel):
    """Odds-ratio preference optimization: SFT on the chosen answers plus a preference term.

    Args:
        beta: weight of the odds-ratio term (XTuner's default 0.1).
        the rest: as ``SupervisedFinetune``.
    """

    def __init__(self, *args, beta=0.1, **kwargs):
        if not isinstance(beta, (int, float)) or beta < 0:
            raise ConfigError(f'model.beta: expected a number >= 0, got {beta!r}')
        super().__init__(*args, **kwargs)
        self.beta = beta

    def compute_loss(self, data) -> dict:
        logprobs = self.logprobs(self.llm, data)
        odds_ratio, metrics = orpo_odds_ratio(*chosen_and_rejected(logprobs.means()), self.beta)
        chosen_tokens = logprobs.token_sequence % 2 == 0
        # The NLL of the chosen answers over their tokens, as SFT on them would give.
        nll = -logprobs.token_logps[chosen_tokens].sum() / chosen_tokens.sum().clamp(min=1)
        return {'loss': nll + odds_ratio.mean(), 'nll': nll.detach(), **metrics}

    def pair_scores(self, data):
        """beta times each answer's per-token mean log-probability (XTuner's ORPO rewards)."""
        with reference_forward(self.llm):
            chosen, rejected = chosen_and_rejected(self.logprobs(self.llm, data).means())
        return self.beta * chosen, self.beta * rejected


__all__ = ['ORPO']
