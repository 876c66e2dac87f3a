"""GPU parity of the fused ops against their torch references, on odd shapes and fresh
random inputs (run on the GPU machine; CI covers the CPU fallbacks in tests/).

    python benchmarks/check_kernels_gpu.py

Prints one line per check: relative error ||out - ref|| / ||ref|| of outputs and grads, and
exits non-zero if any exceeds its bf16 tolerance or is not finite.
"""
import sys

import torch
from torch import nn

from xft.model.kernels import (FusedLoRALinear, LayerCheckpointer, rms_norm, rms_norm_reference,
                               swap_modules, swiglu, swiglu_reference)
from xft.model.loss import linear_cross_entropy

FAILED = []


def rel(a, b):
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def check(name, pairs, tol):
    errs = [rel(a, b) for a, b in pairs]
    ok = all(e == e and e < tol for e in errs)
    print(f'{"ok " if ok else "BAD"} {name}: ' + ' '.join(f'{e:.2e}' for e in errs), flush=True)
    if not ok:
        FAILED.append(name)


def grads_of(fn, inputs, grad_out):
    inputs = [t.detach().clone().requires_grad_(True) for t in inputs]
    out = fn(*inputs)
    out.backward(grad_out)
    return [out] + [t.grad for t in inputs]


def main():
    torch.manual_seed(0)
    dev = 'cuda'
    for rows, cols in [(1, 4096), (37, 4096), (1000, 5120), (3, 1000)]:
        x = torch.randn(rows, cols, device=dev, dtype=torch.bfloat16) * 3
        w = (torch.randn(cols, device=dev) * 0.1 + 1).to(torch.bfloat16)
        g = torch.randn(rows, cols, device=dev, dtype=torch.bfloat16)
        ref = grads_of(lambda a, b: rms_norm_reference(a.float(), b.float(), 1e-5), [x, w], g.float())
        got = grads_of(lambda a, b: rms_norm(a, b, 1e-5), [x, w], g)
        check(f'rms_norm {rows}x{cols} (y, dx, dw)', list(zip(got, ref)), 2e-2)
    for shape in [(1, 11008), (3, 7, 11008), (1001, 37)]:
        a = torch.randn(shape, device=dev, dtype=torch.bfloat16) * 2
        b = torch.randn(shape, device=dev, dtype=torch.bfloat16)
        g = torch.randn(shape, device=dev, dtype=torch.bfloat16)
        ref = grads_of(lambda p, q: swiglu_reference(p.float(), q.float()), [a, b], g.float())
        got = grads_of(swiglu, [a, b], g)
        check(f'swiglu {shape} (y, dgate, dup)', list(zip(got, ref)), 1e-2)
    from xft.model.kernels import rope, rope_reference
    for shape in [(1, 2048, 32, 128), (2, 33, 8, 64), (1, 5, 3, 128)]:
        x = torch.randn(shape, device=dev, dtype=torch.bfloat16)
        cos = torch.randn(shape[0], shape[1], shape[3], device=dev, dtype=torch.bfloat16)
        sin = torch.randn_like(cos)
        g = torch.randn(shape[0], shape[2], shape[1], shape[3], device=dev, dtype=torch.bfloat16)
        ref = grads_of(lambda a: rope_reference(a.float(), cos.float(), sin.float()), [x], g.float())
        got = grads_of(lambda a: rope(a, cos, sin), [x], g)
        check(f'rope {shape} (y, dx)', list(zip(got, ref)), 1e-2)
    # Fused LoRA over a 4-bit base against peft's layer, both on the GPU.
    import bitsandbytes as bnb
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import LoraLayer

    def qlora(seed):
        torch.manual_seed(seed)
        holder = nn.Module()
        holder.proj = bnb.nn.Linear4bit(4096, 1000, bias=False, compute_dtype=torch.bfloat16,
                                        quant_type='nf4')
        holder.forward = lambda x: holder.proj(x)
        holder = holder.to(dev)
        model = get_peft_model(holder, LoraConfig(r=64, lora_alpha=16, target_modules=['proj']))
        for n, p in model.named_parameters():
            if 'lora_B' in n:
                p.data.normal_(std=0.02)
        return model

    from xft.model.kernels.lora_linear import dequantize_4bit
    for shape in [(4096, 4096), (11008, 4096), (1000, 333)]:
        q = bnb.nn.Params4bit(torch.randn(shape, dtype=torch.bfloat16), requires_grad=False,
                              quant_type='nf4', compress_statistics=True).to(dev)
        direct = dequantize_4bit._direct(q, q.quant_state)
        ok = torch.equal(direct, bnb.functional.dequantize_4bit(q, q.quant_state))
        print(f'{"ok " if ok else "BAD"} direct NF4 dequantize {shape} bit-equal: {ok}')
        if not ok:
            FAILED.append(f'dequantize {shape}')
    ref_m, fused_m = qlora(1), qlora(1)
    assert len(swap_modules(fused_m, LoraLayer, FusedLoRALinear.from_module)) == 1
    x = torch.randn(3, 333, 4096, device=dev, dtype=torch.bfloat16)
    g = torch.randn(3, 333, 1000, device=dev, dtype=torch.bfloat16)
    outs = []
    for m in (ref_m, fused_m):
        xi = x.clone().requires_grad_(True)
        y = m(xi)
        y.backward(g)
        outs.append([y, xi.grad] + [p.grad for p in m.parameters() if p.requires_grad])
    check('lora_linear nf4 (y, dx, dA, dB)', list(zip(outs[1], outs[0])), 2e-2)
    # Offloaded checkpoints (three layers, so backward prefetches) equal plain backward,
    # over two steps (the second reuses the pinned buffers).
    torch.manual_seed(2)
    layers = [nn.Sequential(nn.Linear(512, 2048), nn.GELU(), nn.Linear(2048, 512)).to(dev)
              for _ in range(3)]
    params = [p for layer in layers for p in layer.parameters()]
    ck = LayerCheckpointer(offload=True)
    for step in range(2):
        outs = []
        for use_ck in (False, True):
            for p in params:
                p.grad = None
            xi = torch.randn(4, 100, 512, device=dev,
                             generator=torch.Generator(dev).manual_seed(3 + step))
            xi.requires_grad_(True)
            y = xi
            for layer in layers:
                y = ck(layer, y) if use_ck else layer(y)
            y.square().sum().backward()
            outs.append([y, xi.grad] + [p.grad.clone() for p in params])
        check(f'offloaded checkpoint step {step} (y, dx, dW...)', list(zip(outs[1], outs[0])),
              1e-5)
    # Chunked loss vs full fp32 logits.
    h = torch.randn(1, 3000, 4096, device=dev, dtype=torch.bfloat16)
    w = torch.randn(32000, 4096, device=dev, dtype=torch.bfloat16) * 0.02
    labels = torch.randint(0, 32000, (1, 3000), device=dev)
    labels[0, :100] = -100
    ref = grads_of(lambda a: nn.functional.cross_entropy((a @ w.T).float()[0, :-1], labels[0, 1:],
                                                         ignore_index=-100), [h], None)
    got = grads_of(lambda a: linear_cross_entropy(a, w, labels, chunk_tokens=1024)[0], [h], None)
    check('linear_cross_entropy (loss, dh)', list(zip(got, ref)), 1e-2)
    check_dropout_kernel(dev)
    check_fast_path_models(dev)
    check_packed_varlen(dev)
    check_token_weighted_graphs(dev)
    print('FAILED: ' + ', '.join(FAILED) if FAILED else 'all kernel checks passed')
    return 1 if FAILED else 0


