"""The commands beside sweeps and reports: ``train`` (one run, and ``--resume``), ``confirm`` (winners
retrained with fresh seeds), ``predict``, ``datacheck`` (``data check``) and ``weights``."""
