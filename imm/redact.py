"""What a run must never log: credentials are refused in the tracking address and scrubbed from every write.

A tracking server's params, tags and artifacts are readable by every user of the server, and a job's
``config.yaml`` sits on a shared filesystem. So MLflow credentials come only from the environment
(``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD`` or ``MLFLOW_TRACKING_TOKEN``) or from
``~/.mlflow/credentials``, never from ``tracking.uri`` (``uri_credentials`` finds them there, and the
config refuses them before any compute), and ``scrub`` replaces anything that looks like a secret with
``***`` in every param, tag, run name, data set and artifact the tracker writes, and in the job's
``config.yaml``: values under a key named like a secret (``password``, ``token``, ``api_key``, ...), a
URI's user and password, ``name=value`` pairs with such a name (a URI's query too) and bearer tokens.
``Scrub`` (a Hydra callback) does the same to the files Hydra writes in a job's ``.hydra/`` folder.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

REDACTED = "***"
# a key is secret when its last word is one of these (max_new_tokens, token_count and password_file are not)
SECRET_WORDS = {"password", "passwd", "pwd", "passphrase", "secret", "token", "credential", "credentials",
                "auth", "authorization", "cookie", "signature", "sig", "apikey", "accesskey", "privatekey"}
SECRET_PAIRS = {("api", "key"), ("access", "key"), ("private", "key"), ("secret", "key"), ("session", "key"),
                ("account", "key"), ("signing", "key")}
USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^\s/@?#'\"]+)@")
# name=value / name: value / "name": "value" / --name value (a URI's query is name=value pairs)
ASSIGN = re.compile(r"""(?P<key>[A-Za-z_][\w.\-]*)(?P<sep>["']?[ \t]*[:=][ \t]*)(?:(?P<q>["'])(?P<quoted>[^"'\n]*)|(?P<bare>[^\s,;&?#)}\]"']+))""")
FLAG = re.compile(r"(?P<flag>--(?P<key>[A-Za-z][\w.\-]*)\s+)(?P<value>[^\s\-]\S*)")
# an Authorization header's credentials: a word of 8+ characters with a digit or base64's +/= ("basic auth" is not)
BEARER = re.compile(r"\b(?P<kind>Bearer|bearer|Basic)[ \t]+(?=[\w.~+/\-]*[0-9+/=])[A-Za-z0-9._~+/=\-]{8,}")
KNOWN_TOKENS = re.compile(r"\b(?:hf_[A-Za-z0-9]{30,}|gh[pousr]_[A-Za-z0-9]{30,}|sk-[A-Za-z0-9_\-]{20,}|AKIA[0-9A-Z]{16})\b")
TEXT_FILES = (".yaml", ".yml", ".json", ".jsonl", ".md", ".csv", ".tsv", ".txt", ".tex", ".html", ".log", ".ini",
              ".cfg", ".toml")
CREDENTIALS_FIX = ("give the address without them and the credentials in the environment: export "
                   "MLFLOW_TRACKING_URI=<scheme>://<host>:<port> MLFLOW_TRACKING_USERNAME=<user> "
                   "MLFLOW_TRACKING_PASSWORD=<password> (or MLFLOW_TRACKING_TOKEN=<token>), or write them to "
                   "~/.mlflow/credentials ([mlflow] with mlflow_tracking_username = <user> and "
                   "mlflow_tracking_password = <password>, mode 600)")


def secret_name(key: str) -> bool:
    """Whether a key (``hf_token``, ``MLFLOW_TRACKING_PASSWORD``, ``apiKey``, ``db.secret_key``) names a secret."""
    words = re.findall(r"[a-z0-9]+", re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", key).lower())
    return bool(words) and (words[-1] in SECRET_WORDS or tuple(words[-2:]) in SECRET_PAIRS)


def _assign(m: re.Match) -> str:
    """A secret's value redacted; another's value scrubbed in turn (a quoted URI's query holds pairs too)."""
    value = m["quoted"] if m["q"] else m["bare"]
    return f"{m['key']}{m['sep']}{m['q'] or ''}" + (REDACTED if secret_name(m["key"]) else ASSIGN.sub(_assign, value))


def scrub_text(text: str) -> str:
    text = USERINFO.sub(lambda m: f"{m['scheme']}{REDACTED}@", text)
    text = BEARER.sub(lambda m: f"{m['kind']} {REDACTED}", text)
    text = ASSIGN.sub(_assign, text)
    text = FLAG.sub(lambda m: f"{m['flag']}{REDACTED}" if secret_name(m["key"]) else m[0], text)
    return KNOWN_TOKENS.sub(REDACTED, text)


def scrub(value: Any) -> Any:
    """``value`` with every secret replaced by ``***``: dicts (by key and value), lists and strings; other values as
    they are. The one function every write to MLflow and to the job's folder goes through."""
    if isinstance(value, dict):
        return {k: REDACTED if isinstance(k, str) and secret_name(k) and value[k] not in (None, "")
                else scrub(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(scrub(v) for v in value)
    if isinstance(value, str):
        return scrub_text(value)
    return value


def uri_credentials(uri: str) -> str:
    """What credentials ``uri`` holds ("" = none): a user or password before the host, or a secret in its query."""
    if USERINFO.search(uri):
        return "a user or password"
    query = uri.partition("?")[2]
    if query and scrub_text(query) != query:
        return "a secret in its query string"
    return ""


def refusal(field: str, uri: str) -> str:
    """Why ``field`` (a tracking address) is refused ("" = it holds no credentials), with the fix."""
    what = uri_credentials(uri)
    if not what:
        return ""
    return (f"{field}={scrub_text(uri)} holds {what}, which would be written to the job's config.yaml and "
            f"logged where every user of the tracking server reads it; {CREDENTIALS_FIX}")


def _scrub_content(text: str, suffix: str) -> str:
    if suffix == ".json":
        return json.dumps(scrub(json.loads(text)), indent=2)
    if suffix == ".jsonl":
        return "".join(json.dumps(scrub(json.loads(line))) + "\n" for line in text.splitlines() if line.strip())
    if suffix in (".yaml", ".yml"):
        import yaml

        return yaml.safe_dump(scrub(yaml.safe_load(text)), sort_keys=False, allow_unicode=True)
    return scrub_text(text)


def scrubbed_text(path: Path) -> str | None:
    """The text file's content with its secrets scrubbed, or None when it holds none (or is not text)."""
    if path.suffix.lower() not in TEXT_FILES:
        return None
    try:
        text = path.read_text()
    except (UnicodeDecodeError, OSError):
        return None
    if scrub_text(text) == text and not any(secret_name(k) for k in re.findall(r"[\w.\-]+(?=[\"']?\s*:)", text)):
        return None
    try:
        return _scrub_content(text, path.suffix.lower())
    except ValueError:  # not valid JSON / YAML after all: scrub it as text
        return scrub_text(text)


@contextmanager
def scrubbed_file(path: str | Path) -> Iterator[Path]:
    """``path`` itself when it holds no secret, else a scrubbed copy with the same name (removed afterwards)."""
    path = Path(path)
    text = scrubbed_text(path) if path.is_file() else None
    if text is None:
        yield path
        return
    folder = Path(tempfile.mkdtemp(prefix="imm-scrubbed-"))
    try:
        (folder / path.name).write_text(text)
        yield folder / path.name
    finally:
        shutil.rmtree(folder, ignore_errors=True)


class Scrub(Callback):
    """Scrubs the files Hydra writes in a job's ``.hydra/`` folder (the composed config, Hydra's own and the
    command line's overrides) and a sweep's ``multirun.yaml`` as soon as a job starts; a tracking address with credentials stops a single
    run before Hydra writes anything (a multirun is stopped by the grid check, imm/sweep_check.py)."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        why = refusal("tracking.uri", str(config.tracking.uri)) if config.tracking.enabled else ""
        if why:
            raise SystemExit(f"imm: {why}")  # not an Exception: Hydra would turn it into a warning and run on

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        paths = [Path(config.hydra.sweep.dir) / "multirun.yaml"] if config.hydra.mode == RunMode.MULTIRUN else []
        if config.hydra.output_subdir:
            paths += (Path(config.hydra.runtime.output_dir) / config.hydra.output_subdir).glob("*.yaml")
        for path in paths:
            text = scrubbed_text(path) if path.is_file() else None
            if text is not None:
                path.write_text(text)
