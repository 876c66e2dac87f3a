"""ThroughputHook: tokens/s per GPU, TFLOP/s and MFU of every training iteration.

XTuner's hook of the same name multiplies a dense forward count by 3 (4 with activation
checkpointing), whatever is trained. That overstates LoRA runs: frozen weights get no weight
gradient, so their backward is one matmul, not two. Here each term is counted for what runs:

- forward: every decoder linear (2 FLOPs per weight per token), the LoRA adapters (2 per
  adapter weight per token), attention scores and values (4 * pairs * hidden per layer, pairs
  being the causal query-key pairs of each sample, so packed rows count per sample), the head;
- backward: input grads for everything (1x forward), plus weight grads (another 1x) only for
  weights that train (the adapters; the linears and head too in full fine-tuning), attention 2x;
- recomputation: the decoder layers' forward once more when activation checkpointing is on.

`train/tflops` is the hardware work (with recomputation) per second; MFU is the model work
(without recomputation) over the device's dense bf16 peak, the usual definition, so a
recomputing run cannot raise its MFU by recomputing. The MFU scalar's name says what it is
measured against, e.g. `mfu_of_H200_989TFLOPs_bf16` (one name per run, so the log line
reads `mfu_of_H200_989TFLOPs_bf16: 0.4100`). Tokens are the non-padding tokens of the batch
(`attention_mask.sum()`), per GPU. On CUDA `train/peak_gib` is the peak allocated memory
since the previous iteration's log plus the CUDA-graph pools (allocations inside a graph
replay are invisible to `max_memory_allocated`). Without CUDA, only tokens/s and TFLOP/s.

`xft train` adds this hook to every run whose config lacks one
(`add_throughput_hook_if_missing`), so every zoo config logs tokens/s beside loss and lr.
"""
import dataclasses
from typing import Optional

import torch
from mmengine.hooks import Hook
from mmengine.model.wrappers import is_model_wrapper

# Dense bf16 tensor-core peaks from the vendors' datasheets (TFLOP/s, no sparsity).
PEAK_BF16_TFLOPS = {
    'H200': 989.0, 'H100': 989.0, 'H800': 989.0, 'H20': 148.0, 'A100': 312.0, 'A800': 312.0,
    'A10G': 70.0, 'L40S': 362.0, 'L4': 121.0, 'RTX 4090': 165.0, 'RTX 3090': 71.0, 'V100': 125.0,
}


@dataclasses.dataclass(frozen=True)
class ModelShape:
    """What the FLOP count needs to know about a decoder-only transformer."""
    num_layers: int
    hidden_size: int
    vocab_size: int
    linear_params_per_layer: int  # q, k, v, o and the MLP projections
    lora_params: int = 0  # adapter weights (A and B) over all layers
    full_finetune: bool = False  # do the base linears and head get weight grads?
    checkpointing: bool = False

    @classmethod
    def from_config(cls, config, **kwargs) -> 'ModelShape':
        """From a transformers config (Llama-style attention and a gated MLP).

        >>> from transformers import LlamaConfig
        >>> ModelShape.from_config(LlamaConfig(hidden_size=64, intermediate_size=128,
        ...     num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        ...     vocab_size=100)).linear_params_per_layer
        36864
        """
        h = config.hidden_size
        heads = config.num_attention_heads
        head_dim = getattr(config, 'head_dim', None) or h // heads
        kv_heads = getattr(config, 'num_key_value_heads', None) or heads
        q_out, kv_out = heads * head_dim, kv_heads * head_dim
        ffn = getattr(config, 'intermediate_size', None) or 4 * h
        attention = h * q_out + 2 * h * kv_out + q_out * h
        mlp = 3 * h * ffn  # gate, up, down
        return cls(num_layers=config.num_hidden_layers, hidden_size=h,
                   vocab_size=config.vocab_size, linear_params_per_layer=attention + mlp,
                   **kwargs)


