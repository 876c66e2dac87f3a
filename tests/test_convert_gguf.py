"""xft convert gguf: the file transformers reads back is the model, tokenizer and chat template
that were trained, and its stop token is the template's.

Reference logits: the source model with its weights rounded exactly as the file stores them
(f16/bf16 casts; q8_0 through gguf's own quantize + dequantize), computed in float32. Equal to
1e-5 means names, q/k permutation, types and config all survived; the q8_0 bound against the
unrounded model is the measured quantization error (about 1% of the largest logit here).
"""
import copy

import numpy as np
import pytest
import torch
from helpers.models import build_tiny_tokenizer
from helpers.convert import make_checkpoint
from helpers.gguf import (CHINESE, MIXED_TEXT, build_tiny_spm_tokenizer, gguf_fields, load_gguf,
                           save_tiny_model)
from transformers import AutoModelForCausalLM, AutoTokenizer

from xft.cli import main as cli_main
from xft.dataset.conversation import normalize_conversation
from xft.dataset.encode import encode_conversation
from xft.dataset.map_fns.template import template_map_fn
from xft.utils import PROMPT_TEMPLATE

pytest.importorskip('gguf')
# Largest |logit difference| / largest |logit| between a q8_0 file and the unrounded model;
# measured 0.009-0.011 over three seeds of these tiny models (weights ~N(0, 0.02)), with 98-99%
# of greedy next tokens unchanged.
Q8_0_RELATIVE_BOUND = 0.03


def convert(*argv):
    return cli_main(['convert', 'gguf', *map(str, argv)])


def rounded_like_the_file(model, outtype):
    """A float32 copy of ``model`` whose 2-D weights hold what a GGUF of ``outtype`` holds."""
    from gguf import GGMLQuantizationType, quants
    model = copy.deepcopy(model).float()
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() < 2:
                continue
            if outtype == 'f16':
                param.copy_(param.half().float())
            elif outtype == 'bf16':
                param.copy_(param.bfloat16().float())
            else:
                data = param.numpy()
                stored = quants.dequantize(quants.quantize(data, GGMLQuantizationType.Q8_0),
                                           GGMLQuantizationType.Q8_0)
                param.copy_(torch.from_numpy(np.asarray(stored).reshape(data.shape)))
    return model.eval()


def logits(model, tokenizer, text=MIXED_TEXT):
    ids = torch.tensor([tokenizer(text)['input_ids']])
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.fixture(scope='module')
def spm_tokenizer():
    return build_tiny_spm_tokenizer()


@pytest.fixture(scope='module')
def bpe_tokenizer():
    return build_tiny_tokenizer()


# --- weights --------------------------------------------------------------------------------

@pytest.mark.parametrize('outtype', ['f16', 'bf16', 'q8_0'])
def test_llama_logits_survive_each_outtype(tmp_path, tiny_llama_dir, outtype):
    out = tmp_path / f'tiny-{outtype}.gguf'
    assert convert(tiny_llama_dir, out, '--outtype', outtype) == 0
    source = AutoModelForCausalLM.from_pretrained(str(tiny_llama_dir), dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_llama_dir))
    model, _ = load_gguf(out)
    got = logits(model, tokenizer)
    torch.testing.assert_close(got, logits(rounded_like_the_file(source, outtype), tokenizer),
                               atol=1e-5, rtol=0)
    exact = logits(source.eval(), tokenizer)
    relative = ((got - exact).abs().max() / exact.abs().max()).item()
    if outtype == 'q8_0':
        assert 0 < relative < Q8_0_RELATIVE_BOUND
    _, types = gguf_fields(out)
    expected = {'f16': 'F16', 'bf16': 'BF16', 'q8_0': 'Q8_0'}[outtype]
    assert types['blk.0.attn_q.weight'] == expected and types['blk.0.attn_norm.weight'] == 'F32'


