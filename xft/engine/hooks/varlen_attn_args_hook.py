"""VarlenAttnArgsToMessageHubHook: accepted from XTuner configs; it has nothing to do here.

XTuner's configs add it when ``use_varlen_attn = True``. There it popped each packed batch's
``cumulative_len`` and ``max_seqlen`` into a global ``MessageHub`` for its monkey-patched
attention to read back. In xft the model reads them from the batch itself
(``xft.model.packed_attention``): packed rows always get attention that stops at sample
boundaries, with or without ``use_varlen_attn``. The hook leaves the batch untouched and says
so once in the log.

Config (XTuner's)::

    custom_hooks += [dict(type=VarlenAttnArgsToMessageHubHook)]
"""
from mmengine.hooks import Hook
from mmengine.logging import print_log

NOTHING_TO_DO = ('VarlenAttnArgsToMessageHubHook: nothing to do in xft: packed rows always get attention '
                 'that stops at sample boundaries, read from each batch (xft.model.packed_attention)')


class VarlenAttnArgsToMessageHubHook(Hook):
    """XTuner's hook, kept so its configs load; it only logs that it has nothing to do."""

    # mmengine's table: lower runs first. NORMAL: it only writes one log line.
    priority = 'NORMAL'

    def before_run(self, runner) -> None:
        print_log(NOTHING_TO_DO, logger='current')
