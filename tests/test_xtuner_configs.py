"""XTuner 0.1.23's SFT configs on xft, with only their imports renamed (``xtuner`` -> ``xft``).

Three layers, so that the suite says something on every machine:

1. ``IMPORTS`` and ``ARGUMENTS`` tabulate every ``from xtuner... import`` and every argument
   that XTuner 0.1.23's SupervisedFinetune configs use (504 of its 585 configs), each
   ``honoured``, ``refused`` (it loads, and using it stops with one line) or ``missing``. The
   tests hold the table true: honoured names import and take their arguments, missing ones
   do not import.
2. Hand-written configs in XTuner's exact vocabulary (our words, its names) exercise each
   honoured import and argument on the tiny model: one trains through ``xft train``.
3. Where a mirror of XTuner's repository is at hand (``XFT_XTUNER_REPO``, default
   ``/work/.mirror/InternLM+xtuner/repo``; ``fetch github:InternLM/xtuner`` makes one), its
   real configs are read at tag v0.1.23 (never copied here): the table must cover everything
   they use, and every SFT config that /work/shared/data can feed is built on the tiny model
   (data, model, sampler, hooks) and takes one forward step, or is refused in one line.
"""
import ast
import contextlib
import io
import json
import math
import os
import re
import subprocess
from pathlib import Path

import pytest
import torch
from helpers.models import save_tiny_moe
from helpers.zoo import swap_part1

from xft.utils.errors import ConfigError

HONOURED, REFUSED, MISSING = 'honoured', 'refused', 'missing'

# (module, name) -> what xft does. Missing names serve formats outside xft's scope today:
# MOSS and ModelScope datasets, MS-Agent's ReAct rows.
IMPORTS = {
    ('xtuner.dataset', 'process_hf_dataset'): HONOURED,
    ('xtuner.dataset', 'ConcatDataset'): HONOURED,
    ('xtuner.dataset', 'MOSSSFTDataset'): MISSING,
    ('xtuner.dataset', 'process_ms_dataset'): MISSING,
    ('xtuner.dataset.collate_fns', 'default_collate_fn'): HONOURED,
    ('xtuner.dataset.collate_fns', 'mmlu_collate_fn'): HONOURED,
    # InternLM's repo folders, .bin tokenized or .json messages (tests/test_data_intern_repo.py).
    ('xtuner.dataset.intern_repo', 'build_packed_dataset'): HONOURED,
    ('xtuner.dataset.intern_repo', 'load_intern_repo_tokenized_dataset'): HONOURED,
    ('xtuner.dataset.intern_repo', 'load_intern_repo_untokenized_dataset'): HONOURED,
    **{('xtuner.dataset.map_fns', name): HONOURED for name in (
        'alpaca_map_fn', 'alpaca_zh_map_fn', 'arxiv_map_fn', 'code_alpaca_map_fn', 'colors_map_fn',
        'crime_kg_assitant_map_fn', 'default_map_fn', 'law_reference_map_fn', 'medical_map_fn', 'oasst1_map_fn',
        'openai_map_fn', 'openorca_map_fn', 'pretrain_map_fn', 'sql_map_fn', 'stack_exchange_map_fn',
        'template_map_fn_factory', 'tiny_codes_map_fn', 'wizardlm_map_fn')},
    ('xtuner.dataset.map_fns', 'msagent_react_map_fn'): MISSING,
    ('xtuner.dataset.samplers', 'InternRepoSampler'): HONOURED,
    **{(module, name): HONOURED for module in ('xtuner.engine', 'xtuner.engine.hooks') for name in (
        'DatasetInfoHook', 'EvaluateChatHook', 'ThroughputHook', 'VarlenAttnArgsToMessageHubHook')},
    ('xtuner.engine.hooks', 'HFCheckpointHook'): HONOURED,
    ('xtuner.engine.runner', 'TrainLoop'): HONOURED,
    # MMLU accuracy from the logits, per subject and category (tests/test_mmlu_metric.py).
    ('xtuner.evaluation', 'MMLUMetric'): HONOURED,
    ('xtuner.model', 'SupervisedFinetune'): HONOURED,
    # transformers' own DeepSeek-V2, XTuner's moe_implementation checked (test_moe_model_names.py).
    ('xtuner.model.transformers_models.deepseek_v2', 'DeepseekV2ForCausalLM'): HONOURED,
    # Sequence parallelism: a config's sequence_parallel_size runs on that many processes
    # (tests/test_sequence_parallel.py); one process refuses a size above 1 in one line.
    ('xtuner.parallel.sequence', 'SequenceParallelSampler'): HONOURED,
    ('xtuner.utils', 'PROMPT_TEMPLATE'): HONOURED,
    ('xtuner.utils', 'SYSTEM_TEMPLATE'): HONOURED,
}

