"""EvaluateChatHook and DatasetInfoHook on a toy mmengine runner and on the tiny 4-bit model."""
import json
import uuid
from types import SimpleNamespace

import pytest
import torch
from helpers.convert import (build_model_from_config, chatml_samples, run_toy_training,
                              write_config)
from mmengine.logging import MMLogger

from xft.dataset.collate_fns import default_collate_fn
from xft.engine.hooks import DatasetInfoHook, EvaluateChatHook
from xft.model.generation import encode_for_generation
from xft.utils import PROMPT_TEMPLATE

INPUTS = ['Who are you?', 'What is the capital of France?']
SYSTEM = 'You are a helpful assistant.'
PAIRS = [('Who are you?', 'I am a tiny model.'), ('Name a colour.', 'Blue.'),
         ('Say hello.', 'Hello!'), ('Count to three.', 'One, two, three.')] * 2


def encoded_samples(tokenizer):
    return chatml_samples(tokenizer, PAIRS)


def lora_parameters(model):
    return {name: param for name, param in model.named_parameters() if 'lora_' in name}


@pytest.fixture()
def qlora_model(tmp_path, tiny_llama_dir):
    config = write_config(tmp_path / 'qlora_cfg.py', tiny_llama_dir, 'qlora')
    return build_model_from_config(config)


def make_hook(tokenizer, **overrides):
    settings = dict(tokenizer=tokenizer, evaluation_inputs=INPUTS, system=SYSTEM,
                    prompt_template=PROMPT_TEMPLATE.chatml, max_new_tokens=6)
    settings.update(overrides)
    return EvaluateChatHook(**settings)


def fake_runner(model, work_dir, iteration=0):
    logger = MMLogger.get_instance(f'hooktest_{uuid.uuid4().hex}', log_level='INFO')
    return SimpleNamespace(model=model, logger=logger, work_dir=str(work_dir), iter=iteration,
                           hooks=[])


def test_hook_prompts_are_the_training_format(tiny_tokenizer):
    hook = make_hook(tiny_tokenizer)
    assert len(hook.prompts) == len(INPUTS)
    for text, prompt in zip(INPUTS, hook.prompts):
        assert prompt == encode_for_generation([], text, 'chatml', tiny_tokenizer, system=SYSTEM)
    assert '<|im_end|>' in hook.stop_words and tiny_tokenizer.eos_token in hook.stop_words
    assert EvaluateChatHook.priority == 'LOW' and DatasetInfoHook.priority == 'NORMAL'


def test_generating_leaves_4bit_lora_training_intact(tmp_path, tiny_tokenizer, qlora_model):
    import bitsandbytes as bnb
    model = qlora_model
    llm = model.llm
    # A model built elsewhere may still carry bitsandbytes' CPU repack flag: the hook must
    # clear it itself before generating, or every LoRA grad below would be None.
    for module in llm.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = True
    llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={'use_reentrant': False})
    model.train()
    llm.model.model.norm.eval()  # a part kept in eval mode on purpose stays so
    checkpointing_before = model.gradient_checkpointing_active()
    assert checkpointing_before and llm.config.use_cache is False

    hook = make_hook(tiny_tokenizer)
    hook.before_train(fake_runner(model, tmp_path))

    assert model.training and llm.training and not llm.model.model.norm.training
    assert all(m.training for n, m in llm.named_modules() if not n.endswith('model.norm'))
    assert llm.config.use_cache is False
    assert model.gradient_checkpointing_active() == checkpointing_before
    batch = default_collate_fn(encoded_samples(tiny_tokenizer)[:2],
                               pad_index=tiny_tokenizer.pad_token_id)['data']
    model(batch, mode='loss')['loss'].backward()
    params = lora_parameters(model)
    assert len(params) == 28
    missing = [name for name, param in params.items() if param.grad is None]
    assert missing == []
    assert all(param.grad.abs().sum() > 0 for name, param in params.items() if 'lora_B' in name)


