"""DPO and its variants (XTuner 0.1.23's ``xtuner.model.dpo.DPO``, same arguments).

    model = dict(type=DPO, loss_type='sigmoid', beta=0.1, label_smoothing=0.0,
                 use_varlen_attn=True, llm=dict(...), lora=dict(type=LoraConfig, ...))

Each step runs the reference over the pair batch (eval mode, no gradients), then the policy,
and takes the loss of ``xft.model.preference_loss.dpo_losses`` from the per-sequence answer
log-probabilities (``xft.model.sequence_logprobs``, chunked on the fast path). The reference:

- with LoRA and no ``ref_llm``: the same model with its adapters switched off
  (``xft.model.reference.adapters_off``), so the weights are in memory once;
- with full fine-tuning and no ``ref_llm``: a frozen copy of the model as it starts;
- ``ref_llm``: a model config dict (as ``llm``) built and frozen as the reference.
"""
from mmengine.logging import print_log

from .fast_path import apply_fast_path
from .preference import PreferenceModel, chosen_and_rejected
from .preference_loss import MEAN_LOGP_LOSS_TYPES, check_dpo_settings, dpo_losses
from .reference import adapters_off, freeze, frozen_copy, reference_forward
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
    """

    def __init__(self, llm, ref_llm=None, beta=0.1, loss_type='sigmoid', label_smoothing=0.0,
                 **kwargs):
        check_dpo_settings(loss_type, beta, label_smoothing)
        super().__init__(llm, **kwargs)
        self.beta, self.loss_type, self.label_smoothing = beta, loss_type, label_smoothing
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

    def pair_logprobs(self, logprobs):
        """(chosen, rejected) log-probabilities as the loss type compares them."""
        values = logprobs.means() if self.loss_type in MEAN_LOGP_LOSS_TYPES else logprobs.sums
        return chosen_and_rejected(values)

    def compute_loss(self, data) -> dict:
        reference = self.pair_logprobs(self.reference_logprobs(data))
        policy = self.pair_logprobs(self.logprobs(self.llm, data))
        losses, metrics = dpo_losses(*policy, *reference, loss_type=self.loss_type, beta=self.beta,
                                     label_smoothing=self.label_smoothing)
        return {'loss': losses.mean(), **metrics}

    def pair_scores(self, data):
        """Implicit rewards: beta times the policy-to-reference log-ratio of each answer."""
        reference = self.pair_logprobs(self.reference_logprobs(data))
        with reference_forward(self.llm):
            policy = self.pair_logprobs(self.logprobs(self.llm, data))
        return tuple(self.beta * (p - r) for p, r in zip(policy, reference))
