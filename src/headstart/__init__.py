"""headstart: fine-tune a pretrained model on a small labelled data set."""

__version__ = "0.1.0"
