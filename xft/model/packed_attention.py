"""Attention for packed rows: samples packed into one row never attend to each other.

A packed batch from ``xft.dataset.collate_fns.default_collate_fn`` carries ``cumulative_len``
(per row, the sample boundaries [0, ..., L]) and ``max_seqlen``, besides ``input_ids``,
``labels``, ``attention_mask`` and restarting ``position_ids``. ``packed_attention_kwargs``
turns that batch into the keyword arguments of a Hugging Face causal-LM forward:

==========================  ================================================================
attn_implementation         what keeps samples apart
==========================  ================================================================
flash_attention_2/3, any    ``cu_seq_lens_q/k`` + ``max_length_q/k`` (flash-attn's varlen kernel)
name containing 'flash'     and no attention_mask; HF's flash path reads them from the kwargs
``xft_varlen``              the same arguments, run by torch's ``varlen_attn`` (torch >= 2.10,
                            CUDA), ``cu_seq_lens`` padded to a fixed length (CUDA graphs);
                            registered by ``register_varlen_attention()``; what
                            ``SupervisedFinetune`` picks on CUDA (``choose_packed_attention``)
flex_attention              a flex-attention BlockMask of the same pattern
sdpa                        a block-diagonal causal boolean mask (B, 1, L, L)
eager (and anything else)   the same mask as an additive float mask in ``dtype``
==========================  ================================================================

Batches without ``cumulative_len`` (unpacked rows) pass through unchanged. The function never
modifies ``data``. A 4D mask is returned as-is by transformers' mask builder (5.17 and 5.24),
so no model class is patched.

Measured on one H200 (torch 2.11, transformers 5.17), a 4-layer, 2048-wide Llama in bf16, one
8k-token row of 16 documents, forward + backward: SDPA with the block mask 62.0 ms, 7.72 GiB;
``xft_varlen`` 38.8 ms, 7.35 GiB. Packed loss equals the per-sample loss there for eager, sdpa
(float32 to 1e-6) and xft_varlen (bf16, to 2e-5). SDPA's block mask also leaves the flash
kernel for the slower masked one and, at 8k tokens, costs an 8k x 8k mask per row: so on a GPU
whose torch has ``varlen_attn``, ``choose_packed_attention`` switches an ``sdpa`` model to
``xft_varlen`` (unpacked rows, such as generation's, still run SDPA with their usual mask).

How ``SupervisedFinetune.forward`` calls it::

    kwargs = packed_attention_kwargs(data, self.llm.config._attn_implementation,
                                     dtype=self.llm.dtype)
    outputs = self.llm(**kwargs)          # kwargs still holds 'labels'
"""
import torch

PACKED_KEYS = ('cumulative_len', 'max_seqlen')
VARLEN_ATTENTION_NAME = 'xft_varlen'
# Sample boundaries of a packed batch are padded to a multiple of this many (empty samples at
# the end): a 2k row of alpaca holds about 14 samples, an 8k row about 55, so nearly every
# batch has one shape (a CUDA-graph signature) and a rare crowded row adds a second.
VARLEN_BOUNDARY_BUCKET = 64