# Arguments those configs pass to XTuner's callables (and the PART 1 variables xft reads).
ARGUMENTS = {
    'SupervisedFinetune': {'llm': HONOURED, 'lora': HONOURED, 'use_varlen_attn': HONOURED,
                           'max_position_embeddings': HONOURED, 'tokenizer': HONOURED,
                           # XTuner's other two, unused by its configs:
                           'peft_model': HONOURED, 'use_activation_checkpointing': HONOURED},
    'process_hf_dataset': {'dataset': HONOURED, 'tokenizer': HONOURED, 'max_length': HONOURED,
                           'dataset_map_fn': HONOURED, 'template_map_fn': HONOURED,
                           'remove_unused_columns': HONOURED, 'shuffle_before_pack': HONOURED,
                           'pack_to_max_length': HONOURED, 'use_varlen_attn': HONOURED, 'split': HONOURED,
                           'max_dataset_length': HONOURED, 'input_ids_with_output': HONOURED,
                           'do_dataset_tokenization': HONOURED},  # tests/test_data_pretokenized.py
    'ConcatDataset': {'datasets': HONOURED},
    'default_collate_fn': {'use_varlen_attn': HONOURED},
    'SequenceParallelSampler': {'seed': HONOURED},
    'InternRepoSampler': {'shuffle': HONOURED, 'seed': HONOURED},
    'DatasetInfoHook': {'tokenizer': HONOURED, 'is_intern_repo_dataset': HONOURED},
    'EvaluateChatHook': {'tokenizer': HONOURED, 'every_n_iters': HONOURED, 'evaluation_inputs': HONOURED,
                         'system': HONOURED, 'prompt_template': HONOURED, 'stop_words': HONOURED,
                         'max_new_tokens': HONOURED},
    'TrainLoop': {'max_epochs': HONOURED, 'max_iters': HONOURED, 'val_interval': HONOURED},
    'template_map_fn_factory': {'template': HONOURED},
    'HFCheckpointHook': {'out_dir': HONOURED},
    'MMLUMetric': {'tokenizer': HONOURED, 'prefix': HONOURED},
    'build_packed_dataset': {'dataset_cfg': HONOURED, 'packed_length': HONOURED, 'seed': HONOURED},
    'load_intern_repo_tokenized_dataset': {'folder': HONOURED, 'min_length': HONOURED,
                                           'data_order_path': HONOURED, 'file_type': HONOURED},
    'load_intern_repo_untokenized_dataset': {'processed_dataset_dict_path': HONOURED, 'folder': HONOURED,
                                             'tokenizer': HONOURED, 'max_length': HONOURED,
                                             'template_map_fn': HONOURED, 'data_order_path': HONOURED,
                                             'file_type': HONOURED},
}
PART1_VARIABLES = {'sequence_parallel_size': 'honoured (above 1 on that many processes)'}


def xft_object(module, name):
    import importlib
    return getattr(importlib.import_module(module.replace('xtuner', 'xft', 1)), name)


def xft_callable(name):
    modules = {name: module for (module, imported), status in IMPORTS.items() if imported == name}
    return xft_object(modules[name], name)


@pytest.mark.parametrize('module,name', sorted(IMPORTS), ids=lambda value: str(value))
def test_each_import_is_what_the_table_says(module, name):
    if IMPORTS[(module, name)] == MISSING:
        with pytest.raises((ImportError, AttributeError)):
            xft_object(module, name)
    else:
        assert xft_object(module, name) is not None


@pytest.mark.parametrize('callable_name', sorted(ARGUMENTS))
def test_each_argument_is_what_the_table_says(callable_name):
    import inspect
    target = xft_callable(callable_name)
    # A class passing **kwargs on takes its bases' arguments too (TrainLoop: val_interval).
    functions = [klass.__init__ for klass in target.__mro__ if '__init__' in vars(klass)] \
        if isinstance(target, type) else [target]
    parameters = set()
    for function in functions:
        found = inspect.signature(function).parameters
        parameters |= {name for name, p in found.items() if p.kind != p.VAR_KEYWORD}
        if not any(p.kind == p.VAR_KEYWORD for p in found.values()) or function.__qualname__.startswith(
                'SupervisedFinetune'):  # its **unknown only refuses
            break
    for argument, status in ARGUMENTS[callable_name].items():
        assert (argument in parameters) == (status != MISSING), f'{callable_name}({argument}=...): {status}'


