"""The report: the paper's tables and figures from the runs in MLflow (``python -m imm.report``).

- :mod:`imm.report.cli`      the command: select runs, write tables and plots, log them
- :mod:`imm.report.tables`   runs → records → α table, methods summary, per-iteration rows
- :mod:`imm.report.plots`    per-iteration curves (Figs 6/7) and pass@k (Figs 8/13)
- :mod:`imm.report.console`  the end-of-job table and plot of one run
"""