def packed_attention_kwargs(data, attn_implementation, dtype=torch.float32):
    """Forward kwargs for ``data`` (a collated batch); see the module docstring."""
    kwargs = {key: value for key, value in data.items() if key not in PACKED_KEYS}
    cumulative = data.get('cumulative_len')
    if cumulative is None:
        return kwargs
    implementation = attn_implementation or 'eager'
    device = data['input_ids'].device
    # Boundaries are a few integers per row: work on them on the CPU, move the result once.
    cumulative = [torch.as_tensor(c).cpu() for c in cumulative]
    if 'flash' in implementation or implementation == VARLEN_ATTENTION_NAME:
        # Our own varlen path pads the boundaries to a fixed count, so that every packed batch
        # has the same argument shapes and a CUDA graph recorded for one replays for the next.
        bucket = VARLEN_BOUNDARY_BUCKET if implementation == VARLEN_ATTENTION_NAME else None
        varlen = varlen_kwargs(cumulative, data['input_ids'].shape[1], bucket)
        varlen['cu_seq_lens_q'] = varlen['cu_seq_lens_k'] = varlen['cu_seq_lens_q'].to(device)
        kwargs.update(varlen)
        kwargs['attention_mask'] = None
        return kwargs
    segments = segment_ids(cumulative, data['input_ids'].shape[1]).to(device)
    if implementation == 'flex_attention':
        kwargs['attention_mask'] = document_block_mask(segments)
        return kwargs
    allowed = block_causal_mask(segments)
    if implementation == 'sdpa':
        kwargs['attention_mask'] = allowed
    else:
        additive = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
        kwargs['attention_mask'] = additive.masked_fill(~allowed, torch.finfo(dtype).min)
    return kwargs


def segment_ids(cumulative_len, width):
    """(B, L) long tensor: the index of the sample each position belongs to."""
    rows = []
    for cumulative in cumulative_len:
        cumulative = torch.as_tensor(cumulative, dtype=torch.long)
        lengths = cumulative[1:] - cumulative[:-1]
        rows.append(torch.repeat_interleave(torch.arange(len(lengths)), lengths)[:width])
    return torch.stack(rows)


def block_causal_mask(segments):
    """(B, 1, L, L) bool: query i may see key j when j <= i and both are in one sample."""
    width = segments.shape[1]
    causal = torch.ones(width, width, dtype=torch.bool, device=segments.device).tril()
    same_sample = segments.unsqueeze(2) == segments.unsqueeze(1)
    return (same_sample & causal).unsqueeze(1)


def document_mask_mod(segments):
    """flex-attention mask_mod: the pattern of ``block_causal_mask`` as a function."""
    def same_sample_causal(batch, head, query, key):
        return (segments[batch, query] == segments[batch, key]) & (query >= key)
    return same_sample_causal


def document_block_mask(segments):
    """A flex-attention BlockMask of that pattern; fully masked blocks are skipped.

    Checked on the CPU with transformers 5.24 (packed loss equal to SDPA's with the block
    mask; the first call compiles for about a minute there).
    """
    from torch.nn.attention.flex_attention import create_block_mask

    batch, width = segments.shape
    return create_block_mask(document_mask_mod(segments), batch, None, width, width,
                             device=segments.device)


