"""dytrim: long-tailed semi-supervised image classification in PyTorch."""

__version__ = "0.1.0"
