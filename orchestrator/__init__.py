"""cvstudy's orchestrator: everything around the trainer core (``trainers``), in layers that import
downwards only (checked by import-linter, ``pyproject.toml``):

    cli  ->  commands  ->  report  ->  sweep  ->  tracking  ->  errors | stats | processes  ->  trainers

- ``cli``: the ``cvstudy`` command line. ``commands``: train, confirm, predict, data check, weights.
- ``report``: comparison tables and plots. ``sweep``: study files, storages, the trial lifecycle, workers.
- ``tracking``: MLflow (the schema of every tag and attribute, runs, states, models, the registry).
- ``errors``: user-facing errors (all ``trainers.errors.CvstudyError``); ``stats``: statistics over
  seeds; ``processes``: this host and its processes.
"""
