"""No zoo config rots: each one is what the generator writes, shares its body, and builds.

Each check stands on its own, and each can fail while the others pass:

- *generated*: the committed files equal ``gen_configs``' output. Fails on a hand edit, or a
  record or template changed without regenerating.
- *shared bodies*: in every committed file, PARTs 2-5 equal those of the template its own
  header names, read from ``config_templates/`` (not through the renderer). Fails, even with
  every file regenerated, if the generator ever writes something config-specific below PART 1,
  or a file claims the wrong body.
- *counted*: every file under configs/ (recursive glob) is generated or listed as hand-written,
  and every generated one exists. Fails on a stray or a missing file.
- *builds*: every config builds on the tiny model with a small file of its data format; one of
  each family trains two iterations. Fails on a config the text checks cannot judge (a wrong
  import, a wiring mistake, a template that does not train).

The ``test_*_checker_*`` tests feed each text checker a mutated input and show it complains.
"""
import ast
import contextlib
import doctest
import io
import json
import math
import re
from pathlib import Path

import pytest
import torch

from helpers.zoo import dataset_key, small_data_files, tiny_config_text
from xft.tools import cfg_tools, gen_configs

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / 'configs'
TEMPLATES = REPO / 'xft' / 'tools' / 'config_templates'
# Written by hand, outside the generator.
HAND_WRITTEN = {'smollm2_135m_qlora_self_cognition.py'}
# One config of each family, every shared body among them; each trains two iterations.
TRAINED_SAMPLE = ['internlm2_chat_7b_qlora_alpaca_zh_e3', 'llama3_8b_instruct_lora_alpaca_e3',
                  'qwen1_5_7b_chat_qlora_oasst1_e3', 'mistral_7b_full_custom_pretrain_e1',
                  'mixtral_8x7b_instruct_qlora_custom_sft_e1', 'gemma_2b_it_full_alpaca_e3',
                  'baichuan2_7b_chat_qlora_custom_conversation_e1', 'chatglm3_6b_lora_alpaca_zh_e3',
                  'deepseek_moe_16b_chat_qlora_oasst1_e3', 'yi_6b_qlora_oasst1_e3',
                  'phi3_mini_4k_instruct_qlora_custom_sft_e1', 'smollm2_135m_instruct_full_custom_sft_e1',
                  'smollm2_135m_instruct_dpo_qlora_custom_preference_e1',
                  'smollm2_135m_instruct_orpo_qlora_custom_preference_e1',
                  'smollm2_135m_instruct_reward_qlora_custom_preference_e1']
# Bodies without EvaluateChatHook (a reward model does not generate).
NO_CHAT_BODIES = {'reward_qlora'}
PART2_BANNER = '#' * 71 + '\n#' + 'PART 2  Model & Tokenizer'.center(69) + '#\n' + '#' * 71 + '\n'
BODY_CLAIM = re.compile(r'^# Written by .*PARTs 2-5 are the shared `(\w+)`$', re.MULTILINE)


def zoo_files():
    return sorted(p for p in CONFIGS.rglob('*.py') if p.name not in HAND_WRITTEN)


def committed_zoo():
    return {p.relative_to(CONFIGS): p.read_text(encoding='utf-8') for p in zoo_files()}


# --------------------------------------------------------------------------------------
# The checkers: pure functions of texts and paths, so a mutated input can show each one fail.
# --------------------------------------------------------------------------------------
def generator_drift(committed: dict, rendered: dict) -> list:
    """What differs between the committed files and the generator's output."""
    problems = [f'{rel}: not committed' for rel in sorted(set(rendered) - set(committed))]
    problems += [f'{rel}: not written by the generator' for rel in sorted(set(committed) - set(rendered))]
    problems += [f'{rel}: differs from the generator' for rel in sorted(set(committed) & set(rendered))
                 if committed[rel] != rendered[rel]]
    return problems


