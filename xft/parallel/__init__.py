"""Distributed pieces beyond mmengine's own: ``xft.parallel.sequence`` holds sequence
parallelism (a row split across ranks, XTuner's ``sequence_parallel_size``)."""