def varlen_kwargs(cumulative_len, width, bucket=None):
    """flash-attn varlen arguments over the flattened batch (row b starts at b * width).

    With ``bucket``, the boundaries are padded with empty samples (repeats of the total) to
    ``k * bucket + 1`` entries and the maximum length is the row width: the arguments' shapes
    and values then depend on the batch's shape alone, not on where its samples end.

    >>> kw = varlen_kwargs([torch.tensor([0, 3, 8])], 8)
    >>> kw['cu_seq_lens_q'].tolist(), kw['max_length_q']
    ([0, 3, 8], 5)
    >>> kw = varlen_kwargs([torch.tensor([0, 3, 8])], 8, bucket=4)
    >>> kw['cu_seq_lens_q'].tolist(), kw['max_length_q']
    ([0, 3, 8, 8, 8], 8)
    """
    pieces = [torch.as_tensor(c, dtype=torch.int32).cpu()[:-1] + row * width
              for row, c in enumerate(cumulative_len)]
    total = len(cumulative_len) * width
    cu_seqlens = torch.cat(pieces + [torch.tensor([total], dtype=torch.int32)])
    max_length = int((cu_seqlens[1:] - cu_seqlens[:-1]).max())
    if bucket:
        samples = len(cu_seqlens) - 1
        padded = -(-samples // bucket) * bucket
        cu_seqlens = torch.cat([cu_seqlens, cu_seqlens.new_full((padded - samples, ), total)])
        max_length = width
    return {'cu_seq_lens_q': cu_seqlens, 'cu_seq_lens_k': cu_seqlens,
            'max_length_q': max_length, 'max_length_k': max_length}


def varlen_attention_available() -> bool:
    """Whether this torch has ``varlen_attn`` and a CUDA device to run it."""
    if not torch.cuda.is_available():
        return False
    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401
    except ImportError:
        return False
    return True


def choose_packed_attention(model, available=None) -> str:
    """Switch an SDPA ``model`` (a transformers model) to ``xft_varlen`` where torch's varlen
    kernel runs; returns the attention implementation the model uses now.

    Packed rows then run the flash varlen kernel over their samples instead of SDPA's masked
    kernel over a (L, L) mask; everything else (unpacked rows, generation with padding) still
    runs SDPA. Other implementations (eager, flash_attention_2, flex) are the user's choice
    and stay. ``available`` overrides the check (tests).

    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> m = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32,
    ...     num_hidden_layers=1, num_attention_heads=2, attn_implementation='sdpa'))
    >>> choose_packed_attention(m, available=False)
    'sdpa'
    """
    current = model.config._attn_implementation
    usable = varlen_attention_available() if available is None else available
    if current != 'sdpa' or not usable:
        return current
    name = register_varlen_attention()
    model.set_attn_implementation(name)
    return name


def register_varlen_attention():
    """Register ``attn_implementation='xft_varlen'``: torch's varlen_attn over cu_seq_lens.

    Needs torch's ``torch.nn.attention.varlen.varlen_attn`` (CUDA). Returns the name to pass as
    ``attn_implementation``. Unpacked batches (no cu_seq_lens) fall back to SDPA.
    """
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    def mask(**kwargs):
        # Without a padding mask (packed rows, or unpacked rows without padding) no mask is
        # built: varlen_attn takes the boundaries, and the SDPA fallback runs causal. A packed
        # batch would otherwise get transformers' (L, L) block mask from its position ids,
        # built and then ignored at every step. With padding (generation), SDPA's own mask.
        return None if kwargs.get('attention_mask') is None else sdpa_mask(**kwargs)

    AttentionInterface.register(VARLEN_ATTENTION_NAME, _varlen_attention_forward)
    ALL_MASK_ATTENTION_FUNCTIONS.register(VARLEN_ATTENTION_NAME, mask)
    return VARLEN_ATTENTION_NAME


def _varlen_attention_forward(module, query, key, value, attention_mask, scaling=None,
                              dropout=0.0, cu_seq_lens_q=None, cu_seq_lens_k=None,
                              max_length_q=None, max_length_k=None, **kwargs):
    """query/key/value: (B, heads, L, D). Returns (B, L, heads, D) and no weights."""
    if cu_seq_lens_q is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward
        return sdpa_attention_forward(module, query, key, value, attention_mask,
                                      scaling=scaling, dropout=dropout, **kwargs)
    from torch.nn.attention.varlen import varlen_attn

    batch, heads, width, head_dim = query.shape
    groups = heads // key.shape[1]
    if groups > 1:  # grouped-query attention: give every query head its key/value head
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    flat = [t.transpose(1, 2).reshape(batch * width, heads, head_dim) for t in (query, key, value)]
    output = varlen_attn(*flat, cu_seq_lens_q, cu_seq_lens_k, max_length_q, max_length_k,
                         scale=scaling, **_causal_argument(varlen_attn))
    return output.reshape(batch, width, heads, head_dim), None


def _causal_argument(varlen_attn):
    """How this torch's varlen_attn is told to be causal (the keyword changed across releases)."""
    import inspect
    parameters = inspect.signature(varlen_attn).parameters
    if 'is_causal' in parameters:
        return {'is_causal': True}
    if 'window_size' in parameters:  # torch >= 2.12: (-1, 0) is causal
        return {'window_size': (-1, 0)}
    return {}
