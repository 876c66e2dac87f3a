"""tools/chat.py: scripted and interactive modes, multi-turn history in the training format,
streaming without stop words, and one-line errors."""
import builtins
import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from xft.dataset.conversation import normalize_conversation
from xft.dataset.encode import encode_conversation
from xft.dataset.map_fns.template import template_map_fn
from xft.model.generation import (GenerationSettings, ReplyStreamer, cut_at_stop_word,
                                  stop_words_for)
from xft.tools import chat as chat_tool
from xft.utils import PROMPT_TEMPLATE

REPO = Path(__file__).resolve().parents[1]
GREEDY = ['--temperature', '0', '--max-new-tokens', '8', '--no-streamer']


def run_chat(*args, stdin=''):
    env = dict(os.environ, OMP_NUM_THREADS='1', HF_HUB_OFFLINE='1',
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get('PYTHONPATH', ''))
    return subprocess.run([sys.executable, str(REPO / 'tools' / 'chat.py'), *map(str, args)],
                          input=stdin, capture_output=True, text=True, env=env, timeout=300)


class RecordingModel(torch.nn.Module):
    """Stands in for an LLM: records each prompt and answers with fixed ids."""

    def __init__(self, reply_ids):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.reply_ids, self.prompts = reply_ids, []

    def generate(self, input_ids, streamer=None, **kwargs):
        self.prompts.append(input_ids[0].tolist())
        if streamer is not None:
            streamer.put(input_ids[0])
            for token in self.reply_ids:
                streamer.put(torch.tensor([token]))
            streamer.end()
        return torch.cat([input_ids, torch.tensor([self.reply_ids])], dim=1)


def make_session(tokenizer, reply_text, stream=None):
    template = PROMPT_TEMPLATE.chatml
    reply_ids = tokenizer(reply_text, add_special_tokens=False)['input_ids']
    model = RecordingModel(reply_ids)
    session = chat_tool.ChatSession(
        model, tokenizer, template, 'Be brief.', GenerationSettings(max_new_tokens=8),
        stop_words_for(template, tokenizer), stream)
    return session, model


def test_second_turn_prompt_is_the_training_sample_of_the_conversation(tiny_tokenizer):
    session, model = make_session(tiny_tokenizer, 'Paris.<|im_end|>and more')
    assert session.answer('Capital of France?') == 'Paris.'
    assert session.answer('And Germany?') == 'Paris.'
    turns = normalize_conversation([
        {'system': 'Be brief.', 'input': 'Capital of France?', 'output': 'Paris.'},
        {'input': 'And Germany?', 'output': 'Berlin.'}], 'test', False)
    templated = template_map_fn({'conversation': turns}, PROMPT_TEMPLATE.chatml)
    train = encode_conversation(templated['conversation'], tiny_tokenizer, 10**6)['input_ids']
    second_prompt = model.prompts[1]
    assert train[:len(second_prompt)] == second_prompt
    assert tiny_tokenizer.decode(second_prompt).endswith(
        '<|im_end|>\n<|im_start|>user\nAnd Germany?<|im_end|>\n<|im_start|>assistant\n')
    session.reset()
    session.answer('Hi')
    fresh, fresh_model = make_session(tiny_tokenizer, 'Paris.<|im_end|>')
    fresh.answer('Hi')
    assert model.prompts[2] == fresh_model.prompts[0]  # as a new session's first prompt
    assert 'Capital of France' not in tiny_tokenizer.decode(model.prompts[2])


def test_streamer_never_prints_a_stop_word_or_what_follows(tiny_tokenizer):
    pieces = []
    session, _ = make_session(tiny_tokenizer, 'Hello there<|im_end|>junk', stream=pieces.append)
    assert session.answer('Hi') == 'Hello there'
    assert ''.join(pieces) == 'Hello there'
    # A plain-text stop word split over several tokens is held back, then dropped.
    written = []
    streamer = ReplyStreamer(tiny_tokenizer, ['STOP'], written.append)
    streamer.put(torch.tensor([1]))  # the prompt
    for token in tiny_tokenizer('abc STOP def', add_special_tokens=False)['input_ids']:
        streamer.put(torch.tensor([token]))
    streamer.end()
    assert ''.join(written) == 'abc '
    assert cut_at_stop_word('a</s>b<|im_end|>', ['<|im_end|>', '</s>']) == 'a'