def test_hook_on_a_toy_runner_writes_answers_and_training_still_updates_every_lora_weight(
        tmp_path, tiny_tokenizer, qlora_model):
    model = qlora_model
    before = {name: param.detach().clone() for name, param in lora_parameters(model).items()}
    samples = encoded_samples(tiny_tokenizer)
    chat_hook = make_hook(tiny_tokenizer, every_n_iters=2)
    info_hook = DatasetInfoHook(tokenizer=tiny_tokenizer)
    run_toy_training(model, tiny_tokenizer, tmp_path / 'run', samples, max_iters=4,
                     checkpoint_interval=3, custom_hooks=[chat_hook, info_hook])

    out_dir = tmp_path / 'run' / 'eval_outputs'
    # before training (0), every 2 iterations (2, 4), at the checkpoint save (3); after
    # training is iteration 4 again and is not repeated.
    assert sorted(p.name for p in out_dir.glob('iter_*.txt')) == [
        'iter_0.txt', 'iter_2.txt', 'iter_3.txt', 'iter_4.txt']
    records = [json.loads(line) for line in (out_dir / 'answers.jsonl').read_text().splitlines()]
    assert [r['iter'] for r in records] == [0, 0, 2, 2, 3, 3, 4, 4]
    assert [r['input'] for r in records[:2]] == INPUTS
    assert INPUTS[1] in (out_dir / 'iter_3.txt').read_text()

    changed = [name for name, param in lora_parameters(model).items()
               if not torch.equal(param.detach(), before[name])]
    assert len(changed) == len(before) == 28  # AdamW skips a weight whose grad is None

    log_text = '\n'.join(p.read_text() for p in (tmp_path / 'run').rglob('*.log'))
    assert f'Num train samples {len(samples)}' in log_text
    assert 'EvaluateChatHook iter 2' in log_text


def test_batched_answers_equal_one_by_one_answers_in_float32(tmp_path, tiny_llama_dir,
                                                             tiny_tokenizer):
    from xft.model.generation import generate_reply
    config = write_config(tmp_path / 'lora_cfg.py', tiny_llama_dir, 'lora')
    model = build_model_from_config(config)
    inputs = INPUTS + ['Speak, speak.', 'A much longer question, so that the prompts differ in '
                       'length and the short ones are padded on the left.']
    hook = make_hook(tiny_tokenizer, evaluation_inputs=inputs, max_new_tokens=12)
    answers = hook._evaluate(fake_runner(model, tmp_path), iteration=0)
    model.llm.eval()
    one_by_one = [generate_reply(model.llm, tiny_tokenizer, prompt, hook.settings,
                                 hook.stop_words) for prompt in hook.prompts]
    assert answers == one_by_one
    assert len(set(answers)) > 1


def test_dataset_info_describes_size_first_sample_and_trained_text(tiny_tokenizer):
    samples = encoded_samples(tiny_tokenizer)
    lines = DatasetInfoHook(tokenizer=tiny_tokenizer).describe(samples, 'train')
    assert lines[0] == f'Num train samples {len(samples)}'
    assert 'Who are you?' in lines[1] and 'I am a tiny model.' in lines[1]
    assert lines[2] == 'train example, trained text: I am a tiny model.<|im_end|>'


def test_dataset_info_decodes_intern_repo_negative_ids(tiny_tokenizer):
    ids = tiny_tokenizer('Hello there', add_special_tokens=False)['input_ids']
    dataset = [{'input_ids': [-token for token in ids[:1]] + ids[1:]}]
    lines = DatasetInfoHook(tokenizer=tiny_tokenizer, is_intern_repo_dataset=True).describe(
        dataset, 'train')
    assert lines[1].endswith('Hello there')


def test_hook_without_template_sends_the_inputs_as_they_are(tiny_tokenizer):
    hook = EvaluateChatHook(tokenizer=tiny_tokenizer, evaluation_inputs='Shanghai is')
    text_ids = tiny_tokenizer('Shanghai is', add_special_tokens=False)['input_ids']
    assert hook.prompts == [[tiny_tokenizer.bos_token_id] + text_ids]