def check_dropout_kernel(dev):
    """The Triton adapter-dropout kernel against its torch reference: the same masks (bits)
    and values up to the output dtype's rounding, on odd shapes, row offsets, accumulation."""
    from xft.model.kernels.dropout import (dropped_reference, dropped_triton,
                                           triton_matches_reference)
    verified = triton_matches_reference(torch.device(dev))
    print(f'{"ok " if verified else "BAD"} dropout kernel self-check (used by training): {verified}')
    if not verified:
        FAILED.append('dropout self-check')
    for rows, cols, offset, dtype in [(2048, 4096, 0, torch.bfloat16), (37, 11008, 256, torch.bfloat16),
                                      (5, 1000, 3, torch.float32)]:
        seed = torch.tensor([2**61 + rows], device=dev)
        x = torch.randn(rows, cols, device=dev).to(dtype)
        got = dropped_triton(x, seed, 17, 0.1, scale=0.25, row_offset=offset)
        ref = dropped_reference(x, seed, 17, 0.1, scale=0.25, row_offset=offset)
        same_mask = bool(torch.equal(got == 0, ref == 0))
        keep = (got != 0).float().mean().item()
        print(f'{"ok " if same_mask else "BAD"} dropout mask {rows}x{cols}+{offset} {dtype}: '
              f'same zeros {same_mask}, kept {keep:.4f}', flush=True)
        if not same_mask:
            FAILED.append(f'dropout mask {rows}x{cols}')
        check(f'dropout values {rows}x{cols} {dtype}', [(got, ref)], 1e-2)
    time_dropout_kernel(dev)


