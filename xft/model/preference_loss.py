"""The preference losses as pure functions of per-sequence log-probabilities (or scores).

Formulas and names follow XTuner 0.1.23 (``xtuner/model/dpo.py``, ``orpo.py``, ``reward.py``),
which follows TRL's DPOTrainer. Inputs are one value per pair; each function returns the
per-pair losses (the model averages them) and the metrics to log. Metric names never contain
"loss": mmengine sums every logged key that does.

DPO, with z = (pi_c - pi_r) - (ref_c - ref_r), the log-probability sums of the chosen and
rejected answers under the policy and the reference:

==========  ==============================================================================
sigmoid     -logsigmoid(beta z)(1 - eps) - logsigmoid(-beta z) eps   (eps: label_smoothing)
robust      (-logsigmoid(beta z)(1 - eps) + logsigmoid(-beta z) eps) / (1 - 2 eps)
hinge       relu(1 - beta z)
ipo         (z - 1 / (2 beta))^2, with per-token mean log-probabilities instead of sums
kto_pair    1 - sigmoid(beta (c - KL_r)) and 1 - sigmoid(beta (KL_c - r)), averaged, where
            c = pi_c - ref_c, r = pi_r - ref_r and KL_c, KL_r are their batch means clamped at 0
sppo_hard   (c - 1 / (2 beta))^2 + (r + 1 / (2 beta))^2
nca_pair    -logsigmoid(beta c) - logsigmoid(-beta c) / 2 - logsigmoid(-beta r) / 2
==========  ==============================================================================
"""
import torch
from torch.nn import functional as F

from xft.utils.errors import ConfigError

DPO_LOSS_TYPES = ('sigmoid', 'hinge', 'ipo', 'kto_pair', 'sppo_hard', 'nca_pair', 'robust')
# Loss types that compare per-token mean log-probabilities rather than sums.
MEAN_LOGP_LOSS_TYPES = ('ipo',)
REWARD_LOSS_TYPES = ('ranking', 'focal')
REWARD_PENALTY_TYPES = ('log_barrier', 'L2', 'none')
# The log-barrier's bounds on a reward score (InternLM2's reward model).
LOG_BARRIER_BOUNDS = (-5.0, 5.0)
LOG_BARRIER_EPSILON = 1e-3


def check_dpo_settings(loss_type, beta, label_smoothing):
    if loss_type not in DPO_LOSS_TYPES:
        raise ConfigError(f'model.loss_type: expected one of {", ".join(DPO_LOSS_TYPES)}, '
                          f'got {loss_type!r}')
    if not isinstance(beta, (int, float)) or beta <= 0:
        raise ConfigError(f'model.beta: expected a positive number, got {beta!r}')
    if not 0 <= label_smoothing < 0.5:
        raise ConfigError(f'model.label_smoothing: expected 0 <= label_smoothing < 0.5, got '
                          f'{label_smoothing!r}')
    if label_smoothing and loss_type not in ('sigmoid', 'robust'):
        raise ConfigError(f"model.label_smoothing={label_smoothing} has no effect with "
                          f"loss_type={loss_type!r}; only 'sigmoid' and 'robust' use it")


def dpo_losses(policy_chosen, policy_rejected, reference_chosen, reference_rejected,
               loss_type='sigmoid', beta=0.1, label_smoothing=0.0):
    """Per-pair DPO losses (P,) and the metrics (rewards are beta times log-ratios).

    >>> losses, metrics = dpo_losses(torch.tensor([-1.]), torch.tensor([-3.]),
    ...                              torch.tensor([-2.]), torch.tensor([-2.]), beta=0.5)
    >>> round(float(losses[0]), 4), float(metrics['reward_margin'])  # -logsigmoid(0.5 * 2)
    (0.3133, 1.0)
    """
    chosen_ratio = policy_chosen - reference_chosen
    rejected_ratio = policy_rejected - reference_rejected
    z = chosen_ratio - rejected_ratio
    if loss_type == 'sigmoid':
        losses = (-F.logsigmoid(beta * z) * (1 - label_smoothing)
                  - F.logsigmoid(-beta * z) * label_smoothing)
    elif loss_type == 'robust':
        losses = ((-F.logsigmoid(beta * z) * (1 - label_smoothing)
                   + F.logsigmoid(-beta * z) * label_smoothing) / (1 - 2 * label_smoothing))
    elif loss_type == 'hinge':
        losses = torch.relu(1 - beta * z)
    elif loss_type == 'ipo':
        losses = (z - 1 / (2 * beta)) ** 2
    elif loss_type == 'kto_pair':
        # The KL terms are batch estimates (as in TRL and XTuner), so this loss depends on which
        # pairs share a micro-batch.
        chosen_kl = chosen_ratio.mean().clamp(min=0)
        rejected_kl = rejected_ratio.mean().clamp(min=0)
        losses = ((1 - torch.sigmoid(beta * (chosen_ratio - rejected_kl)))
                  + (1 - torch.sigmoid(beta * (chosen_kl - rejected_ratio)))) / 2
    elif loss_type == 'sppo_hard':
        losses = (chosen_ratio - 0.5 / beta) ** 2 + (rejected_ratio + 0.5 / beta) ** 2
    elif loss_type == 'nca_pair':
        losses = (-F.logsigmoid(beta * chosen_ratio) - 0.5 * F.logsigmoid(-beta * chosen_ratio)
                  - 0.5 * F.logsigmoid(-beta * rejected_ratio))
    else:
        raise ConfigError(f'model.loss_type: expected one of {", ".join(DPO_LOSS_TYPES)}, '
                          f'got {loss_type!r}')
    return losses, pair_reward_metrics(beta * chosen_ratio.detach(), beta * rejected_ratio.detach())


