"""No secret in a run (imm/redact.py): a tracking address with credentials is refused with the fix, and the
scrubbing every write goes through replaces secrets by name, in URIs, in name=value text and in files.

    python -m pytest tests/unit/test_redact.py
"""

from __future__ import annotations

import json

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from imm.config import validate
from imm.redact import REDACTED, scrub, scrub_text, scrubbed_file, secret_name, uri_credentials
from imm.tracking import TrackingConfig, flatten, split_params

SECRET = "hunter2-s3cr3t"


@pytest.mark.parametrize("key", ["password", "MLFLOW_TRACKING_PASSWORD", "hf_token", "api_key", "apiKey",
                                 "db.secret_key", "client_secret", "accessToken", "X-Amz-Signature", "auth"])
def test_secret_names(key):
    assert secret_name(key)


@pytest.mark.parametrize("key", ["generate.max_new_tokens", "plan.question_tokens", "job_key", "tokenizer",
                                 "password_file", "mlflow.source.git.commit", "MLFLOW_AUTH_CONFIG_PATH", "merge.p"])
def test_names_that_only_look_like_secrets(key):
    assert not secret_name(key)


@pytest.mark.parametrize("text,clean", [
    (f"http://imm:{SECRET}@login1:5000", "http://***@login1:5000"),
    (f"https://login1:5000/api?token={SECRET}&x=1", "https://login1:5000/api?token=***&x=1"),
    (f"tracking.uri=\"https://h/?access_token={SECRET}\" outputs=/o", "tracking.uri=\"https://h/?access_token=***\" outputs=/o"),
    (f"MLFLOW_TRACKING_PASSWORD={SECRET} python -m imm.main", "MLFLOW_TRACKING_PASSWORD=*** python -m imm.main"),
    (f'{{"password": "{SECRET} x"}}', '{"password": "***"}'),
    (f"--api-key {SECRET} --port 5000", "--api-key *** --port 5000"),
    ("Authorization: Bearer abc123def456", "Authorization: *** ***"),
    ("sqlite:////scratch/o/mlflow.db", "sqlite:////scratch/o/mlflow.db"),
    ("hydra/sweeper: basic\n  hydra/launcher: basic", "hydra/sweeper: basic\n  hydra/launcher: basic"),
    ("max_new_tokens=60 merge.alpha=0.5", "max_new_tokens=60 merge.alpha=0.5")])
def test_scrub_text(text, clean):
    assert scrub_text(text) == clean


def test_scrub_by_key_and_value_keeps_everything_else():
    value = {"model": {"hf_token": SECRET, "path": "/m", "token": None}, "n": 3, "uris": [f"http://u:{SECRET}@h"],
             "generate": {"max_new_tokens": 60}}
    assert scrub(value) == {"model": {"hf_token": REDACTED, "path": "/m", "token": None}, "n": 3,
                            "uris": ["http://***@h"], "generate": {"max_new_tokens": 60}}


@pytest.mark.parametrize("uri", [f"http://imm:{SECRET}@login1:5000", "http://imm@login1:5000",
                                 f"https://login1:5000/?token={SECRET}"])
def test_a_tracking_uri_with_credentials_is_refused_with_the_fix(uri):
    assert uri_credentials(uri)
    with pytest.raises(ValueError) as err:
        TrackingConfig(uri=uri, artifact_root="mlflow-artifacts:")
    message = str(err.value)
    assert SECRET not in message
    assert "MLFLOW_TRACKING_USERNAME" in message and "MLFLOW_TRACKING_PASSWORD" in message
    assert "~/.mlflow/credentials" in message


@pytest.mark.parametrize("uri", ["http://login1:5000", "https://10.1.2.3:5000", "sqlite:////o/mlflow.db"])
def test_a_tracking_uri_without_credentials_passes(uri):
    assert uri_credentials(uri) == ""
    TrackingConfig(uri=uri, artifact_root="mlflow-artifacts:")


def test_the_composed_config_refuses_credentials_in_the_server_address(root, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"https://imm:{SECRET}@login1:5000")
    with initialize_config_dir(str(root / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["tracking=server"])
    with pytest.raises(ValueError, match="tracking.uri=https://\\*\\*\\*@login1:5000 holds a user or password"):
        validate(cfg)


def test_files_are_scrubbed_only_when_they_hold_a_secret(tmp_path):
    clean = tmp_path / "lineage.jsonl"
    clean.write_text('{"stage": "sft", "out": "ab12"}\n')
    with scrubbed_file(clean) as path:
        assert path == clean
    config = tmp_path / "config.yaml"
    config.write_text(OmegaConf.to_yaml({"model": {"hf_token": SECRET, "max_new_tokens": 60}}))
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"src": f"http://u:{SECRET}@h/x"}) + "\n")
    for original in (config, rows):
        with scrubbed_file(original) as path:
            assert path.name == original.name and path != original
            assert SECRET not in path.read_text()
        assert not path.exists()  # the copy is gone, the original untouched
    assert OmegaConf.load(config).model.hf_token == SECRET


def test_params_hold_the_settings_and_tags_the_bookkeeping():
    params, tags = split_params(flatten({"run": {"out_dir": "/o/jobs/k", "seed": 0}, "outputs": "/o",
                                         "stages": {"root": "/o/stages"}, "tracking": {"uri": "sqlite:///o"},
                                         "teacher": None, "merge": {"alpha": 0.5}}))
    assert params == {"run.seed": "0", "merge.alpha": "0.5"}  # None left out
    assert tags == {"out_dir": "/o/jobs/k", "outputs": "/o", "stages.root": "/o/stages", "tracking.uri": "sqlite:///o"}