# ----------------------------------------------------------------- hand-written, XTuner's names

# One config in XTuner 0.1.23's vocabulary, written for this test: PART 1 settings, imports
# from the renamed package, the sampler chosen by sequence_parallel_size, a ConcatDataset of
# two process_hf_dataset entries, packing with use_varlen_attn, a grown tokenizer and a longer
# context on the model, XTuner's hooks (also from ``xft.engine`` itself).
HAND_WRITTEN = '''\
import torch
from datasets import load_dataset
from mmengine.dataset import DefaultSampler
from mmengine.hooks import (CheckpointHook, DistSamplerSeedHook, IterTimerHook, LoggerHook,
                            ParamSchedulerHook)
from mmengine.optim import AmpOptimWrapper, CosineAnnealingLR, LinearLR
from peft import LoraConfig
from torch.optim import AdamW
from transformers import AutoModelForCausalLM, AutoTokenizer

from xft.dataset import ConcatDataset, process_hf_dataset
from xft.dataset.collate_fns import default_collate_fn
from xft.dataset.map_fns import alpaca_map_fn, alpaca_zh_map_fn, template_map_fn_factory
from xft.engine import ThroughputHook
from xft.engine.hooks import (DatasetInfoHook, EvaluateChatHook, HFCheckpointHook,
                              VarlenAttnArgsToMessageHubHook)
from xft.engine.runner import TrainLoop
from xft.model import SupervisedFinetune
from xft.parallel.sequence import SequenceParallelSampler
from xft.utils import PROMPT_TEMPLATE, SYSTEM_TEMPLATE

# PART 1
pretrained_model_name_or_path = '@MODEL@'
tokenizer_path = '@TOKENIZER@'
use_varlen_attn = True
alpaca_en_path = '@ALPACA@'
alpaca_zh_path = '@ALPACA_ZH@'
prompt_template = PROMPT_TEMPLATE.chatml
max_length = 256
pack_to_max_length = True
max_position_embeddings = 1024
sequence_parallel_size = 1
batch_size = 1
accumulative_counts = 2
accumulative_counts *= sequence_parallel_size
dataloader_num_workers = 0
max_epochs = 1
lr = 2e-4
warmup_ratio = 0.5
SYSTEM = SYSTEM_TEMPLATE.alpaca
evaluation_inputs = ['Please tell me five scenic spots in Shanghai']

# PART 2
tokenizer = dict(type=AutoTokenizer.from_pretrained, pretrained_model_name_or_path=tokenizer_path,
                 trust_remote_code=True, padding_side='right')
model = dict(
    type=SupervisedFinetune,
    use_varlen_attn=use_varlen_attn,
    tokenizer=tokenizer,
    max_position_embeddings=max_position_embeddings,
    llm=dict(type=AutoModelForCausalLM.from_pretrained,
             pretrained_model_name_or_path=pretrained_model_name_or_path,
             trust_remote_code=True, torch_dtype=torch.float32),
    lora=dict(type=LoraConfig, r=8, lora_alpha=16, lora_dropout=0.0, bias='none', task_type='CAUSAL_LM'))

# PART 3
alpaca_en = dict(
    type=process_hf_dataset, dataset=dict(type=load_dataset, path=alpaca_en_path), tokenizer=tokenizer,
    max_length=max_length, dataset_map_fn=alpaca_map_fn,
    template_map_fn=dict(type=template_map_fn_factory, template=prompt_template),
    remove_unused_columns=True, shuffle_before_pack=True, pack_to_max_length=pack_to_max_length,
    use_varlen_attn=use_varlen_attn, max_dataset_length=12)
alpaca_zh = dict(
    type=process_hf_dataset, dataset=dict(type=load_dataset, path=alpaca_zh_path), tokenizer=tokenizer,
    max_length=max_length, dataset_map_fn=alpaca_zh_map_fn,
    template_map_fn=dict(type=template_map_fn_factory, template=prompt_template),
    remove_unused_columns=True, shuffle_before_pack=True, pack_to_max_length=pack_to_max_length,
    use_varlen_attn=use_varlen_attn, max_dataset_length=12)
train_dataset = dict(type=ConcatDataset, datasets=[alpaca_en, alpaca_zh])
sampler = SequenceParallelSampler if sequence_parallel_size > 1 else DefaultSampler
train_dataloader = dict(
    batch_size=batch_size, num_workers=dataloader_num_workers, dataset=train_dataset,
    sampler=dict(type=sampler, shuffle=True),
    collate_fn=dict(type=default_collate_fn, use_varlen_attn=use_varlen_attn))

# PART 4
optim_wrapper = dict(
    type=AmpOptimWrapper, optimizer=dict(type=AdamW, lr=lr, betas=(0.9, 0.999), weight_decay=0),
    clip_grad=dict(max_norm=1, error_if_nonfinite=False), accumulative_counts=accumulative_counts,
    loss_scale='dynamic', dtype='float16')
param_scheduler = [
    dict(type=LinearLR, start_factor=1e-5, by_epoch=True, begin=0, end=warmup_ratio * max_epochs,
         convert_to_iter_based=True),
    dict(type=CosineAnnealingLR, eta_min=0.0, by_epoch=True, begin=warmup_ratio * max_epochs,
         end=max_epochs, convert_to_iter_based=True)]
train_cfg = dict(type=TrainLoop, max_epochs=max_epochs)

# PART 5
custom_hooks = [
    dict(type=DatasetInfoHook, tokenizer=tokenizer),
    dict(type=EvaluateChatHook, tokenizer=tokenizer, every_n_iters=100, evaluation_inputs=evaluation_inputs,
         system=SYSTEM, prompt_template=prompt_template, max_new_tokens=4),
    dict(type=ThroughputHook),
    dict(type=HFCheckpointHook),
]
if use_varlen_attn:
    custom_hooks += [dict(type=VarlenAttnArgsToMessageHubHook)]
default_hooks = dict(
    timer=dict(type=IterTimerHook),
    logger=dict(type=LoggerHook, log_metric_by_epoch=False, interval=1),
    param_scheduler=dict(type=ParamSchedulerHook),
    checkpoint=dict(type=CheckpointHook, by_epoch=False, interval=100, max_keep_ckpts=1),
    sampler_seed=dict(type=DistSamplerSeedHook))
env_cfg = dict(cudnn_benchmark=False, mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
               dist_cfg=dict(backend='nccl'))
visualizer = None
log_level = 'INFO'
load_from = None
resume = False
randomness = dict(seed=None, deterministic=False)
log_processor = dict(by_epoch=False)
'''