def template_bodies() -> dict:
    """{body name: PARTs 2-5 of its template}, read from the template files themselves."""
    bodies = {}
    for path in TEMPLATES.glob('*.py'):
        _, found, rest = path.read_text(encoding='utf-8').partition(PART2_BANNER)
        assert found, f'{path.name}: no PART 2 banner'
        bodies[path.stem] = found + rest
    return bodies


def body_drift(committed: dict, bodies: dict) -> list:
    """Files whose PARTs 2-5 are not, byte for byte, those of the body their header names."""
    problems = []
    for rel, text in committed.items():
        claims = BODY_CLAIM.findall(text.partition(PART2_BANNER)[0])
        if len(claims) != 1 or claims[0] not in bodies:
            problems.append(f'{rel}: header names no shared body ({claims})')
        elif PART2_BANNER + text.partition(PART2_BANNER)[2] != bodies[claims[0]]:
            problems.append(f'{rel}: PARTs 2-5 differ from the `{claims[0]}` template')
    return problems


def unaccounted(found: list, generated: list, hand_written: set) -> list:
    """Config files that are neither generated nor hand-written, and expected ones not found."""
    expected = set(generated) | set(hand_written)
    return ([f'{p}: neither generated nor hand-written' for p in sorted(set(found) - expected)] +
            [f'{p}: missing' for p in sorted(expected - set(found))])


def runs_a_config(line: str) -> bool:
    return line.startswith('#') and any(cmd in line for cmd in ('xft train ', 'tools/train.py', 'xft copy-cfg '))


def copy_header_problems(original: str, copy: str, copy_path: str) -> list:
    """What is wrong with a copy's header: it must train the copy, keep what the original
    trains, carry no maintainer notes, and change nothing else."""
    original_header, original_rest = cfg_tools.split_header(original)
    header, rest = cfg_tools.split_header(copy)
    problems = []
    if rest != original_rest:
        problems.append('the copy differs below the header')
    if header[:1] != original_header[:1]:
        problems.append('the first line (what it trains) is not the original\'s')
    if f'#   xft train {copy_path}\n' not in header:
        problems.append('no `xft train COPY` line')
    problems += [f'runs something else: {line.strip()}' for line in header
                 if runs_a_config(line) and not line.rstrip().endswith(copy_path)]
    problems += [f'maintainer note: {line.strip()}' for line in header
                 if 'gen_configs' in line or 'test_configs_zoo' in line]
    return problems


# --------------------------------------------------------------------------------------
# The checks
# --------------------------------------------------------------------------------------
def test_committed_zoo_is_exactly_what_the_generator_writes():
    problems = generator_drift(committed_zoo(), gen_configs.rendered_zoo())
    assert not problems, f'run `python -m xft.tools.gen_configs`: {problems[:5]}'


def test_parts_2_to_5_equal_their_template_in_every_file():
    bodies = template_bodies()
    assert sorted(bodies) == ['dpo_qlora', 'full', 'lora', 'orpo_qlora', 'pretrain', 'qlora', 'reward_qlora']
    committed = committed_zoo()
    problems = body_drift(committed, bodies)
    assert not problems, problems[:5]
    claimed = {BODY_CLAIM.search(text).group(1) for text in committed.values()}
    assert claimed == set(bodies), 'every template is used'


def test_every_file_in_configs_is_generated_or_hand_written():
    found = [p.relative_to(CONFIGS) for p in CONFIGS.rglob('*.py')]
    generated = [entry.path for entry in gen_configs.zoo_entries()]
    assert not unaccounted(found, generated, {Path(name) for name in HAND_WRITTEN})
    assert len(found) == len(generated) + len(HAND_WRITTEN)
    assert len(set(generated)) == len(generated), 'two records give one path'


def test_checker_generator_drift_names_missing_stray_and_edited_files():
    rendered = {Path('a.py'): 'x = 1\n', Path('b.py'): 'x = 2\n'}
    committed = {Path('a.py'): 'x = 1  # edited by hand\n', Path('c.py'): 'x = 3\n'}
    assert generator_drift(committed, rendered) == [
        'b.py: not committed', 'c.py: not written by the generator', 'a.py: differs from the generator']
    assert generator_drift(rendered, rendered) == []