def time_dropout_kernel(dev):
    """How long the dropout kernels take against a plain copy of the same tensor (the memory
    traffic alone): their hash is integer work, and this says whether it hides under it."""
    from xft.model.kernels.dropout import dropped, dropped_pair

    def microseconds(fn, repeat=50):
        fn()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(repeat):
            fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / repeat * 1000

    seed = torch.tensor([12345], device=dev)
    for rows, cols in [(2048, 4096), (2048, 11008), (8192, 4096)]:
        x = torch.randn(rows, cols, device=dev, dtype=torch.bfloat16)
        t = torch.randn_like(x)
        copy = microseconds(lambda: x.clone())
        single = microseconds(lambda: dropped(x, seed, 3, 0.1))
        pair = microseconds(lambda: dropped_pair(x, t, seed, 3, 0.1, 0.5))
        print(f'    dropout timing {rows}x{cols} bf16: dropped {single:.1f} us, dropped_pair {pair:.1f} us, '
              f'clone {copy:.1f} us', flush=True)


def check_fast_path_models(dev):
    """A 4-layer Llama with LoRA (bf16 and NF4): the fast path with CUDA graphs trains like
    the fast path without them and like the plain peft model (six AdamW steps under bf16
    autocast, the layer inputs offloaded as SupervisedFinetune does on a GPU)."""
    import tempfile

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig, LlamaConfig, LlamaForCausalLM

    from xft.model.fast_path import apply_fast_path, causal_lm_loss
    from xft.model.kernels.graphs import GraphFamily

    cfg = LlamaConfig(vocab_size=1000, hidden_size=512, intermediate_size=1376, num_hidden_layers=4,
                      num_attention_heads=8, max_position_embeddings=1024)
    folder = tempfile.mkdtemp()
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).to(torch.bfloat16).save_pretrained(folder)
    targets = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj']
    for quantized, dropout in ((False, 0.0), (True, 0.0), (False, 0.1), (True, 0.1)):
        runs = {}
        # With adapter dropout only the fast paths share masks (peft draws its own).
        for mode in (('plain', 'fast', 'graphs') if dropout == 0 else ('fast', 'graphs')):
            extra = {}
            if quantized:
                extra['quantization_config'] = BitsAndBytesConfig(
                    load_in_4bit=True, bnb_4bit_quant_type='nf4', bnb_4bit_use_double_quant=True,
                    bnb_4bit_compute_dtype=torch.bfloat16)
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16,
                                                         device_map={'': 0}, **extra)
            torch.manual_seed(1)
            model = get_peft_model(model, LoraConfig(r=16, lora_alpha=16, lora_dropout=dropout,
                                                     target_modules=targets))
            for n, p in model.named_parameters():
                if 'lora_B' in n:
                    p.data.normal_(std=0.02)
            family = None
            if mode == 'plain':
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={'use_reentrant': False})
            else:
                family = GraphFamily() if mode == 'graphs' else None
                apply_fast_path(model, offload_checkpoints=True, cuda_graphs=family or False)
            model.train()
            params = [p for p in model.parameters() if p.requires_grad]
            opt = torch.optim.AdamW(params, lr=1e-3, fused=True)
            gen = torch.Generator(dev).manual_seed(5)
            losses = []
            for step in range(6):
                ids = torch.randint(0, 1000, (1, 512), device=dev, generator=gen)
                torch.manual_seed(100 + step)  # the step's dropout seed, the same in each mode
                with torch.autocast('cuda', dtype=torch.bfloat16):
                    if mode == 'plain':
                        loss = model(input_ids=ids, labels=ids).loss
                    else:
                        loss, _ = causal_lm_loss(model, ids, ids)
                loss.backward()
                grads = [p.grad.detach().clone() for p in params]
                opt.step()
                opt.zero_grad(set_to_none=True)
                losses.append(loss.detach().float())
            runs[mode] = (torch.stack(losses), grads, family.replays if family else None)
            del model, opt
            torch.cuda.empty_cache()
        kind = ('nf4' if quantized else 'bf16') + (f' dropout {dropout}' if dropout else '')
        print(f'    {kind} losses: ' + '; '.join(f'{m}=' + ','.join(f'{x:.4f}' for x in r[0].tolist())
                                           for m, r in runs.items()) + f'; replays={runs["graphs"][2]}')
        if not runs['graphs'][2]:
            FAILED.append(f'graphs {kind}: no layer replayed')
        check(f'fast path with graphs vs without, {kind} (losses, last grads)',
              [(runs['graphs'][0], runs['fast'][0])] + list(zip(runs['graphs'][1], runs['fast'][1])), 2e-2)
        if 'plain' in runs:
            check(f'fast path vs plain peft, {kind} (losses)', [(runs['fast'][0], runs['plain'][0])], 2e-2)


