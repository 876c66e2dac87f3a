"""DPO, ORPO and RewardModel against the formulas, computed the plain way.

The expected values come from code that shares nothing with xft's path: each answer run
alone through a plain transformers model (the LoRA policy through peft, the reference as a
fresh copy of the base loaded from disk), full logits, log_softmax, the answer tokens summed;
the formulas then written out from the papers. The models see the same pairs collated both
ways (one sequence per row, and pairs packed into rows), on the fast path (chunked
log-probabilities, fused LoRA layers) and off it.
"""
import math

import datasets
import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch.nn import functional as F
from transformers import AutoModelForCausalLM

from helpers.preference import LORA, llm_cfg, pair_rows
from xft.dataset.collate_fns import preference_collate_fn
from xft.dataset.preference_packing import pack_pairs
from xft.model.dpo import DPO
from xft.model.orpo import ORPO
from xft.model.preference_loss import DPO_LOSS_TYPES
from xft.model.reward import RewardModel
from xft.utils.constants import IGNORE_INDEX
from xft.utils.errors import ConfigError

BETA = 0.5
# float64 throughout: the losses take differences of sums of ~100 log-probabilities (about -300
# each), which float32 rounding alone would move by 1e-4.
DTYPE = 'torch.float64'


@pytest.fixture(scope='module')
def rows(shared_data, tiny_tokenizer):
    return pair_rows(shared_data, tiny_tokenizer, count=4)


@pytest.fixture(scope='module')
def reward_rows(shared_data, tiny_tokenizer):
    return pair_rows(shared_data, tiny_tokenizer, count=4, is_dpo=False, is_reward=True)


def collated(rows, packed):
    """The pairs of ``rows`` one sequence per row, or packed two pairs to a row."""
    if not packed:
        return preference_collate_fn(rows)['data']
    packed_rows = pack_pairs(datasets.Dataset.from_list(rows), 2 * max(r['length'] for r in rows))
    assert len(packed_rows) == 2 and all(len(row['cumulative_len']) == 5 for row in packed_rows)
    batch = preference_collate_fn(list(packed_rows), use_varlen_attn=True)['data']
    assert batch['input_ids'].shape[0] == 2 and 'cumulative_len' in batch
    return batch


