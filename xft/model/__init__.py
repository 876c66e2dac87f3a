from .sft import SupervisedFinetune

__all__ = ['SupervisedFinetune']
