"""Is the Hugging Face hub there? Asked once, quickly, before anything waits on it.

Left alone, transformers and datasets retry an unreachable hub for about 50 s (five retries with
back-off, twice) and then raise a chained traceback. Commands ask here first:

- ``hub_offline()``: the user switched the hub off (``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE``);
- ``probe_hub(name)``: one HEAD request to the hub's API for that repository, through
  huggingface_hub's own HTTP client (so ``HF_ENDPOINT`` mirrors, proxies and a login apply),
  with a short timeout and no retries: None when it answers, else the reason it could not;
- ``go_offline()``: after a failed probe, switch this process (and its workers) to offline mode,
  so that files already in the local cache load at once instead of after the retries.
"""
import functools
import os
import re

from xft.utils.env import env_flag

PROBE_TIMEOUT_S = 5
# What a hub repository id looks like: 'name' or 'org/name'.
_HUB_ID = re.compile(r'[\w.\-]+(/[\w.\-]+)?')


def looks_like_hub_id(name: str) -> bool:
    """'internlm/internlm-7b' yes; '/data/model', './model', '~/model', 'a/b/c' no.

    >>> looks_like_hub_id('internlm/internlm-7b'), looks_like_hub_id('/tmp/model')
    (True, False)
    """
    return bool(_HUB_ID.fullmatch(name)) and not name.startswith('.')


def hub_offline(datasets: bool = True) -> bool:
    """True when the hub is switched off: huggingface_hub's offline constant (read when it was
    imported), or ``HF_HUB_OFFLINE`` (and for datasets ``HF_DATASETS_OFFLINE``) set since."""
    return offline_reason(datasets) is not None


def offline_reason(datasets: bool = True):
    """'offline: HF_HUB_OFFLINE=1' (the switch that is on), or None when the hub is on."""
    from huggingface_hub import constants
    for name in ('HF_HUB_OFFLINE', 'TRANSFORMERS_OFFLINE') + (('HF_DATASETS_OFFLINE',) if datasets else ()):
        if env_flag(name):
            return f'offline: {name}=1'
    return 'offline: HF_HUB_OFFLINE' if constants.HF_HUB_OFFLINE else None


def is_cached(repo_id: str, filename: str = 'config.json', repo_type: str = 'model') -> bool:
    """True when ``filename`` of ``repo_id`` is in the local Hugging Face cache."""
    from huggingface_hub import try_to_load_from_cache
    try:
        return isinstance(try_to_load_from_cache(repo_id, filename, repo_type=repo_type), str)
    except Exception:  # an id the cache layout cannot hold: not cached
        return False


class HubMissing(Exception):
    """The hub answered: no repository of that name."""


@functools.lru_cache(maxsize=None)
def probe_hub(repo_id: str, repo_type: str = 'model'):
    """None when the hub answers for ``repo_id``; else a short reason it cannot be reached.

    Raises HubMissing when the hub answers that there is no such repository.
    """
    from huggingface_hub import constants
    from huggingface_hub.utils import build_hf_headers, get_session
    kind = 'datasets' if repo_type == 'dataset' else 'models'
    url = f'{constants.ENDPOINT}/api/{kind}/{repo_id}'
    try:
        response = get_session().head(url, headers=build_hf_headers(), timeout=PROBE_TIMEOUT_S)
    except Exception as error:  # connection refused, DNS, timeout, proxy: all mean "not reachable"
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        return f'{constants.ENDPOINT}: {reason}'
    if response.status_code == 404:
        raise HubMissing(f'{constants.ENDPOINT} has no {repo_type} named {repo_id!r}')
    if response.status_code >= 500:
        return f'{constants.ENDPOINT}: HTTP {response.status_code}'
    return None  # 200, or 401/403 for a private or gated repository: the hub is there


def go_offline() -> None:
    """Offline mode for the rest of this process and the processes it starts.

    huggingface_hub (and so transformers) and datasets read their offline switch when they are
    imported; their module constants are what their calls check, so both are set here too.
    """
    os.environ['HF_HUB_OFFLINE'] = '1'
    os.environ['HF_DATASETS_OFFLINE'] = '1'
    from huggingface_hub import constants
    constants.HF_HUB_OFFLINE = True
    try:
        import datasets.config
    except ImportError:
        return
    datasets.config.HF_HUB_OFFLINE = datasets.config.HF_DATASETS_OFFLINE = True
