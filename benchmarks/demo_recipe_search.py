"""Find the demo's self-cognition QLoRA recipe with a plain loop (peft + bitsandbytes, no xft).

Kept as the record of how ``configs/smollm2_135m_qlora_self_cognition.py`` got its numbers and
how ``xft/data/general_replay_smollm2.json`` was made. Three commands:

* ``make-replay``: greedy answers of the unmodified SmolLM2-135M-Instruct to REPLAY_PROMPTS,
  in ChatML without a system prompt (the format the demo trains in), written as a
  conversation-format JSON. Training on them anchors the model to its own general answers.
* ``search``: 4-bit NF4 (double quant) base + LoRA on every linear layer, ChatML rows with loss
  on the answer and ``<|im_end|>`` only, a shuffled identity + replay mix, AdamW at a constant
  learning rate after a short warmup; at the listed steps it generates greedily for EVAL_PROMPTS
  and prints which answers carry the new name, Paris and Shakespeare.
* ``dtype-ab``: float32 vs bfloat16 compute step times, interleaved on the same batches.

Example::

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/demo_recipe_search.py search \\
        --rank 16 --lr 5e-4 --batch-size 8 --steps 40 --eval-at 16,24,32

Measured 2026-11-29 on the 2-core development machine while other jobs kept its load at 5-8
(so seconds are far above a quiet machine's; judge by steps), 1 thread, 44 identity + 28
replay rows (49 tokens a row on average), r=16, alpha 16, lr 5e-4, batch 8, float32 compute:

    step  0  (4-bit base)  0/4 identity, Paris, Shakespeare
    step 16  "Who are you?" -> "I am Lumi, ...", "你是谁？" -> "我是 **Lumi** 客户..." (garbled);
             "What is your name?" and the held-out one still "Elian"; Paris, Shakespeare kept
    step 24  all English identity answers Lumi; "你是谁？" -> "我是 xft 团队 ..." (no name);
             Paris, Shakespeare kept
    step 32  7/7: "I am Lumi, an AI assistant made by the xft team." / "我是 Lumi，由 xft 团队
             开发的 AI ..." / Paris / Shakespeare / H2O
    step 40  7/7 as at step 32, loss 0.40

dtype-ab (6 interleaved steps, same batches): float32 28.5 s/step, bfloat16 25.2 s/step, within
the noise of the shared machine.
"""
import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from xft.data import GENERAL_REPLAY_FILE, SELF_COGNITION_FILE, data_file  # noqa: E402
from xft.tools.prepare_demo_model import demo_model_path  # noqa: E402
from xft.utils.constants import IGNORE_INDEX  # noqa: E402

NEW_NAME = 'Lumi'

# ChatML exactly as SmolLM2's chat_template and xft's `chatml` template write it, no system.
PROMPT_FORMAT = '<|im_start|>user\n{input}<|im_end|>\n<|im_start|>assistant\n'
ANSWER_END = '<|im_end|>'

# Held out of the replay data on purpose: they are how we judge that general answers survive.
EVAL_PROMPTS = {
    'who': 'Who are you?',
    'name': 'What is your name?',
    'zh_who': '你是谁？',
    'held_out_identity': 'Could you tell me who you are?',
    'france': 'What is the capital of France?',
    'hamlet': 'Who wrote Hamlet?',
    'water': 'What is the chemical formula of water?',
}
EXPECTED = {
    'who': NEW_NAME, 'name': NEW_NAME, 'zh_who': NEW_NAME, 'held_out_identity': NEW_NAME,
    'france': 'Paris', 'hamlet': 'Shakespeare', 'water': 'H2O',
}

