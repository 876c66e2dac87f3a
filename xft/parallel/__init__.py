"""Distributed pieces beyond mmengine's own; ``xft.parallel.sequence`` holds the names XTuner's
configs import for sequence parallelism (size 1 only, for now)."""
