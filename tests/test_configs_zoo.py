"""No zoo config rots: each one is what the generator writes, shares its body, and builds.

Every config under configs/ (but the two hand-written ones) is built on the tiny random Llama
with a small file of its dataset's format, quantization kept; one config of each family (all
four shared bodies among them) trains two iterations through `xft train`.
"""
import ast
import contextlib
import io
import json
import math
from collections import defaultdict
from pathlib import Path

import pytest
import torch

from conftest_zoo import dataset_key, small_data_files, tiny_config_text
from xft.tools import gen_configs

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / 'configs'
# Written by hand, outside the generated zoo.
HAND_WRITTEN = {'smollm2_135m_qlora_self_cognition.py'}
# One config of each family, every shared body among them; each trains two iterations.
TRAINED_SAMPLE = ['internlm2_chat_7b_qlora_alpaca_zh_e3', 'llama3_8b_instruct_lora_alpaca_e3',
                  'qwen1_5_7b_chat_qlora_oasst1_e3', 'mistral_7b_full_custom_pretrain_e1',
                  'mixtral_8x7b_instruct_qlora_custom_sft_e1', 'gemma_2b_it_full_alpaca_e3',
                  'baichuan2_7b_chat_qlora_custom_conversation_e1', 'chatglm3_6b_lora_alpaca_zh_e3',
                  'deepseek_moe_16b_chat_qlora_oasst1_e3', 'yi_6b_qlora_oasst1_e3',
                  'phi3_mini_4k_instruct_qlora_custom_sft_e1', 'smollm2_135m_instruct_full_custom_sft_e1']


def zoo_files():
    return sorted(p for p in CONFIGS.rglob('*.py') if p.name not in HAND_WRITTEN)


def test_committed_zoo_is_exactly_what_the_generator_writes():
    rendered = gen_configs.rendered_zoo()
    committed = {p.relative_to(CONFIGS): p.read_text() for p in zoo_files()}
    assert sorted(committed) == sorted(rendered), 'run `python -m xft.tools.gen_configs`'
    stale = [str(rel) for rel, text in rendered.items() if committed[rel] != text]
    assert not stale, f'edited by hand or generator changed; rerun the generator: {stale[:5]}'


def test_parts_2_to_5_are_byte_identical_within_each_body():
    bodies = defaultdict(set)
    for entry in gen_configs.zoo_entries():
        _, body = gen_configs.split_body((CONFIGS / entry.path).read_text())
        bodies[entry.body].add(body)
    assert sorted(bodies) == ['full', 'lora', 'pretrain', 'qlora']
    for name, texts in bodies.items():
        assert len(texts) == 1, f'{name}: {len(texts)} different PART 2-5 texts'
        assert texts == {gen_configs.split_body(gen_configs.template_text(name))[1]}


def test_zoo_covers_the_families_methods_and_data_formats():
    names = {p.stem for p in zoo_files()}
    for family_key in ['internlm_chat_7b', 'internlm2_chat_7b', 'internlm2_5_chat_7b', 'llama2_7b_chat',
                       'llama3_8b_instruct', 'llama3_1_8b_instruct', 'qwen1_5_7b_chat', 'qwen2_7b_instruct',
                       'qwen2_5_7b_instruct', 'mistral_7b', 'mixtral_8x7b_instruct', 'gemma_2b_it',
                       'baichuan2_7b_chat', 'chatglm3_6b', 'deepseek_coder_6_7b_instruct', 'yi_6b',
                       'phi3_mini_4k_instruct', 'smollm2_135m_instruct']:
        assert any(name.startswith(family_key + '_') for name in names), family_key
    for part in ['_qlora_', '_lora_', '_full_', '_oasst1_', '_alpaca_', '_alpaca_zh_', '_code_alpaca_',
                 '_custom_sft_', '_custom_conversation_', '_custom_pretrain_']:
        assert any(part in name for name in names), part
    assert 'llama2_7b_chat_qlora_alpaca_e3' in names and 'qwen1_5_7b_chat_lora_oasst1_e3' in names


def test_each_header_runs_and_copies_the_config_it_sits_in():
    for path in zoo_files():
        header = path.read_text().split('\n\n')[0]
        assert f'#   xft train {path.stem}\n' in header, path.stem
        assert f'#   NPROC_PER_NODE=8 xft train {path.stem}\n' in header, path.stem
        assert f'#   xft copy-cfg {path.stem} .\n' in header, path.stem


