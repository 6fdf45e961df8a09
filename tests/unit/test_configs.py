"""Every shipped YAML composes into the typed schema; bad values fail at compose time, naming the field."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ValidationError

from imm.config import validate

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"
GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir() and p.name != "hydra")


def compose_cfg(*overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=list(overrides))
    cfg.run.out_dir = "unused"
    return cfg


# the paper's OOD suite has two sets without a hub split: a run names their files
PAPER_FILES = [f"dataset.files.{n}.test={ROOT / 'tests' / 'fixtures' / n / 'test.jsonl'}" for n in ("mawps", "sat_math")]
OPTIONAL_GROUPS = {"baseline", "preset"}  # not in the defaults list: added with +group=option


@pytest.mark.parametrize("group,option", [(g, p.stem) for g in GROUPS for p in sorted((CONF / g).glob("*.yaml"))])
def test_every_group_option_composes(group, option):
    files = PAPER_FILES if (group, option) in (("dataset", "gsm8k"), ("dataset", "math")) else []
    typed = validate(compose_cfg(f"{'+' if group in OPTIONAL_GROUPS else ''}{group}={option}", *files))
    if group in ("method", "merge"):
        assert getattr(typed, group).name == option
    if group == "baseline":  # a method, or vanilla with one SFT intervention
        assert (typed.method.name, typed.sft.intervention) in {(option, "none"), ("vanilla", option)}


def test_defaults():
    typed = validate(compose_cfg())
    assert typed.method.name == "imm" and typed.merge.alpha == 0.5 and typed.merge.p == 0.1
    assert typed.generate.temperatures == [0.2, 0.4, 0.6]
    assert Path(typed.model.path).is_dir()


@pytest.mark.parametrize("override,match", [
    ("merge.alpha=1.5", "merge.alpha"), ("merge.alpha=-0.1", "merge.alpha"),
    ("merge.p=1.0", "merge.p"), ("method.history_share=2", "method.history_share"),
    ("generate.k=0", "generate.k"), ("model.path=/nonexistent/model", "model.path"),
    ("eval.ks=[1,4]", "eval.ks"),
])
def test_bad_values_name_the_field(override, match):
    with pytest.raises(Exception, match=match):
        validate(compose_cfg(override))


def test_wrong_type_and_unknown_key_fail_at_compose():
    with pytest.raises(ConfigCompositionException, match="merge.alpha") as bad_type:
        compose_cfg("merge.alpha=abc")
    assert isinstance(bad_type.value.__cause__, ValidationError)  # "could not be converted to Float"
    with pytest.raises(ConfigCompositionException, match="alhpa") as unknown:
        compose_cfg("merge.alhpa=0.5")
    assert "not in 'MergeConfig'" in str(unknown.value.__cause__)
    with pytest.raises(ValueError, match="unknown config keys: merge.alhpa"):  # appended keys fail validation
        validate(compose_cfg("+merge.alhpa=0.5"))
    with pytest.raises(Exception, match="method"):
        compose_cfg("method=nonexistent")


def test_missing_dataset_file_fails(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        validate(compose_cfg("dataset.kind=jsonl", f"dataset.train_file={tmp_path}/missing.jsonl"))


@pytest.mark.parametrize("dataset,k", [("gsm8k", 3), ("math", 6)])
def test_a_paper_dataset_brings_the_papers_sampling_and_evaluation(dataset, k):
    """One run with dataset=gsm8k is the paper's run, not the testbed's k=4 at 80 tokens; a command-line
    value still wins; the default OOD suite is the paper's, MAWPS and SAT-Math included, and refused
    naming the fix while their files are missing."""
    cfg = compose_cfg(f"dataset={dataset}")
    assert (cfg.generate.k, cfg.generate.max_new_tokens, cfg.eval.max_new_tokens) == (k, 512, 512)
    assert list(cfg.generate.temperatures) == [0.2, 0.4, 0.6] and cfg.eval.temperature == 0
    assert {"mawps", "sat_math", "svamp", "asdiv", "mathqa", "mmlu_stem"} <= set(cfg.dataset.test_sets)
    assert compose_cfg(f"dataset={dataset}", "generate.k=5").generate.k == 5
    assert compose_cfg(f"dataset={dataset}", "generate=testbed").generate.max_new_tokens == 80
    with pytest.raises(FileNotFoundError, match="'mawps' has no hub id: give dataset.files.mawps.test"):
        validate(cfg)
    validate(compose_cfg(f"dataset={dataset}", *PAPER_FILES))
