"""xft: LLM fine-tuning in the mmengine style."""
__version__ = '0.1.0'
