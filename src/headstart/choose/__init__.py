"""Choosing how to transfer, and proving it: transferability scores, ``rank``,
``recommend``, ``compare`` and the run reports."""
