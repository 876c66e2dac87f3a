"""Layer graphs (xft.model.kernels.graphs) on the CPU: the recorded passes are replayed by
`EagerReplay`, which runs the same bodies over the same static buffers, so these tests check
everything but the CUDA recording itself: buffers, kwargs refills, grads added into the
owned buffers across accumulation and zero_grad, the warm-up and the fallbacks. The H200
run of benchmarks/bench_one_gpu.py checks the recording (its loss equals the eager path's)."""
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from xft.model.fast_path import apply_fast_path, causal_lm_loss
from xft.model.kernels.graphs import EagerReplay, GraphFamily, flatten_kwargs, rebuild_kwargs
from xft.utils.constants import IGNORE_INDEX

TARGETS = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj']


def lora_llama(path, dropout=0.0):
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    torch.manual_seed(0)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout,
                                             target_modules=TARGETS))
    for name, param in model.named_parameters():
        if 'lora_B' in name:
            param.data.normal_(std=0.02)
    model.train()
    return model


def batches(vocab, n):
    gen = torch.Generator().manual_seed(1)
    out = []
    for _ in range(n):
        ids = torch.randint(0, vocab, (2, 12), generator=gen)
        labels = ids.clone()
        labels[:, :3] = IGNORE_INDEX
        out.append((ids, labels))
    return out


