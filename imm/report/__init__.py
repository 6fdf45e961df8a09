"""The report: the paper's tables and figures from the runs in MLflow (``python -m imm.report``).

- :mod:`imm.report.cli`              the command: select runs, write tables and plots, log them
- :mod:`imm.report.tables`           runs → records → α table, methods summary, per-iteration rows
- :mod:`imm.report.plots`            per-iteration curves (Figs 6/7) and pass@k (Figs 8/13)
- :mod:`imm.report.baselines`        Table 5: every method and SFT intervention at one iteration
- :mod:`imm.report.stages`           every evaluated stage of every method line
- :mod:`imm.report.schedules`        the merge-schedule grid and KL against OOD
- :mod:`imm.report.paired`           paired differences with intervals from per-item results
- :mod:`imm.report.intervals`        intervals over runs valid at their n, and the minimum n for each
- :mod:`imm.report.reasoning`        step classes and transitions as rows
- :mod:`imm.report.mechanism_rates`  what the models write out of domain, per stage
- :mod:`imm.report.render`           markdown, LaTeX and CSV; :mod:`imm.report.html` one page of it all
- :mod:`imm.report.folders`          run records from job folders (no tracking)
- :mod:`imm.report.sweep`            the report of one sweep when it ends
- :mod:`imm.report.console`          the end-of-job table and plot of one run
"""
