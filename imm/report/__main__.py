"""``python -m imm.report``: see :mod:`imm.report.cli`."""

from imm.report.cli import main

main()