def test_checker_body_drift_catches_an_edited_body_and_a_wrong_claim():
    bodies = template_bodies()
    committed = committed_zoo()
    qlora = next(rel for rel, text in committed.items() if '`qlora`' in text)
    text = committed[qlora]
    assert body_drift({qlora: text}, bodies) == []
    edited = text.replace('    loss_scale=\'dynamic\',\n', '    loss_scale=512.0,\n')
    assert edited != text
    assert body_drift({qlora: edited}, bodies) == [f'{qlora}: PARTs 2-5 differ from the `qlora` template']
    wrong_claim = text.replace('the shared `qlora`', 'the shared `lora`')
    assert body_drift({qlora: wrong_claim}, bodies) == [f'{qlora}: PARTs 2-5 differ from the `lora` template']
    assert 'names no shared body' in body_drift({qlora: text.replace('the shared', 'a')}, bodies)[0]


def test_checker_unaccounted_names_a_stray_and_a_missing_config():
    assert unaccounted([Path('a.py'), Path('stray.py')], [Path('a.py'), Path('b.py')], set()) == [
        'stray.py: neither generated nor hand-written', 'b.py: missing']


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


def test_the_mission_config_is_the_twin_of_its_zoo_config():
    """configs/internlm_7b_qlora_oasst1.py (README, tests/test_train_e2e.py) and the zoo's
    internlm_7b_qlora_oasst1_e3 differ only in the header's name lines and its twin note."""
    twin = (CONFIGS / 'internlm_7b_qlora_oasst1.py').read_text()
    zoo = (CONFIGS / 'internlm/internlm_7b/internlm_7b_qlora_oasst1_e3.py').read_text()
    header, rest = cfg_tools.split_header(twin)
    assert rest == cfg_tools.split_header(zoo)[1]
    assert "the same config as the zoo's\n# internlm_7b_qlora_oasst1_e3." in ''.join(header)
    assert '#   xft train internlm_7b_qlora_oasst1\n' in header


def test_each_header_runs_and_copies_the_config_it_sits_in():
    for path in zoo_files():
        header = path.read_text().split('\n\n')[0]
        assert f'#   xft train {path.stem}\n' in header, path.stem
        assert f'#   NPROC_PER_NODE=8 xft train {path.stem}\n' in header, path.stem
        assert f'#   xft copy-cfg {path.stem} .\n' in header, path.stem


def test_config_names_are_unique_so_bare_names_resolve():
    stems = [p.stem for p in CONFIGS.rglob('*.py')]
    assert len(stems) == len(set(stems))


def test_copy_cfg_header_trains_the_copy_without_maintainer_notes(tmp_path):
    """Every zoo header, rewritten as copy-cfg does; then two real copies (a zoo config and
    the hand-written demo config), which load."""
    from mmengine.config import Config

    copy = Path('mine/x_copy.py')
    for path in zoo_files():
        text = path.read_text()
        header, rest = cfg_tools.split_header(text)
        copied = cfg_tools.copy_header(header, path.stem, copy) + rest
        assert not copy_header_problems(text, copied, str(copy)), path.stem
        assert f'Copied from {path.stem} by `xft copy-cfg`' in copied

    for name in ['qwen2_5_0_5b_instruct_qlora_alpaca_e3', 'smollm2_135m_qlora_self_cognition']:
        target = cfg_tools.copy_config(name, tmp_path / 'mine')
        original = next(CONFIGS.rglob(f'{name}.py')).read_text()
        assert not copy_header_problems(original, target.read_text(), str(target)), name
        Config.fromfile(str(target))


def test_checker_copy_header_problems_rejects_an_unrewritten_copy():
    text = (CONFIGS / 'internlm_7b_qlora_oasst1.py').read_text()
    problems = copy_header_problems(text, text, 'mine/internlm_7b_qlora_oasst1_copy.py')
    assert 'no `xft train COPY` line' in problems
    assert any(p.startswith('runs something else: #   xft train internlm_7b_qlora_oasst1') for p in problems)
    assert any(p.startswith('maintainer note: # Written by `python -m xft.tools.gen_configs`') for p in problems)


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


