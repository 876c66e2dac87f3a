"""A sequence-parallel group of gloo processes, and what it computes, for tests/test_sequence_parallel.py.

``run_group(world, out_dir, cases)`` starts ``world`` processes (one gloo group, sequence-parallel
size ``world``); each runs ``group_worker`` and saves its results to ``out_dir/rank<r>.pt``. The
test then computes the same cases in its own process, without groups, on whole rows
(``case_results``), and compares. A case is ``(model_dir, method, fast)``: the tiny model in
``model_dir`` trained with LoRA, QLoRA or fully, through the fast path or the plain one.
"""
import os

import torch

from helpers.training import free_port
from xft.utils.constants import IGNORE_INDEX

# Built once per process (as a test builds it): token lists of the tiny tokenizer's vocabulary.
_G = torch.Generator().manual_seed(7)
_TOKENS = [int(t) for t in torch.randint(6, 500, (64,), generator=_G)]


def _row(start, length):
    return _TOKENS[start:start + length]


def _ignore(tokens, ignored):
    """``tokens`` as labels, with the positions in ``ignored`` not trained."""
    return [IGNORE_INDEX if i in ignored else t for i, t in enumerate(tokens)]


def batches():
    """Collated batches that exercise the split: {name: data}.

    unpacked  two right-padded rows of 11 and 6 tokens (11 is odd: padded to 12 to split)
    packed    one row of 13 tokens holding 3 samples (a boundary falls inside a rank's piece)
    packed_2  two packed rows of 9 tokens, the second with a padded tail
    skewed    one row of 12 tokens whose trained tokens all lie in the second half: rank 0 of
              two holds none, so the row's mean is not the mean of the ranks' means
    """
    from xft.dataset.collate_fns import default_collate_fn

    def collate(rows):
        return default_collate_fn(rows)['data']

    a, b, c, d, e, f = _row(0, 11), _row(11, 6), _row(17, 13), _row(30, 9), _row(39, 7), _row(46, 12)
    return {
        'unpacked': collate([{'input_ids': a, 'labels': _ignore(a, range(4))},
                             {'input_ids': b, 'labels': _ignore(b, range(2))}]),
        'packed': collate([{'input_ids': c, 'labels': _ignore(c, {0, 1, 4, 5, 6, 9}),
                            'cumulative_len': [0, 4, 9, 13]}]),
        'packed_2': collate([{'input_ids': d, 'labels': _ignore(d, {0, 5}), 'cumulative_len': [0, 5, 9]},
                             {'input_ids': e, 'labels': _ignore(e, {0, 3}), 'cumulative_len': [0, 3, 7]}]),
        'skewed': collate([{'input_ids': f, 'labels': _ignore(f, range(9))}]),
    }


def save_tiny_model(path, tokenizer, model_type, seed=0, **overrides):
    """A 2-layer, 64-wide random model of ``model_type`` (4 heads, 2 key/value heads, no
    sliding window) with ``tokenizer``, saved into ``path``, the way the tiny Llama is."""
    from transformers import AutoConfig, AutoModelForCausalLM

    settings = dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                    bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                    pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    if model_type in ('mistral', 'qwen2', 'qwen3'):
        settings['sliding_window'] = None
    settings.update(overrides)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **settings))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def build_model(model_dir, method, fast):
    """SupervisedFinetune on the tiny model in float32; LoRA weights drawn from a fixed seed
    (B is not left at zero, so every LoRA weight gets a gradient)."""
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from xft.model import SupervisedFinetune
    llm = dict(type=AutoModelForCausalLM.from_pretrained, pretrained_model_name_or_path=str(model_dir),
               dtype=torch.float32, attn_implementation='sdpa')
    if method == 'qlora':
        llm['quantization_config'] = dict(type=BitsAndBytesConfig, load_in_4bit=True, bnb_4bit_quant_type='nf4',
                                          bnb_4bit_compute_dtype=torch.float32)
    lora = None if method == 'full' else dict(type=LoraConfig, r=4, lora_alpha=8, lora_dropout=0.0,
                                              task_type='CAUSAL_LM')
    model = SupervisedFinetune(llm=llm, lora=lora, use_fast_path=fast)
    if lora is not None:
        generator = torch.Generator().manual_seed(1)
        for _, param in sorted(model.named_parameters()):
            if param.requires_grad:
                param.data.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    model.train()
    return model


