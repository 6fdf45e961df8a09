"""Grading that cannot hang: thousands of LaTeX and multiple-choice checks through the worker pool
while other threads run torch work, the pattern that once deadlocked a fork-per-call pool."""

import faulthandler
import threading
import time

from imm.grading import pool as grading_pool
from imm.grading.checks import grade_report

OPTS = ["12", "15", "18", "21"]
# (text, item, expected): LaTeX through math-verify, choices by letter and by value, numeric in process
ITEMS = [
    ("The answer is $\\frac{1}{2}$.", {"answer": "0.5", "kind": "latex"}, True),
    ("The answer is 2\\sqrt{2}", {"answer": "\\sqrt{8}", "kind": "latex"}, True),
    ("The answer is [2,5)", {"answer": "[2,5)", "kind": "latex"}, True),
    ("The answer is \\frac{2}{3}", {"answer": "-\\frac{2}{3}", "kind": "latex"}, False),
    ("The answer is (B)", {"answer": "B", "kind": "choice", "choices": OPTS}, True),
    ("The answer is 18", {"answer": "C", "kind": "choice", "choices": OPTS}, True),
    ("The answer is Option D", {"answer": "A", "kind": "choice", "choices": OPTS}, False),
    ("The answer is b ) 15", {"answer": "B", "kind": "choice", "choices": OPTS}, True),
    ("The answer is 1,234.", {"answer": "1234"}, True),
]
CALLS = 400  # x 8 pooled checks = 3,200
BOUND_S = 240  # far above the ~20 s this takes on a loaded 2-core machine: only a hang reaches it


def torch_work(stop: threading.Event, done: list) -> None:
    import torch

    a = torch.randn(256, 256)
    while not stop.is_set():
        a = torch.tanh(a @ a / 16)
        done.append(1)


def test_grading_under_torch_threads_never_hangs():
    import torch

    torch.set_num_threads(2)
    texts, items, expected = (list(x) for x in zip(*ITEMS))
    stop, done = threading.Event(), []
    threads = [threading.Thread(target=torch_work, args=(stop, done), daemon=True) for _ in range(2)]
    faulthandler.dump_traceback_later(BOUND_S, exit=True)  # a hang ends the run with every stack printed
    try:
        for t in threads:
            t.start()
        start, replaced = time.perf_counter(), grading_pool.shared_pool(2).replaced
        for _ in range(CALLS):
            out = grade_report(texts, items, workers=2, timeout=5.0)
            assert out.correct == expected and out.timeouts == 0
        took = time.perf_counter() - start
    finally:
        faulthandler.cancel_dump_traceback_later()
        stop.set()
        for t in threads:
            t.join()
    assert grading_pool.shared_pool(2).replaced == replaced  # no worker needed killing
    assert len(done) > 0  # the torch threads really ran alongside
    print(f"{CALLS} calls, {CALLS * 8} pooled checks in {took:.1f} s ({took / CALLS * 1000:.1f} ms a call); "
          f"{len(done)} matmuls alongside")