def step_flops(shape: ModelShape, n_tokens: int, attention_pairs: int):
    """(model FLOPs, hardware FLOPs) of one forward+backward over `n_tokens` tokens.

    attention_pairs: query-key pairs one layer's causal attention scores, summed over the
    batch's samples (L*(L+1)/2 for one sample of L tokens).

    >>> shape = ModelShape(num_layers=1, hidden_size=2, vocab_size=3, linear_params_per_layer=5)
    >>> step_flops(shape, n_tokens=10, attention_pairs=55)  # linears 100, attention 440, head 120
    (1760, 1760)
    >>> step_flops(dataclasses.replace(shape, checkpointing=True), 10, 55)  # + 100 + 440 again
    (1760, 2300)
    """
    layer_linear = 2 * shape.linear_params_per_layer * n_tokens * shape.num_layers
    lora = 2 * shape.lora_params * n_tokens
    attention = 4 * attention_pairs * shape.hidden_size * shape.num_layers
    head = 2 * shape.hidden_size * shape.vocab_size * n_tokens
    weight_grad_factor = 2 if shape.full_finetune else 1
    forward = layer_linear + lora + attention + head
    backward = (weight_grad_factor * (layer_linear + head) + 2 * lora + 2 * attention)
    model = forward + backward
    recompute = (layer_linear + lora + attention) if shape.checkpointing else 0
    return model, model + recompute


