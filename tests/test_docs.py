"""The guides in docs/ cannot drift: every command in them runs, on the tiny model.

Each guide's ```bash blocks are run top to bottom in one scratch folder (with `docs/` linked
in, so `docs/examples/...` paths work). A ```python block that opens with
`# PART 1 of FILE` is an edit the reader makes: its assignments replace those lines of FILE.
Before a command runs, the real model is swapped for the tiny random Llama:

- a hub model id (any in the zoo's table) in the arguments becomes the tiny model's folder;
- a config the command reads (a copied file, or a bare zoo name) gets its PART 1 pointed at the
  tiny model and small sizes, and, where the guide left the zoo's hub dataset in place, at a
  small local file of that dataset's format;
- `xft train` trains two iterations; a checkpoint named `iter_N.pth` means the newest one;
  `xft chat` answers in a few tokens.
"""
import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

from helpers.zoo import SMALL_SETTINGS, dataset_key, small_data_files, swap_part1
from xft import cli
from xft.tools import gen_configs

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / 'docs'
# The guides of this suite (convert_and_chat.md is tested by the convert tests).
GUIDES = ['quick_start.md', 'configs.md', 'custom_dataset.md', 'fit_7b_on_8gb.md', 'preference.md']
HUB_IDS = {model.hub_id for model in gen_configs.MODELS}
FENCE = re.compile(r'^```(\w*)\n(.*?)^```', re.MULTILINE | re.DOTALL)
TRAIN_OPTIONS = ['--cfg-options', 'train_cfg.max_epochs=None', 'train_cfg.max_iters=2',
                 'default_hooks.logger.interval=1', 'custom_hooks.1.max_new_tokens=8',
                 'train_dataloader.dataset.max_dataset_length=16',
                 'train_dataloader.dataset.map_num_proc=1']
# Verbs whose first argument is a config.
CONFIG_VERBS = ('train', 'check-custom-dataset', 'log-dataset')


def guide_steps(text):
    """[('bash', command) | ('edit', file, {name: value source})] in the order of the guide."""
    steps = []
    for language, body in FENCE.findall(text):
        if language == 'bash':
            joined = body.replace('\\\n', ' ')
            steps += [('bash', line.strip()) for line in joined.splitlines()
                      if line.strip() and not line.strip().startswith('#')]
        elif language == 'python' and body.startswith('# PART 1 of '):
            first, _, assignments = body.partition('\n')
            target = first[len('# PART 1 of '):].strip()
            values = dict(re.findall(r'^(\w+) = (.+)$', assignments, re.MULTILINE))
            steps.append(('edit', target, values))
    return steps


def test_every_guide_has_steps_and_links_that_resolve():
    for name in GUIDES + ['README.md']:
        path = DOCS / name
        text = path.read_text()
        for link in re.findall(r'\]\(([\w./-]+\.md)\)', text):
            assert (path.parent / link).is_file(), f'{name}: broken link {link}'
    assert set(re.findall(r'\]\(([\w_]+\.md)\)', (DOCS / 'README.md').read_text())) == set(GUIDES) | {
        'convert_and_chat.md'}, 'docs/README.md lists every guide'
    for name in GUIDES:
        assert any(kind == 'bash' for kind, *_ in guide_steps((DOCS / name).read_text())), name


def test_edit_blocks_name_real_part1_knobs():
    knobs = {'pretrained_model_name_or_path', 'torch_dtype', 'lora_target_modules', 'data_path',
             'dataset_map_fn', 'prompt_template', 'max_length', 'pack_to_max_length', 'batch_size',
             'accumulative_counts', 'max_epochs', 'lr', 'SYSTEM', 'use_tensorboard', 'evaluation_inputs',
             'warmup_ratio', 'save_steps'}
    edits = [(name, step) for name in GUIDES for step in guide_steps((DOCS / name).read_text())
             if step[0] == 'edit']
    assert edits, 'no guide has a PART 1 edit block: the check below would check nothing'
    for name, step in edits:
        assert step[2] and set(step[2]) <= knobs, (name, step)