def test_interactive_mode_double_enter_reset_and_exit(tiny_tokenizer, monkeypatch, capsys):
    session, model = make_session(tiny_tokenizer, 'Fine.<|im_end|>')
    typed = iter(['', 'Hello,', 'how are you?', '', 'Again', '', 'RESET', '', 'New', '',
                  'EXIT', ''])
    monkeypatch.setattr(builtins, 'input', lambda prompt='': next(typed))
    chat_tool.run_interactive(session, streaming=False)
    out = capsys.readouterr().out
    assert out.count('Fine.') == 3 and '(history cleared)' in out
    first = tiny_tokenizer.decode(model.prompts[0])
    assert 'Hello,\nhow are you?' in first  # lines up to the empty one are one message
    assert 'Hello,' in tiny_tokenizer.decode(model.prompts[1])
    assert 'Hello,' not in tiny_tokenizer.decode(model.prompts[2])  # after RESET


def test_split_turns_on_blank_lines():
    assert chat_tool.split_turns('a\nb\n\n  \nc\n\n\n') == ['a\nb', 'c']


def test_scripted_stdin_subprocess_answers_each_turn_with_history(tiny_llama_dir, tiny_tokenizer):
    turns = ['Who art thou?', 'Speak again.']
    result = run_chat(tiny_llama_dir, '--prompt-template', 'chatml', *GREEDY,
                      stdin='\n\n'.join(turns) + '\n')
    assert result.returncode == 0, result.stderr
    # The same conversation in-process, greedy: the subprocess printed exactly its replies.
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(str(tiny_llama_dir)).eval()
    template = PROMPT_TEMPLATE.chatml
    tokenizer = copy.deepcopy(tiny_tokenizer)
    session = chat_tool.ChatSession(
        model, tokenizer, template, '', GenerationSettings(max_new_tokens=8, temperature=0),
        stop_words_for(template, tokenizer), None)
    expected = ''.join(session.answer(turn) + '\n' for turn in turns)
    assert result.stdout == expected
    assert len(session.history) == 2


def test_without_any_template_the_text_is_sent_as_it_is(tiny_llama_dir, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    code = chat_tool.main([str(tiny_llama_dir), '--prompt', 'First Citizen:', *GREEDY])
    captured = capsys.readouterr()
    assert code == 0 and 'sent as plain text' in captured.err
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_llama_dir))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_llama_dir)).eval()
    prompt = [tokenizer.bos_token_id] + tokenizer('First Citizen:', add_special_tokens=False)[
        'input_ids']
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False)
    expected = cut_at_stop_word(tokenizer.decode(out[0, len(prompt):]), [tokenizer.eos_token])
    assert captured.out == expected + '\n'


def test_prompt_flag_answers_once(tiny_llama_dir, tiny_tokenizer, capsys):
    from transformers import AutoModelForCausalLM
    code = chat_tool.main([str(tiny_llama_dir), '--prompt-template', 'chatml', '--prompt',
                           'Hello', *GREEDY])
    assert code == 0
    model = AutoModelForCausalLM.from_pretrained(str(tiny_llama_dir)).eval()
    template, tokenizer = PROMPT_TEMPLATE.chatml, copy.deepcopy(tiny_tokenizer)
    session = chat_tool.ChatSession(
        model, tokenizer, template, '', GenerationSettings(max_new_tokens=8, temperature=0),
        stop_words_for(template, tokenizer), None)
    assert capsys.readouterr().out == session.answer('Hello') + '\n'