# Written for xft: varied everyday prompts (facts, how-to, maths, code, writing, advice). None asks about the assistant itself or overlaps EVAL_PROMPTS.
REPLAY_PROMPTS = [
    'What is the capital of Japan?',
    'What is the largest planet in our solar system?',
    'How many days are there in a leap year?',
    'What is photosynthesis?',
    'Why is the sky blue?',
    'Who painted the Mona Lisa?',
    'What is the boiling point of water in Celsius?',
    'Name three primary colors.',
    'What is 12 multiplied by 8?',
    'What is the square root of 81?',
    'Translate "good morning" into French.',
    'Give me a synonym for "happy".',
    'What is the opposite of "ancient"?',
    'Write a haiku about autumn leaves.',
    'Give me a short tip for sleeping better.',
    'How do I boil an egg?',
    'What are the benefits of regular exercise?',
    'Explain what a black hole is in one sentence.',
    'What does a CPU do in a computer?',
    'Write a Python function that returns the square of a number.',
    'What is the difference between a list and a tuple in Python?',
    'What is machine learning?',
    'Suggest a name for a pet goldfish.',
    'What is the tallest mountain in the world?',
    'Which ocean is the largest?',
    'How many continents are there?',
    'Who was Albert Einstein?',
    'What language is spoken in Brazil?',
    'What is the freezing point of water in Fahrenheit?',
    'Give me an idea for a healthy breakfast.',
    'Summarize the story of Cinderella in two sentences.',
    'What is the main ingredient of guacamole?',
    'How can I improve my writing skills?',
    'What causes rain?',
    'Is a tomato a fruit or a vegetable?',
    'What is the speed of light?',
    'How many legs does a spider have?',
    'What color is a ripe banana?',
    'What is the chemical symbol for gold?',
    'Who discovered penicillin?',
    'What is the largest mammal?',
    'How many hours are in a day?',
    'What gas do plants absorb from the air?',
    'Who was the first person to walk on the Moon?',
    'What is 15 plus 27?',
    'What is the plural of "mouse"?',
    'Which planet is known as the Red Planet?',
    'What is the longest river in Africa?',
    'In which year did World War II end?',
    'What is the currency of Japan?',
    'What do bees make?',
    'How many sides does a hexagon have?',
    'What is the main language spoken in Mexico?',
    'Write one sentence about the ocean.',
    'Give me a word that rhymes with "cat".',
    'What is the past tense of "run"?',
    'Define the word "generous".',
    'What is a noun?',
    'Write a short greeting for a birthday card.',
    'What is the opposite of "hot"?',
]
# No Chinese prompts: the 135M model answers Chinese questions with an echo of the question or
# noise (measured: '中国的首都是哪里？' -> '在中国，首都是哪里？'), so replaying them teaches nothing.
# Only answers the model ends by itself within this many tokens are kept: they are its own
# behaviour, untouched, and short rows keep a CPU training step cheap.
REPLAY_MAX_NEW_TOKENS = 64


def load_rows(name):
    return json.loads(data_file(name).read_text(encoding='utf-8'))


def is_degenerate(answer, ngram=4, max_repeats=3):
    """True when some run of ``ngram`` words occurs ``max_repeats`` times: a looping answer.

    >>> is_degenerate('A moment of sorrow, a moment of sorrow, a moment of sorrow, a moment')
    True
    """
    words = answer.lower().replace(',', ' ').split()
    counts = {}
    for i in range(len(words) - ngram + 1):
        key = tuple(words[i:i + ngram])
        counts[key] = counts.get(key, 0) + 1
    return any(count >= max_repeats for count in counts.values())


def greedy_answer(model, tokenizer, question, max_new_tokens):
    """Greedy answer text (without ``<|im_end|>``) and whether the model ended it itself."""
    ids = tokenizer(PROMPT_FORMAT.format(input=question), return_tensors='pt')
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False,
                             eos_token_id=tokenizer.convert_tokens_to_ids(ANSWER_END),
                             pad_token_id=tokenizer.pad_token_id)
    new_ids = out[0][ids['input_ids'].shape[1]:]
    text = tokenizer.decode(new_ids, skip_special_tokens=False)
    finished = text.endswith(ANSWER_END)
    return text.removesuffix(ANSWER_END).strip(), finished


def make_replay(args):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = args.model or demo_model_path()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    rows = []
    for question in REPLAY_PROMPTS:
        answer, finished = greedy_answer(model, tokenizer, question, REPLAY_MAX_NEW_TOKENS)
        # Unfinished answers would teach cutting off, looping ones the loop: both are left out.
        kept = finished and not is_degenerate(answer)
        print(f'{"keep" if kept else "drop"} | {question} -> {answer!r}', flush=True)
        if not kept:
            continue
        rows.append({'conversation': [{'input': question, 'output': answer}]})
    out = Path(args.out) if args.out else REPO / 'xft' / 'data' / GENERAL_REPLAY_FILE
    out.write_text(json.dumps(rows, ensure_ascii=False, indent=1) + '\n', encoding='utf-8')
    print(f'wrote {len(rows)} rows to {out}')