def test_each_part1_knob_has_a_why_comment_and_parts_2_to_5_wire_them():
    """In every zoo config; a knob PART 1 declares is passed on by name, never re-typed below
    (as `lora_dropout=0.1` once sat in PART 2 while PART 1 said nothing)."""
    # Knobs whose meaning the name and neighbours carry (as in XTuner's configs).
    self_explaining = {'dataloader_num_workers', 'optim_type', 'betas', 'weight_decay', 'save_steps',
                       'evaluation_freq', 'evaluation_inputs'}
    for path in zoo_files():
        text = path.read_text()
        assignments = part1_assignments(text)
        names = {name for name, _ in assignments}
        required = {'pretrained_model_name_or_path', 'torch_dtype', 'data_path', 'dataset_map_fn',
                    'prompt_template', 'max_length', 'lr', 'use_tensorboard'}
        if '`qlora`' in text or '`lora`' in text:
            required |= {'lora_target_modules', 'lora_dropout'}
        assert required <= names, (path.stem, required - names)
        missing = [name for name, commented in assignments if not commented and name not in self_explaining]
        assert not missing, f'{path.name}: PART 1 knobs without a why-comment: {missing}'
        retyped = [node.arg for node in ast.walk(ast.parse(gen_configs.split_body(text)[1]))
                   if isinstance(node, ast.keyword) and node.arg in names and isinstance(node.value, ast.Constant)]
        assert not retyped, f'{path.name}: PARTs 2-5 give PART 1 knobs a literal value: {retyped}'


def test_templates_are_python_with_placeholders_only_above_part_2():
    entry = gen_configs.entry_named('llama2_7b_chat_qlora_code_alpaca_e3')
    values = gen_configs.template_values(entry)
    for path in sorted(TEMPLATES.glob('*.py')):
        text = path.read_text()
        ast.parse(text, filename=str(path))
        head, body = gen_configs.split_body(text)
        assert not gen_configs.PLACEHOLDER.search(body), path.name
        assert set(gen_configs.PLACEHOLDER.findall(head)) <= set(values), path.name
    assert not any('{{' in text for text in gen_configs.rendered_zoo().values())


@pytest.mark.parametrize('module', [gen_configs, cfg_tools], ids=lambda m: m.__name__)
def test_docstring_examples(module):
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0


def test_records_refuse_values_the_templates_cannot_write():
    with pytest.raises(ValueError, match='no PROMPT_TEMPLATE named'):
        gen_configs.Model(family='x', key='x', hub_id='x/x', title='X', template='no_such_template',
                          template_why='.', zoo=gen_configs.methods(qlora=['alpaca']))
    with pytest.raises(ValueError, match='importable from xft.dataset.map_fns'):
        gen_configs.Dataset(key='x', title='X', path='x', path_why='.', map_fn=lambda row: row,
                            map_fn_why='.', epochs=1)
    with pytest.raises(TypeError):
        gen_configs.Dataset('x', 'X', 'x', '.', None, '.', 1)  # keyword records only


@pytest.fixture(scope='module')
def small_files(shared_data, tmp_path_factory):
    return small_data_files(shared_data, tmp_path_factory.mktemp('zoo_data'))


def tiny_config(path, tiny_llama_dir, small_files, out_dir):
    out = out_dir / path.name
    out.write_text(tiny_config_text(path, tiny_llama_dir, small_files[dataset_key(path.stem)],
                                    **preference_settings(path.stem)))
    return out


def preference_settings(name):
    """A preference config holds out a few of the 16 small pairs (a hub set's 400 is all of
    them); a reward token id of the real vocabulary becomes one of the tiny tokenizer's."""
    entry = gen_configs.entry_named(name)
    if not entry.dataset.preference:
        return {}
    settings = dict(held_out=0.25)
    if entry.body == 'reward_qlora' and entry.model.reward_token_id >= 0:
        settings['reward_token_id'] = 7
    return settings