def batch_tokens_and_pairs(data: dict):
    """Non-padding tokens of a batch and the causal query-key pairs of its samples.

    Packed rows (`cumulative_len`, one tensor of sample boundaries per row) count each
    sample's own pairs; otherwise each row is one sample of `attention_mask.sum(row)` tokens.

    >>> batch_tokens_and_pairs({'input_ids': torch.ones(1, 4, dtype=torch.long),
    ...                         'cumulative_len': [torch.tensor([0, 1, 4])]})
    (4, 7)
    """
    input_ids = data['input_ids']
    mask = data.get('attention_mask')
    lengths = mask.sum(-1) if mask is not None else torch.full(
        (input_ids.shape[0], ), input_ids.shape[-1])
    n_tokens = int(lengths.sum())
    cumulative = data.get('cumulative_len')
    if cumulative is not None:
        sample_lengths = torch.cat([torch.as_tensor(c).diff() for c in cumulative])
    else:
        sample_lengths = lengths
    sample_lengths = sample_lengths.to(torch.int64)
    pairs = int((sample_lengths * (sample_lengths + 1) // 2).sum())
    return n_tokens, pairs


def device_key(device_name: str) -> Optional[str]:
    """The key of `PEAK_BF16_TFLOPS` a device name matches (longest first), or None.

    >>> device_key('NVIDIA H100 80GB HBM3'), device_key('cpu')
    ('H100', None)
    """
    for key in sorted(PEAK_BF16_TFLOPS, key=len, reverse=True):
        if key in device_name:
            return key
    return None


def peak_tflops(device_name: str) -> Optional[float]:
    """The datasheet dense bf16 peak for a device name, or None when unknown.

    >>> peak_tflops('NVIDIA H200')
    989.0
    """
    key = device_key(device_name)
    return PEAK_BF16_TFLOPS[key] if key else None


def mfu_name(device_name: str, peak: float) -> str:
    """The MFU scalar's name, naming the peak it divides by.

    >>> mfu_name('NVIDIA H200', 989.0)
    'mfu_of_H200_989TFLOPs_bf16'
    >>> mfu_name('Some GPU', 500.0)
    'mfu_of_500TFLOPs'
    """
    key = device_key(device_name)
    if key is not None and PEAK_BF16_TFLOPS[key] == peak:
        return f'mfu_of_{key.replace(" ", "")}_{peak:g}TFLOPs_bf16'
    return f'mfu_of_{peak:g}TFLOPs'  # a peak given by the user (e.g. a measured matmul rate)


def graph_pool_bytes() -> int:
    """Bytes reserved by CUDA-graph memory pools (any pool but the default one)."""
    total = 0
    for segment in torch.cuda.memory_snapshot():
        pool = tuple(segment.get('segment_pool_id', (0, 0)) or (0, 0))
        if pool != (0, 0):
            total += segment['total_size']
    return total


def _inner_llm(model):
    model = model.module if is_model_wrapper(model) else model
    llm = getattr(model, 'llm', model)
    get_base = getattr(llm, 'get_base_model', None)
    return model, (get_base() if callable(get_base) else llm)


def shape_of(model) -> ModelShape:
    """ModelShape of an xft model (SupervisedFinetune or a bare transformers model)."""
    wrapper, hf = _inner_llm(model)
    lora = sum(p.numel() for n, p in wrapper.named_parameters() if 'lora_' in n)
    trainable = [n for n, p in wrapper.named_parameters() if p.requires_grad]
    full = bool(trainable) and lora == 0
    checkpointing = any(getattr(m, 'gradient_checkpointing', False) is True
                        for m in hf.modules())
    return ModelShape.from_config(hf.config, lora_params=lora, full_finetune=full,
                                  checkpointing=checkpointing)


class ThroughputHook(Hook):
    """Logs `train/tokens_per_sec` (per GPU), `train/tflops` and, on CUDA, MFU against the
    device's peak (`train/mfu_of_<device>_<peak>TFLOPs_bf16`) and `train/peak_gib`.

    Use it in a config as `custom_hooks = [dict(type=ThroughputHook)]` (`xft train` adds one
    when a config has none); the model's shape, LoRA size and activation checkpointing are
    read from the model when training starts. `peak_tflops` overrides the device's datasheet
    peak (e.g. a measured matmul rate).
    """
    # After IterTimerHook (NORMAL, 50), which records this iteration's `train/time`, and
    # before LoggerHook (BELOW_NORMAL, 60), which prints the scalars (and resets the
    # device's peak-memory counter).
    priority = 55
    # The graph pools' size changes only when graphs are recorded: measured this often.
    POOL_EVERY_N_ITERS = 100

    def __init__(self, peak_tflops: Optional[float] = None):
        self.peak = peak_tflops
        self.shape: Optional[ModelShape] = None
        self.mfu_key: Optional[str] = None
        self._pool_bytes = 0
        self._iters = 0

    def before_train(self, runner) -> None:
        self.shape = shape_of(runner.model)
        if torch.cuda.is_available():
            name = torch.cuda.get_device_name()
            if self.peak is None:
                self.peak = peak_tflops(name)
            if self.peak:
                self.mfu_key = f'train/{mfu_name(name, self.peak)}'

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if not isinstance(data_batch, dict) or self.shape is None:
            return
        data = data_batch.get('data', data_batch)
        if not isinstance(data, dict) or 'input_ids' not in data:
            return
        hub = runner.message_hub
        if 'train/time' not in hub.log_scalars:
            return
        seconds = hub.get_scalar('train/time').current()
        if seconds <= 0:
            return
        n_tokens, pairs = batch_tokens_and_pairs(data)
        model_flops, hardware_flops = step_flops(self.shape, n_tokens, pairs)
        hub.update_scalar('train/tokens_per_sec', n_tokens / seconds)
        hub.update_scalar('train/tflops', hardware_flops / seconds / 1e12)
        if self.mfu_key is not None:
            hub.update_scalar(self.mfu_key, model_flops / seconds / 1e12 / self.peak)
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            # Graphs are recorded in the first iterations (after a warm-up), rarely later.
            if self._iters < 10 or self._iters % self.POOL_EVERY_N_ITERS == 0:
                self._pool_bytes = graph_pool_bytes()
            self._iters += 1
            peak = torch.cuda.max_memory_allocated() + self._pool_bytes
            hub.update_scalar('train/peak_gib', peak / 2**30)


def add_throughput_hook_if_missing(runner) -> bool:
    """Register a `ThroughputHook` on `runner` unless it has one; True if one was added.

    `xft train` calls it so that every config, XTuner's included (which list the hook in
    `custom_hooks` only sometimes), logs tokens/s and MFU in each log line.
    """
    if any(isinstance(hook, ThroughputHook) for hook in runner.hooks):
        return False
    runner.register_hook(ThroughputHook())
    return True
