"""DPO and its variants (XTuner 0.1.23's ``xtuner.model.dpo.DPO``, same arguments).

    model = dict(type=DPO, loss_type='sigmoid', beta=0.1, label_smoothing=0.0,
                 use_varlen_attn=True, llm=dict(...), lora=dict(type=LoraConfig, ...))

Each step runs the reference over the pair batch (eval mode, no gradients; from the second
epoch on its values come from a cache instead), then the policy, and takes the loss of
``xft.model.preference_loss.dpo_losses`` from the per-sequence answer log-probabilities
(``xft.model.sequence_logprobs``, chunked on the fast path). The reference:

- with LoRA and no ``ref_llm``: the same model with its adapters switched off
  (``xft.model.reference.adapters_off``), so the weights are in memory once;
- with full fine-tuning and no ``ref_llm``: a frozen copy of the model as it starts;
- ``ref_llm``: a model config dict (as ``llm``) built and frozen as the reference.
"""
from mmengine.logging import print_log

from xft.dataset.collate_fns.preference_collate_fn import SEQUENCE_INDEX

from .fast_path import apply_fast_path
from .preference import PreferenceModel, chosen_and_rejected
from .preference_loss import MEAN_LOGP_LOSS_TYPES, check_dpo_settings, dpo_losses
from .reference import adapters_off, freeze, frozen_copy, reference_forward
from .reference_cache import ReferenceCache, sequence_keys
from .sft import build_llm


class DPO(PreferenceModel):
    """Direct preference optimization (Rafailov et al. 2023) and the variants XTuner has.

    Args:
        llm, lora and the rest: as ``SupervisedFinetune``.
        ref_llm: the reference model's config dict; None: the policy's own base (LoRA) or a
            frozen copy of the starting model (full fine-tuning).
        beta: the strength of the pull towards the reference (the temperature of the loss).
        loss_type: one of ``preference_loss.DPO_LOSS_TYPES`` (sigmoid, hinge, ipo, kto_pair,
            sppo_hard, nca_pair, robust).
        label_smoothing: the assumed share of flipped labels (sigmoid and robust only).
        cache_reference: remember the reference's log-probabilities of each answer, so that a
            pair seen before (a later epoch) needs no reference forward
            (``xft.model.reference_cache``).
    """

    def __init__(self, llm, ref_llm=None, beta=0.1, loss_type='sigmoid', label_smoothing=0.0,
                 cache_reference=True, **kwargs):
        check_dpo_settings(loss_type, beta, label_smoothing)
        super().__init__(llm, **kwargs)
        self.beta, self.loss_type, self.label_smoothing = beta, loss_type, label_smoothing
        self.reference_cache = ReferenceCache() if cache_reference else None
        self.uses_lora = kwargs.get('lora') is not None
        # Not a registered submodule: its weights are frozen and never checkpointed.
        reference = None
        if ref_llm is not None:
            reference = freeze(build_llm(ref_llm))
            if self.fast_path is not None:
                apply_fast_path(reference, gradient_checkpointing=False)
        elif not self.uses_lora:
            reference = frozen_copy(self.llm)
            for module in reference.modules():
                if getattr(module, 'gradient_checkpointing', False):
                    module.gradient_checkpointing = False
        object.__setattr__(self, 'ref_llm', reference)
        described = ('model.ref_llm' if ref_llm is not None else
                     'a frozen copy of the model' if reference is not None else
                     'the base model (adapters off)')
        print_log(f'DPO: loss_type={loss_type}, beta={beta}; reference: {described}', logger='current')

    def _apply(self, fn, *args, **kwargs):
        """``.to(device)`` and friends reach the reference too (it is not a submodule)."""
        super()._apply(fn, *args, **kwargs)
        if self.ref_llm is not None:
            self.ref_llm._apply(fn, *args, **kwargs)
        return self

    def reference_logprobs(self, data):
        if self.ref_llm is not None:
            with reference_forward(self.ref_llm):
                return self.logprobs(self.ref_llm, data)
        with reference_forward(self.llm), adapters_off(self.llm):
            return self.logprobs(self.llm, data)

    def reference_sums(self, data):
        """(sums, counts) of the reference's answer log-probabilities, from the cache when
        every sequence of the batch was seen before (``xft.model.reference_cache``)."""
        self.count_loss_units(data)  # a batch from another collate fn is refused in one line
        if self.reference_cache is None:
            reference = self.reference_logprobs(data)
            return reference.sums, reference.counts
        keys = sequence_keys(data['input_ids'], data['labels'], data[SEQUENCE_INDEX])
        cached = self.reference_cache.lookup(keys, data['input_ids'].device)
        if cached is not None:
            return cached
        reference = self.reference_logprobs(data)
        self.reference_cache.store(keys, reference.sums, reference.counts)
        return reference.sums, reference.counts

    def pair_logprobs(self, sums, counts):
        """(chosen, rejected) log-probabilities as the loss type compares them."""
        mean = self.loss_type in MEAN_LOGP_LOSS_TYPES
        return chosen_and_rejected(sums / counts.clamp(min=1) if mean else sums)

    def compute_loss(self, data) -> dict:
        reference = self.pair_logprobs(*self.reference_sums(data))
        policy_logprobs = self.logprobs(self.llm, data)
        policy = self.pair_logprobs(policy_logprobs.sums, policy_logprobs.counts)
        losses, metrics = dpo_losses(*policy, *reference, loss_type=self.loss_type, beta=self.beta,
                                     label_smoothing=self.label_smoothing)
        return {'loss': losses.mean(), **metrics}

    def pair_scores(self, data):
        """Implicit rewards: beta times the policy-to-reference log-ratio of each answer."""
        reference = self.pair_logprobs(*self.reference_sums(data))
        with reference_forward(self.llm):
            policy_logprobs = self.logprobs(self.llm, data)
        policy = self.pair_logprobs(policy_logprobs.sums, policy_logprobs.counts)
        return tuple(self.beta * (p - r) for p, r in zip(policy, reference))