@pytest.mark.parametrize('model_type,tie', [('qwen2', True), ('mistral', False)])
def test_qwen2_and_mistral_read_back_with_their_logits(tmp_path, bpe_tokenizer, model_type, tie):
    folder = save_tiny_model(tmp_path / model_type, bpe_tokenizer, model_type, tie=tie)
    out = tmp_path / f'tiny-{model_type}.gguf'
    assert convert(folder, out) == 0
    source = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    model, _ = load_gguf(out)
    torch.testing.assert_close(logits(model, bpe_tokenizer),
                               logits(rounded_like_the_file(source, 'f16'), bpe_tokenizer),
                               atol=1e-5, rtol=0)
    fields, types = gguf_fields(out)
    assert fields['general.architecture'] == ('qwen2' if model_type == 'qwen2' else 'llama')
    assert ('output.weight' in types) is not tie     # a tied head is left out, as llama.cpp does
    if model_type == 'qwen2':
        assert types['blk.0.attn_q.bias'] == 'F32'


def test_base_plus_adapter_is_the_merged_model(tmp_path, tiny_llama_dir, capsys):
    """--adapter merges in memory; the template comes from the adapter's training config."""
    from xft.tools.merge import load_merged_model
    from xft.tools.pth_to_hf import main as pth_to_hf_main
    config, checkpoint, _ = make_checkpoint(tmp_path, tiny_llama_dir, 'lora', template='chatml')
    adapter = tmp_path / 'adapter'
    assert pth_to_hf_main([str(config), str(checkpoint), str(adapter)]) == 0
    out = tmp_path / 'adapted.gguf'
    assert convert(tiny_llama_dir, out, '--adapter', adapter) == 0
    printed = capsys.readouterr().out
    assert f'chat template: from the training config in {adapter}' in printed
    merged = load_merged_model(tiny_llama_dir, adapter)
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_llama_dir))
    model, _ = load_gguf(out)
    reference = logits(rounded_like_the_file(merged, 'f16'), tokenizer)
    torch.testing.assert_close(logits(model, tokenizer), reference, atol=1e-5, rtol=0)
    base = AutoModelForCausalLM.from_pretrained(str(tiny_llama_dir), dtype=torch.float32)
    assert (logits(base, tokenizer) - reference).abs().max() > 1e-2   # the adapter counts


# --- tokenizer and chat template ------------------------------------------------------------

@pytest.mark.parametrize('kind', ['bpe', 'spm'])
def test_tokenizer_gives_the_same_ids_on_english_and_chinese(tmp_path, kind, bpe_tokenizer,
                                                              spm_tokenizer):
    tokenizer = bpe_tokenizer if kind == 'bpe' else spm_tokenizer
    folder = save_tiny_model(tmp_path / kind, tokenizer)
    out = tmp_path / f'{kind}.gguf'
    assert convert(folder, out, '--prompt-template', 'chatml') == 0
    _, read_back = load_gguf(out)
    for text in (MIXED_TEXT, CHINESE, ' leading space', 'a<|im_end|>b'):
        assert read_back(text)['input_ids'] == tokenizer(text)['input_ids'], text
    assert read_back.decode(tokenizer(MIXED_TEXT)['input_ids'], skip_special_tokens=True) == \
        tokenizer.decode(tokenizer(MIXED_TEXT)['input_ids'], skip_special_tokens=True)
    fields, _ = gguf_fields(out)
    assert fields['tokenizer.ggml.model'] == ('gpt2' if kind == 'bpe' else 'llama')
    assert fields['tokenizer.ggml.add_bos_token'] is (kind == 'spm')
    if kind == 'spm':   # llama.cpp merges by score: the scores must follow the merge order
        scores = fields['tokenizer.ggml.scores']
        merged = [a + b for a, b in (m.split(' ') for m in fields['tokenizer.ggml.merges'])]
        ranks = [scores[fields['tokenizer.ggml.tokens'].index(token)] for token in merged[:50]]
        assert ranks == sorted(ranks, reverse=True) and len(set(ranks)) > 40


