"""Write a Hugging Face causal LM as one GGUF file (llama.cpp, Ollama, LM Studio read it).

What goes in, with the names llama.cpp's converter uses (``gguf.constants`` holds the keys):

* ``general.*``: architecture, name, file type, quantization version;
* ``{arch}.*``: context length, embedding length, block count, feed-forward length, head
  counts, RMS-norm epsilon, RoPE base and dimension count, vocabulary size;
* ``tokenizer.ggml.*``: the vocabulary (``xft.model.gguf_vocab``), special token ids,
  ``tokenizer.chat_template``;
* the tensors under their GGUF names (``token_embd``, ``blk.N.attn_q`` ... ``output_norm``,
  ``output``; mapped by gguf's own ``TensorNameMap``). Llama-style ``q_proj``/``k_proj`` rows are
  permuted the way llama.cpp's converter does (its RoPE pairs neighbouring dimensions, Hugging
  Face's the two halves); transformers' GGUF reader undoes it. A tied output head is left out,
  as llama.cpp does, and readers tie it again.

Tensor types: 1-D tensors (norms, biases) stay float32; the rest take ``outtype``: f16, bf16,
or q8_0 (gguf's own ``quants`` module, bit-exact with ggml's reference), with f16 for a row
length q8_0's 32-wide blocks do not divide. Tensors are described first and converted one at a
time while they are written, so memory holds one converted tensor beside the source.

How the command calls it (``xft/tools/convert_gguf.py``)::

    source = tensors_of_state_dict(model.state_dict())
    write_gguf('out.gguf', model.config, source, vocab, chat_template=jinja, outtype='q8_0')
"""
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from xft.model.gguf_vocab import add_vocab
from xft.utils.errors import UserError

# HF state-dict names that carry no weight a GGUF needs.
IGNORED_TENSOR_SUFFIXES = ('rotary_emb.inv_freq',)


@dataclass(frozen=True)
class ArchSpec:
    """How one Hugging Face ``model_type`` is written."""

    gguf_arch: str          # gguf.MODEL_ARCH member name
    permute_qk: bool        # llama.cpp's Llama RoPE layout


# The Llama family of the config zoo whose GGUF transformers' reader loads back.
ARCHITECTURES = {
    'llama': ArchSpec('LLAMA', permute_qk=True),
    'mistral': ArchSpec('LLAMA', permute_qk=True),   # llama.cpp writes Mistral as llama
    'qwen2': ArchSpec('QWEN2', permute_qk=False),
}
OUTTYPES = ('f16', 'bf16', 'q8_0')


@dataclass
class SourceTensor:
    """One tensor of the model, read only when it is written."""

    name: str
    shape: tuple
    load: Callable[[], torch.Tensor]


def tensors_of_state_dict(state_dict):
    """SourceTensors over tensors already in memory (a merged model's state dict)."""
    return [SourceTensor(name, tuple(tensor.shape), (lambda t=tensor: t))
            for name, tensor in state_dict.items()]


def tensors_of_safetensors(folder):
    """SourceTensors over a model folder's ``*.safetensors`` shards, read lazily."""
    from safetensors import safe_open
    shards = sorted(Path(folder).glob('*.safetensors'))
    if not shards:
        raise UserError(f'{folder}: no *.safetensors weights (a .bin model is loaded whole '
                        'instead)')
    sources = []
    for shard in shards:
        with safe_open(str(shard), framework='pt') as handle:
            for name in handle.keys():
                shape = tuple(handle.get_slice(name).get_shape())
                sources.append(SourceTensor(name, shape, _shard_loader(shard, name)))
    return sources


def _shard_loader(shard, name):
    def load():
        from safetensors import safe_open
        with safe_open(str(shard), framework='pt') as handle:
            return handle.get_tensor(name)
    return load


def architecture_of(config):
    """The ArchSpec of a transformers config; a UserError naming the supported ones."""
    model_type = getattr(config, 'model_type', None)
    if model_type not in ARCHITECTURES:
        raise UserError(f'architecture {model_type!r} cannot be exported to GGUF yet; '
                        f'supported: {", ".join(sorted(ARCHITECTURES))}')
    rope = rope_parameters(config)
    if rope.get('rope_type', 'default') != 'default':
        raise UserError(f'RoPE scaling {rope.get("rope_type")!r} cannot be exported to GGUF yet; '
                        'only models without rope scaling are supported')
    return ARCHITECTURES[model_type]


