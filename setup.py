from pathlib import Path

from setuptools import find_packages, setup


def read_requirements(name):
    lines = (Path(__file__).parent / 'requirements' / name).read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith('#')]


setup(
    name='xft',
    version='0.1.0',
    description='LLM fine-tuning in the mmengine style: XTuner-compatible configs, LoRA/QLoRA/full.',
    long_description=(Path(__file__).parent / 'README.md').read_text(encoding='utf-8'),
    long_description_content_type='text/markdown',
    packages=find_packages(include=['xft', 'xft.*']),
    package_data={'xft': ['data/*.json', 'data/*.md', 'engine/deepspeed/*.json']},
    python_requires='>=3.10',
    install_requires=read_requirements('runtime.txt'),
    extras_require={'test': read_requirements('test.txt')},
    entry_points={'console_scripts': ['xft = xft.cli:main']},
    license='Apache-2.0',
)
