"""EvaluateChatHook: see what the model answers while it trains.

It generates answers to a few fixed inputs before training, every ``every_n_iters`` iterations,
at each iteration where the CheckpointHook saves, and after training. Answers go to the log and
to ``<work_dir>/eval_outputs/iter_<N>.txt`` (readable) and ``eval_outputs/answers.jsonl`` (one
record per answer, for scripts). Prompts are built by the training encoder, so the model is
asked in exactly the format it learns (``xft.model.generation``).

A run that is stopping (SIGTERM/SIGINT, see ``preemption_hook``) does not wait for answers: a
signal abandons a generation in progress, and no evaluation starts after it. ``xft train
--max-iters N`` (a trial run) leaves this hook out.

Generating must not change training: the hook restores train/eval mode, the config's
``use_cache`` and leaves gradient checkpointing as it was, and it keeps bitsandbytes from
repacking 4-bit weights into its CPU inference layout (which silently turns every LoRA grad
into None afterwards, see ``xft.model.quantization``).

Config (XTuner's arguments)::

    custom_hooks = [
        dict(type=EvaluateChatHook, tokenizer=tokenizer, every_n_iters=500,
             evaluation_inputs=['Who are you?', 'What is the capital of France?'],
             system=SYSTEM_TEMPLATE.alpaca, prompt_template=prompt_template)]
"""
import json
import time
from pathlib import Path

from mmengine.dist import is_main_process
from mmengine.hooks import CheckpointHook, Hook
from mmengine.model import is_model_wrapper

from xft.engine.hooks.preemption_hook import StopRequested, interruptible_by_stop, stop_requested
from xft.model.generation import (RAW_TEXT_TEMPLATE, GenerationSettings,
                                  encode_for_generation, generate_replies, stop_words_for)
from xft.model.quantization import keep_4bit_weights_trainable_on_cpu
from xft.registry import build_nested

EVAL_OUTPUT_DIRNAME = 'eval_outputs'
ANSWERS_FILENAME = 'answers.jsonl'


