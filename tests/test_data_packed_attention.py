"""Packed rows: attention stays inside each sample, so the packed loss equals the samples' loss."""
import pytest
import torch

from xft.dataset.collate_fns import default_collate_fn
from xft.dataset.packing import pack_arrays
from xft.model.packed_attention import block_causal_mask, packed_attention_kwargs, segment_ids
from xft.utils.constants import IGNORE_INDEX


def samples():
    """Three samples of different lengths; the first token of each is a BOS, never trained."""
    torch.manual_seed(1)
    out = []
    for length, prompt in ((9, 3), (14, 5), (6, 2)):
        ids = [1] + torch.randint(6, 500, (length - 1,)).tolist()
        labels = [IGNORE_INDEX] * prompt + ids[prompt:]
        out.append((ids, labels))
    return out


def token_weighted_loss(model, sample_list):
    total, count = 0.0, 0
    for ids, labels in sample_list:
        out = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels]))
        n = sum(label != IGNORE_INDEX for label in labels[1:])
        total += out.loss.item() * n
        count += n
    return total / count


def packed_batch(sample_list, width):
    import numpy as np
    lengths = [len(ids) for ids, _ in sample_list]
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    ids = np.concatenate([np.array(i) for i, _ in sample_list])
    labels = np.concatenate([np.array(label) for _, label in sample_list])
    columns = pack_arrays((offsets, ids), (offsets, labels), width)
    rows = [{'input_ids': i, 'labels': label, 'cumulative_len': c} for i, label, c in zip(
        columns['input_ids'].to_pylist(), columns['labels'].to_pylist(),
        columns['cumulative_len'].to_pylist())]
    return default_collate_fn(rows, pad_index=0)['data']


@pytest.mark.parametrize('attn_implementation', ['eager', 'sdpa'])
def test_packed_loss_equals_token_weighted_loss_of_samples(tiny_llama_dir, attn_implementation):
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32,
                                                 attn_implementation=attn_implementation)
    model.eval()
    sample_list = samples()
    with torch.no_grad():
        expected = token_weighted_loss(model, sample_list)
        data = packed_batch(sample_list, width=64)  # one row holding all three
        assert [c.tolist() for c in data['cumulative_len']] == [[0, 9, 23, 29]]
        packed = model(**packed_attention_kwargs(data, attn_implementation)).loss.item()
        leaky = model(input_ids=data['input_ids'], labels=data['labels']).loss.item()
    assert packed == pytest.approx(expected, rel=1e-5, abs=1e-6)
    # Control: without the block mask the samples see each other and the loss differs.
    assert abs(leaky - expected) > 1e-4


def test_padded_packed_batch_of_two_rows_matches_too(tiny_llama_dir):
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32,
                                                 attn_implementation='sdpa')
    sample_list = samples()
    with torch.no_grad():
        expected = token_weighted_loss(model, sample_list)
        # Rows of 16: the middle sample is cut across rows; its second piece is its own segment.
        data = packed_batch(sample_list, width=16)
        assert len(data['cumulative_len']) == 2
        packed = model(**packed_attention_kwargs(data, 'sdpa')).loss.item()
    # The cut sample's continuation loses the context before the cut, so compare with pieces.
    pieces = []
    for row_ids, row_labels, cumulative in zip(data['input_ids'].tolist(),
                                               data['labels'].tolist(), data['cumulative_len']):
        bounds = cumulative.tolist()
        for lo, hi in zip(bounds, bounds[1:]):
            if any(label != IGNORE_INDEX for label in row_labels[lo:hi]):
                pieces.append((row_ids[lo:hi], row_labels[lo:hi]))
    with torch.no_grad():
        assert packed == pytest.approx(token_weighted_loss(model, pieces), rel=1e-5, abs=1e-6)
    assert expected != pytest.approx(packed, rel=1e-6)


def test_mask_is_block_diagonal_and_causal():
    segments = segment_ids([torch.tensor([0, 2, 5], dtype=torch.int32)], 5)
    assert segments.tolist() == [[0, 0, 1, 1, 1]]
    mask = block_causal_mask(segments)[0, 0].int().tolist()
    assert mask == [[1, 0, 0, 0, 0],
                    [1, 1, 0, 0, 0],
                    [0, 0, 1, 0, 0],
                    [0, 0, 1, 1, 0],
                    [0, 0, 1, 1, 1]]


def test_flash_implementations_get_varlen_arguments_and_no_mask():
    data = {'input_ids': torch.zeros(2, 4, dtype=torch.long), 'labels': torch.zeros(2, 4),
            'attention_mask': torch.ones(2, 4), 'position_ids': torch.zeros(2, 4),
            'cumulative_len': [torch.tensor([0, 1, 4], dtype=torch.int32),
                               torch.tensor([0, 4], dtype=torch.int32)], 'max_seqlen': 4}
    kwargs = packed_attention_kwargs(data, 'flash_attention_2')
    assert kwargs['attention_mask'] is None
    assert kwargs['cu_seq_lens_q'].tolist() == [0, 1, 4, 8]
    assert kwargs['max_length_q'] == 4
    assert 'cumulative_len' not in kwargs and 'max_seqlen' not in kwargs
    assert 'cumulative_len' in data  # the input is not modified


def test_unpacked_batches_pass_through():
    data = {'input_ids': torch.ones(1, 3, dtype=torch.long), 'labels': torch.ones(1, 3),
            'attention_mask': torch.ones(1, 3)}
    assert packed_attention_kwargs(data, 'sdpa').keys() == data.keys()


