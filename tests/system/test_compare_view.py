"""MLflow's compare view of a real grid, in a real browser (scripts/compare_view.py): `mlflow ui` on the grid's
store, the compare page of its runs in headless Chromium, whose parallel-coordinates plot must open on α, the
method and final/id and show final/ood once picked. Skipped where Chromium, chromedriver or Selenium is missing
(apt-get install -y chromium chromium-driver; pip install selenium).

    python -m pytest tests/system/test_compare_view.py
"""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from tests.integration.test_end_to_end import ROOT, imm_main

pytest.importorskip("selenium", reason="pip install selenium (or the browser extra)")
if not (shutil.which("chromium") or shutil.which("chromium-browser")) or not shutil.which("chromedriver"):
    pytest.skip("no Chromium or chromedriver (apt-get install -y chromium chromium-driver)", allow_module_level=True)


def test_the_compare_view_opens_on_alpha_method_and_the_final_model(tmp_path):
    imm_main("-m", "method=imm,vanilla", "merge.alpha=0.1,0.9", "run.iterations=1", outputs=tmp_path)
    out = subprocess.run([sys.executable, "scripts/compare_view.py", "--store", str(tmp_path / "mlflow.db"),
                          "--out", str(tmp_path / "view")], cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "compare view of 4 runs" in out.stdout
    assert "opens on: merge.alpha, method.name, final/id\n" in out.stdout
    assert "after picking final/ood: merge.alpha, method.name, final/id, final/ood\n" in out.stdout
    assert (tmp_path / "view" / "compare.png").stat().st_size > 10_000