def hub_folder(folder: Path, name: str, rows) -> Path:
    """A local folder standing in for a hub dataset: ``load_dataset(path=folder)`` reads it."""
    folder = folder / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / 'train.json').write_text(json.dumps(rows, ensure_ascii=False))
    return folder


@pytest.fixture(scope='module')
def grown_tokenizer(tmp_path_factory, tiny_tokenizer):
    from transformers import AutoTokenizer
    folder = tmp_path_factory.mktemp('xtuner_tokenizer')
    tiny_tokenizer.save_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.add_tokens(['<tool>'], special_tokens=True)
    tokenizer.save_pretrained(folder)
    return folder


def hand_written(folder, tiny_llama_dir, tokenizer_dir, shared_data, **part1):
    rows = json.loads((shared_data / 'alpaca' / 'alpaca_data_subset.json').read_text())[:12]
    zh_rows = json.loads((shared_data / 'alpaca_zh' / 'alpaca_gpt4_zh_demo.json').read_text())[:12]
    text = (HAND_WRITTEN.replace('@MODEL@', str(tiny_llama_dir)).replace('@TOKENIZER@', str(tokenizer_dir))
            .replace('@ALPACA@', str(hub_folder(folder, 'alpaca', rows)))
            .replace('@ALPACA_ZH@', str(hub_folder(folder, 'alpaca_zh', zh_rows))))
    path = folder / 'xtuner_vocabulary.py'
    path.write_text(swap_part1(text, **part1) if part1 else text)
    return path