def sequences(row):
    bounds = row['cumulative_len']
    return [(row['input_ids'][a:b], row['labels'][a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


def plain_answer_logps(model, rows):
    """[(sum, count, token log-probs)] per answer, chosen and rejected alternating."""
    out = []
    with torch.no_grad():
        for row in rows:
            for ids, labels in sequences(row):
                logits = model(input_ids=torch.tensor([ids])).logits[0, :-1].double()
                targets = torch.tensor(labels[1:])
                trained = targets != IGNORE_INDEX
                token = F.log_softmax(logits, -1)[trained].gather(1, targets[trained, None])[:, 0]
                out.append((float(token.sum()), int(trained.sum()), token))
    return out


def randomize_adapters(model, seed=1):
    """LoRA B starts at zero (policy = reference); give every adapter weight a value."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            if 'lora_' in name:
                param.copy_(torch.randn(param.shape, generator=generator, dtype=param.dtype) * 0.05)


def plain_policy(tiny_llama_dir, dpo_model):
    """A plain peft model holding the same adapter weights as ``dpo_model``."""
    plain = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float64),
                           LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, task_type='CAUSAL_LM',
                                      target_modules=dpo_model.llm.peft_config['default'].target_modules))
    adapters = {key[len('llm.'):]: value for key, value in dpo_model.state_dict().items()}
    missing = plain.load_state_dict(adapters, strict=False)
    assert not missing.unexpected_keys and len(adapters) == 28
    return plain.eval()


def expected_dpo_loss(policy, reference, loss_type, label_smoothing):
    """Mean over pairs of the loss, written out per pair from the log-probabilities."""
    def value(entry, mean):
        total, count, _ = entry
        return total / count if mean else total

    mean = loss_type == 'ipo'
    pairs = [(value(policy[i], mean), value(policy[i + 1], mean), value(reference[i], mean),
              value(reference[i + 1], mean)) for i in range(0, len(policy), 2)]
    logsig = lambda x: -math.log1p(math.exp(-x))  # noqa: E731
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    chosen_kl = max(0.0, sum(pc - rc for pc, _, rc, _ in pairs) / len(pairs))
    rejected_kl = max(0.0, sum(pr - rr for _, pr, _, rr in pairs) / len(pairs))
    losses = []
    for pc, pr, rc, rr in pairs:
        c, r = pc - rc, pr - rr
        z = c - r
        eps = label_smoothing
        losses.append({
            'sigmoid': -logsig(BETA * z) * (1 - eps) - logsig(-BETA * z) * eps,
            'robust': (-logsig(BETA * z) * (1 - eps) + logsig(-BETA * z) * eps) / (1 - 2 * eps),
            'hinge': max(0.0, 1 - BETA * z),
            'ipo': (z - 1 / (2 * BETA)) ** 2,
            'kto_pair': ((1 - sig(BETA * (c - rejected_kl))) + (1 - sig(BETA * (chosen_kl - r)))) / 2,
            'sppo_hard': (c - 0.5 / BETA) ** 2 + (r + 0.5 / BETA) ** 2,
            'nca_pair': -logsig(BETA * c) - 0.5 * logsig(-BETA * c) - 0.5 * logsig(-BETA * r),
        }[loss_type])
    return sum(losses) / len(losses), [BETA * (pc - rc) for pc, _, rc, _ in pairs], \
        [BETA * (pr - rr) for _, pr, _, rr in pairs]


@pytest.fixture(scope='module')
def plain_logps(tiny_llama_dir, rows):
    """Adapter weights, and the plain policy's and reference's answer log-probabilities."""
    torch.manual_seed(0)
    model = DPO(llm=llm_cfg(tiny_llama_dir, DTYPE), lora=LORA)
    randomize_adapters(model)
    adapters = {k: v.clone() for k, v in model.state_dict().items()}
    policy = plain_answer_logps(plain_policy(tiny_llama_dir, model), rows)
    reference = plain_answer_logps(
        AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float64).eval(), rows)
    return adapters, policy, reference


@pytest.mark.parametrize('packed', [False, True], ids=['one_sequence_per_row', 'packed'])
@pytest.mark.parametrize('loss_type', DPO_LOSS_TYPES)
def test_dpo_loss_equals_the_formula_on_plain_log_probabilities(loss_type, packed, tiny_llama_dir,
                                                                rows, plain_logps):
    adapters, policy, reference = plain_logps
    smoothing = 0.1 if loss_type in ('sigmoid', 'robust') else 0.0
    model = DPO(llm=llm_cfg(tiny_llama_dir, DTYPE), lora=LORA, loss_type=loss_type, beta=BETA,
                label_smoothing=smoothing)
    assert model.fast_path is not None and model.fast_path.lora, 'the fused LoRA path is tested'
    model.load_state_dict(adapters, strict=False)
    with torch.no_grad():
        out = model(collated(rows, packed))
    loss, chosen, rejected = expected_dpo_loss(policy, reference, loss_type, smoothing)
    assert float(out['loss']) == pytest.approx(loss, rel=1e-9)
    assert float(out['chosen_rewards']) == pytest.approx(sum(chosen) / len(chosen), abs=1e-9)
    assert float(out['rejected_rewards']) == pytest.approx(sum(rejected) / len(rejected), abs=1e-9)
    assert float(out['reward_acc']) == pytest.approx(
        sum(c > r for c, r in zip(chosen, rejected)) / len(chosen))
    assert not any('loss' in key for key in out if key != 'loss'), 'mmengine would sum it'


def test_packed_and_unpacked_batches_give_the_same_loss_and_gradients(tiny_llama_dir, rows,
                                                                      plain_logps):
    grads = {}
    for packed in (False, True):
        model = DPO(llm=llm_cfg(tiny_llama_dir, DTYPE), lora=LORA, beta=BETA)
        model.load_state_dict(plain_logps[0], strict=False)
        loss = model(collated(rows, packed))['loss']
        loss.backward()
        grads[packed] = (float(loss), {n: p.grad.clone() for n, p in model.named_parameters()
                                       if p.requires_grad})
    assert grads[True][0] == pytest.approx(grads[False][0], rel=1e-9)
    for name, grad in grads[False][1].items():
        assert grad.abs().sum() > 0, name
        torch.testing.assert_close(grads[True][1][name], grad, rtol=1e-7, atol=1e-12)


def test_the_fast_path_and_the_plain_path_agree(tiny_llama_dir, rows, plain_logps):
    """To float32 precision: transformers' RMSNorm computes in float32 even for a float64
    model, the fused one in the model's dtype."""
    results = []
    for fast in (True, False):
        model = DPO(llm=llm_cfg(tiny_llama_dir, DTYPE), lora=LORA, beta=BETA, use_fast_path=fast)
        model.load_state_dict(plain_logps[0], strict=False)
        loss = model(collated(rows, packed=True))['loss']
        loss.backward()
        results.append((float(loss), [p.grad.clone() for p in model.parameters() if p.requires_grad]))
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-6)
    for fast_grad, plain_grad in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(fast_grad, plain_grad, rtol=1e-5, atol=1e-8)


def test_the_lora_reference_is_the_base_model_with_no_second_copy(tiny_llama_dir, rows, plain_logps):
    """Adapters switched off in every fused and unfused LoRA layer: the reference rewards are
    the plain base model's; only one set of base weights exists."""
    model = DPO(llm=llm_cfg(tiny_llama_dir, DTYPE), lora=LORA, beta=BETA)
    model.load_state_dict(plain_logps[0], strict=False)
    assert model.ref_llm is None
    model.train()
    reference = model.reference_logprobs(preference_collate_fn(rows)['data'])
    expected = torch.tensor([total for total, _, _ in plain_logps[2]], dtype=torch.float64)
    torch.testing.assert_close(reference.sums, expected, rtol=1e-9, atol=1e-9)
    bases = [p for n, p in model.named_parameters() if 'q_proj.base_layer' in n]
    assert len(bases) == 2  # two layers, one copy each
    assert all(m.training for m in model.modules()), 'train mode is back'


def test_full_finetuning_keeps_a_frozen_reference_outside_the_checkpoint(tiny_llama_dir, rows):
    model = DPO(llm=llm_cfg(tiny_llama_dir, DTYPE), beta=BETA)
    assert model.ref_llm is not None
    assert not any(p.requires_grad for p in model.ref_llm.parameters())
    assert not any(key.startswith('ref_llm') for key in model.state_dict())
    batch = preference_collate_fn(rows)['data']
    out = model(batch)
    assert float(out['loss']) == pytest.approx(math.log(2), abs=1e-6)  # policy = reference
    out['loss'].backward()
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0).step()
    after = model(batch)
    assert float(after['loss']) != pytest.approx(math.log(2), abs=1e-4)
    before = model.reference_logprobs(batch).sums
    torch.testing.assert_close(model.reference_logprobs(batch).sums, before)


def test_orpo_loss_equals_the_formula(tiny_llama_dir, rows, plain_logps):
    model = ORPO(llm=llm_cfg(tiny_llama_dir, DTYPE), lora=LORA, beta=BETA)
    model.load_state_dict(plain_logps[0], strict=False)
    policy = plain_logps[1]
    chosen_tokens = torch.cat([policy[i][2] for i in range(0, len(policy), 2)])
    nll = -float(chosen_tokens.mean())
    log_odds_terms = []
    for i in range(0, len(policy), 2):
        c, r = policy[i][0] / policy[i][1], policy[i + 1][0] / policy[i + 1][1]
        log_odds = (c - r) - (math.log(1 - math.exp(c)) - math.log(1 - math.exp(r)))
        log_odds_terms.append(-math.log1p(math.exp(-log_odds)))
    expected = nll - BETA * sum(log_odds_terms) / len(log_odds_terms)
    for packed in (False, True):
        out = model(collated(rows, packed))
        assert float(out['loss']) == pytest.approx(expected, rel=1e-9)
        assert float(out['nll']) == pytest.approx(nll, rel=1e-9)


@pytest.mark.parametrize('loss_type, penalty_type', [('ranking', 'log_barrier'), ('focal', 'L2'),
                                                     ('ranking', 'none')])
def test_reward_model_loss_equals_the_formula(tiny_llama_dir, reward_rows, loss_type, penalty_type):
    model = RewardModel(llm=llm_cfg(tiny_llama_dir, DTYPE), lora=dict(LORA, task_type='FEATURE_EXTRACTION'),
                        loss_type=loss_type, penalty_type=penalty_type, penalty_weight=0.05)
    with torch.no_grad():
        model.v_head.weight.copy_(torch.randn(model.v_head.weight.shape,
                                              generator=torch.Generator().manual_seed(3)))
    plain = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float64).eval()
    scores = []
    with torch.no_grad():
        for row in reward_rows:
            for ids, labels in sequences(row):
                assert sum(label != IGNORE_INDEX for label in labels) == 1
                hidden = plain.model(input_ids=torch.tensor([ids])).last_hidden_state[0]
                position = next(i for i, label in enumerate(labels) if label != IGNORE_INDEX)
                scores.append(float(hidden[position] @ model.v_head.weight[0]))
    losses = []
    for c, r in zip(scores[0::2], scores[1::2]):
        rank = math.log1p(math.exp(-(c - r)))
        if loss_type == 'focal':
            p = 2 * max(0.0, 1 / (1 + math.exp(-(c - r))) - 0.5)
            rank *= (1 - p) ** 2
        clamp = lambda s: min(max(s, -5 + 1e-3), 5 - 1e-3)  # noqa: E731
        penalty = {'log_barrier': sum(-math.log(5 - clamp(s)) - math.log(clamp(s) + 5) for s in (c, r)),
                   'L2': c * c + r * r, 'none': 0.0}[penalty_type]
        losses.append(rank + 0.05 * penalty)
    for packed in (False, True):
        out = model(collated(reward_rows, packed))
        assert float(out['loss']) == pytest.approx(sum(losses) / len(losses), rel=1e-9)
        assert float(out['acc']) == sum(c > r for c, r in zip(scores[0::2], scores[1::2])) / len(losses)
    predicted = model(preference_collate_fn(reward_rows)['data'], mode='predict')
    assert [p['chosen'] for p in predicted] == pytest.approx(scores[0::2], rel=1e-9)
    keys = set(model.state_dict())
    assert 'v_head.weight' in keys and all('lora_' in k or k == 'v_head.weight' for k in keys)


