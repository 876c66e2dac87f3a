"""The data pipeline: load -> map_fn -> template -> encode -> pack -> collate.

=========================  ============================================================
step                       module
=========================  ============================================================
load                       ``load.py``       files, folders, hub names -> Dataset
map                        ``map_fns/``      raw row -> {'conversation': [...]}
template                   ``map_fns/template.py`` + ``xft/utils/templates.py``
encode (text -> ids)       ``encode.py``     the one place samples become token ids
pack                       ``packing.py``
collate                    ``collate_fns/``
all steps, in order        ``pipeline.py``   process_hf_dataset
its options, checked once  ``options.py``    PipelineOptions (and the cache key)
InternLM repo folders      ``intern_repo.py`` .bin token files, .json messages, packed
=========================  ============================================================
"""
from .concat_dataset import ConcatDataset
from .pipeline import process_hf_dataset

__all__ = ['process_hf_dataset', 'ConcatDataset']
