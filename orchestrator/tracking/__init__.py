"""MLflow bookkeeping, the layer every command writes and reads runs through.

- ``schema``: every tag key, run role, outcome, Optuna attribute and search filter, named once.
- ``uris``: tracking and storage URIs (defaults, SQLite paths, redaction, UI links).
- ``client``: ``Tracker`` and ``TrackedRun``: experiments, runs that always end terminal, what a run records.
- ``fitting``: ``fit_and_log`` and a configuration's seeds: training with every epoch logged.
- ``states``: resume states in a run's artifacts.
- ``models``: checkpoints as MLflow logged models, their deletion, the model registry.
- ``artifacts``: the one use of MLflow's artifact-repository registry.
- ``pyfunc_model``: the code of every logged model.
"""
