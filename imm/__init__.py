"""imm: LLM self-improvement with Iterative Model Merging.

Run the loop with ``python -m imm.main``; see README.md.
"""

__version__ = "0.1.0"