def packed_row(width, gen, dev):
    """One packed row of random samples (3 to 300 tokens) as the collate function gives it."""
    lengths, total = [], 0
    while total < width:
        n = min(int(torch.randint(3, 300, (1, ), generator=gen)), width - total)
        lengths.append(n)
        total += n
    cumulative = torch.tensor([0] + lengths).cumsum(0)
    ids = torch.randint(0, 1000, (1, width), generator=gen)
    positions = torch.cat([torch.arange(n) for n in lengths]).unsqueeze(0)
    return {'input_ids': ids.to(dev), 'labels': ids.clone().to(dev), 'position_ids': positions.to(dev),
            'cumulative_len': [cumulative], 'max_seqlen': max(lengths)}, lengths


def check_packed_varlen(dev):
    """Packed rows through torch's varlen_attn (xft_varlen, what SupervisedFinetune picks on a
    GPU): the loss and grads equal SDPA's block mask and the samples run one by one, and with
    CUDA graphs (boundaries padded to one shape) the steps equal those without."""
    import tempfile

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    from xft.model.fast_path import apply_fast_path, causal_lm_loss
    from xft.model.kernels.graphs import GraphFamily
    from xft.model.packed_attention import (choose_packed_attention, packed_attention_kwargs,
                                            varlen_attention_available)

    if not varlen_attention_available():
        print('BAD packed varlen: torch has no varlen_attn here', flush=True)
        FAILED.append('packed varlen: no varlen_attn')
        return
    cfg = LlamaConfig(vocab_size=1000, hidden_size=512, intermediate_size=1376, num_hidden_layers=4,
                      num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=2048)
    folder = tempfile.mkdtemp()
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).to(torch.bfloat16).save_pretrained(folder)
    targets = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj']

    def model_with(attention, family):
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16, device_map={'': 0},
                                                     attn_implementation='sdpa')
        if attention != 'sdpa':
            assert choose_packed_attention(model) == attention
        torch.manual_seed(1)
        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=16, lora_dropout=0.1,
                                                 target_modules=targets))
        for n, p in model.named_parameters():
            if 'lora_B' in n:
                p.data.normal_(std=0.02)
        apply_fast_path(model, offload_checkpoints=True, cuda_graphs=family or False)
        return model.train()

    def step_loss(model, attention, data):
        kwargs = packed_attention_kwargs(data, attention)
        ids, labels = kwargs.pop('input_ids'), kwargs.pop('labels')
        with torch.autocast('cuda', dtype=torch.bfloat16):
            loss, n = causal_lm_loss(model, ids, labels, **kwargs)
        return loss, n

    # 1. one packed row: varlen == block mask == the samples one by one (summed token losses)
    gen = torch.Generator().manual_seed(3)
    data, lengths = packed_row(1024, gen, dev)
    results = {}
    for attention in ('sdpa', 'xft_varlen'):
        model = model_with(attention, None)
        torch.manual_seed(7)
        loss, n = step_loss(model, attention, data)
        loss.backward()
        grads = [p.grad.float().clone() for p in model.parameters() if p.requires_grad]
        results[attention] = (loss.detach().float(), grads)
        if attention == 'xft_varlen':
            total, count, start = 0.0, 0, 0
            with torch.no_grad():
                for length in lengths:
                    piece = {'input_ids': data['input_ids'][:, start:start + length]}
                    piece['labels'] = piece['input_ids']
                    torch.manual_seed(7)
                    part, m = step_loss(model, 'sdpa', piece)
                    total, count, start = total + float(part) * m, count + m, start + length
        del model
        torch.cuda.empty_cache()
    check('packed row, varlen vs SDPA block mask (loss, grads)',
          [(results['xft_varlen'][0], results['sdpa'][0])]
          + list(zip(results['xft_varlen'][1], results['sdpa'][1])), 2e-2)
    print(f'    packed loss {float(results["xft_varlen"][0]):.5f}; samples one by one, no dropout '
          f'masks shared: {total / count:.5f} ({len(lengths)} samples)', flush=True)

    # 2. six steps of different packings: graphs on == graphs off, and the graphs replayed
    runs = {}
    for mode in ('fast', 'graphs'):
        family = GraphFamily() if mode == 'graphs' else None
        model = model_with('xft_varlen', family)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-3, fused=True)
        gen = torch.Generator().manual_seed(5)
        losses = []
        for step in range(6):
            data, _ = packed_row(1024, gen, dev)
            torch.manual_seed(100 + step)
            loss, _ = step_loss(model, 'xft_varlen', data)
            loss.backward()
            grads = [p.grad.detach().float().clone() for p in params]
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.detach().float())
        runs[mode] = (torch.stack(losses), grads, family.replays if family else None)
        del model, opt
        torch.cuda.empty_cache()
    print('    varlen losses: ' + '; '.join(f'{m}=' + ','.join(f'{x:.4f}' for x in r[0].tolist())
                                      for m, r in runs.items()) + f'; replays={runs["graphs"][2]}',
          flush=True)
    if not runs['graphs'][2]:
        FAILED.append('graphs with varlen: no layer replayed')
    check('packed varlen, graphs vs no graphs (losses, last grads)',
          [(runs['graphs'][0], runs['fast'][0])] + list(zip(runs['graphs'][1], runs['fast'][1])), 2e-2)