def test_registered_varlen_attention_falls_back_to_sdpa_for_unpacked_batches(tiny_llama_dir):
    # The varlen kernel itself needs CUDA (checked on the H200: packed loss equals the
    # per-sample loss in bf16); on the CPU, unpacked batches must still run through it.
    from transformers import AutoModelForCausalLM
    from xft.model.packed_attention import register_varlen_attention
    name = register_varlen_attention()
    reference = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, attn_implementation='sdpa')
    varlen = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, attn_implementation=name)
    data = default_collate_fn([{'input_ids': [1, 7, 8, 9], 'labels': [IGNORE_INDEX, 7, 8, 9]},
                               {'input_ids': [1, 5], 'labels': [IGNORE_INDEX, 5]}],
                              pad_index=0)['data']
    with torch.no_grad():
        expected = reference(**packed_attention_kwargs(data, 'sdpa')).loss
        got = varlen(**packed_attention_kwargs(data, name)).loss
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)


def test_flex_attention_gets_a_block_mask_of_the_same_pattern():
    from torch.nn.attention.flex_attention import BlockMask, create_mask
    from xft.model.packed_attention import document_mask_mod
    cumulative = [torch.tensor([0, 3, 7, 8], dtype=torch.int32),
                  torch.tensor([0, 5, 8], dtype=torch.int32)]
    segments = segment_ids(cumulative, 8)
    dense = create_mask(document_mask_mod(segments), 2, None, 8, 8, device='cpu')
    assert torch.equal(dense, block_causal_mask(segments))
    data = {'input_ids': torch.zeros(2, 8, dtype=torch.long), 'labels': torch.zeros(2, 8),
            'cumulative_len': cumulative, 'max_seqlen': 5}
    assert isinstance(packed_attention_kwargs(data, 'flex_attention')['attention_mask'],
                      BlockMask)


def test_varlen_boundaries_are_padded_to_a_shape_that_does_not_depend_on_the_samples():
    # CUDA graphs replay per argument shape: two packed batches whose samples end in different
    # places must give boundaries of one shape and one maximum length.
    from xft.model.packed_attention import VARLEN_ATTENTION_NAME, VARLEN_BOUNDARY_BUCKET
    shapes = set()
    for cumulative in ([0, 3, 8], [0, 1, 2, 6, 8], [0, 8]):
        data = {'input_ids': torch.zeros(1, 8, dtype=torch.long), 'labels': torch.zeros(1, 8),
                'cumulative_len': [torch.tensor(cumulative)], 'max_seqlen': 8}
        kwargs = packed_attention_kwargs(data, VARLEN_ATTENTION_NAME)
        bounds = kwargs['cu_seq_lens_q']
        shapes.add((tuple(bounds.shape), kwargs['max_length_q']))
        # the real boundaries first, then empty samples that end where the batch ends
        assert bounds[:len(cumulative)].tolist() == cumulative
        assert set(bounds[len(cumulative):].tolist()) == {8}
    assert shapes == {((VARLEN_BOUNDARY_BUCKET + 1, ), 8)}
    # flash-attn's own path keeps the exact boundaries
    exact = packed_attention_kwargs(data, 'flash_attention_2')
    assert exact['cu_seq_lens_q'].tolist() == [0, 8] and exact['max_length_q'] == 8


@pytest.mark.parametrize('padded', [False, True])
def test_a_model_switched_to_varlen_runs_unpacked_batches_like_sdpa(tiny_llama_dir, padded):
    # What SupervisedFinetune does on a GPU, checked here for the batches that never reach the
    # varlen kernel: a row without padding gets no mask at all (causal SDPA), a padded batch
    # (generation) SDPA's padding mask; both must equal the untouched SDPA model.
    from transformers import AutoModelForCausalLM
    from xft.model.packed_attention import VARLEN_ATTENTION_NAME, choose_packed_attention
    reference = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, attn_implementation='sdpa')
    switched = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, attn_implementation='sdpa')
    assert choose_packed_attention(switched, available=True) == VARLEN_ATTENTION_NAME
    assert switched.config._attn_implementation == VARLEN_ATTENTION_NAME
    ids = torch.tensor([[1, 7, 8, 9, 10], [0, 0, 1, 5, 6]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]]) if padded else None
    rows = slice(None) if padded else slice(0, 1)
    kwargs = {'input_ids': ids[rows]}
    if padded:
        kwargs['attention_mask'] = mask
    with torch.no_grad():
        expected = reference(**kwargs).logits
        got = switched(**kwargs).logits
    keep = mask.bool() if padded else torch.ones(1, 5, dtype=torch.bool)
    torch.testing.assert_close(got[keep], expected[keep], rtol=1e-5, atol=1e-5)


def test_only_sdpa_models_are_switched_and_only_where_the_kernel_runs(tiny_llama_dir):
    from transformers import AutoModelForCausalLM
    from xft.model.packed_attention import choose_packed_attention
    eager = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, attn_implementation='eager')
    assert choose_packed_attention(eager, available=True) == 'eager'
    sdpa = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, attn_implementation='sdpa')
    assert choose_packed_attention(sdpa, available=False) == 'sdpa'
    if not torch.cuda.is_available():  # the real check: no CUDA, no switch
        assert choose_packed_attention(sdpa) == 'sdpa'
