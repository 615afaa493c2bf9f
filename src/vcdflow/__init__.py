"""vcdflow: one harness for training-free contrastive decoding in LVLMs."""

__version__ = "0.1.0"