def test_a_config_in_xtuners_vocabulary_trains(tmp_path, tiny_llama_dir, grown_tokenizer, shared_data):
    from xft import cli
    from xft.engine.hooks.varlen_attn_args_hook import NOTHING_TO_DO
    config = hand_written(tmp_path, tiny_llama_dir, grown_tokenizer, shared_data)
    output = io.StringIO()
    with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
        code = cli.main(['train', str(config), '--work-dir', str(tmp_path / 'run')])
    log = output.getvalue()
    assert code == 0, log[-3000:]
    assert 'RoPE scaled linearly by 2' in log and 'embeddings resized from 512 to 576 rows' in log
    assert log.count(NOTHING_TO_DO) == 1
    scalars = next((tmp_path / 'run').glob('*/vis_data/scalars.json'))
    losses = [row['loss'] for row in map(json.loads, scalars.read_text().splitlines()) if 'loss' in row]
    assert losses and all(math.isfinite(loss) for loss in losses)
    adapter = json.loads((tmp_path / 'run' / 'hf_model' / 'adapter_config.json').read_text())
    assert adapter['r'] == 8 and sorted(adapter['trainable_token_indices']) == ['embed_tokens', 'lm_head']


def test_sequence_parallel_size_above_one_on_one_process_is_refused_in_one_line(tmp_path, tiny_llama_dir,
                                                                                grown_tokenizer, shared_data):
    from xft import cli
    config = hand_written(tmp_path, tiny_llama_dir, grown_tokenizer, shared_data, sequence_parallel_size=4)
    output = io.StringIO()
    with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
        code = cli.main(['train', str(config), '--work-dir', str(tmp_path / 'run')])
    assert code != 0
    last = output.getvalue().strip().splitlines()[-1]
    assert last == ('xft train: sequence_parallel_size=4 splits each row over 4 processes; start them with '
                    'NPROC_PER_NODE=4 xft train CONFIG (or a multiple of 4)')


# ----------------------------------------------------------------------- XTuner's real configs

XTUNER_TAG = 'v0.1.23'
MIRROR = Path(os.environ.get('XFT_XTUNER_REPO', '/work/.mirror/InternLM+xtuner/repo'))

# Hub datasets of XTuner's configs that /work/shared/data stands in for (its README's table),
# by the map function that reads them.
HUB_STAND_INS = {
    'tatsu-lab/alpaca': 'alpaca', 'silk-road/alpaca-data-gpt4-chinese': 'alpaca_zh',
    'timdettmers/openassistant-guanaco': 'oasst1', 'HuggingFaceH4/CodeAlpaca_20K': 'code_alpaca',
    'shibing624/medical': 'medical',
}
# The custom-data configs (data_files = ['/path/to/json/file.json']) by their map function.
CUSTOM_LAYOUTS = {'openai_map_fn': 'custom_sft', 'pretrain_map_fn': 'custom_pretrain',
                  'None': 'custom_conversation'}


def _git(*args):
    return subprocess.run(['git', f'--git-dir={MIRROR}', *args], capture_output=True, text=True, check=True).stdout


def xtuner_configs():
    """{path: text} of every config under xtuner/configs at the tag, or None without a mirror."""
    if not MIRROR.is_dir():
        return None
    try:
        paths = [p for p in _git('ls-tree', '-r', '--name-only', XTUNER_TAG, 'xtuner/configs').split()
                 if p.endswith('.py')]
    except subprocess.CalledProcessError:
        return None
    return {path: _git('show', f'{XTUNER_TAG}:{path}') for path in paths}


@pytest.fixture(scope='module')
def real_configs():
    configs = xtuner_configs()
    if configs is None:
        pytest.skip(f'no mirror of InternLM/xtuner with tag {XTUNER_TAG} at {MIRROR} (set XFT_XTUNER_REPO)')
    assert len(configs) == 585
    sft = {path: text for path, text in configs.items() if 'SupervisedFinetune' in text}
    assert len(sft) == 504
    return sft


def features(text):
    """(imports, {callable: {argument}}) a config uses."""
    tree = ast.parse(text)
    imports = {(node.module, alias.name) for node in tree.body
               if isinstance(node, ast.ImportFrom) and (node.module or '').startswith('xtuner') for alias in node.names}
    arguments = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, 'id', None) == 'dict':
            keywords = {k.arg: k.value for k in node.keywords}
            kind = keywords.get('type')
            if isinstance(kind, ast.Name):
                arguments.setdefault(kind.id, set()).update(k for k in keywords if k != 'type')
    return imports, arguments


