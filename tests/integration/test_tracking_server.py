"""The cluster setup's client side: jobs reach an MLflow server with basic authentication through
MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (docs/scale-out.md). The server is a stand-in that
answers MLflow's experiment lookup only with the right header, as ``mlflow server --app-name basic-auth``
does (its Flask-WTF dependency is not installed here).

    python -m pytest tests/integration/test_tracking_server.py
"""

from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from imm.tracking import TrackingConfig, ensure_store


class AuthServer(BaseHTTPRequestHandler):
    """Answers MLflow's experiment lookup only with the right basic-auth header, as `--app-name basic-auth` does."""
    seen: list[str] = []

    def do_GET(self):  # noqa: N802 (http.server's name)
        got = self.headers.get("Authorization", "")
        AuthServer.seen.append(got)
        if got != "Basic " + base64.b64encode(b"imm:secret").decode():
            self.send_response(401)
            self.end_headers()
            return
        body = json.dumps({"experiment": {"experiment_id": "7", "name": "imm-test", "lifecycle_stage": "active",
                                          "artifact_location": "mlflow-artifacts:/7",
                                          "tags": [{"key": "mlflow.experimentKind",
                                                    "value": "custom_model_development"}]}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_credentials_from_the_environment_reach_the_server(monkeypatch):
    server = HTTPServer(("127.0.0.1", 0), AuthServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    uri = f"http://127.0.0.1:{server.server_port}"
    try:
        with pytest.raises(Exception):  # no credentials: 401
            ensure_store(TrackingConfig(uri=uri, artifact_root="mlflow-artifacts:/imm", experiment="imm-test"))
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "imm")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "secret")
        assert ensure_store(TrackingConfig(uri=uri, artifact_root="mlflow-artifacts:/imm", experiment="imm-test")) == "7"
    finally:
        server.shutdown()
    assert AuthServer.seen[0] == "" and AuthServer.seen[-1].startswith("Basic ")
