"""MLflow on a cluster, for real: `mlflow server --app-name basic-auth` as docs/scale-out.md starts it (bound to
this host's own non-loopback address only, not every interface; TLS with a self-signed certificate made here,
which the clients trust through MLFLOW_TRACKING_SERVER_CERT_PATH; that address allowed as a Host header), a user
for the jobs made through the admin, and an imm job that runs as under SLURM (where a loopback URI is refused)
and logs to it with credentials from the environment.

    python -m pytest tests/system/test_tracking_server.py
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path
from urllib.request import urlopen

import pytest

from imm.tracking import TrackingConfig, ensure_store

ROOT = Path(__file__).resolve().parents[2]
ADMIN, JOBS = ("admin", "admin-password-1234"), ("imm", "imm-jobs-password-1")
JOB = ["run.iterations=1", "dataset.n_train=16", "dataset.n_test=8", "generate.k=2", "generate.max_new_tokens=60",
       "eval.max_new_tokens=60", "sft.epochs=1"]


def own_address() -> str:
    """This host's address on its default route: what another node would use (not 127.x)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))  # no packet is sent: this only picks the interface
            return s.getsockname()[0]
        except OSError:
            return socket.gethostbyname(socket.gethostname())


def self_signed(folder: Path, host: str) -> tuple[Path, Path]:
    """A certificate for ``host`` (an IP address) and its key, made with openssl in a fraction of a second."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-days", "1", "-subj", "/CN=imm-test", "-addext", f"subjectAltName=IP:{host}",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The documented server, with its user store and database on local disk; yields its URI and certificate."""
    state = tmp_path_factory.mktemp("mlflow-server")
    host = own_address()
    if host.startswith("127."):
        pytest.skip("this host has no address other than loopback")
    if not shutil.which("openssl"):
        pytest.skip("no openssl to make the server's certificate")
    cert, key = self_signed(state, host)
    with socket.socket() as s:
        s.bind((host, 0))
        port = s.getsockname()[1]
    (state / "auth.ini").write_text(
        "[mlflow]\ndefault_permission = READ\n"
        f"database_uri = sqlite:///{state / 'auth.db'}\nadmin_username = {ADMIN[0]}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    env = dict(os.environ, MLFLOW_AUTH_CONFIG_PATH=str(state / "auth.ini"), MLFLOW_AUTH_ADMIN_PASSWORD=ADMIN[1],
               MLFLOW_FLASK_SERVER_SECRET_KEY="imm-test", MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    cmd = ["mlflow", "server", "--host", host, "--port", str(port), "--workers", "1",
           "--allowed-hosts", f"{host}:{port}", "--app-name", "basic-auth",
           # the graceful-shutdown limit: an MLflow client's idle keep-alive TLS connection holds a stop ~30 s
           "--uvicorn-opts", f"--ssl-certfile {cert} --ssl-keyfile {key} --timeout-graceful-shutdown 3",
           "--backend-store-uri", f"sqlite:///{state / 'mlflow.db'}", "--artifacts-destination", str(state / "artifacts")]
    log = (state / "server.log").open("w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"https://{host}:{port}"
    trust = ssl.create_default_context(cafile=str(cert))
    deadline = time.time() + 120
    while True:
        try:
            urlopen(f"{uri}/health", timeout=2, context=trust)
            break
        except OSError:
            assert proc.poll() is None and time.time() < deadline, (state / "server.log").read_text()[-3000:]
            time.sleep(0.5)
    yield uri, cert
    os.killpg(proc.pid, 15)
    proc.wait(timeout=30)


def test_the_server_answers_on_its_address_over_tls_only(server):
    uri, cert = server
    port = int(uri.rsplit(":", 1)[1])
    with pytest.raises(OSError):  # bound to the named interface: nothing listens on loopback
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    with pytest.raises(OSError):  # plain HTTP gets no answer from a TLS port
        urlopen(f"http://{uri.split('://')[1]}/health", timeout=5)
    with pytest.raises(OSError, match="CERTIFICATE_VERIFY_FAILED"):  # a client without the certificate refuses
        urlopen(f"{uri}/health", timeout=5, context=ssl.create_default_context())


def test_a_job_under_slurm_logs_to_the_authenticated_server(server, tmp_path, monkeypatch):
    import mlflow
    import mlflow.server

    server, cert = server
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_TRACKING_SERVER_CERT_PATH", str(cert))
    cfg = TrackingConfig(uri=server, artifact_root="mlflow-artifacts:", experiment="imm-auth-check")
    with pytest.raises(Exception, match="401|not authenticated"):  # no credentials: refused
        ensure_store(cfg)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", ADMIN[0])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", ADMIN[1])
    mlflow.server.get_app_client("basic-auth", tracking_uri=server).create_user(*JOBS)

    env = dict(os.environ, SLURM_JOB_ID="1", MLFLOW_TRACKING_URI=server, MLFLOW_TRACKING_USERNAME=JOBS[0],
               MLFLOW_TRACKING_PASSWORD=JOBS[1], OMP_NUM_THREADS="1")
    base = [sys.executable, "-m", "imm.main", "tracking=server", *JOB]
    refused = subprocess.run([*base, "tracking.uri=http://127.0.0.1:5000", f"outputs={tmp_path / 'loop'}"],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert refused.returncode != 0 and "loopback" in refused.stderr + refused.stdout
    assert not (tmp_path / "loop" / "stages").exists()  # refused before any stage ran

    out = subprocess.run([*base, f"outputs={tmp_path}"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    client = mlflow.MlflowClient(server)  # as the admin
    (exp,) = [e for e in client.search_experiments() if e.name.startswith("imm-")]
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED"  # logged with the jobs' credentials only (none gets a 401, above)
    assert JOBS[1] not in json.dumps([run.data.params, run.data.tags])  # the password stayed in the environment
    assert {"eval/base/id", "eval/sft/id", "eval/merged/ood"} <= run.data.metrics.keys()
    assert client.list_artifacts(run.info.run_id), "no artifact reached the server's artifact store"
