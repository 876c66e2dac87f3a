"""Embeddings as large as the tokenizer: XTuner's ``SupervisedFinetune(tokenizer=...)``.

A tokenizer with added tokens (tool-call markers, a new chat format) has ids the model's
embeddings do not cover. As XTuner did, the input and output embeddings grow to the tokenizer's
length rounded up to a multiple of 64 (tensor-core friendly), and the new rows start at the mean
of the old ones (the new tokens start as an average token instead of noise).

Full fine-tuning trains the new rows like every weight. LoRA freezes the embeddings, so the new
rows would keep their mean forever and the model could never learn its new tokens; here they
train through peft's ``trainable_token_indices`` (on the input embedding, and on the output
embedding unless the two are tied, where peft keeps them tied). LLaMA-Factory puts both whole
matrices in ``modules_to_save`` instead; training only the new rows keeps a LoRA run a LoRA
run: for a 7B model with a 32k vocabulary, ``modules_to_save`` trains 262M more parameters
(about 4 GiB of AdamW state, a 0.5 GB adapter) where this trains 64 rows per matrix. Every new
row (also the padding ones) is trainable, so an adapter carries all rows that differ from the
resized base, and ``grow_base_to_adapter`` lets pth_to_hf, merge and chat rebuild that base.
"""
import json
import math
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from xft.utils.errors import ConfigError

PAD_TO_MULTIPLE_OF = 64


def embedding_rows_for(n_tokens: int, rows: int) -> Optional[int]:
    """Rows the embeddings need for a tokenizer of ``n_tokens``; None when ``rows`` suffice.

    >>> embedding_rows_for(32002, 32000), embedding_rows_for(32000, 32000), embedding_rows_for(10, 64)
    (32064, None, None)
    """
    if n_tokens <= rows:
        return None
    return math.ceil(n_tokens / PAD_TO_MULTIPLE_OF) * PAD_TO_MULTIPLE_OF


def grow_embeddings(llm, rows: int) -> int:
    """Resize input and output embeddings to ``rows``; the new rows get the mean of the old.
    Returns the old row count."""
    old = llm.get_input_embeddings().weight.shape[0]
    if not isinstance(llm.get_output_embeddings(), (nn.Linear, type(None))):
        raise ConfigError(f'model.tokenizer: cannot resize the output embeddings of '
                          f'{type(llm).__name__} ({type(llm.get_output_embeddings()).__name__})')
    llm.resize_token_embeddings(rows, mean_resizing=False)
    if llm.get_input_embeddings().weight.device.type == 'meta':
        return old  # the export's meta model: the checkpoint fills the rows in
    with torch.no_grad():
        for module in {id(m): m for m in (llm.get_input_embeddings(), llm.get_output_embeddings())
                       if m is not None}.values():
            module.weight[old:] = module.weight[:old].mean(dim=0, keepdim=True)
    return old


def _module_name(llm, module) -> str:
    return next(name for name, found in llm.named_modules() if found is module).split('.')[-1]


def _tied(llm) -> bool:
    output = llm.get_output_embeddings()
    return output is None or output.weight is llm.get_input_embeddings().weight


def train_new_rows(lora_config, llm, old_rows: int, new_rows: int):
    """``lora_config`` with the embedding rows ``[old_rows, new_rows)`` trainable (see the
    module doc). A config that already trains the whole embeddings (``modules_to_save``) is
    returned as it is."""
    names = [_module_name(llm, llm.get_input_embeddings())]
    if not _tied(llm):
        names.append(_module_name(llm, llm.get_output_embeddings()))
    if set(names) <= set(lora_config.modules_to_save or ()):
        return lora_config
    if lora_config.trainable_token_indices:
        raise ConfigError('model.lora.trainable_token_indices: the tokenizer adds tokens, whose rows xft '
                          'makes trainable itself; drop trainable_token_indices from model.lora')
    rows = list(range(old_rows, new_rows))
    lora_config.trainable_token_indices = {name: rows for name in names}
    return lora_config


def tokenizer_length(tokenizer) -> int:
    """``len(tokenizer)`` of a built tokenizer or of its config dict."""
    from xft.registry import build_nested
    built = build_nested(dict(tokenizer)) if isinstance(tokenizer, dict) else tokenizer
    return len(built)


def grow_base_to_adapter(model, adapter_dir) -> Optional[int]:
    """Give a base model the embedding rows an adapter trained (``trainable_token_indices`` or
    whole embeddings in ``modules_to_save``), before ``PeftModel.from_pretrained``. Returns the
    new row count, or None when the base already has them."""
    adapter_dir = Path(adapter_dir)
    config = json.loads((adapter_dir / 'adapter_config.json').read_text())
    needed = 0
    indices = config.get('trainable_token_indices') or {}
    for rows in (indices.values() if isinstance(indices, dict) else [indices]):
        needed = max(needed, max(rows) + 1 if rows else 0)
    needed = max(needed, _saved_embedding_rows(model, adapter_dir, config.get('modules_to_save') or ()))
    if needed <= model.get_input_embeddings().weight.shape[0]:
        return None
    grow_embeddings(model, needed)
    return needed


def _saved_embedding_rows(model, adapter_dir, modules_to_save) -> int:
    """Rows of whole embedding matrices an adapter saved (``modules_to_save``), else 0."""
    weights = Path(adapter_dir) / 'adapter_model.safetensors'
    embeddings = [module for module in (model.get_input_embeddings(), model.get_output_embeddings())
                  if module is not None]
    suffixes = tuple(f'.{name}.weight' for name in {_module_name(model, m) for m in embeddings}
                     if name in modules_to_save)
    if not suffixes or not weights.is_file():
        return 0
    from safetensors import safe_open
    with safe_open(str(weights), framework='pt') as handle:
        return max((handle.get_slice(key).get_shape()[0] for key in handle.keys() if key.endswith(suffixes)),
                   default=0)