def training_ids(template, tokenizer):
    turns = [{'system': 'Be brief.', 'input': '什么是细胞理论？', 'output': 'A theory of cells.'},
             {'input': 'And the sun?', 'output': '日心说.'}]
    turns = normalize_conversation(turns, 'test', allow_empty=False)
    templated = template_map_fn({'conversation': turns}, template)['conversation']
    return encode_conversation(templated, tokenizer, max_length=10**6)['input_ids']


MESSAGES = [{'role': 'system', 'content': 'Be brief.'},
            {'role': 'user', 'content': '什么是细胞理论？'},
            {'role': 'assistant', 'content': 'A theory of cells.'},
            {'role': 'user', 'content': 'And the sun?'},
            {'role': 'assistant', 'content': '日心说.'}]


@pytest.mark.parametrize('name', ['chatml', 'llama2_chat', 'internlm2_chat'])
def test_the_files_chat_template_renders_the_training_ids(tmp_path, tiny_llama_dir, name):
    out = tmp_path / f'{name}.gguf'
    assert convert(tiny_llama_dir, out, '--prompt-template', name) == 0
    _, read_back = load_gguf(out)
    rendered = read_back.apply_chat_template(MESSAGES, tokenize=False)
    ids = read_back(rendered, add_special_tokens=False)['input_ids']
    original = AutoTokenizer.from_pretrained(str(tiny_llama_dir))
    assert ids == training_ids(PROMPT_TEMPLATE[name], original)


@pytest.mark.parametrize('name', ['chatml', 'llama2_chat'])
def test_spm_chat_template_renders_the_ids_of_the_hf_export(tmp_path, spm_tokenizer, name):
    """A SentencePiece-style tokenizer writes a ``▁`` where each text it is given begins; the
    training encoder gives it the template's pieces one by one, the jinja the joined text, so
    their ids differ at piece starts in the Hugging Face export already (not a GGUF matter).
    The file must render exactly what the HF export renders."""
    from xft.model.chat_template import chat_template_jinja
    folder = save_tiny_model(tmp_path / 'spm', spm_tokenizer)
    assert convert(folder, tmp_path / 'spm.gguf', '--prompt-template', name) == 0
    _, read_back = load_gguf(tmp_path / 'spm.gguf')
    exported = copy.deepcopy(spm_tokenizer)
    exported.chat_template = chat_template_jinja(PROMPT_TEMPLATE[name])
    rendered = read_back.apply_chat_template(MESSAGES, tokenize=False)
    assert rendered == exported.apply_chat_template(MESSAGES, tokenize=False)
    assert read_back(rendered, add_special_tokens=False)['input_ids'] == \
        exported(rendered, add_special_tokens=False)['input_ids']


def test_stop_token_and_special_ids_travel(tmp_path, tiny_llama_dir, capsys):
    """chatml ends a reply with <|im_end|> while the tokenizer's EOS is </s>: the file names
    </s> as eos (the template appends eos_token where it needs one) and <|im_end|> as eot,
    which llama.cpp also stops at."""
    out = tmp_path / 'chatml.gguf'
    assert convert(tiny_llama_dir, out, '--prompt-template', 'chatml') == 0
    assert "eot '<|im_end|>'" in capsys.readouterr().out
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_llama_dir))
    fields, _ = gguf_fields(out)
    ids = {key: fields[f'tokenizer.ggml.{key}'] for key in
           ('bos_token_id', 'eos_token_id', 'padding_token_id', 'unknown_token_id', 'eot_token_id')}
    assert ids == {'bos_token_id': tokenizer.bos_token_id, 'eos_token_id': tokenizer.eos_token_id,
                   'padding_token_id': tokenizer.pad_token_id,
                   'unknown_token_id': tokenizer.unk_token_id,
                   'eot_token_id': tokenizer.convert_tokens_to_ids('<|im_end|>')}
    types = fields['tokenizer.ggml.token_type']
    assert types[tokenizer.convert_tokens_to_ids('<|im_end|>')] == 3   # CONTROL: kept whole
    _, read_back = load_gguf(out)
    assert (read_back.eos_token, read_back.pad_token) == ('</s>', '<pad>')


