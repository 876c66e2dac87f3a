"""XTuner's ``SupervisedFinetune(max_position_embeddings=...)``: RoPE scaled for long rows.

When the requested length exceeds the model's ``max_position_embeddings``, XTuner 0.1.23 set
``rope_scaling = {'type': 'linear', 'factor': ceil(requested / model's)}`` on the model's
config before building it (position interpolation: positions are divided by the factor, so a
64k row spans the angles a 4k model was trained on). The same is done here, in transformers
5's spelling (``rope_parameters`` with ``rope_type='linear'``, keeping the model's
``rope_theta``; remote-code models that still read ``rope_scaling`` get XTuner's dict). A model
that scales RoPE already (Llama 3.1's 'llama3', YaRN, ...) or has no RoPE is refused: linear
scaling on top would silently change what the model was trained with.
"""
import math
from typing import Optional, Tuple

from xft.utils.errors import ConfigError


def linear_rope_scaling(hf_config, max_position_embeddings: int) -> Tuple[Optional[dict], str]:
    """``(from_pretrained kwargs, log line)`` for ``max_position_embeddings``; no kwargs when
    the model already covers that length."""
    where = f'model.max_position_embeddings={max_position_embeddings}'
    current = getattr(hf_config, 'max_position_embeddings', None)
    if current and max_position_embeddings <= current:
        return None, f'{where}: within the model\'s {current} positions, RoPE left as it is'
    if not current:
        raise ConfigError(f'{where}: the model config has no max_position_embeddings to scale from')
    factor = float(math.ceil(max_position_embeddings / current))
    native = getattr(hf_config, 'rope_parameters', None)
    if isinstance(native, dict):
        if native.get('rope_type', 'default') != 'default':
            raise ConfigError(f'{where}: the model already scales RoPE ({native}); set rope_parameters in '
                              'model.llm yourself instead')
        kwargs = {'rope_parameters': dict(native, rope_type='linear', factor=factor)}
    elif hasattr(hf_config, 'rope_scaling'):
        if hf_config.rope_scaling:
            raise ConfigError(f'{where}: the model already scales RoPE ({hf_config.rope_scaling}); set '
                              'rope_scaling in model.llm yourself instead')
        kwargs = {'rope_scaling': {'type': 'linear', 'factor': factor}}
    else:
        raise ConfigError(f'{where} exceeds the model\'s {current} positions, but {type(hf_config).__name__} '
                          'has no RoPE scaling to stretch it with')
    return kwargs, (f'{where} > the model\'s {current}: RoPE scaled linearly by {factor:g} '
                    f'({next(iter(kwargs))}={next(iter(kwargs.values()))})')