def test_the_table_covers_every_import_and_argument_of_xtuners_sft_configs(real_configs):
    used_imports, used_arguments = set(), {}
    for text in real_configs.values():
        imports, arguments = features(text)
        used_imports |= imports
        for name, keys in arguments.items():
            used_arguments.setdefault(name, set()).update(keys)
    assert used_imports == set(IMPORTS)
    # Every argument given to something xft provides is in the table (a missing callable's
    # arguments are moot).
    provided = {name for (_, name), status in IMPORTS.items() if status != MISSING}
    for name in provided & set(used_arguments):
        assert used_arguments[name] <= set(ARGUMENTS.get(name, {})), f'{name}: arguments not in the table'


def data_uses(text):
    """[(map fn name, path variable or None, data_files variable or None)] of a config."""
    uses = []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Call) and getattr(node.func, 'id', None) == 'dict':
            keywords = {k.arg: k.value for k in node.keywords}
            if 'dataset_map_fn' in keywords and isinstance(keywords.get('dataset'), ast.Call):
                inner = {k.arg: k.value for k in keywords['dataset'].keywords}
                uses.append((ast.unparse(keywords['dataset_map_fn']),
                             getattr(inner.get('path'), 'id', None), getattr(inner.get('data_files'), 'id', None)))
    return uses


def part1_values(text):
    values = {}
    for node in ast.parse(text).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            with contextlib.suppress(ValueError, SyntaxError):
                values[node.targets[0].id] = ast.literal_eval(node.value)
    return values


def feed_plan(text):
    """{PART 1 variable: data key of helpers.zoo.small_data_files}, or None when the config's
    data is not among the shared stand-ins."""
    uses, values, plan = data_uses(text), part1_values(text), {}
    if not uses:
        return None
    for map_fn, path_var, files_var in uses:
        if path_var is not None and values.get(path_var) in HUB_STAND_INS:
            plan[path_var] = ('hub', HUB_STAND_INS[values[path_var]])
        elif files_var is not None and map_fn in CUSTOM_LAYOUTS:
            plan[files_var] = ('files', CUSTOM_LAYOUTS[map_fn])
        else:
            return None
    return plan


def renamed(text):
    """Only the imports change: ``from xtuner...`` -> ``from xft...``."""
    return re.sub(r'^from xtuner(\.|\s)', r'from xft\1', text, flags=re.MULTILINE)


@pytest.fixture(scope='module')
def stand_ins(shared_data, tmp_path_factory):
    from helpers.zoo import small_data_files
    folder = tmp_path_factory.mktemp('xtuner_data')
    files = small_data_files(shared_data, folder / 'files')
    medical = [json.loads(line) for line in
               (shared_data / 'medical' / 'medical_sft_1K_format.jsonl').read_text().splitlines()[:16]]
    (folder / 'files' / 'medical.jsonl').write_text(''.join(json.dumps(r, ensure_ascii=False) + '\n' for r in medical))
    files['medical'] = folder / 'files' / 'medical.jsonl'
    # XTuner's custom pretraining configs read JSON rows with a `text` field.
    c4 = (shared_data / 'pretrain_text' / 'c4_demo.jsonl').read_text().splitlines()[:16]
    files['custom_pretrain'] = folder / 'files' / 'texts.jsonl'
    files['custom_pretrain'].write_text('\n'.join(c4) + '\n')
    hubs = {}
    for key, path in files.items():  # a folder per dataset, as load_dataset(path=hub name) reads
        hub = folder / 'hub' / key
        hub.mkdir(parents=True)
        (hub / path.name).write_bytes(path.read_bytes())
        hubs[key] = hub
    return {'files': files, 'hub': hubs}


def small_values(plan, stand_ins, model_dir):
    # 1024 tokens: the tiny byte-level tokenizer spends many on the longer system prompts.
    values = dict(pretrained_model_name_or_path=str(model_dir), max_length=1024)
    for variable, (kind, key) in plan.items():
        values[variable] = str(stand_ins['hub'][key]) if kind == 'hub' else [str(stand_ins['files'][key])]
    return values


def fit_to_tiny_model(cfg, module_names):
    """The two places a real config names its own model beyond PART 1: LoRA targets of another
    architecture (StarCoder's c_attn) become every linear layer of the tiny Llama; and the
    model is given the config's tokenizer, which grows the embeddings where the tiny
    tokenizer had to add a model's special tokens (Qwen's '<|endoftext|>' as eos_token)."""
    lora = cfg.model.get('lora')
    targets = lora.get('target_modules') if lora else None
    if targets and not set(targets) <= module_names:
        lora['target_modules'] = None
    cfg.model.setdefault('tokenizer', cfg.tokenizer)


