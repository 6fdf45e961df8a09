"""The offline install: scripts/wheelhouse.py's pure parts, and requirements/compute-node.txt kept
in step with what imm imports and with pyproject.toml (no network: building a wheelhouse is not
a unit test)."""

import ast
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

from packaging.requirements import Requirement

from scripts.wheelhouse import (DEFAULT_HAVE, REQUIREMENTS, expand_platform, is_had, norm,
                                read_freeze, split_resolution, target_args)

ROOT = Path(__file__).resolve().parents[2]


def _requirements(path: Path) -> dict[str, Requirement]:
    lines = (ln.split("#")[0].strip() for ln in path.read_text().splitlines())
    return {norm(r.name): r for r in map(Requirement, filter(None, lines))}


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_have_matches_names_and_prefixes():
    have = ["torch", "nvidia-*", "typing_extensions"]
    assert is_had("Torch", have) and is_had("nvidia-cudnn-cu12", have)
    assert is_had("typing-extensions", have) and not is_had("torchvision", have)


def test_read_freeze_skips_editables_and_urls():
    text = ("torch==2.11.0+cu128\nPyYAML==6.0.2\n-e git+https://example.org/x.git#egg=x\n"
            "foo @ file:///wheels/foo.whl\n# comment\nsafetensors == 0.5.3\n")
    assert read_freeze(text) == {"torch": "2.11.0+cu128", "pyyaml": "6.0.2", "safetensors": "0.5.3"}


def test_split_resolution_leaves_out_what_the_image_has():
    report = {"install": [{"metadata": {"name": n, "version": v}} for n, v in
                          [("hydra-core", "1.3.8"), ("numpy", "2.4.6"), ("nvidia-nccl-cu12", "2.1"),
                           ("SQLAlchemy", "2.1.9")]]}
    ship, skip = split_resolution(report, ["numpy", "nvidia-*"])
    assert ship == {"hydra-core": "1.3.8", "sqlalchemy": "2.1.9"}
    assert skip == {"numpy": "2.4.6", "nvidia-nccl-cu12": "2.1"}


def test_platforms_include_older_manylinux_wheels():
    tags = expand_platform("manylinux_2_28_x86_64")
    assert tags[0] == "manylinux_2_28_x86_64" and "manylinux_2_17_x86_64" in tags
    assert {"manylinux2014_x86_64", "manylinux1_x86_64"} <= set(tags)
    assert expand_platform("manylinux2014_aarch64")[0] == "manylinux_2_17_aarch64"
    assert "manylinux_2_28_aarch64" not in expand_platform("manylinux2014_aarch64")
    assert expand_platform("macosx_11_0_arm64") == ["macosx_11_0_arm64"]
    args = target_args("3.12", ["manylinux_2_28_x86_64", "manylinux2014_x86_64"])
    assert args[:3] == ["--only-binary=:all:", "--python-version", "3.12"]
    assert args.count("--platform") == len(set(args[4::2]))  # each tag once


def test_compute_node_pins_agree_with_pyproject():
    deps = {norm(Requirement(d).name): Requirement(d) for d in _pyproject()["dependencies"]}
    node = _requirements(REQUIREMENTS)
    assert str(node["mlflow-skinny"].specifier) == str(deps["mlflow"].specifier)
    for name in set(node) & set(deps):
        assert node[name].specifier == deps[name].specifier, name
    # everything imm depends on is shipped, or is the image's (torch, transformers, ...)
    missing = {n for n in deps if n not in node and not is_had(n, list(DEFAULT_HAVE))}
    assert missing == {"mlflow"}  # shipped as mlflow-skinny + the SQL store's packages


def _imported_modules() -> set[str]:
    names = set()
    for path in (ROOT / "imm").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"imm", "__future__"}


def test_every_import_of_imm_is_shipped_had_or_an_optional_extra():
    optional = {norm(Requirement(d).name) for extra in _pyproject()["optional-dependencies"].values()
                for d in extra}
    node, dists = set(_requirements(REQUIREMENTS)), packages_distributions()
    modules = _imported_modules()
    assert {"hydra", "mlflow", "math_verify", "torch"} <= modules
    for module in modules:
        names = {norm(d) for d in dists.get(module, [module])}  # "mlflow": mlflow, mlflow-skinny, ...
        assert names & (node | optional) or any(is_had(n, list(DEFAULT_HAVE)) for n in names), module
