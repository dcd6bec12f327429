"""Each command's entry point: ``sweep``, ``report``, ``train`` (one run, and ``--resume``), ``confirm``
(winners retrained with fresh seeds), ``predict``, ``compare``, ``datacheck`` (``data check``),
``weights`` and ``storage``."""
