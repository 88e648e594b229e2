"""Analysis: runs (Hydra dirs or W&B) -> one tidy DataFrame -> the paper's tables and figures.

``python analysis/make_figures.py`` is the one command; each table/figure is a function
``(DataFrame) -> Figure | str`` in :mod:`analysis.tables` and :mod:`analysis.figures`.
"""
