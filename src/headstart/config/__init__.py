"""Configuration: each command's options, and the training configuration made from them.
Kept free of heavy imports, so that ``headstart --help`` and flag errors are quick."""
