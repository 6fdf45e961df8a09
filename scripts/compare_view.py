"""Checks, in a real browser, what MLflow's compare view of a grid opens on: the runs' α and method against final/id.

Starts ``mlflow ui`` on the store (127.0.0.1, a free port), opens the compare page of the experiment's job runs
(a sweep's, or all of them) in headless Chromium, and reads the parallel-coordinates plot's axes: it must open on
``merge.alpha``, ``method.name`` and ``final/id`` (params that differ between the runs, then their first metric),
and show ``final/ood`` once it is picked under Metrics, as a user would. Prints the axes, writes a screenshot,
exits 1 when one is missing.

    python -m imm.main -m method=imm,vanilla merge.alpha=0.1,0.5,0.9
    python scripts/compare_view.py --store outputs/mlflow.db --out outputs/compare_view

Needs Chromium, its driver and Selenium: ``apt-get install -y chromium chromium-driver`` (Debian) and
``pip install selenium`` (or ``pip install -e ".[browser]"``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator
from urllib.request import urlopen

OPENS_ON = ("merge.alpha", "method.name", "final/id")  # the plot's axes before any click
PICKED = "final/ood"  # the metric a user adds under Metrics
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # imm, from this checkout


def compare_url(base: str, experiment_id: str, run_ids: list[str]) -> str:
    """The page MLflow's Compare button opens for these runs."""
    return (f"{base}/#/compare-runs?runs={json.dumps(run_ids, separators=(',', ':'))}"
            f"&experiments={json.dumps([experiment_id])}")


def job_runs(uri: str, experiment: str, sweep_id: str = "") -> tuple[str, list[str]]:
    """The experiment's id and its finished job runs (a sweep's only, when named; no sweep parent runs)."""
    import mlflow

    from imm.report.tables import RunRecord, in_sweep
    from imm.tracking import SWEEP_KIND

    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise SystemExit(f"no experiment {experiment!r} in {uri}")
    runs = [RunRecord(r.info.run_id, tags=r.data.tags)
            for r in client.search_runs([exp.experiment_id], "attributes.status = 'FINISHED'")]
    return exp.experiment_id, [r.run_id for r in runs
                               if r.tags.get("kind") != SWEEP_KIND and (not sweep_id or in_sweep(r, sweep_id))]


@contextmanager
def mlflow_ui(uri: str, log: Path) -> Iterator[str]:
    """``mlflow ui`` on 127.0.0.1 and a free port, stopped (its whole process group) on exit; yields its address."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mlflow_cli = shutil.which("mlflow") or "mlflow"
    with log.open("w") as out:
        proc = subprocess.Popen([mlflow_cli, "ui", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(port)],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                urlopen(f"{base}/health", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise SystemExit(f"mlflow ui did not start:\n{log.read_text()[-2000:]}")
                time.sleep(0.5)
        yield base
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def browser():
    """Headless Chromium through Selenium, with the system's chromedriver when there is one."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1600,1100"):
        opts.add_argument(arg)
    if chromium := shutil.which("chromium") or shutil.which("chromium-browser"):
        opts.binary_location = chromium
    driver = shutil.which("chromedriver")
    return webdriver.Chrome(options=opts, service=Service(driver) if driver else None)


def axes_shown(url: str, screenshot: Path, timeout: float = 90) -> tuple[list[str], list[str]]:
    """The plot's axis titles as the page opens, and after picking ``PICKED`` under Metrics (as they opened when
    the runs have no such metric)."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = browser()
    try:
        driver.get(url)

        def axes(_=None) -> list[str]:
            return [e.text for e in driver.find_elements(By.CSS_SELECTOR, ".pcp-plot text.axis-title")]

        WebDriverWait(driver, timeout).until(lambda _: axes())
        time.sleep(1)  # the plot draws params and metrics in one pass; a second read sees them all
        opened = axes()
        metrics = driver.find_elements(By.CSS_SELECTOR, ".du-bois-light-select-multiple")[1]  # Parameters, Metrics
        metrics.click()
        metrics.find_element(By.CSS_SELECTOR, "input").send_keys(PICKED)
        option = f".du-bois-light-select-item-option[title='{PICKED}']"
        try:
            WebDriverWait(driver, 10).until(lambda _: driver.find_elements(By.CSS_SELECTOR, option))
            driver.find_element(By.CSS_SELECTOR, option).click()
            WebDriverWait(driver, timeout).until(lambda _: PICKED in axes())
        except TimeoutException:  # not offered under Metrics: no run logged it
            pass
        picked = axes()
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(screenshot))
        return opened, picked
    finally:
        driver.quit()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", default="outputs/mlflow.db", help="the SQLite store (or a sqlite:/// URI)")
    ap.add_argument("--experiment", default="imm-testbed-testbed")
    ap.add_argument("--sweep-id", default="", help="only this sweep's runs (default: every finished job run)")
    ap.add_argument("--out", type=Path, default=Path("outputs/compare_view"), help="screenshot and mlflow ui log")
    args = ap.parse_args(argv)
    uri = args.store if "://" in args.store else f"sqlite:///{Path(args.store).resolve()}"
    exp_id, runs = job_runs(uri, args.experiment, args.sweep_id)
    if len(runs) < 2:
        raise SystemExit(f"{len(runs)} finished job runs in {args.experiment}: the compare view needs two or more")
    args.out.mkdir(parents=True, exist_ok=True)
    with mlflow_ui(uri, args.out / "mlflow-ui.log") as base:
        url = compare_url(base, exp_id, runs)
        opened, picked = axes_shown(url, args.out / "compare.png")
    print(f"compare view of {len(runs)} runs: {url}\nopens on: {', '.join(opened)}\n"
          f"after picking {PICKED}: {', '.join(picked)}\nscreenshot: {args.out / 'compare.png'}")
    missing = [a for a in OPENS_ON if a not in opened] + ([PICKED] if PICKED not in picked else [])
    if missing:
        print(f"missing from the plot: {', '.join(missing)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