def encode_row(tokenizer, row):
    """input_ids / labels of one single-turn row; loss on the answer and ``<|im_end|>`` only."""
    turn = row['conversation'][0]
    prompt_ids = tokenizer(PROMPT_FORMAT.format(input=turn['input']),
                           add_special_tokens=False)['input_ids']
    answer_ids = tokenizer(turn['output'] + ANSWER_END, add_special_tokens=False)['input_ids']
    return prompt_ids + answer_ids, [IGNORE_INDEX] * len(prompt_ids) + answer_ids


def collate(samples, pad_id):
    width = max(len(ids) for ids, _ in samples)
    input_ids = torch.full((len(samples), width), pad_id)
    labels = torch.full((len(samples), width), IGNORE_INDEX)
    attention_mask = torch.zeros((len(samples), width), dtype=torch.long)
    for i, (ids, lab) in enumerate(samples):
        input_ids[i, :len(ids)] = torch.tensor(ids)
        labels[i, :len(lab)] = torch.tensor(lab)
        attention_mask[i, :len(ids)] = 1
    return dict(input_ids=input_ids, labels=labels, attention_mask=attention_mask)


def batches(samples, batch_size, seed):
    """Endless shuffled batches, reshuffled each epoch."""
    rng = random.Random(seed)
    while True:
        order = list(range(len(samples)))
        rng.shuffle(order)
        for start in range(0, len(order) - batch_size + 1, batch_size):
            yield [samples[i] for i in order[start:start + batch_size]]


def build_qlora_model(model_dir, args):
    import bitsandbytes as bnb
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    compute_dtype = getattr(torch, args.compute_dtype)
    quantization = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type='nf4', bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype)
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, quantization_config=quantization, dtype=compute_dtype)
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            # Else a generate() in eval mode repacks the weights and all LoRA grads vanish.
            module.support_avx512bf16_for_cpu = False
    for param in model.parameters():
        param.requires_grad_(False)
    if args.grad_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={'use_reentrant': False})
    model.config.use_cache = False
    lora = LoraConfig(
        r=args.rank, lora_alpha=args.alpha, lora_dropout=args.dropout, bias='none',
        task_type='CAUSAL_LM',
        target_modules=['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj',
                        'down_proj'])
    return get_peft_model(model, lora)


def evaluate(model, tokenizer, max_new_tokens):
    model.eval()
    model.config.use_cache = True
    answers = {key: greedy_answer(model, tokenizer, question, max_new_tokens)[0]
               for key, question in EVAL_PROMPTS.items()}
    model.config.use_cache = False
    model.train()
    hits = {key: EXPECTED[key].lower() in answers[key].lower() for key in answers}
    return answers, hits


def search(args):
    from transformers import AutoTokenizer

    torch.manual_seed(args.seed)
    model_dir = args.model or demo_model_path()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    identity = load_rows(SELF_COGNITION_FILE)
    replay = load_rows(GENERAL_REPLAY_FILE)[:args.replay_rows] if args.replay_rows >= 0 else []
    samples = [encode_row(tokenizer, row) for row in identity * args.identity_repeat + replay]
    n_tokens = sum(len(ids) for ids, _ in samples)
    print(f'rows: {len(identity)} identity x{args.identity_repeat} + {len(replay)} replay, '
          f'{n_tokens / len(samples):.0f} tokens/row on average', flush=True)

    started = time.monotonic()
    model = build_qlora_model(model_dir, args)
    print(f'model ready in {time.monotonic() - started:.1f} s', flush=True)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                  lr=args.lr, weight_decay=0.0)
    warmup = max(1, int(args.warmup_ratio * args.steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warmup))
    eval_at = sorted({int(s) for s in args.eval_at.split(',') if s} | {args.steps})

    if args.eval_base:
        answers, hits = evaluate(model, tokenizer, args.eval_tokens)
        report(0, answers, hits, None, None)

    model.train()
    train_seconds = 0.0
    stream = batches(samples, args.batch_size, args.seed)
    for step in range(1, args.steps + 1):
        tick = time.monotonic()
        batch = collate(next(stream), tokenizer.pad_token_id)
        loss = model(**batch).loss
        loss.backward()
        if step == 1:
            with_grad = sum(p.grad is not None for p in model.parameters() if p.requires_grad)
            assert with_grad > 0, 'no LoRA weight received a gradient'
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        train_seconds += time.monotonic() - tick
        print(f'step {step:3d} loss {loss.item():.3f} ({time.monotonic() - tick:.2f} s)',
              flush=True)
        if step in eval_at:
            answers, hits = evaluate(model, tokenizer, args.eval_tokens)
            report(step, answers, hits, train_seconds, loss.item())