class EvaluateChatHook(Hook):
    """Generate answers to ``evaluation_inputs`` during training and record them.

    Args:
        tokenizer: the tokenizer or its config dict.
        evaluation_inputs: a string or a list of strings to answer.
        system: the system prompt text ('' for none).
        prompt_template: a PROMPT_TEMPLATE dict or name (as in the config's data pipeline);
            None sends the inputs as they are (a pretraining run).
        every_n_iters: generate every N training iterations (None: only before/after training
            and at checkpoint saves).
        max_new_tokens: the longest answer.
        stop_words: extra texts that end an answer (the template's STOP_WORDS and the EOS
            always do); ``stop_word`` is XTuner's older single-word spelling.
        generation_kwargs: more ``generate()`` arguments, e.g. ``dict(do_sample=True)``.
            Decoding is greedy by default so answers of two runs compare.
    """

    # mmengine's table: HIGHEST 0 ... NORMAL 50, BELOW_NORMAL 60, LOW 70, VERY_LOW 90, LOWEST
    # 100; lower runs first. LOW: after the loggers and schedulers have seen the iteration
    # (NORMAL/BELOW_NORMAL) and before the CheckpointHook (VERY_LOW) saves it, as in XTuner.
    priority = 'LOW'

    def __init__(self, tokenizer, evaluation_inputs, system='', prompt_template=None,
                 every_n_iters=None, max_new_tokens=600, stop_word=None, stop_words=(),
                 generation_kwargs=None, evaluation_images=None, image_processor=None):
        if evaluation_images is not None or image_processor is not None:
            raise ValueError('EvaluateChatHook: image inputs (LLaVA) are not supported by xft')
        if prompt_template is None:  # XTuner's meaning: the inputs are sent as they are
            prompt_template = RAW_TEXT_TEMPLATE
        self.tokenizer = build_nested(dict(tokenizer)) if isinstance(tokenizer, dict) else tokenizer
        self.evaluation_inputs = ([evaluation_inputs] if isinstance(evaluation_inputs, str)
                                  else list(evaluation_inputs))
        self.system = system or ''
        self.template = prompt_template
        self.every_n_iters = every_n_iters
        from xft.dataset.map_fns.template import resolve_template
        extra_stop_words = list(stop_words or []) + ([stop_word] if stop_word else [])
        self.stop_words = stop_words_for(resolve_template(prompt_template), self.tokenizer,
                                         extra_stop_words)
        self.max_new_tokens = max_new_tokens
        self.settings = GenerationSettings(max_new_tokens=max_new_tokens, temperature=0.0,
                                           extra=dict(generation_kwargs or {}))
        self._last_iteration = None
        # Encoded once: the inputs and template do not change during training.
        self.prompts = [encode_for_generation([], text, prompt_template, self.tokenizer,
                                              system=self.system)
                        for text in self.evaluation_inputs]

    # --- when ------------------------------------------------------------------------------

    def before_train(self, runner):
        self._evaluate(runner, iteration=runner.iter)

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        periodic = self.every_n_iters is not None and self.every_n_train_iters(
            runner, self.every_n_iters)
        if periodic or self._checkpoint_saves_now(runner):
            self._evaluate(runner, iteration=runner.iter + 1)

    def after_train(self, runner):
        if self._last_iteration != runner.iter:  # the last iteration may have saved already
            self._evaluate(runner, iteration=runner.iter)

    def _checkpoint_saves_now(self, runner):
        """True at the iterations where an iteration-based CheckpointHook saves."""
        for hook in runner.hooks:
            if isinstance(hook, CheckpointHook) and not hook.by_epoch and hook.interval > 0:
                if self.every_n_train_iters(runner, hook.interval):
                    return True
        return False

    # --- what ------------------------------------------------------------------------------

    def _evaluate(self, runner, iteration):
        if stop_requested(runner):
            runner.logger.info(f'EvaluateChatHook: skipped at iter {iteration}: the run is stopping')
            return None
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        runner.logger.info(f'EvaluateChatHook: answering {len(self.prompts)} inputs at iter '
                           f'{iteration} (up to {self.max_new_tokens} new tokens each) ...')
        started = time.perf_counter()
        try:
            with interruptible_by_stop(runner):
                answers = self._generate(model.llm)
        except StopRequested as signal_name:
            runner.logger.info(f'EvaluateChatHook: {signal_name} received; evaluation at iter '
                               f'{iteration} abandoned')
            return None
        seconds = time.perf_counter() - started
        self._last_iteration = iteration
        for text, answer in zip(self.evaluation_inputs, answers):
            runner.logger.info(f'EvaluateChatHook iter {iteration}:\n  input: {text}\n'
                               f'  answer: {answer}')
        if is_main_process():
            self._write(Path(runner.work_dir), iteration, answers, seconds)
        return answers

    def _generate(self, llm):
        """The answers to every input, in one batch."""
        with _generation_state(llm):
            # One batch for all inputs: on a CPU that dequantizes 4-bit weights at every step,
            # three inputs took 11 s batched against 21.5 s one by one (SmolLM2-135M, 24
            # tokens). In float32 the answers are the same; in bf16 padding may flip a near-tie.
            return generate_replies(llm, self.tokenizer, self.prompts, self.settings,
                                    self.stop_words)

    def _write(self, work_dir, iteration, answers, seconds):
        out_dir = work_dir / EVAL_OUTPUT_DIRNAME
        out_dir.mkdir(parents=True, exist_ok=True)
        readable = ''.join(f'### input {i}\n{text}\n### answer {i}\n{answer}\n\n'
                           for i, (text, answer) in enumerate(zip(self.evaluation_inputs,
                                                                  answers)))
        (out_dir / f'iter_{iteration}.txt').write_text(readable, encoding='utf-8')
        with open(out_dir / ANSWERS_FILENAME, 'a', encoding='utf-8') as records:
            for text, answer in zip(self.evaluation_inputs, answers):
                records.write(json.dumps({'iter': iteration, 'input': text, 'answer': answer,
                                          'seconds': round(seconds, 3)},
                                         ensure_ascii=False) + '\n')


class _generation_state:
    """Eval mode and the KV cache for generating; everything restored on exit."""

    def __init__(self, llm):
        self.llm = llm

    def __enter__(self):
        config = self.llm.config
        # Each module's own mode: a model may keep some parts in eval mode while it trains.
        self.modes = [(module, module.training) for module in self.llm.modules()]
        self.use_cache = getattr(config, 'use_cache', None)
        keep_4bit_weights_trainable_on_cpu(self.llm)
        self.llm.eval()
        config.use_cache = True
        return self.llm

    def __exit__(self, *exc):
        self.llm.config.use_cache = self.use_cache
        for module, training in self.modes:
            module.training = training
        return False
