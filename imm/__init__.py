"""imm: LLM self-improvement with Iterative Model Merging: the loop's plumbing here, each stage in a subpackage.

At the top: the entrypoint (``main``), the loop (``loop``) and its stages (``stages``), the stage store,
locks, tracking, provenance and the models and methods they name. Below: ``data`` (training questions
and test sets), ``sampling`` (generate), ``grading`` (filter, pass@k), ``sft`` (train), ``merge``,
``analysis`` (what a model and its answers show beyond pass@k), ``plan`` (resources before a job)
and ``report`` (tables and figures from the runs).

Run the loop with ``python -m imm.main``; see README.md.
"""

__version__ = "0.1.0"