def test_settings_outside_xtuners_vocabulary_are_refused_in_one_line(tiny_llama_dir):
    with pytest.raises(ConfigError, match="model.loss_type: expected one of sigmoid, hinge, ipo"):
        DPO(llm=llm_cfg(tiny_llama_dir, DTYPE), lora=LORA, loss_type='sigmoidal')
    with pytest.raises(ConfigError, match='label_smoothing=0.1 has no effect'):
        DPO(llm=llm_cfg(tiny_llama_dir, DTYPE), lora=LORA, loss_type='hinge', label_smoothing=0.1)
    with pytest.raises(ConfigError, match='model.penalty_type'):
        RewardModel(llm=llm_cfg(tiny_llama_dir, DTYPE), penalty_type='l1')


def test_a_batch_from_the_sft_collate_fn_is_refused(tiny_llama_dir, rows):
    from xft.dataset.collate_fns import default_collate_fn
    model = DPO(llm=llm_cfg(tiny_llama_dir, DTYPE), lora=LORA)
    with pytest.raises(ConfigError, match='needs batches from preference_collate_fn'):
        model(default_collate_fn(rows)['data'])


def test_weighing_micro_batches_by_their_pairs_gives_the_whole_batchs_gradient(tiny_llama_dir, rows,
                                                                              plain_logps):
    """What a training loop that normalizes a step over its loss units does with
    ``count_loss_units``: micro-batches of 3 pairs (packed) and 1 pair, each mean weighed by its
    share of the step's pairs, give the gradient of all 4 pairs in one batch."""
    def gradient(batches):
        model = DPO(llm=llm_cfg(tiny_llama_dir, DTYPE), lora=LORA, beta=BETA)
        model.load_state_dict(plain_logps[0], strict=False)
        total = sum(model.count_loss_units(batch) for batch in batches)
        for batch in batches:
            (model(batch)['loss'] * model.count_loss_units(batch) / total).backward()
        return [p.grad for p in model.parameters() if p.requires_grad]

    three = pack_pairs(datasets.Dataset.from_list(rows[:3]), 3 * max(r['length'] for r in rows))
    assert len(three) == 1
    parts = [preference_collate_fn(list(three), use_varlen_attn=True)['data'],
             preference_collate_fn(rows[3:])['data']]
    assert [DPO.count_loss_units(batch) for batch in parts] == [3, 1]
    for split, whole in zip(gradient(parts), gradient([collated(rows, packed=False)])):
        torch.testing.assert_close(split, whole, rtol=1e-9, atol=1e-12)


def test_the_reference_cache_skips_the_reference_forward_and_changes_nothing(tiny_llama_dir, rows,
                                                                             plain_logps, monkeypatch):
    """A pair seen before (the next epoch; here packed differently) takes the reference's
    values from the cache: no reference forward, the same loss and gradients as without it."""
    results = {}
    for cache in (True, False):
        model = DPO(llm=llm_cfg(tiny_llama_dir, DTYPE), lora=LORA, beta=BETA, cache_reference=cache)
        model.load_state_dict(plain_logps[0], strict=False)
        forwards = []
        compute = model.reference_logprobs
        monkeypatch.setattr(model, 'reference_logprobs', lambda data: forwards.append(1) or compute(data))
        model(collated(rows, packed=False))  # the first epoch
        loss = model(collated(rows, packed=True))['loss']  # the same pairs, packed
        loss.backward()
        results[cache] = (len(forwards), float(loss), [p.grad for p in model.parameters() if p.requires_grad])
    assert results[True][0] == 1 and results[False][0] == 2
    assert results[True][1] == results[False][1]
    for cached, uncached in zip(results[True][2], results[False][2]):
        assert torch.equal(cached, uncached)