def check_token_weighted_graphs(dev):
    """Issue 14 on the fast path: with CUDA graphs replaying the layers and the chunked loss,
    one micro-batch of two rows (20 and 480 trained tokens) and two accumulated micro-batches
    of one row each take the same four SGD steps through ``TokenWeightedOptimWrapper``; the
    mean of per-micro-batch means (the control) takes other steps."""
    import tempfile

    from mmengine.optim import OptimWrapper
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    from xft.engine.token_weighting import TokenWeightedOptimWrapper
    from xft.model.fast_path import apply_fast_path, causal_lm_loss
    from xft.model.kernels.graphs import GraphFamily
    from xft.model.loss import count_trained_tokens

    cfg = LlamaConfig(vocab_size=1000, hidden_size=256, intermediate_size=688, num_hidden_layers=3,
                      num_attention_heads=4, max_position_embeddings=1024)
    folder = tempfile.mkdtemp()
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 1000, (2, 512), generator=gen).to(dev)
    labels = ids.clone()
    labels[0, :-20] = -100   # the short answer: its last 20 tokens (19 scored after the shift)
    labels[1, :-480] = -100  # the long one

    def final_lora_weights(micro_batches, normalization):
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, device_map={'': dev})
        torch.manual_seed(1)
        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0,
                                                 target_modules=['q_proj', 'v_proj', 'gate_proj', 'down_proj']))
        family = GraphFamily()
        apply_fast_path(model, offload_checkpoints=False, cuda_graphs=family)
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        start = torch.cat([p.detach().flatten() for p in params])  # the same in every run (seed 1)
        inner = OptimWrapper(torch.optim.SGD(params, lr=0.5), accumulative_counts=len(micro_batches))
        steps = 4
        inner.initialize_count_status(model, 0, steps * len(micro_batches))
        wrapper = TokenWeightedOptimWrapper(inner, ranks=1) if normalization == 'step_tokens' else inner
        step_tokens = sum(count_trained_tokens(labels[rows]) for rows in micro_batches)
        for _ in range(steps):
            for rows in micro_batches:
                loss, _ = causal_lm_loss(model, ids[rows], labels[rows])
                if wrapper is not inner:
                    wrapper.set_micro_batch(count_trained_tokens(labels[rows]), step_tokens)
                wrapper.update_params(loss)
        moved = torch.cat([p.detach().flatten() for p in params]) - start
        del model
        torch.cuda.empty_cache()
        return moved, family.replays

    runs = {}
    for name, micro_batches, normalization in (('batch 2', [slice(0, 2)], 'step_tokens'),
                                                ('2 x accumulation', [slice(0, 1), slice(1, 2)], 'step_tokens'),
                                                ('control: micro-batch means', [slice(0, 1), slice(1, 2)],
                                                 'micro_batch')):
        runs[name] = final_lora_weights(micro_batches, normalization)
    reference, replays = runs['batch 2']
    accumulated, replays_acc = runs['2 x accumulation']
    control, _ = runs['control: micro-batch means']
    print(f'    token weighting: replays batch2={replays} accumulation={replays_acc}; '
          f'|acc - batch2| / |batch2| = {rel(accumulated, reference):.2e}, '
          f'control {rel(control, reference):.2e}', flush=True)
    if not (replays and replays_acc):
        FAILED.append('token weighting: the graphs never replayed')
    check('token-weighted loss under graphs: 2 x accumulation vs batch 2 (LoRA weights moved by 4 SGD steps)',
          [(accumulated, reference)], 1e-4)
    if not rel(control, reference) > 1e-2:
        FAILED.append('token weighting control: the micro-batch mean did not differ')


if __name__ == '__main__':
    sys.exit(main())
