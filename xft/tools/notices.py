"""Library notices that are not the user's business, silenced by the convert and chat tools.

bitsandbytes 0.50 logs a warning at import on CPUs with avx512bf16 that an optional hub
kernel package (``kernels``) is missing; nothing is wrong, and the line would bury a one-line
error. Call ``quiet_library_notices()`` first thing in a command's ``main``.
"""
import logging

QUIET_LOGGERS = ('bitsandbytes.backends.cpu.ops',)


def quiet_library_notices():
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