@pytest.mark.parametrize('args, message', [
    (['--prompt-template', 'no_such_template'], "unknown prompt template 'no_such_template'"),
    (['--system-template', 'no_such_system'], "unknown system template 'no_such_system'"),
])
def test_settings_errors_are_one_line(tiny_llama_dir, capsys, args, message):
    code = chat_tool.main([str(tiny_llama_dir), '--prompt', 'x', *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0
    assert err[-1].startswith('xft chat: ') and message in err[-1]
    assert not any('Traceback' in line for line in err)


def test_missing_model_folder_subprocess(tmp_path):
    result = run_chat(tmp_path / 'no_model', '--prompt', 'x')
    assert result.returncode == 2
    assert result.stderr.strip() == f'xft chat: {tmp_path / "no_model"}: model folder not found'


def test_bits_without_bitsandbytes_is_one_line(tiny_llama_dir, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, 'bitsandbytes', None)  # import now raises ImportError
    code = chat_tool.main([str(tiny_llama_dir), '--prompt-template', 'chatml', '--bits', '4',
                           '--prompt', 'x'])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith('xft chat: --bits 4 needs bitsandbytes')


def test_bits_4_loads_nf4_and_answers_like_training(tiny_llama_dir, capsys):
    import bitsandbytes as bnb
    args = chat_tool.parse_args([str(tiny_llama_dir), '--bits', '4', '--torch-dtype', 'float32'])
    model = chat_tool.load_model(args)
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(layers) == 14
    assert all(m.weight.quant_type == 'nf4' and m.weight.quant_state.nested for m in layers)
    assert not any(getattr(m, 'support_avx512bf16_for_cpu', False) for m in layers)
    assert all(m.compute_dtype == torch.float32 for m in layers)


def test_bits_4_computes_in_the_models_own_dtype(tmp_path, tiny_llama_dir):
    import bitsandbytes as bnb
    from transformers import AutoModelForCausalLM
    bf16_dir = tmp_path / 'bf16'
    AutoModelForCausalLM.from_pretrained(str(tiny_llama_dir), dtype=torch.bfloat16).save_pretrained(
        bf16_dir)
    args = chat_tool.parse_args([str(bf16_dir), '--bits', '4'])
    model = chat_tool.load_model(args)
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers and all(m.compute_dtype == torch.bfloat16 for m in layers)


def test_bits_8_loads_int8_layers(tiny_llama_dir):
    import bitsandbytes as bnb
    args = chat_tool.parse_args([str(tiny_llama_dir), '--bits', '8'])
    model = chat_tool.load_model(args)
    assert len([m for m in model.modules() if isinstance(m, bnb.nn.Linear8bitLt)]) == 14


@pytest.mark.slow
def test_smollm2_answers_paris_in_4_bits(capsys):
    from xft.tools.prepare_demo_model import prepare_demo_model
    code = chat_tool.main([str(prepare_demo_model()), '--prompt-template', 'chatml',
                           '--bits', '4', '--temperature', '0', '--max-new-tokens', '12',
                           '--prompt', 'What is the capital of France?'])
    assert code == 0
    assert 'Paris' in capsys.readouterr().out


def test_converted_adapter_is_asked_in_its_training_template_without_naming_it(
        tmp_path, tiny_llama_dir, capsys, monkeypatch):
    """pth_to_hf saves the training config; merge copies it; chat reads its prompt_template.
    Here the training template is vicuna, which the tokenizer's own template is not."""
    from helpers.convert import make_checkpoint

    from xft.tools.merge import main as merge_main
    from xft.tools.pth_to_hf import main as pth_to_hf_main
    config, checkpoint, _ = make_checkpoint(tmp_path, tiny_llama_dir, 'lora', template='vicuna')
    adapter, merged = tmp_path / 'adapter', tmp_path / 'merged'
    assert pth_to_hf_main([str(config), str(checkpoint), str(adapter)]) == 0
    assert merge_main([str(tiny_llama_dir), str(adapter), str(merged)]) == 0
    prompts = []
    real = chat_tool.ChatSession.answer

    def recording_answer(session, message):
        prompts.append(session.template)
        return real(session, message)
    monkeypatch.setattr(chat_tool.ChatSession, 'answer', recording_answer)
    for folder_args in ([str(tiny_llama_dir), '--adapter', str(adapter)], [str(merged)]):
        capsys.readouterr()
        assert chat_tool.main([*folder_args, '--prompt', 'Hi', *GREEDY]) == 0
        assert 'using the prompt template of the training config' in capsys.readouterr().err
    assert [dict(t) for t in prompts] == [dict(PROMPT_TEMPLATE.vicuna)] * 2
