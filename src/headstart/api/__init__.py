"""The Python API: a function per command that trains or uses a model.

- :func:`fit` builds the target model (source minus its output layer plus a new head),
  applies the plan, trains, and writes a run dir; :func:`pretrain` trains a source from
  scratch (``file:RUN`` then uses it); ``fit --resume`` continues a stopped one.
- :func:`evaluate` and :func:`predict` use a finished run dir and nothing else.
- :class:`HeadstartClassifier` wraps them in scikit-learn's estimator style.
- :func:`embed` and :func:`adapt` are the ``embed`` and ``adapt`` commands.

The package exports nothing itself: ``headstart`` exports the public names, and each
module here is named after its command (``headstart.api.fit`` is the module).
"""
