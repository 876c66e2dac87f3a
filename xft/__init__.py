"""xft: LLM fine-tuning in the mmengine style.

The package is built in layers; a module imports only from its own layer and the layers
below it, never from one above (``tests/test_layers.py`` checks every import, also those
inside functions). From the bottom:

==========  ===================================================================
utils       constants, errors, env flags, prompt templates; ``xft.data`` (shipped files)
registry    ``BUILDER`` and ``MAP_FUNC``, ``register_map_fn``
parallel    distributed pieces beyond mmengine's own (sequence parallelism)
dataset     load -> map -> template -> encode -> pack -> collate
model       SupervisedFinetune, LoRA/QLoRA, kernels, export of a loaded checkpoint
evaluation  metrics for a config's val/test evaluator (MMLU)
engine      config and checkpoint loading, the training loop, hooks, loss curves
tools       the code of every command (``xft VERB``)
cli         ``xft/cli.py``, which only dispatches to tools
==========  ===================================================================
"""
__version__ = '0.1.0'

# The layers, bottom first: top-level names under xft/ (a package or a module without .py).
# ``xft/__init__.py`` itself sits in the lowest layer.
LAYERS = (
    ('utils', 'data'),
    ('registry',),
    ('parallel',),
    ('dataset',),
    ('model',),
    ('evaluation',),
    ('engine',),
    ('tools',),
    ('cli',),
)