def limit_rows(node):
    """Every process_hf_dataset entry of a (nested) dataset config: 8 rows, one process."""
    if isinstance(node, dict):
        if 'dataset_map_fn' in node:
            node.update(max_dataset_length=8, map_num_proc=1)
        for value in node.values():
            limit_rows(value)
    elif isinstance(node, list):
        for value in node:
            limit_rows(value)


def test_every_sft_config_the_shared_data_can_feed_builds_and_steps(tmp_path, real_configs, stand_ins,
                                                                   tiny_llama_dir, tiny_tokenizer):
    from mmengine.config import Config
    from mmengine.registry import HOOKS, METRICS
    from mmengine.runner import Runner

    from transformers import AutoModelForCausalLM

    from xft.parallel.sequence import check_sequence_parallel_size

    fed = {path: feed_plan(text) for path, text in real_configs.items()}
    fed = {path: plan for path, plan in fed.items() if plan is not None}
    assert len(fed) == 343, len(fed)
    # Configs whose data is at hand but which import something xft lacks (the table's 'missing').
    blocked = {path: sorted(name for name in features(real_configs[path])[0] if IMPORTS[name] == MISSING)
               for path in fed}
    blocked = {path: names for path, names in blocked.items() if names}
    assert not blocked, blocked
    fed = {path: plan for path, plan in fed.items() if path not in blocked}
    built, refused, models, tiny_deepseek_dir = [], {}, {}, None
    tiny_module_names = {name.split('.')[-1] for name, _ in
                         AutoModelForCausalLM.from_pretrained(str(tiny_llama_dir)).named_modules()}
    for path, plan in sorted(fed.items()):
        text = renamed(real_configs[path])
        config = tmp_path / Path(path).name
        # XTuner's DeepSeek-V2 configs load their model by its class: a tiny DeepSeek-V2 stands in,
        # with 40 routed experts so that their expert_in_one_shard (8, 10) divides them.
        if 'DeepseekV2ForCausalLM' in text and tiny_deepseek_dir is None:
            tiny_deepseek_dir = save_tiny_moe(tmp_path / 'tiny_deepseek_v2', tiny_tokenizer, 'deepseek_v2',
                                              experts=40)
        model_dir = tiny_deepseek_dir if 'DeepseekV2ForCausalLM' in text else tiny_llama_dir
        config.write_text(swap_part1(text, **small_values(plan, stand_ins, model_dir)))
        cfg = Config.fromfile(str(config))
        try:
            check_sequence_parallel_size(cfg.get('sequence_parallel_size', 1))
        except ConfigError as error:
            refused[path] = str(error)
            continue
        fit_to_tiny_model(cfg, tiny_module_names)
        loader_cfg = dict(cfg.train_dataloader, num_workers=0, persistent_workers=False)
        limit_rows(loader_cfg)
        loader = Runner.build_dataloader(loader_cfg)
        batch = next(iter(loader))
        key = repr(cfg.model)
        if key not in models:
            # As mmengine's Runner builds it: the model's own arguments arrive as dicts.
            arguments = dict(cfg.model)
            models[key] = arguments.pop('type')(**arguments)
        model = models[key]
        for hook in cfg.get('custom_hooks', []):
            HOOKS.build(dict(hook))
        if 'val_evaluator' in cfg:  # the *_mmlu_* configs' MMLUMetric, on the tiny tokenizer
            METRICS.build(dict(cfg.val_evaluator))
        with torch.no_grad():
            data = model.data_preprocessor(batch, True)
            try:
                loss = model(data['data'], mode='loss')['loss']
            except Exception as error:
                raise AssertionError(f'{path}: {error}') from error
        assert math.isfinite(float(loss)), path
        built.append(path)
    # The *_sp4 / *_sp8 speed configs and one *_sequence_parallel_4 ask for sequence parallelism:
    # one process has no groups.
    assert all('this process has no sequence-parallel groups' in message for message in refused.values())
    assert len(built) + len(refused) == len(fed)
    assert (len(blocked), len(refused), len(built)) == (0, 12, 331), (len(blocked), len(refused), len(built))
