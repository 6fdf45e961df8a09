"""``python -m imm.analysis``: see :mod:`imm.analysis.cli`."""

from imm.analysis.cli import main

main()
