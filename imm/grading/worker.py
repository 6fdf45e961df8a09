"""One grading worker process (started by :mod:`imm.grading.pool`): checks answers under an alarm.

It reads one JSON message ``[answer, item, timeout]`` a line on stdin and writes ``[correct, timed
out]`` a line; library output goes to stderr so it cannot mix with the answers.
"""

from __future__ import annotations

import json
import os
import signal
import sys

from imm.grading.checks import check_limited, latex_equal


def serve() -> None:
    """A worker's loop: one JSON message [answer, item, timeout] a line in, [correct, timed out] out."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_DFL)
    out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)  # a library's print goes to stderr, not into the answers
    latex_equal("1", "1")  # build math-verify's parsers before the first timed check
    out.write(b'"ready"\n')
    for line in sys.stdin.buffer:
        pred, item, timeout = json.loads(line)
        out.write(json.dumps(check_limited(pred, item, timeout)).encode() + b"\n")
