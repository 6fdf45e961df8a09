"""Builds a wheelhouse: the wheels a compute node without a package index needs to run imm.

GPU images usually ship torch, transformers, accelerate and peft but none of Hydra, OmegaConf,
submitit, MLflow or math-verify, and cluster nodes often reach no package index. On a machine that
does, this resolves requirements/compute-node.txt for the node's Python and platform, leaves out
what the image already has, downloads the rest as wheels and adds imm's own wheel:

    python scripts/wheelhouse.py --python-version 3.12      # -> outputs/wheelhouse-py3.12
    python scripts/wheelhouse.py --python-version 3.12 --have-file image-freeze.txt   # exact image

then copy the folder to the node and, from a checkout of the repository there:

    sh outputs/wheelhouse-py3.12/install.sh  # pip install --no-index from the folder, then imm
    python -m imm.main run.iterations=1

``--have-file`` takes ``pip freeze`` of the image: its names are left out and its versions
constrain the resolution, so the wheels agree with what is installed. Without it the built-in
``DEFAULT_HAVE`` list stands for a torch + transformers + accelerate + peft image. install.sh resolves
again on the node against what is installed, so a package the image lacks fails loudly at install
time (rerun here with a shorter ``--have``), never at import time.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REQUIREMENTS = ROOT / "requirements" / "compute-node.txt"

# A torch + transformers + accelerate + peft image: those packages and the dependencies every
# recent release of them has (a trailing * matches a prefix). Small dependencies that only some
# releases have (pydantic, httpx, click, ...) are shipped anyway: install.sh keeps the image's copy.
DEFAULT_HAVE = (
    "torch", "triton", "nvidia-*", "transformers", "accelerate", "peft",
    "tokenizers", "safetensors", "huggingface-hub", "hf-xet", "numpy", "packaging", "pyyaml",
    "regex", "tqdm", "filelock", "fsspec", "sympy", "mpmath", "networkx", "jinja2", "markupsafe",
    "typing-extensions", "psutil", "setuptools",
)
# Source-only releases the resolution needs as wheels (pure Python: one wheel fits every platform).
SOURCE_ONLY = ("antlr4-python3-runtime==4.9.3",)  # hydra-core and omegaconf pin 4.9.*
MAX_MIB = 64  # what fits the copy to a GPU machine alongside the repository

INSTALL_SH = """#!/bin/sh
# Installs imm's compute-node dependencies from this folder, with no package index.
# Built for Python {python_version} on {platforms}. Extra arguments go to pip (e.g. --user).
set -e
here=$(dirname "$0")
python -m pip install --no-index --find-links "$here" -r "$here/requirements.txt" "$@"
# imm pins the torch of its development machines; the node keeps its own torch
python -m pip install --no-index --no-deps "$here"/imm-*.whl "$@"
"""


def norm(name: str) -> str:
    """A distribution name in its canonical form (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def is_had(name: str, have: list[str]) -> bool:
    """Whether ``name`` is among ``have`` (exact names, or prefixes ending in ``*``)."""
    n = norm(name)
    return any(n.startswith(norm(h[:-1])) if h.endswith("*") else n == norm(h) for h in have)


def read_freeze(text: str) -> dict[str, str]:
    """``{name: version}`` from ``pip freeze`` output (editable and URL lines are skipped)."""
    out = {}
    for line in text.splitlines():
        m = re.match(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([^\s;#]+)", line)
        if m:
            out[norm(m.group(1))] = m.group(2)
    return out


def split_resolution(report: dict, have: list[str]) -> tuple[dict[str, str], dict[str, str]]:
    """The resolved ``{name: version}`` of a ``pip install --report``, split into (ship, skip)."""
    ship, skip = {}, {}
    for item in report["install"]:
        name, version = norm(item["metadata"]["name"]), item["metadata"]["version"]
        (skip if is_had(name, have) else ship)[name] = version
    return ship, skip


_LEGACY = {"manylinux2014": 17, "manylinux2010": 12, "manylinux1": 5}


def expand_platform(tag: str) -> list[str]:
    """A manylinux tag and every older glibc's tag, which pip will not infer for another machine.

    ``manylinux_2_28_x86_64`` also runs ``manylinux_2_27`` ... ``manylinux_2_5`` wheels and the
    legacy ``manylinux2014``/``2010``/``1`` names; other tags are returned as given.
    """
    m = re.fullmatch(r"manylinux_2_(\d+)_(\w+)", tag)
    legacy = re.fullmatch(r"(manylinux2014|manylinux2010|manylinux1)_(\w+)", tag)
    if not (m or legacy):
        return [tag]
    glibc, arch = (int(m.group(1)), m.group(2)) if m else (_LEGACY[legacy.group(1)], legacy.group(2))
    tags = [f"manylinux_2_{v}_{arch}" for v in range(glibc, 4, -1)]
    return tags + [f"{name}_{arch}" for name, v in _LEGACY.items() if v <= glibc]


def target_args(python_version: str, platforms: list[str]) -> list[str]:
    args = ["--only-binary=:all:", "--python-version", python_version]
    for tag in dict.fromkeys(t for p in platforms for t in expand_platform(p)):
        args += ["--platform", tag]
    return args


def pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args], check=True)


def resolve(requirements: Path, target: list[str], links: Path, pins: dict[str, str]) -> dict:
    """pip's own resolution for the target interpreter (``pins`` as constraints), as its report."""
    with tempfile.TemporaryDirectory() as tmp:
        report, constraints = Path(tmp) / "report.json", Path(tmp) / "constraints.txt"
        constraints.write_text("".join(f"{n}=={v}\n" for n, v in sorted(pins.items())))
        pip("install", "--dry-run", "--ignore-installed", "--quiet", "--report", str(report),
            "--target", str(Path(tmp) / "t"), "--find-links", str(links), *target,
            "-r", str(requirements), "-c", str(constraints))
        return json.loads(report.read_text())


def manifest(out: Path) -> list[tuple[str, int]]:
    return sorted((p.name, p.stat().st_size) for p in out.glob("*.whl"))


def build(out: Path, python_version: str, platforms: list[str], have: list[str],
          pins: dict[str, str], requirements: Path = REQUIREMENTS) -> dict[str, str]:
    """Fills ``out`` with the wheels, requirements.txt and install.sh; returns what it left out."""
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"{out} is not empty: wheels of another build would mix with these")
    out.mkdir(parents=True, exist_ok=True)
    target = target_args(python_version, platforms)
    pip("wheel", "--no-deps", "--quiet", "-w", str(out), *SOURCE_ONLY)
    ship, skip = split_resolution(resolve(requirements, target, out, pins), have)
    pip("download", "--no-deps", "--quiet", "-d", str(out), "--find-links", str(out), *target,
        *[f"{n}=={v}" for n, v in sorted(ship.items())])
    scratch = [p for p in (ROOT / "build", ROOT / "imm.egg-info") if not p.exists()]
    pip("wheel", "--no-deps", "--quiet", "-w", str(out), str(ROOT))
    for p in scratch:  # what setuptools left in the checkout while building imm's wheel
        shutil.rmtree(p, ignore_errors=True)
    shutil.copy(requirements, out / "requirements.txt")
    sh = out / "install.sh"
    sh.write_text(INSTALL_SH.format(python_version=python_version, platforms=", ".join(platforms)))
    sh.chmod(0o755)
    return skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--python-version", default=f"{sys.version_info.major}.{sys.version_info.minor}",
                    help="the compute node's Python, e.g. 3.12 (default: this one)")
    ap.add_argument("--platform", action="append", dest="platforms",
                    help="the node's wheel platform tag, repeatable (default manylinux_2_28_x86_64; "
                         "wheels for older glibc versions, manylinux2014 included, are accepted)")
    ap.add_argument("--have", nargs="*", default=None,
                    help=f"packages the image has, left out (default: {' '.join(DEFAULT_HAVE)})")
    ap.add_argument("--have-file", type=Path,
                    help="`pip freeze` of the image: its packages are left out, its versions kept")
    ap.add_argument("--out", type=Path, help="an empty folder (default: outputs/wheelhouse-pyX.Y, "
                    "git-ignored)")
    args = ap.parse_args(argv)

    have = list(DEFAULT_HAVE if args.have is None else args.have)
    pins = read_freeze(args.have_file.read_text()) if args.have_file else {}
    args.out = args.out or ROOT / "outputs" / f"wheelhouse-py{args.python_version}"
    skip = build(args.out, args.python_version, args.platforms or ["manylinux_2_28_x86_64"],
                 have + list(pins), pins)
    files = manifest(args.out)
    total = sum(size for _, size in files)
    for name, size in files:
        print(f"{size / 2**20:8.2f} MiB  {name}")
    print(f"{len(files)} wheels, {total / 2**20:.1f} MiB in {args.out} for Python {args.python_version}")
    print("left out (the image has them): " + ", ".join(f"{n} {v}" for n, v in sorted(skip.items())))
    if total > MAX_MIB * 2**20:
        print(f"over {MAX_MIB} MiB: too big to copy with the repository", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
