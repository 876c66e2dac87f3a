"""Generation in the training format: prompts, stop words, streaming. Shared by ``xft chat`` and
``EvaluateChatHook``.

The prompt of a chat is the conversation so far, encoded by the training encoder itself
(``xft.dataset``'s template step and ``encode_conversation``): earlier turns exactly as a
training sample holds them (input, output + SUFFIX, EOS when the template needs it, SEP), then
the new input with its assistant header, and nothing after it. Earlier replies are re-encoded
from their text, as a training sample of this conversation would be, rather than kept as the
sampled ids: a model must see the history in the format it learned.

Example (ByT5's tokenizer has bytes for tokens: it needs no files and has no BOS)::

    >>> from transformers import ByT5Tokenizer
    >>> tokenizer = ByT5Tokenizer()
    >>> ids = encode_for_generation([('Hi', 'Hello!')], 'And you?', 'chatml', tokenizer)
    >>> tokenizer.decode(ids).split('\\n')  # the prompt ends with the assistant header
    ['<|im_start|>user', 'Hi<|im_end|>', '<|im_start|>assistant', 'Hello!<|im_end|>',
     '<|im_start|>user', 'And you?<|im_end|>', '<|im_start|>assistant', '']
"""
import sys
from dataclasses import dataclass, field

import torch
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from xft.dataset.conversation import normalize_conversation
from xft.dataset.encode import conversation_to_messages, encode_conversation
from xft.dataset.map_fns.template import (resolve_template, template_map_fn,
                                          uses_tokenizer_chat_template)

# No template: the text is the prompt (after the tokenizer's BOS), as for a pretrained base.
RAW_TEXT_TEMPLATE = {'INSTRUCTION': '{input}'}
# Prompts are never truncated for generation: a chat that outgrows the model errors in the
# model, where the user sees why, instead of silently losing its start.
_NO_TRUNCATION = sys.maxsize


def build_conversation(history, new_input, system=''):
    """Turns in the conversation format: ``history`` is [(input, reply), ...]; the new input
    gets an empty reply. The system text opens the first turn, as in training data."""
    inputs = [question for question, _ in history] + [new_input]
    replies = [reply for _, reply in history] + ['']
    return [{'system': system if position == 0 else '', 'input': question, 'output': reply}
            for position, (question, reply) in enumerate(zip(inputs, replies))]


def encode_for_generation(history, new_input, template, tokenizer, system=''):
    """Token ids of the prompt that asks the model for the reply to ``new_input``.

    ``template`` is a PROMPT_TEMPLATE dict or name (``hf_chat_template`` renders with the
    tokenizer's own jinja, with the generation prompt added).
    """
    template = resolve_template(template)
    turns = normalize_conversation(build_conversation(history, new_input, system),
                                   source='chat', allow_empty=False)
    if uses_tokenizer_chat_template(template):
        messages = conversation_to_messages(turns)[:-1]  # without the empty reply
        text = tokenizer.apply_chat_template(messages, tokenize=False,
                                             add_generation_prompt=True)
        return tokenizer(text, add_special_tokens=False)['input_ids']
    templated = template_map_fn({'conversation': turns}, template)['conversation']
    # The last turn stops after its assistant header: no reply, no EOS, no SEP.
    templated[-1] = dict(templated[-1], output='', sep='')
    return encode_conversation(templated, tokenizer, max_length=_NO_TRUNCATION)['input_ids']


def stop_words_for(template, tokenizer, extra=()):
    """The template's STOP_WORDS, the user's, and the tokenizer's EOS text, without repeats."""
    words = list(template.get('STOP_WORDS', None) or []) + list(extra or [])
    if tokenizer.eos_token:
        words.append(tokenizer.eos_token)
    return list(dict.fromkeys(word for word in words if word))


def cut_at_stop_word(text, stop_words):
    """``text`` up to the first stop word (the reply proper)."""
    positions = [text.find(word) for word in stop_words if word in text]
    return text[:min(positions)] if positions else text


def _held_back(text, stop_words):
    """How many trailing characters of ``text`` could be the start of a stop word."""
    longest = 0
    for word in stop_words:
        for size in range(min(len(word) - 1, len(text)), longest, -1):
            if text.endswith(word[:size]):
                longest = size
                break
    return longest


