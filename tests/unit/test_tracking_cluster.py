"""MLflow from many SLURM jobs: a loopback URI or SQLite on a shared filesystem is refused with the fix,
before anything is logged (imm/tracking.py); tests/integration/test_tracking_server.py checks that a
server's basic-auth credentials reach it from the environment.

    python -m pytest tests/unit/test_tracking_cluster.py
"""

from __future__ import annotations

import pytest

from imm.tracking import TrackingConfig, Tracker, cluster_refusal, filesystem

MOUNTS = """overlay / overlay rw 0 0
server:/export/home /home nfs4 rw 0 0
/dev/sda1 /scratch ext4 rw 0 0
lustre@o2ib:/fs /lustre lustre rw 0 0
"""


def cfg(uri: str) -> TrackingConfig:
    return TrackingConfig(uri=uri, artifact_root="mlflow-artifacts:/imm", experiment="imm-test")


def test_filesystem_is_the_longest_mount_above_the_path():
    from pathlib import Path

    assert filesystem(Path("/home/me/outputs/mlflow.db"), MOUNTS) == "nfs4"
    assert filesystem(Path("/scratch/mlflow.db"), MOUNTS) == "ext4"
    assert filesystem(Path("/homework/mlflow.db"), MOUNTS) == "overlay"  # /home is not a prefix of /homework


@pytest.mark.parametrize("uri,refused", [
    ("http://127.0.0.1:5000", "loopback"), ("http://localhost:5000", "loopback"), ("http://[::1]:5000", "loopback"),
    ("sqlite:////home/me/outputs/mlflow.db", "shared filesystem (nfs4)"),
    ("sqlite:////lustre/proj/mlflow.db", "shared filesystem (lustre)"),
    ("sqlite:////scratch/mlflow.db", ""), ("http://login1.cluster:5000", ""), ("http://10.1.2.3:5000", "")])
def test_stores_other_nodes_cannot_use_are_refused_with_the_fix(uri, refused):
    why = cluster_refusal(cfg(uri), MOUNTS)
    assert (refused in why and "MLFLOW_TRACKING_URI" in why and "basic-auth" in why) if refused else why == ""


def test_a_slurm_job_refuses_a_loopback_server_before_logging(monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # the store is never asked: fail fast if it were
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "1")
    with pytest.raises(SystemExit, match="loopback address, which no other node reaches"):
        Tracker(cfg("http://127.0.0.1:9")).start("job", "run", {}, {})
