"""Weights files: resolving ``--weights``, downloading into the cache, reading safely."""