def train(model, data, accumulate=1):
    """SGD steps over `data`, `accumulate` micro-batches per step; the losses and the last grads."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.5)
    losses, grads = [], None
    for i, (ids, labels) in enumerate(data):
        loss, _ = causal_lm_loss(model, ids, labels)
        (loss / accumulate).backward()
        losses.append(loss.detach())
        if (i + 1) % accumulate == 0:
            grads = [p.grad.clone() for p in params]
            opt.step()
            opt.zero_grad(set_to_none=True)
    return torch.stack(losses), grads


def test_replayed_layers_train_like_the_eager_checkpointer(tiny_llama_dir):
    eager, graphed = lora_llama(tiny_llama_dir), lora_llama(tiny_llama_dir)
    apply_fast_path(eager)
    family = GraphFamily(warmup=1, graph_type=EagerReplay, force=True)
    state = apply_fast_path(graphed, cuda_graphs=family)
    assert '(CUDA graphs)' in state.summary()
    data = batches(eager.config.vocab_size, 8)
    ref_losses, ref_grads = train(eager, data, accumulate=2)
    losses, grads = train(graphed, data, accumulate=2)
    # 8 forwards and backwards of 2 layers, the first of each layer eager (warm-up).
    assert family.replays == 2 * (8 - 1) * 2
    torch.testing.assert_close(losses, ref_losses, atol=1e-6, rtol=1e-6)
    for g, ref in zip(grads, ref_grads):
        torch.testing.assert_close(g, ref, atol=1e-6, rtol=1e-5)


def test_a_new_shape_gets_its_own_signature_and_too_many_run_eagerly(tiny_llama_dir):
    model = lora_llama(tiny_llama_dir)
    family = GraphFamily(warmup=0, max_signatures=1, graph_type=EagerReplay, force=True)
    apply_fast_path(model, cuda_graphs=family)
    ids = torch.randint(0, model.config.vocab_size, (1, 10))
    causal_lm_loss(model, ids, ids)[0].backward()
    assert family.replays == 4 and len(family.signatures) == 1
    longer = torch.randint(0, model.config.vocab_size, (1, 14))
    causal_lm_loss(model, longer, longer)[0].backward()  # a second shape: eager, still trains
    assert family.replays == 4 and len(family.signatures) == 1


def test_adapter_dropout_replays_like_the_eager_checkpointer(tiny_llama_dir):
    """lora_dropout > 0: the fused layers' masks come from a seed tensor the recorded passes
    read, so the graphs run and train exactly like the eager checkpointer."""
    eager, graphed = lora_llama(tiny_llama_dir, dropout=0.1), lora_llama(tiny_llama_dir, dropout=0.1)
    apply_fast_path(eager)
    family = GraphFamily(warmup=1, graph_type=EagerReplay, force=True)
    apply_fast_path(graphed, cuda_graphs=family)
    data = batches(eager.config.vocab_size, 6)
    torch.manual_seed(3)  # the dropout seeds are drawn from torch's generator
    ref_losses, ref_grads = train(eager, data, accumulate=2)
    torch.manual_seed(3)
    losses, grads = train(graphed, data, accumulate=2)
    assert family.replays == 2 * (6 - 1) * 2
    torch.testing.assert_close(losses, ref_losses, atol=1e-6, rtol=1e-6)
    for g, ref in zip(grads, ref_grads):
        torch.testing.assert_close(g, ref, atol=1e-6, rtol=1e-5)
    # The control: other dropout seeds give other losses, so the equality above means the
    # graphs replayed the masks, not that dropout did nothing.
    torch.manual_seed(4)
    other, _ = train(lora_llama_fast(tiny_llama_dir), data, accumulate=2)
    assert (other - ref_losses).abs().max() > 1e-4


def lora_llama_fast(path):
    model = lora_llama(path, dropout=0.1)
    apply_fast_path(model)
    return model


def test_other_dropout_keeps_the_eager_checkpointer(tiny_llama_dir):
    """Attention dropout draws from torch's generator: a recorded pass can't replay it."""
    model = lora_llama(tiny_llama_dir, dropout=0.1)
    for module in model.modules():
        if hasattr(module, 'attention_dropout'):
            module.attention_dropout = 0.1
    family = GraphFamily(warmup=0, graph_type=EagerReplay, force=True)
    apply_fast_path(model, cuda_graphs=family)
    ids = torch.randint(0, model.config.vocab_size, (1, 10))
    causal_lm_loss(model, ids, ids)[0].backward()
    assert family.replays == 0
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_long_rows_and_cpu_tensors_stay_eager(tiny_llama_dir):
    model = lora_llama(tiny_llama_dir)
    family = GraphFamily(warmup=0, max_tokens=8, graph_type=EagerReplay, force=True)
    apply_fast_path(model, cuda_graphs=family)
    ids = torch.randint(0, model.config.vocab_size, (1, 10))
    causal_lm_loss(model, ids, ids)[0].backward()
    assert family.replays == 0
    cpu_family = GraphFamily(warmup=0)  # real CUDA graphs: never taken for CPU tensors
    other = lora_llama(tiny_llama_dir)
    apply_fast_path(other, cuda_graphs=cpu_family)
    causal_lm_loss(other, ids, ids)[0].backward()
    assert cpu_family.replays == 0 and not cpu_family.signatures


def test_kwargs_flatten_and_rebuild():
    cos, sin, ids = torch.ones(1, 3, 4), torch.zeros(1, 3, 4), torch.arange(3)[None]
    kwargs = {'position_embeddings': (cos, sin), 'position_ids': ids, 'cache': None,
              'use_cache': False}
    tensors, key = flatten_kwargs(kwargs)
    assert [t is x for t, x in zip(tensors, (cos, sin, ids))] == [True] * 3  # sorted by name
    new = [t + 1 for t in tensors]
    rebuilt = rebuild_kwargs(kwargs, new)
    assert rebuilt['position_ids'] is new[2] and rebuilt['position_embeddings'][1] is new[1]
    assert rebuilt['cache'] is None and rebuilt['use_cache'] is False
    assert flatten_kwargs({'cache': object()}) is None
    assert flatten_kwargs({'x': torch.zeros(2)})[1] != flatten_kwargs({'x': torch.zeros(3)})[1]


def test_release_drops_the_graphs_and_records_again(tiny_llama_dir):
    model = lora_llama(tiny_llama_dir)
    family = GraphFamily(warmup=1, graph_type=EagerReplay, force=True)
    apply_fast_path(model, cuda_graphs=family)
    ids = torch.randint(0, model.config.vocab_size, (1, 10))
    for _ in range(2):
        causal_lm_loss(model, ids, ids)[0].backward()
    assert family.replays == 4 and family.signatures
    family.release()
    assert not family.signatures and not any(m.forward_graphs for m in family.members)
    assert all(m.grad_buffers is None for m in family.members)
    causal_lm_loss(model, ids, ids)[0].backward()  # warm-up again: eager
    assert family.replays == 4
    causal_lm_loss(model, ids, ids)[0].backward()
    assert family.replays == 8


def test_a_process_group_keeps_the_eager_checkpointer(tiny_llama_dir, tmp_path):
    import torch.distributed as dist
    model = lora_llama(tiny_llama_dir)
    family = GraphFamily(warmup=0, graph_type=EagerReplay, force=True)
    apply_fast_path(model, cuda_graphs=family)
    ids = torch.randint(0, model.config.vocab_size, (1, 10))
    dist.init_process_group('gloo', init_method=f'file://{tmp_path / "group"}', rank=0,
                            world_size=1)
    try:
        causal_lm_loss(model, ids, ids)[0].backward()
    finally:
        dist.destroy_process_group()
    assert family.replays == 0
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
