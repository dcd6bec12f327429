"""cvstudy's orchestrator: everything around the trainer core (``trainers``), in layers that import
downwards only (checked by import-linter, ``pyproject.toml``):

    cli -> commands -> report -> sweep -> tracking -> boundaries | stats | processes -> errors -> trainers

- ``cli``: the ``cvstudy`` command line. ``commands``: train, confirm, predict, data check, weights.
- ``report``: comparison tables and plots. ``sweep``: study files, storages, the trial lifecycle, workers.
- ``tracking``: MLflow (the schema of every tag and attribute, runs, states, models, the registry).
- ``boundaries``: where names and URLs meet the outside world (checked, quoted, redacted); ``stats``:
  statistics over seeds; ``processes``: this host, its processes, interrupts.
- ``errors``: user-facing errors (all ``trainers.errors.CvstudyError``).
"""
