"""A ``CPU_RATES`` row (imm/plan/throughput.py) from a finished CPU job: its log, its stage times, its wall time.

    /usr/bin/time -f %e -o outputs/calibrate/wall python -m imm.main hydra.run.dir=outputs/calibrate/run
    python -m imm.plan.calibrate outputs/calibrate/run --wall "$(cat outputs/calibrate/wall)"

The job must have computed its stages (a fresh ``outputs=`` or ``stages.share=false``: reused stages
take no time). The row's rates are in the plan's units: tokens the decoding calls logged, each
stage's seconds from the job's results.json; a merge's seconds are the per-stage bookkeeping.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from omegaconf import OmegaConf

CALL = re.compile(r"\] (sample it\d+|eval [^:]*): (\d+) rows, (\d+) new tokens in ([\d.]+) s")
TRAINING = re.compile(r"iteration (\d+): kept \d+/\d+ samples .* training on (\d+)")


def measure(run_dir: Path, wall_s: float, job_dir: Path | None = None) -> dict:
    """The row's fields from a Hydra run folder (its main.log and .hydra/config.yaml) and the job's folder."""
    from imm.config import validate
    from imm.data import load_data
    from imm.models import load_tokenizer

    log = next(run_dir.glob("*.log")).read_text()
    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    if job_dir is None:
        from imm.main import job_key

        job_dir = Path(cfg.outputs) / "jobs" / job_key(OmegaConf.to_container(cfg, resolve=True))
    from imm.config import Config

    typed = validate(OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.load(job_dir / "config.yaml")))
    results = json.loads((job_dir / "results.json").read_text())
    seconds = results["seconds"]
    calls = [(m[1], int(m[2]), int(m[3])) for m in CALL.finditer(log)]
    sampled = [(rows, tokens) for desc, rows, tokens in calls if desc.startswith("sample")]
    answers = [(rows, tokens) for desc, rows, tokens in calls if desc.startswith("eval")]
    trained_rows = [int(m[2]) for m in TRAINING.finditer(log)]
    kept = sum(y["kept"] for y in results["kept"]) / max(1, sum(y["sampled"] for y in results["kept"]))
    sample_len = sum(t for _, t in sampled) / max(1, sum(r for r, _ in sampled))
    tok = load_tokenizer(typed.model.path)
    questions = [item["question"] for item in load_data(typed.dataset).train[:200]]
    prompt_len = sum(len(tok(typed.prompt.format(question=q))["input_ids"]) for q in questions) / len(questions)
    T = typed.run.iterations
    merges = T if typed.method.merges else 0
    stage_s = seconds.get("merge", 0.0) / merges if merges else 0.0
    evals = 1 + (T * (1 + (1 if merges else 0)) if typed.run.evaluate == "all" else 1)  # evaluate stages run
    trained = sum(trained_rows) * typed.sft.epochs * (prompt_len + sample_len)

    def net(name: str, n: int) -> float:  # a stage's seconds less the bookkeeping the plan adds per stage
        return max(1e-9, seconds.get(name, 0.0) - n * stage_s)

    return {"sample": sum(t for _, t in sampled) / net("generate", len(sampled)),
            "evaluate": sum(t for _, t in answers) / net("evaluate", evals),
            "sft": trained / net("sft", len(trained_rows)),
            "sample_tokens": sample_len, "answer_tokens": sum(t for _, t in answers) / max(1, sum(r for r, _ in answers)),
            "kept": kept, "prompt_tokens": prompt_len, "stage_s": stage_s,
            "startup_s": max(0.0, wall_s - sum(seconds.values())), "threads": typed.model.threads or None,
            "stage_seconds": seconds}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="print a CPU_RATES row from a finished job (imm/plan/throughput.py)")
    ap.add_argument("run_dir", type=Path, help="the job's Hydra run folder (hydra.run.dir): its log and config")
    ap.add_argument("--wall", type=float, required=True, help="the job's wall time in seconds (from time)")
    ap.add_argument("--job", type=Path, default=None, help="the job folder (default: found from the config)")
    args = ap.parse_args(argv)
    print(json.dumps(measure(args.run_dir, args.wall, args.job), indent=1))


if __name__ == "__main__":
    main()
