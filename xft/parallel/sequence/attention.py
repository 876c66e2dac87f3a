"""Ulysses attention: all-to-all over heads before attention, and back after.

Each rank of a sequence-parallel group holds ``L / sp`` tokens of a row. Attention needs every
token, but each head is independent, so before attention the ranks swap pieces: afterwards
each holds all ``L`` tokens of ``heads / sp`` heads (and of ``kv_heads / sp`` key/value
heads, which is why both must divide by ``sp``). Attention runs unchanged on that, with
masks or boundaries that describe the full row; a second all-to-all gives each rank its own
tokens of every head back. Communication per layer: q, k, v and the output once each.

These are XTuner 0.1.23's functions, in its (batch, tokens, heads, head_dim) layout. xft's
own model path uses transformers' (batch, heads, tokens, head_dim) and calls ``all_to_all``
itself (``xft.model.sequence_parallel``).
"""
from .comm import all_to_all
from .groups import get_sequence_parallel_group, get_sequence_parallel_world_size


def pre_process_for_sequence_parallel_attn(query_states, key_states, value_states, scatter_dim=2,
                                           gather_dim=1, sp_group=None):
    """(batch, tokens / sp, heads, d) each -> (batch, tokens, heads / sp, d)."""
    group = get_sequence_parallel_group() if sp_group is None else sp_group
    return tuple(all_to_all(t, group, scatter_dim=scatter_dim, gather_dim=gather_dim)
                 for t in (query_states, key_states, value_states))


def post_process_for_sequence_parallel_attn(attn_output, scatter_dim=1, gather_dim=2, sp_group=None):
    """(batch, tokens, heads / sp, d) -> (batch, tokens / sp, heads, d)."""
    group = get_sequence_parallel_group() if sp_group is None else sp_group
    return all_to_all(attn_output, group, scatter_dim=scatter_dim, gather_dim=gather_dim)


def sequence_parallel_wrapper(local_attn):
    """Wrap ``local_attn(q, k, v, *args, **kwargs)`` (XTuner's layout) so that, in training
    with a sequence-parallel size above 1, it sees all tokens of its share of the heads.
    ``training=False`` among the keyword arguments runs ``local_attn`` as it is."""

    def sequence_parallel_attn(query_states, key_states, value_states, *args, **kwargs):
        training = kwargs.pop('training', True)
        if not training or get_sequence_parallel_world_size() == 1:
            return local_attn(query_states, key_states, value_states, *args, **kwargs)
        query_states, key_states, value_states = pre_process_for_sequence_parallel_attn(
            query_states, key_states, value_states)
        out = local_attn(query_states, key_states, value_states, *args, **kwargs)
        return post_process_for_sequence_parallel_attn(out).contiguous()

    return sequence_parallel_attn
