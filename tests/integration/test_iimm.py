"""IIMM through the real loop: the importance stage runs, its per-layer scales reach the merge.

One ``python -m imm.main method=iimm`` job on a micro testbed (2 iterations), checked in the MLflow
store and the merge records it wrote. In iteration 1 (θ_prev = θ) the update of layer n is
U = (1−α)·s_n·DARE(δ); DARE keeps a share 1−p of δ scaled by 1/(1−p), so ‖U‖/‖δ‖ ≈ (1−α)·s_n/√(1−p):
the measured ratio of each layer must follow that layer's own scale s_n = N·I_n/ΣI (Eq. 7).
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from imm.merge.rules import importance_scales

ROOT = Path(__file__).resolve().parents[2]
ALPHA, P = 0.5, 0.1
JOB = ["method=iimm", f"merge.alpha={ALPHA}", f"merge.p={P}", "dataset.n_train=32", "dataset.n_test=24",
       "generate.k=2", "generate.max_new_tokens=60", "eval.max_new_tokens=60", "sft.epochs=2", "run.iterations=2"]
LAYERS = 4  # the shipped testbed model


@pytest.fixture(scope="module")
def iimm_job(tmp_path_factory):
    outputs = tmp_path_factory.mktemp("iimm")
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    done = subprocess.run([sys.executable, "-m", "imm.main", *JOB, f"outputs={outputs}"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    client = mlflow.MlflowClient(f"sqlite:///{outputs}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("imm-testbed-testbed").experiment_id])
    assert len(runs) == 1
    (job,) = (outputs / "jobs").iterdir()
    return client, runs[0], job, done.stdout


def history(client, run, key) -> dict[int, float]:
    return {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)}


def test_iimm_run_finishes_with_merged_evaluations(iimm_job):
    client, run, _, stdout = iimm_job
    assert run.info.status == "FINISHED"
    assert run.data.tags["method"] == "iimm"
    assert sorted(history(client, run, "eval/merged/ood")) == [1, 2]
    for stage in ("Merge 1", "Merge 2"):
        assert stage in stdout


def test_importance_is_logged_per_layer_each_iteration(iimm_job):
    client, run, _, _ = iimm_job
    keys = sorted(k for k in run.data.metrics if k.startswith("importance/"))
    assert keys == [f"importance/layer{n}" for n in range(LAYERS)]
    for key in keys:
        points = history(client, run, key)
        assert sorted(points) == [1, 2] and all(v > 0 for v in points.values())
    # each iteration measures its own model on its own data
    assert history(client, run, "importance/layer0")[1] != history(client, run, "importance/layer0")[2]


def test_merge_used_the_per_layer_scales(iimm_job):
    client, run, job, _ = iimm_job
    for step in (1, 2):
        importance = {n: history(client, run, f"importance/layer{n}")[step] for n in range(LAYERS)}
        expected = importance_scales(importance)
        record = json.loads((job / f"merge{step}" / "merge.json").read_text())
        scales = {int(n): s for n, s in record["layer_scales"].items()}
        assert scales == pytest.approx(expected, rel=1e-6)
        assert max(scales.values()) - min(scales.values()) > 0.05  # the layers really differ
        assert sum(scales.values()) / LAYERS == pytest.approx(1.0)

        if step > 1:  # θ_prev is no longer θ: U also holds α·(θ − θ_prev), so the ratio below is iteration 1's
            continue
        groups = record["stats"]["groups"]
        per_unit_scale = (1 - ALPHA) / math.sqrt(1 - P)
        for n in range(LAYERS):
            for kind in ("attention", "mlp"):
                g = groups[f"layers.{n}.{kind}"]
                measured = g["update_norm"] / g["delta_norm"]
                assert measured == pytest.approx(per_unit_scale * scales[n], rel=0.05), (step, n, kind)
        # tensors outside the layers are merged unscaled
        emb = groups["embeddings"]
        assert emb["update_norm"] / emb["delta_norm"] == pytest.approx(per_unit_scale, rel=0.05)
        # the same figures reached MLflow
        logged = history(client, run, "merge/groups/layers.1.mlp/update_norm")[step]
        assert logged == pytest.approx(groups["layers.1.mlp"]["update_norm"])