# --- refusals -------------------------------------------------------------------------------

def one_line_error(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_other_architectures_are_refused_in_one_line(tmp_path, bpe_tokenizer, capsys):
    from transformers import GPT2Config, GPT2LMHeadModel
    folder = tmp_path / 'gpt2'
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2,
                               vocab_size=len(bpe_tokenizer))).save_pretrained(folder)
    capsys.readouterr()
    assert convert(folder, tmp_path / 'x.gguf') == 2
    assert one_line_error(capsys) == ("xft convert gguf: architecture 'gpt2' cannot be exported "
                                      'to GGUF yet; supported: llama, mistral, qwen2')
    assert not list(tmp_path.glob('x.gguf*'))


def test_bad_paths_and_unknown_pre_tokenizers_are_one_line(tmp_path, tiny_llama_dir, capsys):
    assert convert(tmp_path / 'nowhere', tmp_path / 'x.gguf') == 2
    assert 'nowhere: model folder not found' in one_line_error(capsys)
    assert convert(tiny_llama_dir, tmp_path / 'x.bin') == 2
    assert 'expected a file name ending in .gguf' in one_line_error(capsys)
    assert convert(tiny_llama_dir, tmp_path / 'x.gguf', '--adapter', tmp_path) == 2
    assert 'not a PEFT adapter folder' in one_line_error(capsys)

    from tokenizers import pre_tokenizers
    odd = AutoTokenizer.from_pretrained(str(tiny_llama_dir))
    odd.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Punctuation(), pre_tokenizers.ByteLevel()])
    folder = tmp_path / 'odd'
    AutoModelForCausalLM.from_pretrained(str(tiny_llama_dir)).save_pretrained(folder)
    odd.save_pretrained(folder)
    capsys.readouterr()
    assert convert(folder, tmp_path / 'odd.gguf') == 2
    assert '--tokenizer-pre NAME' in one_line_error(capsys)
    assert convert(folder, tmp_path / 'odd.gguf', '--tokenizer-pre', 'gpt-2') == 0


def test_help_and_the_thin_script(tmp_path, tiny_llama_dir):
    """tools/gguf.py shares its name with the gguf package: it must still import the package."""
    import subprocess
    import sys
    from pathlib import Path
    with pytest.raises(SystemExit) as exit_info:
        cli_main(['convert', 'gguf', '--help'])
    assert exit_info.value.code == 0
    script = Path(__file__).resolve().parents[1] / 'tools' / 'gguf.py'
    result = subprocess.run([sys.executable, str(script), str(tiny_llama_dir),
                             str(tmp_path / 'script.gguf'), '--outtype', 'q8_0'],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert 'wrote ' in result.stdout and (tmp_path / 'script.gguf').is_file()
    assert gguf_fields(tmp_path / 'script.gguf')[0]['general.file_type'] == 7   # MOSTLY_Q8_0


def test_chat_asks_a_gguf_file(tmp_path, tiny_llama_dir, capsys):
    """`xft chat OUT.gguf` reads the file back with transformers and answers like the folder."""
    out = tmp_path / 'chat.gguf'
    assert convert(tiny_llama_dir, out, '--outtype', 'bf16', '--prompt-template', 'chatml') == 0
    answers = []
    for model in (tiny_llama_dir, out):
        capsys.readouterr()
        assert cli_main(['chat', str(model), '--prompt-template', 'chatml', '--prompt', 'Speak.',
                         '--temperature', '0', '--max-new-tokens', '8', '--no-streamer',
                         '--torch-dtype', 'bfloat16']) == 0
        answers.append(capsys.readouterr().out)
    assert answers[0] == answers[1] and answers[0].strip()
    assert cli_main(['chat', str(tmp_path / 'missing.gguf'), '--prompt', 'x']) != 0
    assert 'missing.gguf: GGUF file not found' in one_line_error(capsys)
