"""No secret in a run, read back from the store: what the tracker logs (params, tags, run name, data sets,
artifacts) and what a real job writes (its MLflow run, config.yaml, Hydra's files) hold no secret; a tracking
address with credentials stops the job before anything is written.

    python -m pytest tests/integration/test_no_secrets.py
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import mlflow
import yaml

from imm.tracking import Tracker, TrackingConfig
from tests.integration.test_end_to_end import imm_main, runs_of

SECRET = "hunter2-s3cr3t"


def files_holding(folder: Path, secret: str = SECRET) -> list[Path]:
    """Every file under ``folder`` (the SQLite database and artifacts included) whose bytes hold ``secret``."""
    return [p for p in folder.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


def everything_logged(client, run_id: str, dst: Path) -> str:
    """A run's params, tags, name, data sets and every artifact, as one text to search."""
    run = client.get_run(run_id)
    local = mlflow.artifacts.download_artifacts(run_id=run_id, dst_path=str(dst), tracking_uri=client.tracking_uri)
    texts = [p.read_bytes().decode(errors="replace") for p in Path(local).rglob("*") if p.is_file()]
    inputs = [(d.dataset.name, d.dataset.source) for d in run.inputs.dataset_inputs]
    return json.dumps([run.data.params, run.data.tags, run.info.run_name, inputs, texts])


def test_nothing_the_tracker_writes_holds_a_secret(tmp_path):
    cfg = TrackingConfig(uri=f"sqlite:///{tmp_path}/mlflow.db", artifact_root=str(tmp_path / "art"), experiment="x")
    tracker = Tracker(cfg)
    params = {"model": {"hf_token": SECRET, "path": "/m"}, "data": {"url": f"https://u:{SECRET}@hub/x?sig={SECRET}"},
              "generate": {"max_new_tokens": 60}, "note": f"password={SECRET}"}
    tracker.start("job", f"nightly token={SECRET}", {"grid": f"api_key={SECRET} merge.alpha=0.5"}, params)
    tracker.datasets(SimpleNamespace(train=[{"question": "q", "answer": "1"}], tests={}, id_sets=[]),
                     f"https://u:{SECRET}@hub/data")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(params))
    (tmp_path / "rows.jsonl").write_text(json.dumps({"response": f"see http://me:{SECRET}@host"}) + "\n")
    (tmp_path / "notes.md").write_text(f"MLFLOW_TRACKING_PASSWORD={SECRET}\n")
    for name in ("config.yaml", "rows.jsonl", "notes.md"):
        tracker.artifact(tmp_path / name, "files")
    tracker.end()

    client = mlflow.MlflowClient(cfg.uri)
    logged = everything_logged(client, tracker.run_id, tmp_path / "back")
    assert SECRET not in logged
    assert files_holding(tmp_path / "art") == [] and files_holding(tmp_path / "mlflow.db") == []
    run = client.get_run(tracker.run_id)
    assert run.data.params["generate.max_new_tokens"] == "60" and run.data.params["model.path"] == "/m"
    assert run.data.params["model.hf_token"] == "***" and run.info.run_name == "nightly token=***"
    config = yaml.safe_load((tmp_path / "back" / "files" / "config.yaml").read_text())
    assert config["model"] == {"hf_token": "***", "path": "/m"}  # still the config, less the secret


def test_a_job_with_a_secret_in_its_config_writes_it_nowhere(tmp_path, monkeypatch):
    """A real job: its MLflow store, job folder (config.yaml) and Hydra's .hydra files; the MLflow credentials in
    the environment reach none of them."""
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", SECRET)
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", SECRET)
    imm_main(f'tracking.run_name="nightly password={SECRET}"', "run.iterations=1", outputs=tmp_path)
    assert files_holding(tmp_path) == []
    client, (run,) = runs_of(tmp_path)
    assert run.info.run_name == "nightly password=***" and run.data.tags["tracking.run_name"] == "nightly password=***"
    assert SECRET not in everything_logged(client, run.info.run_id, tmp_path / "back")
    (config,) = (tmp_path / "jobs").glob("*/config.yaml")
    assert yaml.safe_load(config.read_text())["tracking"]["run_name"] == "nightly password=***"


def test_a_tracking_uri_with_a_password_stops_the_job_before_anything_is_written(tmp_path):
    single = imm_main(f"tracking.uri=http://imm:{SECRET}@127.0.0.1:5000", outputs=tmp_path / "single", check=False)
    grid = imm_main("-m", "method=imm,vanilla", f'tracking.uri="https://login1:5000/?token={SECRET}"',
                    outputs=tmp_path / "grid", check=False)
    for out, where in ((single, "tracking.uri=http://***@127.0.0.1:5000"), (grid, "token=***")):
        assert out.returncode != 0
        said = out.stdout + out.stderr
        assert where in said and "MLFLOW_TRACKING_PASSWORD" in said and "~/.mlflow/credentials" in said
        assert SECRET not in said  # not even echoed back
    assert not (tmp_path / "single").exists()  # nothing written: no Hydra folder, no job folder, no store
    assert files_holding(tmp_path) == [] and not list(tmp_path.rglob("config.yaml"))