def rope_parameters(config):
    """RoPE settings from transformers 5's ``rope_parameters`` or the older attributes."""
    params = dict(getattr(config, 'rope_parameters', None) or {})
    if 'rope_theta' not in params and getattr(config, 'rope_theta', None) is not None:
        params['rope_theta'] = config.rope_theta
    scaling = getattr(config, 'rope_scaling', None)
    if scaling and 'rope_type' not in params:
        params['rope_type'] = scaling.get('rope_type', scaling.get('type'))
    return params


def head_dim(config):
    return getattr(config, 'head_dim', None) or config.hidden_size // config.num_attention_heads


def add_hparams(writer, config, name):
    """The ``general.*`` and ``{arch}.*`` entries llama.cpp reads for a Llama-family model."""
    heads = config.num_attention_heads
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(getattr(config, 'num_key_value_heads', None) or heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(float(rope_parameters(config).get('rope_theta', 10000.0)))
    writer.add_rope_dimension_count(head_dim(config))
    if head_dim(config) != config.hidden_size // heads:   # llama.cpp reads it from here then
        writer.add_key_length(head_dim(config))
        writer.add_value_length(head_dim(config))
    writer.add_vocab_size(config.vocab_size)


def permute_for_llama_rope(weight, n_head, n_head_kv=None):
    """Reorder q/k projection rows from Hugging Face's RoPE layout (rotate the two halves of
    each head) to llama.cpp's (rotate neighbouring pairs): per head, rows [h0, h1] interleave."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    rows = weight.shape[0]
    return (weight.reshape(n_head, 2, rows // n_head // 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


class TensorPlan:
    """Names, types and byte sizes of every tensor, decided before any is converted."""

    def __init__(self, config, spec, outtype):
        import gguf
        if outtype not in OUTTYPES:
            raise UserError(f'--outtype {outtype!r}: expected one of {", ".join(OUTTYPES)}')
        self.gguf, self.config, self.spec, self.outtype = gguf, config, spec, outtype
        arch = getattr(gguf.MODEL_ARCH, spec.gguf_arch)
        self.arch_name = gguf.MODEL_ARCH_NAMES[arch]
        self.name_map = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
        self.tied = bool(getattr(config, 'tie_word_embeddings', False))

    @property
    def file_type(self):
        types = self.gguf.LlamaFileType
        return {'f16': types.MOSTLY_F16, 'bf16': types.MOSTLY_BF16,
                'q8_0': types.MOSTLY_Q8_0}[self.outtype]

    def gguf_name(self, hf_name):
        """The GGUF name of a state-dict entry; None for one the file leaves out."""
        if hf_name.endswith(IGNORED_TENSOR_SUFFIXES):
            return None
        if self.tied and hf_name == 'lm_head.weight':
            return None
        base, dot, suffix = hf_name.rpartition('.')
        mapped = self.name_map.get_name(base) if dot else None
        if mapped is None:
            raise UserError(f'tensor {hf_name!r} has no GGUF name for {self.arch_name}; '
                            'the folder does not hold a plain Llama-family model')
        return f'{mapped}.{suffix}'

    def qtype(self, shape):
        """The ggml type a tensor of ``shape`` is written in."""
        types = self.gguf.GGMLQuantizationType
        if len(shape) < 2:
            return types.F32
        if self.outtype == 'bf16':
            return types.BF16
        if self.outtype == 'q8_0':
            block = self.gguf.GGML_QUANT_SIZES[types.Q8_0][0]
            if shape[-1] % block == 0:
                return types.Q8_0
        return types.F16

    def nbytes(self, shape, qtype):
        block, type_size = self.gguf.GGML_QUANT_SIZES[qtype]
        return int(np.prod(shape)) // block * type_size

    def convert(self, hf_name, tensor, qtype):
        """The tensor as the bytes (or floats) the file holds."""
        data = tensor.detach().to(torch.float32).cpu()
        if self.spec.permute_qk and hf_name.endswith(('q_proj.weight', 'k_proj.weight')):
            heads = self.config.num_attention_heads
            kv_heads = getattr(self.config, 'num_key_value_heads', None) or heads
            data = permute_for_llama_rope(
                data, heads, heads if hf_name.endswith('q_proj.weight') else kv_heads)
        array = data.contiguous().numpy()
        types = self.gguf.GGMLQuantizationType
        if qtype == types.F32:
            return array
        if qtype == types.F16:
            return array.astype(np.float16)
        return self.gguf.quants.quantize(array, qtype)


@dataclass
class WriteReport:
    """What ``write_gguf`` wrote."""

    path: Path
    n_tensors: int
    nbytes: int
    seconds: float
    types: dict


def _plan_tensors(plan, sources):
    planned, names = [], set()
    for source in sources:
        gguf_name = plan.gguf_name(source.name)
        if gguf_name is None:
            continue
        if gguf_name in names:
            raise UserError(f'tensor {source.name!r} maps to {gguf_name!r} twice')
        names.add(gguf_name)
        qtype = plan.qtype(source.shape)
        planned.append((source, gguf_name, qtype, plan.nbytes(source.shape, qtype)))
    if not plan.tied and 'output.weight' not in names:
        raise UserError('the model has no lm_head.weight and does not tie it to the embeddings')
    return planned


def write_gguf(path, config, sources, vocab, chat_template=None, outtype='f16', name=None,
               log: Optional[Callable[[str], None]] = None):
    """Write ``sources`` (SourceTensors) of a model with ``config`` to ``path`` as GGUF.

    ``vocab`` is a ``GgufVocab``; ``chat_template`` the jinja text for
    ``tokenizer.chat_template``. ``log`` receives progress lines. The file is written under a
    temporary name and renamed into place, so an interrupted run leaves no partial file.
    """
    import gguf
    spec = architecture_of(config)
    plan = TensorPlan(config, spec, outtype)
    planned = _plan_tensors(plan, sources)
    path = Path(path)
    partial = path.with_name(path.name + '.partial')
    writer = gguf.GGUFWriter(str(partial), plan.arch_name)
    add_hparams(writer, config, name or path.stem)
    writer.add_file_type(plan.file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    add_vocab(writer, vocab)
    if chat_template:
        writer.add_chat_template(chat_template)
    for source, gguf_name, qtype, nbytes in planned:
        writer.add_tensor_info(gguf_name, source.shape, np.dtype(np.float32), nbytes,
                               raw_dtype=qtype)
    started = time.perf_counter()
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        _write_tensor_data(writer, plan, planned, log)
    finally:
        writer.close()
    partial.replace(path)
    types = {}
    for _source, _name, qtype, _nbytes in planned:
        types[qtype.name] = types.get(qtype.name, 0) + 1
    return WriteReport(path=path, n_tensors=len(planned), nbytes=path.stat().st_size,
                       seconds=time.perf_counter() - started, types=types)


def size_text(nbytes):
    """'3.2 GiB', '145 MiB', '0.4 MiB'."""
    if nbytes >= 2**30:
        return f'{nbytes / 2**30:.1f} GiB'
    mib = nbytes / 2**20
    return f'{mib:.0f} MiB' if mib >= 10 else f'{mib:.1f} MiB'


def _write_tensor_data(writer, plan, planned, log):
    """Convert and write each tensor in turn; a progress line at every tenth of the bytes."""
    total = sum(nbytes for *_, nbytes in planned) or 1
    done, next_report, started = 0, 0.1, time.perf_counter()
    for index, (source, gguf_name, qtype, nbytes) in enumerate(planned, start=1):
        tensor = source.load()
        if tuple(tensor.shape) != tuple(source.shape):
            raise UserError(f'tensor {source.name!r} has shape {tuple(tensor.shape)}, '
                            f'expected {source.shape}')
        writer.write_tensor_data(plan.convert(source.name, tensor, qtype))
        done += nbytes
        if log and (done / total >= next_report or index == len(planned)):
            log(f'      {index}/{len(planned)} tensors, {size_text(done)} of {size_text(total)} '
                f'({time.perf_counter() - started:.1f} s)')
            next_report = done / total + 0.1