def test_config_names_are_unique_so_bare_names_resolve():
    stems = [p.stem for p in CONFIGS.rglob('*.py')]
    assert len(stems) == len(set(stems))


def part1_assignments(text):
    """(name, has a why-comment) for each PART 1 assignment."""
    head, _ = gen_configs.split_body(text)
    part1 = head.split(gen_configs.banner('PART 1  Settings'))[1]
    lines = part1.splitlines()
    found = []
    for node in ast.parse(part1).body:
        if isinstance(node, ast.Assign):
            line = lines[node.lineno - 1]
            above = lines[node.lineno - 2] if node.lineno >= 2 else ''
            found.append((node.targets[0].id, '#' in line or above.startswith('#')))
    return found


@pytest.mark.parametrize('path', [zoo_files()[0], CONFIGS / 'mixtral/mixtral_8x7b_instruct/'
                                  'mixtral_8x7b_instruct_qlora_alpaca_e3.py'],
                         ids=lambda p: p.stem)
def test_each_part1_knob_has_a_why_comment_or_an_obvious_neighbour(path):
    assignments = part1_assignments(path.read_text())
    names = [name for name, _ in assignments]
    assert {'pretrained_model_name_or_path', 'data_path', 'dataset_map_fn', 'prompt_template',
            'max_length', 'lr', 'use_tensorboard'} <= set(names)
    # Knobs whose meaning the name and neighbours carry (as in XTuner's configs).
    self_explaining = {'dataloader_num_workers', 'optim_type', 'betas', 'weight_decay', 'save_steps',
                       'evaluation_freq', 'evaluation_inputs'}
    missing = [name for name, commented in assignments if not commented and name not in self_explaining]
    assert not missing, f'{path.name}: PART 1 knobs without a why-comment: {missing}'


@pytest.fixture(scope='module')
def small_files(shared_data, tmp_path_factory):
    return small_data_files(shared_data, tmp_path_factory.mktemp('zoo_data'))


def tiny_config(path, tiny_llama_dir, small_files, out_dir):
    out = out_dir / path.name
    out.write_text(tiny_config_text(path, tiny_llama_dir, small_files[dataset_key(path.stem)]))
    return out


