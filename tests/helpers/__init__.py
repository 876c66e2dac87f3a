"""Plain helper modules of the test suite, imported as ``helpers.<module>``.

pytest puts ``tests/`` on ``sys.path`` (it holds no ``__init__.py``), so test modules import
``from helpers.training import ...``; a training subprocess gets ``tests/`` on its
``PYTHONPATH`` (``helpers.training.train_env``) so that configs can import test-only hooks.
Fixtures are registered in ``tests/conftest.py``, which calls into these modules.
"""