class StopWordsCriteria(StoppingCriteria):
    """Stops a row once its generated text contains a stop word (special token or plain text)."""

    def __init__(self, tokenizer, stop_words, prompt_length):
        self.tokenizer, self.stop_words, self.prompt_length = tokenizer, stop_words, prompt_length

    def __call__(self, input_ids, scores, **kwargs):
        done = [any(word in self.tokenizer.decode(row[self.prompt_length:]) for word in
                    self.stop_words) for row in input_ids]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


class ReplyStreamer(BaseStreamer):
    """Writes the reply as it is generated, never a stop word nor the text after one.

    Text that might be the start of a stop word is held back until it is clearly not.
    """

    def __init__(self, tokenizer, stop_words, write=None):
        self.tokenizer, self.stop_words = tokenizer, stop_words
        self.write = write or (lambda text: print(text, end='', flush=True))
        self.prompt_seen, self.ids, self.written, self.stopped = False, [], 0, False

    def put(self, value):
        if not self.prompt_seen:  # generate() hands over the prompt first
            self.prompt_seen = True
            return
        self.ids.extend(value.reshape(-1).tolist())
        self._flush(final=False)

    def end(self):
        self._flush(final=True)

    def _flush(self, final):
        if self.stopped:
            return
        text = self.tokenizer.decode(self.ids)
        reply = cut_at_stop_word(text, self.stop_words)
        if reply != text:
            self.stopped = True
        elif not final:
            reply = reply[:len(reply) - _held_back(reply, self.stop_words)]
            if reply.endswith('\ufffd'):  # a multi-byte character still being generated
                return
        if len(reply) > self.written:
            self.write(reply[self.written:])
            self.written = len(reply)


@dataclass
class GenerationSettings:
    """Sampling settings; ``temperature`` 0 means greedy decoding."""

    max_new_tokens: int = 512
    temperature: float = 0.0
    top_k: int = 40
    top_p: float = 0.75
    repetition_penalty: float = 1.0
    extra: dict = field(default_factory=dict)

    def generate_kwargs(self, tokenizer):
        sampling = self.temperature > 0
        kwargs = dict(max_new_tokens=self.max_new_tokens, do_sample=sampling,
                      repetition_penalty=self.repetition_penalty,
                      eos_token_id=tokenizer.eos_token_id,
                      pad_token_id=(tokenizer.pad_token_id if tokenizer.pad_token_id is not None
                                    else tokenizer.eos_token_id))
        if sampling:
            kwargs.update(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p)
        else:  # keep the model's generation_config from adding sampling knobs to greedy search
            kwargs.update(temperature=None, top_k=None, top_p=None)
        kwargs.update(self.extra)
        return kwargs


def generate_reply(model, tokenizer, prompt_ids, settings, stop_words, stream=None):
    """Generate the reply to ``prompt_ids`` (a list of ids); return its text, stop word cut.

    ``stream`` is a callable taking text pieces (e.g. ``print``); None generates silently.
    """
    device = next(model.parameters()).device
    input_ids = torch.tensor([prompt_ids], device=device)
    streamer = ReplyStreamer(tokenizer, stop_words, stream) if stream is not None else None
    with torch.no_grad():
        output = model.generate(
            input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
            stopping_criteria=StoppingCriteriaList(
                [StopWordsCriteria(tokenizer, stop_words, len(prompt_ids))]),
            streamer=streamer, **settings.generate_kwargs(tokenizer))
    generated = output[0, len(prompt_ids):]
    return cut_at_stop_word(tokenizer.decode(generated), stop_words)


def generate_replies(model, tokenizer, prompts, settings, stop_words):
    """Replies to several prompts (lists of ids) in one batched ``generate``; texts, stop words
    cut. Prompts are left-padded, so every row's reply starts at the same column; each row
    stops at its own stop word. On a CPU where 4-bit weights are dequantized at every step, one
    batch of N costs about what one prompt does.
    """
    if not prompts:
        return []
    device = next(model.parameters()).device
    width = max(len(prompt) for prompt in prompts)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    input_ids = torch.tensor([[pad] * (width - len(p)) + list(p) for p in prompts], device=device)
    attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts],
                                  device=device)
    with torch.no_grad():
        output = model.generate(
            input_ids=input_ids, attention_mask=attention_mask,
            stopping_criteria=StoppingCriteriaList(
                [StopWordsCriteria(tokenizer, stop_words, width)]),
            **settings.generate_kwargs(tokenizer))
    return [cut_at_stop_word(tokenizer.decode(row[width:]), stop_words) for row in output]
