"""``make demo`` / ``xft demo``: the whole loop on the embedded SmolLM2-135M-Instruct.

prepare the model -> ask it who it is -> QLoRA-train the self-cognition config ->
pth_to_hf -> merge -> ask the merged model, and base + adapter in 4-bit -> export the merged
model as GGUF (what llama.cpp and Ollama run) and ask the file, read back by transformers.

Each step runs the same command a user would type, in its own process, so the demo
exercises exactly the shipped tools. It ends with the answers before and after training
and exits non-zero when the new identity did not take, the general answer was lost, or the
GGUF file answers differently from the merged model it was written from (bf16 in, bf16 out,
both asked in bf16: greedy answers must be equal).
"""
import argparse
import subprocess
import sys
import time
from pathlib import Path

CONFIG = 'configs/smollm2_135m_qlora_self_cognition.py'
IDENTITY_QUESTION = 'Who are you?'
GENERAL_QUESTION = 'What is the capital of France?'
NEW_NAME = 'Lumi'
GENERAL_FACT = 'Paris'
TEMPLATE = 'chatml'


def xft_command(*args):
    return [sys.executable, '-m', 'xft.cli', *map(str, args)]


def run_step(title, command, capture=False):
    """Run one step, showing its progress; stop the demo with its exit code if it fails."""
    print(f'\n==> {title}\n    $ {" ".join(command[2:] if command[:2] == [sys.executable, "-m"] else command)}',
          flush=True)
    started = time.monotonic()
    result = subprocess.run(command, stdout=subprocess.PIPE if capture else None, text=True)
    if result.returncode != 0:
        raise SystemExit(f'xft demo: step "{title}" failed with exit code {result.returncode}')
    print(f'    ({time.monotonic() - started:.0f} s)', flush=True)
    return result.stdout if capture else None


def ask(title, model, question, *extra):
    answer = run_step(title, xft_command('chat', model, '--prompt-template', TEMPLATE, '--prompt', question,
                                         '--temperature', 0, '--max-new-tokens', 60, '--no-streamer', *extra),
                      capture=True)
    return ' '.join(answer.split())


def last_checkpoint(work_dir: Path) -> Path:
    pointer = work_dir / 'last_checkpoint'
    if not pointer.is_file():
        raise SystemExit(f'xft demo: training wrote no checkpoint into {work_dir}')
    return Path(pointer.read_text().strip())


def parse_args(argv):
    parser = argparse.ArgumentParser(prog='xft demo', description=__doc__.splitlines()[0])
    parser.add_argument('--work-dir', default='work_dirs/smollm2_135m_qlora_self_cognition')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    work_dir = Path(args.work_dir)
    started = time.monotonic()
    model = run_step('Prepare SmolLM2-135M-Instruct', xft_command('prepare-demo-model'),
                     capture=True).strip().splitlines()[-1]
    before = {q: ask(f'Base model: {q}', model, q) for q in (IDENTITY_QUESTION, GENERAL_QUESTION)}

    run_step('QLoRA training (4-bit NF4 + LoRA) on the self-cognition mix',
             xft_command('train', CONFIG, '--work-dir', work_dir))
    adapter, merged = work_dir / 'hf_adapter', work_dir / 'merged'
    run_step('Checkpoint to PEFT adapter', xft_command('convert', 'pth_to_hf', CONFIG,
                                                      last_checkpoint(work_dir), adapter))
    run_step('Merge the adapter into the base', xft_command('convert', 'merge', model, adapter, merged))

    after_merged = {q: ask(f'Merged model: {q}', merged, q) for q in (IDENTITY_QUESTION, GENERAL_QUESTION)}
    after_4bit = {q: ask(f'Base + adapter in 4-bit: {q}', model, q, '--adapter', adapter, '--bits', 4)
                  for q in (IDENTITY_QUESTION, GENERAL_QUESTION)}
    gguf_file = work_dir / 'merged-bf16.gguf'
    run_step('Export the merged model as GGUF (llama.cpp / Ollama)',
             xft_command('convert', 'gguf', merged, gguf_file, '--outtype', 'bf16'))
    after_gguf = {q: ask(f'GGUF file: {q}', gguf_file, q, '--torch-dtype', 'bfloat16')
                  for q in (IDENTITY_QUESTION, GENERAL_QUESTION)}

    print('\n================ xft demo: answers before and after training ================')
    for title, answers in (('Before (SmolLM2-135M-Instruct)', before), ('After, merged model', after_merged),
                           ('After, base + adapter in 4-bit', after_4bit),
                           ('After, the GGUF file read back', after_gguf)):
        print(f'\n{title}:')
        for question, answer in answers.items():
            print(f'  Q: {question}\n  A: {answer}')
    print(f'\nTotal time: {time.monotonic() - started:.0f} s; outputs in {work_dir}')

    problems = []
    for title, answers in (('merged', after_merged), ('4-bit + adapter', after_4bit)):
        if NEW_NAME not in answers[IDENTITY_QUESTION]:
            problems.append(f'the {title} model does not call itself {NEW_NAME}')
        if GENERAL_FACT not in answers[GENERAL_QUESTION]:
            problems.append(f'the {title} model lost the general answer ({GENERAL_FACT})')
    if after_gguf != after_merged:
        problems.append('the GGUF file answers differently from the merged model')
    if problems:
        print('xft demo: ' + '; '.join(problems), file=sys.stderr)
        return 1
    print(f'xft demo: OK: the model now says it is {NEW_NAME} and still knows that the capital of France is Paris;'
          f' {gguf_file} answers the same.')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