def case_results(model_dir, method, fast, reduce_grads=None):
    """{batch name: (loss, {param: grad})} of one case; ``reduce_grads`` averages the grads
    over the group (what DDP does) before they are kept."""
    model = build_model(model_dir, method, fast)
    results = {}
    for name, data in batches().items():
        model.zero_grad(set_to_none=True)
        loss = model(data, mode='loss')['loss']
        loss.backward()
        grads = {key: param.grad.detach().clone() for key, param in model.named_parameters()
                 if param.requires_grad}
        if reduce_grads is not None:
            reduce_grads(grads)
        results[name] = (loss.detach().clone(), grads)
    return results


def all_to_all_errors(rank, world, group):
    """The largest deviation of ``all_to_all`` (forward and backward) from its definition.

    Rank r holds x[0, h, t] = 1000 r + 10 h + t for 4 heads and 3 tokens; after the swap over
    heads (dim 1) and tokens (dim 2) it must hold heads 2r, 2r + 1 of every rank's tokens, in
    rank order; the gradient of sum(y * w) must be w's piece that came from x.
    """
    from xft.parallel.sequence import all_to_all
    heads, tokens = 4, 3
    h = torch.arange(heads).view(1, heads, 1, 1).float()
    t = torch.arange(tokens).view(1, 1, tokens, 1).float()
    x = (1000 * rank + 10 * h + t).expand(1, heads, tokens, 2).clone().requires_grad_()
    y = all_to_all(x, group, scatter_dim=1, gather_dim=2)
    mine = heads // world
    gh = torch.arange(mine).view(1, mine, 1, 1).float() + rank * mine
    gt = torch.arange(world * tokens).view(1, 1, world * tokens, 1).float()
    expected = (1000 * (gt // tokens) + 10 * gh + gt % tokens).expand(1, mine, world * tokens, 2)
    weights = torch.arange(y.numel()).view(y.shape).float()
    (y * weights).sum().backward()
    # x[0, h, t] went to rank h // mine, head h % mine, token rank * tokens + t, where every
    # rank's weights are the same arange.
    expected_grad = torch.stack([weights[0, head % mine, rank * tokens:(rank + 1) * tokens]
                                 for head in range(heads)]).unsqueeze(0)
    return (y.shape == expected.shape and float((y - expected).abs().max()),
            float((x.grad - expected_grad).abs().max()))


def different_rows_refusal(rank, case):
    """The message each rank gets when the ranks of the group are handed different rows."""
    from xft.utils.errors import DataError
    model = build_model(*case)
    data = batches()['packed' if rank == 0 else 'skewed']
    try:
        model(data, mode='loss')
    except DataError as error:
        return str(error)
    return None


def group_worker(rank, world, port, out_dir, cases):
    import torch.distributed as dist

    from xft.parallel import sequence
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group('gloo', rank=rank, world_size=world)
    try:
        sequence.init_sequence_parallel(world)
        group = sequence.get_sequence_parallel_group()

        def average(grads):
            for grad in grads.values():
                dist.all_reduce(grad, group=group)
                grad /= world

        results = {
            'ranks': (sequence.get_sequence_parallel_rank(), sequence.get_data_parallel_rank(),
                      sequence.get_data_parallel_world_size()),
            'sampler': list(sequence.SequenceParallelSampler(list(range(10)), shuffle=True, seed=3)),
            'all_to_all': all_to_all_errors(rank, world, group),
            'cases': {case: case_results(*case, reduce_grads=average) for case in cases},
            'different_rows': different_rows_refusal(rank, cases[0]),
        }
        torch.save(results, os.path.join(out_dir, f'rank{rank}.pt'))
    finally:
        dist.destroy_process_group()


def run_group(world, out_dir, cases):
    """Run ``group_worker`` on ``world`` gloo processes; returns each rank's results."""
    import torch.multiprocessing as mp
    mp.spawn(group_worker, args=(world, free_port(), str(out_dir), list(cases)), nprocs=world, join=True)
    return [torch.load(os.path.join(out_dir, f'rank{rank}.pt'), weights_only=False) for rank in range(world)]