def pair_reward_metrics(chosen_rewards, rejected_rewards) -> dict:
    """XTuner's logged names: mean rewards, the share of pairs ranked right, the mean margin."""
    return {'chosen_rewards': chosen_rewards.mean(), 'rejected_rewards': rejected_rewards.mean(),
            'reward_acc': (chosen_rewards > rejected_rewards).float().mean(),
            'reward_margin': (chosen_rewards - rejected_rewards).mean()}


def log1m_exp(x):
    """log(1 - exp(x)) for x < 0, accurate near 0 and for very negative x.

    >>> bool(torch.allclose(log1m_exp(torch.tensor([-1e-3, -30.])),
    ...                     torch.tensor([-6.9083, -9.3576e-14]), atol=1e-4))
    True
    """
    return torch.where(x > -0.6931471805599453, torch.log(-torch.expm1(x)),
                       torch.log1p(-torch.exp(x)))


# Per-token mean log-probabilities are below 0; this keeps log(1 - p) finite when an answer's
# probability rounds to 1 (XTuner dropped the NaN pairs that gave instead).
MAX_MEAN_LOGP = -1e-6


def orpo_odds_ratio(chosen_mean_logps, rejected_mean_logps, beta=0.1):
    """ORPO's odds-ratio term per pair, -beta * logsigmoid(log odds ratio), and its metrics.

    Eqs. 4 and 7 of Hong et al. 2024, in log space: log odds(y) = log p - log(1 - p), with
    p the per-token mean probability of the answer.
    """
    chosen = chosen_mean_logps.clamp(max=MAX_MEAN_LOGP)
    rejected = rejected_mean_logps.clamp(max=MAX_MEAN_LOGP)
    log_odds = (chosen - rejected) - (log1m_exp(chosen) - log1m_exp(rejected))
    ratio = F.logsigmoid(log_odds)
    metrics = pair_reward_metrics(beta * chosen.detach(), beta * rejected.detach())
    metrics.update(log_odds_ratio=ratio.detach().mean(), log_odds_chosen=log_odds.detach().mean())
    return -beta * ratio, metrics


def check_reward_settings(loss_type, penalty_type, penalty_weight):
    if loss_type not in REWARD_LOSS_TYPES:
        raise ConfigError(f'model.loss_type: expected one of {", ".join(REWARD_LOSS_TYPES)}, '
                          f'got {loss_type!r}')
    if penalty_type not in REWARD_PENALTY_TYPES:
        raise ConfigError(f'model.penalty_type: expected one of {", ".join(REWARD_PENALTY_TYPES)}, '
                          f'got {penalty_type!r}')
    if not isinstance(penalty_weight, (int, float)) or penalty_weight < 0:
        raise ConfigError(f'model.penalty_weight: expected a number >= 0, got {penalty_weight!r}')


def reward_losses(chosen_scores, rejected_scores, loss_type='ranking', penalty_type='log_barrier',
                  penalty_weight=0.01):
    """Per-pair reward-model losses (P,) and the metrics.

    ranking: -logsigmoid(c - r). focal (InternLM2): that times (1 - p)^2 with
    p = 2 relu(sigmoid(c - r) - 1/2). Penalties, per pair over its two scores: log_barrier
    -log(5 - s) - log(s + 5) with s clamped inside (-5, 5); L2 s^2; none.
    """
    rank = -F.logsigmoid(chosen_scores - rejected_scores)
    if loss_type == 'focal':
        p = 2 * torch.relu(torch.sigmoid(chosen_scores - rejected_scores) - 0.5)
        rank = (1 - p) ** 2 * rank
    elif loss_type != 'ranking':
        raise ConfigError(f'model.loss_type: expected one of {", ".join(REWARD_LOSS_TYPES)}, '
                          f'got {loss_type!r}')
    scores = torch.stack([chosen_scores, rejected_scores])
    if penalty_type == 'log_barrier':
        low, high = LOG_BARRIER_BOUNDS
        s = scores.clamp(low + LOG_BARRIER_EPSILON, high - LOG_BARRIER_EPSILON)
        penalty = (-torch.log(high - s) - torch.log(s - low)).sum(0)
    elif penalty_type == 'L2':
        penalty = (scores ** 2).sum(0)
    else:
        penalty = torch.zeros_like(rank)
    chosen, rejected = chosen_scores.detach(), rejected_scores.detach()
    metrics = {'acc': (chosen > rejected).float().mean(), 'chosen_score_mean': chosen.mean(),
               'rejected_score_mean': rejected.mean(), 'score_margin': (chosen - rejected).mean()}
    return rank + penalty_weight * penalty, metrics