def test_every_zoo_config_builds_on_the_tiny_model(tmp_path, tiny_llama_dir, small_files):
    """Data, model and hooks of every config, as the Runner builds them (quantization kept)."""
    from mmengine.config import Config
    from mmengine.registry import DATASETS, HOOKS, MODELS

    from xft.utils import IGNORE_INDEX

    paths = zoo_files()
    built = 0
    for path in paths:
        entry = gen_configs.entry_named(path.stem)
        cfg = Config.fromfile(str(tiny_config(path, tiny_llama_dir, small_files, tmp_path)))
        dataset_cfg = dict(cfg.train_dataloader.dataset, max_dataset_length=8, map_num_proc=1)
        dataset = DATASETS.build(dataset_cfg)
        assert len(dataset) > 0, path.stem
        assert any(label != IGNORE_INDEX for label in dataset[0]['labels']), f'{path.stem}: nothing trained'
        if entry.dataset.preference:  # its held-out pairs too
            assert len(DATASETS.build(dict(cfg.val_dataloader.dataset, map_num_proc=1))) > 0, path.stem

        model = MODELS.build(cfg.model)
        trainable = [name for name, p in model.named_parameters() if p.requires_grad]
        if entry.method == 'full':
            assert len(trainable) == len(list(model.parameters())), path.stem
        else:
            adapters = [name for name in trainable if name != 'v_head.weight']  # a reward model's head
            assert adapters and all('lora_' in name for name in adapters), path.stem
            targets = cfg.lora_target_modules
            if targets is not None:
                assert {name.split('.lora_')[0].split('.')[-1] for name in adapters} == set(targets)
            dropout = {m.p for name, m in model.named_modules()
                       if isinstance(m, torch.nn.Dropout) and 'lora_dropout' in name}
            assert dropout == ({cfg.lora_dropout} if cfg.lora_dropout else set()), path.stem
        quantized = any(type(m).__name__ == 'Linear4bit' for m in model.modules())
        assert quantized == entry.method.endswith('qlora'), path.stem

        hooks = [HOOKS.build(dict(hook)) for hook in cfg.custom_hooks]
        expected_hooks = ['DatasetInfoHook', 'LossCurveHook'] if entry.body in NO_CHAT_BODIES else \
            ['DatasetInfoHook', 'EvaluateChatHook', 'LossCurveHook']
        assert [type(h).__name__ for h in hooks] == expected_hooks, path.stem
        built += 1
    assert built == len(list(CONFIGS.rglob('*.py'))) - len(HAND_WRITTEN)


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
    assert {entry.body for entry in sample} == {'qlora', 'lora', 'full', 'pretrain', 'dpo_qlora',
                                                'orpo_qlora', 'reward_qlora'}
    assert {entry.model.family for entry in sample} == {model.family for model in gen_configs.MODELS}
    for name in TRAINED_SAMPLE:
        path = next(CONFIGS.rglob(f'{name}.py'))
        config = tmp_path / path.name
        # 128-token rows: the few sample rows make at least two iterations per epoch.
        config.write_text(tiny_config_text(path, tiny_llama_dir, small_files[dataset_key(name)],
                                           max_length=128, **preference_settings(name)))
        work_dir = tmp_path / name
        output = io.StringIO()
        with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
            options = [option for option in SMOKE_OPTIONS if not (
                option.startswith('custom_hooks.1.') and gen_configs.entry_named(name).body in NO_CHAT_BODIES)]
            code = cli.main(['train', str(config), '--work-dir', str(work_dir), *options])
        assert code == 0, f'{name}:\n{output.getvalue()[-3000:]}'
        scalars = next(work_dir.glob('*/vis_data/scalars.json'))
        losses = [row['loss'] for row in map(json.loads, scalars.read_text().splitlines()) if 'loss' in row]
        assert len(losses) == 2 and all(math.isfinite(loss) for loss in losses), name
        assert (work_dir / 'loss_curve.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n', name
        state = torch.load(work_dir / 'iter_2.pth', map_location='cpu', weights_only=False)['state_dict']
        assert state, name
