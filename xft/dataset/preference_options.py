"""The options of ``build_preference_dataset``, checked once (one ConfigError line each).

XTuner 0.1.23's arguments keep their names and meaning (``is_dpo``, ``is_reward``,
``reward_token_id``, ``num_proc``, ``use_varlen_attn``, ``max_packed_length``,
``shuffle_before_pack``); xft adds ``process_hf_dataset``'s ``template_map_fn``,
``max_dataset_length``, ``seed`` and ``split``, and a held-out share of the pairs for
evaluation (``held_out``, ``subset``).
"""
import os
from dataclasses import dataclass, fields
from typing import Optional

from xft.utils.errors import ConfigError

from .options import build_tokenizer, resolve_map_fn, resolve_template_map_fn

SUBSETS = ('train', 'held_out')


@dataclass
class PreferenceOptions:
    """The checked arguments of ``build_preference_dataset`` (the dataset itself aside).

    Attributes:
        tokenizer: a tokenizer or a config dict building one.
        max_length: longest sequence (prompt + one answer); longer ones are cut at the end.
        dataset_map_fn: raw row -> ``{'prompt', 'chosen', 'rejected'}`` (OpenAI messages); a
            function, a MAP_FUNC name or a dotted path. None: rows are in that format already.
        template_map_fn: ``dict(type=template_map_fn_factory, template=prompt_template)``, as for
            ``process_hf_dataset``. None: the tokenizer's own chat_template renders the pairs
            (XTuner's behaviour).
        is_dpo, is_reward: exactly one is True. DPO and ORPO train on the answers; a reward
            model reads one score per sequence.
        reward_token_id: with is_reward, the token appended to every sequence where its score is
            read; -1 reads it at the answer's last trained token (the template's end of turn).
        num_proc: processes for the map and encode steps; ``map_num_proc`` (process_hf_dataset's
            name for it) is accepted too, and wins when given.
        use_varlen_attn: pack whole pairs into rows of ``max_packed_length`` tokens (XTuner's
            switch); sequences in a row never attend to each other.
        max_packed_length: packed row length; at least ``2 * max_length``, so every pair fits.
        shuffle_before_pack: shuffle the pairs (seeded) before packing.
        max_dataset_length: keep this many rows, chosen at random (seeded) before mapping.
        held_out: set aside this share (0 < x < 1) or number of rows (seeded) for evaluation;
            ``subset`` picks which part this dataset is.
        subset: 'train' (the rows not held out) or 'held_out'.
        seed: seed for sampling, holding out and shuffling.
        split: the split to take from a DatasetDict or a ``data_files`` dict.
    """
    tokenizer: object
    max_length: int
    dataset_map_fn: object = None
    template_map_fn: object = None
    is_dpo: bool = True
    is_reward: bool = False
    reward_token_id: int = -1
    num_proc: int = 32
    use_varlen_attn: bool = False
    max_packed_length: int = 16384
    shuffle_before_pack: bool = True
    max_dataset_length: Optional[int] = None
    held_out: float = 0
    subset: str = 'train'
    seed: int = 0
    split: str = 'train'
    map_num_proc: Optional[int] = None

    def __post_init__(self):
        self._check()
        if self.map_num_proc is not None:
            self.num_proc = self.map_num_proc
        self.tokenizer = build_tokenizer(self.tokenizer)
        self.dataset_map_fn = resolve_map_fn(self.dataset_map_fn)
        self.template_map_fn = resolve_template_map_fn(self.template_map_fn)
        self.num_proc = max(1, min(int(self.num_proc or 1), os.cpu_count() or 1))
        if self.is_reward and self.reward_token_id >= len(self.tokenizer):
            raise ConfigError(f'reward_token_id={self.reward_token_id} is not a token of the '
                              f'tokenizer ({len(self.tokenizer)} tokens)')

    def _check(self):
        if not isinstance(self.max_length, int) or isinstance(self.max_length, bool) \
                or self.max_length < 2:
            raise ConfigError(f'max_length must be an integer >= 2, got {self.max_length!r}')
        if bool(self.is_dpo) == bool(self.is_reward):
            raise ConfigError(f'set exactly one of is_dpo and is_reward (got is_dpo={self.is_dpo}, '
                              f'is_reward={self.is_reward})')
        if not isinstance(self.reward_token_id, int) or self.reward_token_id < -1:
            raise ConfigError(f'reward_token_id must be a token id, or -1 for the answer\'s last '
                              f'token; got {self.reward_token_id!r}')
        if self.use_varlen_attn and self.max_packed_length < 2 * self.max_length:
            raise ConfigError(f'max_packed_length={self.max_packed_length} cannot hold a pair of two '
                              f'max_length={self.max_length} sequences; use at least '
                              f'{2 * self.max_length} (XTuner: max_length * 2)')
        if self.subset not in SUBSETS:
            raise ConfigError(f'subset must be one of {", ".join(SUBSETS)}, got {self.subset!r}')
        held_out = self.held_out
        if isinstance(held_out, bool) or not isinstance(held_out, (int, float)) or held_out < 0 \
                or (isinstance(held_out, float) and held_out >= 1):
            raise ConfigError(f'held_out must be a share 0 <= x < 1 or a number of rows, got '
                              f'{held_out!r}')
        if self.subset == 'held_out' and not held_out:
            raise ConfigError("subset='held_out' needs held_out > 0 (the share of rows to set aside)")
        limit = self.max_dataset_length
        if limit is not None and (not isinstance(limit, int) or limit < 1):
            raise ConfigError(f'max_dataset_length must be a positive integer or None, got {limit!r}')

    @property
    def packs(self) -> bool:
        """Training rows are packed; held-out pairs stay one per row, in order."""
        return bool(self.use_varlen_attn) and self.subset == 'train'

    @classmethod
    def from_arguments(cls, **kwargs):
        known = [option.name for option in fields(cls)]
        unknown = sorted(set(kwargs) - set(known))
        if unknown:
            raise ConfigError(f'build_preference_dataset got unknown arguments: {", ".join(unknown)} '
                              f'(it takes {", ".join(known)})')
        missing = [name for name in ('tokenizer', 'max_length') if name not in kwargs]
        if missing:
            raise ConfigError(f'build_preference_dataset needs {" and ".join(missing)}')
        return cls(**kwargs)