def test_every_zoo_config_builds_on_the_tiny_model(tmp_path, tiny_llama_dir, small_files):
    """Data, model and hooks of every config, as the Runner builds them (quantization kept)."""
    from mmengine.config import Config
    from mmengine.registry import DATASETS, HOOKS, MODELS

    from xft.utils import IGNORE_INDEX

    paths = zoo_files()
    assert len(paths) == len(list(CONFIGS.rglob('*.py'))) - len(HAND_WRITTEN & {
        p.name for p in CONFIGS.glob('*.py')}), 'a config in configs/ is neither zoo nor hand-written'
    assert len(paths) == len(gen_configs.zoo_entries())
    built = 0
    for path in paths:
        cfg = Config.fromfile(str(tiny_config(path, tiny_llama_dir, small_files, tmp_path)))
        dataset_cfg = dict(cfg.train_dataloader.dataset, max_dataset_length=8, map_num_proc=1)
        dataset = DATASETS.build(dataset_cfg)
        assert len(dataset) > 0, path.stem
        assert any(label != IGNORE_INDEX for label in dataset[0]['labels']), f'{path.stem}: nothing trained'

        model = MODELS.build(cfg.model)
        trainable = [name for name, p in model.named_parameters() if p.requires_grad]
        method = path.stem.split('_')[[i for i, part in enumerate(path.stem.split('_'))
                                       if part in ('qlora', 'lora', 'full')][0]]
        if method == 'full':
            assert len(trainable) == len(list(model.parameters())), path.stem
        else:
            assert trainable and all('lora_' in name for name in trainable), path.stem
            targets = cfg.lora_target_modules
            if targets is not None:
                assert {name.split('.lora_')[0].split('.')[-1] for name in trainable} == set(targets)
        quantized = any(type(m).__name__ == 'Linear4bit' for m in model.modules())
        assert quantized == (method == 'qlora'), path.stem

        hooks = [HOOKS.build(dict(hook)) for hook in cfg.custom_hooks]
        assert [type(h).__name__ for h in hooks] == ['DatasetInfoHook', 'EvaluateChatHook', 'LossCurveHook']
        built += 1
    assert built == len(paths)


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16], ids=str)
def test_torch_dtype_objects_build_and_survive_the_dumped_config(dtype, tmp_path, tiny_llama_dir, small_files,
                                                                 monkeypatch):
    """PART 1's ``torch_dtype`` is a dtype object, as XTuner writes it (``torch.float16``), and
    reaches the weights, the 4-bit compute dtype and the AmpOptimWrapper. (The PART 4 it
    replaced, ``torch_dtype.replace('torch.', '')``, could not load such a config.) mmengine
    dumps the object into the work dir's config as the string ``'torch.float16'``: the model
    builder reads that, and on a GPU ``adapt_optim_wrapper`` spells it as AmpOptimWrapper
    accepts (its own check refuses ``'torch.float16'``); tests/test_train_e2e.py re-trains a
    dumped config on CPU."""
    from mmengine.config import Config
    from mmengine.optim import AmpOptimWrapper
    from mmengine.registry import MODELS

    from xft.engine.device import adapt_optim_wrapper

    def built_dtypes(cfg):
        model = MODELS.build(cfg.model)
        compute = {m.compute_dtype for m in model.modules() if type(m).__name__ == 'Linear4bit'}
        return model.llm.get_input_embeddings().weight.dtype, compute

    path = CONFIGS / 'llama/llama2_7b_chat/llama2_7b_chat_qlora_alpaca_e3.py'
    config = tmp_path / path.name
    config.write_text(tiny_config_text(path, tiny_llama_dir, small_files['alpaca'], torch_dtype=dtype))
    cfg = Config.fromfile(str(config))
    assert cfg.optim_wrapper.dtype is dtype
    assert built_dtypes(cfg) == (dtype, {dtype})

    cfg.dump(str(tmp_path / 'dumped.py'))
    dumped = Config.fromfile(str(tmp_path / 'dumped.py'))
    assert dumped.model.llm.torch_dtype == str(dtype)
    assert built_dtypes(dumped) == (dtype, {dtype})
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    adapt_optim_wrapper(dumped)
    assert dumped.optim_wrapper.dtype in AmpOptimWrapper.valid_dtypes


# Two iterations, each logged; short sample answers (the chat hook still runs before and after).
SMOKE_OPTIONS = ['--cfg-options', 'train_cfg.max_epochs=None', 'train_cfg.max_iters=2',
                 'default_hooks.logger.interval=1', 'custom_hooks.1.max_new_tokens=8',
                 'train_dataloader.dataset.max_dataset_length=16', 'train_dataloader.dataset.map_num_proc=1']


def test_one_config_of_each_family_trains_two_iterations(tmp_path, tiny_llama_dir, small_files):
    """Through `xft train` in this process: a Python start per run would cost more than the run."""
    from xft import cli

    sample = [entry for entry in gen_configs.zoo_entries() if entry.name in TRAINED_SAMPLE]
    assert len(sample) == len(TRAINED_SAMPLE)
    assert {entry.body for entry in sample} == {'qlora', 'lora', 'full', 'pretrain'}
    assert {entry.model.family for entry in sample} == {model.family for model in gen_configs.MODELS}
    for name in TRAINED_SAMPLE:
        path = next(CONFIGS.rglob(f'{name}.py'))
        config = tmp_path / path.name
        # 128-token rows: the few sample rows make at least two iterations per epoch.
        config.write_text(tiny_config_text(path, tiny_llama_dir, small_files[dataset_key(name)],
                                           max_length=128))
        work_dir = tmp_path / name
        output = io.StringIO()
        with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
            code = cli.main(['train', str(config), '--work-dir', str(work_dir), *SMOKE_OPTIONS])
        assert code == 0, f'{name}:\n{output.getvalue()[-3000:]}'
        scalars = next(work_dir.glob('*/vis_data/scalars.json'))
        losses = [row['loss'] for row in map(json.loads, scalars.read_text().splitlines()) if 'loss' in row]
        assert len(losses) == 2 and all(math.isfinite(loss) for loss in losses), name
        assert (work_dir / 'loss_curve.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n', name
        state = torch.load(work_dir / 'iter_2.pth', map_location='cpu', weights_only=False)['state_dict']
        assert state, name