class Reader:
    """Runs a guide's steps in a scratch folder, the tiny model standing in for the real one."""

    def __init__(self, cwd, tiny_model, small_files):
        self.cwd, self.tiny_model, self.small_files = cwd, tiny_model, small_files
        self.edited = {}  # config file -> PART 1 values set by the guide
        (cwd / 'docs').symlink_to(DOCS)

    def edit(self, target, values):
        path = self.cwd / target
        text = path.read_text()
        for name, source in values.items():
            text = re.sub(rf'^{name} = .*$', lambda _: f'{name} = {source}', text, count=1,
                          flags=re.MULTILINE)
        path.write_text(text)
        self.edited.setdefault(path.name, set()).update(values)

    def tiny_config(self, argument):
        """The config argument, swapped for the tiny model (a copy if it is a zoo name)."""
        path = self.cwd / argument
        if not path.is_file():
            zoo = next((REPO / 'configs').rglob(f'{Path(argument).stem}.py'))
            path = self.cwd / f'_tiny_{zoo.name}'
            path.write_text(zoo.read_text())
            name = zoo.stem
        else:
            name = path.stem[:-len('_copy')] if path.stem.endswith('_copy') else path.stem
        # 128-token rows one at a time: even the few-row example files make two iterations per
        # epoch, which the warm-up needs (see SMALL_SETTINGS).
        values = dict(SMALL_SETTINGS, max_length=128, batch_size=1,
                      pretrained_model_name_or_path=str(self.tiny_model))
        if 'data_path' not in self.edited.get(path.name, ()):
            values['data_path'] = str(self.small_files[dataset_key(name)])
        path.write_text(swap_part1(path.read_text(), **values))
        return str(path)

    def rewrite(self, argv):
        argv = [str(self.tiny_model) if arg in HUB_IDS else arg for arg in argv]
        verb = argv[1]
        if verb in CONFIG_VERBS:
            argv[2] = self.tiny_config(argv[2])
        if verb == 'train':
            argv += TRAIN_OPTIONS
        if verb == 'convert' and argv[2] == 'pth_to_hf':
            argv[3] = self.tiny_config(argv[3])
            argv[4] = str(newest_checkpoint(self.cwd / argv[4]))
        if verb == 'chat':
            argv += ['--max-new-tokens', '8']
        return argv

    def run(self, command):
        """Run one `xft` command in this process (the suite's time budget has no room for a
        Python start per command); return what it printed."""
        argv = self.rewrite(shlex.split(command))
        assert argv[0] == 'xft', f'guides use xft verbs only: {command}'
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.main(argv[1:])
        assert code == 0, f'{command}\n{out.getvalue()[-1500:]}\n{err.getvalue()[-3000:]}'
        return out.getvalue()


def newest_checkpoint(path):
    """``iter_N.pth`` in a guide stands for the newest checkpoint of that work dir."""
    if path.is_file():
        return path
    found = sorted(path.parent.glob('iter_*.pth'), key=lambda p: int(p.stem.split('_')[1]))
    assert found, f'no checkpoint in {path.parent}'
    return found[-1]


@pytest.fixture(scope='module')
def small_files(shared_data, tmp_path_factory):
    return small_data_files(shared_data, tmp_path_factory.mktemp('docs_data'))


@pytest.mark.parametrize('guide', GUIDES)
def test_every_command_of_the_guide_runs(guide, tmp_path, tiny_llama_dir, small_files, monkeypatch):
    monkeypatch.chdir(tmp_path)
    reader = Reader(tmp_path, tiny_llama_dir, small_files)
    outputs = {}
    for step in guide_steps((DOCS / guide).read_text()):
        if step[0] == 'edit':
            reader.edit(step[1], step[2])
        else:
            outputs[step[1]] = reader.run(step[1])
    assert outputs
    if guide == 'quick_start.md':
        listed = outputs['xft list-cfg -p qwen2_5_0_5b'].split()
        documented = re.search(r'```text\n(qwen2_5_0_5b[^`]*)```', (DOCS / guide).read_text()).group(1)
        assert listed == documented.split(), 'the listing shown in the guide is out of date'
        work_dir = tmp_path / 'work_dirs' / 'qwen2_5_0_5b_instruct_qlora_alpaca_e3_copy'
        assert (work_dir / 'loss_curve.png').is_file()
        assert (tmp_path / 'merged' / 'config.json').is_file()


def test_the_model_table_in_the_configs_guide_matches_the_zoo():
    rows = re.findall(r'^\| `(\w+)` \| `([^`]+)` \| `(\w+)` \| ([\w, ]+) \|$', (DOCS / 'configs.md').read_text(),
                      re.MULTILINE)
    expected = [(m.key, m.hub_id, m.template, ', '.join(k for k, v in m.zoo.items() if v))
                for m in gen_configs.MODELS]
    assert rows == expected