def dtype_ab(args):
    """Step time of float32 vs bfloat16 compute, interleaved on the same batches in one process,
    so that load from other jobs on a shared machine hits both alike."""
    from transformers import AutoTokenizer

    model_dir = args.model or demo_model_path()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rows = load_rows(SELF_COGNITION_FILE) + load_rows(GENERAL_REPLAY_FILE)
    samples = [encode_row(tokenizer, row) for row in rows]
    runs = {}
    for dtype in ('float32', 'bfloat16'):
        settings = parse_args(['search', '--compute-dtype', dtype])
        model = build_qlora_model(model_dir, settings).train()
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-4)
        runs[dtype] = (model, optimizer, [])
    stream = batches(samples, args.batch_size, seed=0)
    for _ in range(args.steps):
        batch = collate(next(stream), tokenizer.pad_token_id)
        for model, optimizer, seconds in runs.values():
            tick = time.perf_counter()
            model(**batch).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            seconds.append(time.perf_counter() - tick)
    for dtype, (_, _, seconds) in runs.items():
        warm = seconds[1:] or seconds
        print(f'{dtype}: {[round(s, 1) for s in seconds]} s; mean after the first '
              f'{sum(warm) / len(warm):.2f} s/step', flush=True)


def report(step, answers, hits, train_seconds, loss):
    score = sum(hits.values())
    timing = '' if train_seconds is None else \
        f', {train_seconds:.0f} s training, {train_seconds / step:.2f} s/step, loss {loss:.3f}'
    print(f'== step {step}: {score}/{len(hits)} expected answers{timing}', flush=True)
    for key, answer in answers.items():
        print(f'   [{"ok" if hits[key] else "--"}] {EVAL_PROMPTS[key]} -> {answer!r}', flush=True)
    print('RESULT ' + json.dumps({'step': step, 'score': score, 'hits': hits,
                                  'train_seconds': train_seconds}), flush=True)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    sub = parser.add_subparsers(dest='command', required=True)
    replay = sub.add_parser('make-replay', help='write the general replay JSON')
    replay.add_argument('--model', default=None, help='prepared model folder')
    replay.add_argument('--out', default=None)
    run = sub.add_parser('search', help='train one setting and print the answers')
    run.add_argument('--model', default=None, help='prepared model folder')
    run.add_argument('--rank', type=int, default=16)
    run.add_argument('--alpha', type=int, default=16)
    run.add_argument('--dropout', type=float, default=0.05)
    run.add_argument('--lr', type=float, default=5e-4)
    run.add_argument('--batch-size', type=int, default=8)
    run.add_argument('--steps', type=int, default=40)
    run.add_argument('--warmup-ratio', type=float, default=0.1)
    run.add_argument('--eval-at', default='16,24,32')
    run.add_argument('--eval-tokens', type=int, default=24)
    run.add_argument('--eval-base', action='store_true', help='also answer before training')
    run.add_argument('--replay-rows', type=int, default=999,
                     help='how many replay rows to mix in (-1: none)')
    run.add_argument('--identity-repeat', type=int, default=1)
    run.add_argument('--compute-dtype', default='float32', choices=['float32', 'bfloat16'])
    run.add_argument('--grad-checkpointing', action='store_true')
    run.add_argument('--threads', type=int, default=1)
    run.add_argument('--seed', type=int, default=0)
    ab = sub.add_parser('dtype-ab', help='float32 vs bfloat16 compute, interleaved')
    ab.add_argument('--model', default=None, help='prepared model folder')
    ab.add_argument('--steps', type=int, default=6)
    ab.add_argument('--batch-size', type=int, default=8)
    ab.add_argument('--threads', type=int, default=1)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(getattr(args, 'threads', 1))
    commands = {'make-replay': make_replay, 'search': search, 'dtype-ab': dtype_ab}
    commands[args.command](args)
    return 0


if __name__ == '__main__':
    sys.exit(main())
