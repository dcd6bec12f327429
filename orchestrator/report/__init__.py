"""Reports across trials and studies (``cvstudy report``).

- ``data``: each study's trials and runs, read once and cross-checked (``load_study_data``).
- ``confirmation``: a study's confirmation read back from MLflow, and its tables.
- ``tables`` and ``figures``: the rendering.
- ``writer``: the HTML, Markdown and CSV files and the terminal tables (``report``).
"""
