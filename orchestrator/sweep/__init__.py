"""Sweeps (``cvstudy sweep``): Optuna studies whose trials train through the shared core.

- ``study``: study files (``StudySpec``) and the packaged studies.
- ``storage``: Optuna storages, the storage-wide ask lock, heartbeats.
- ``trials``: the trial lifecycle: counting, ranking, retries, recovery, checkpoint retention.
- ``worker``: one worker's trials on one device; ``supervise``: one process per device.
- ``slurm``: the workers as a SLURM job array; ``display``: the live progress display.
- ``manager``: ``sweep``, which checks the input, creates the study and runs or launches workers.
"""
