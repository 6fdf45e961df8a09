"""A micro testbed job read as a model organism: STaR's restarts, the step classes of kept samples and
right answers, and the items forgotten or newly solved since the base model, as MLflow logged them."""

import json

from tests.integration.test_end_to_end import imm_main, runs_of

SHARES = ("sound_share", "shortcut_share", "flawed_share")


def test_star_job_restarts_from_base_and_logs_steps_and_transitions(tmp_path):
    out = imm_main("method=star", outputs=tmp_path)
    (job,) = (tmp_path / "jobs").iterdir()
    lineage = [json.loads(line) for line in open(job / "lineage.jsonl")]
    base = lineage[0]["out"]
    sft = {r["step"]: r for r in lineage if r["stage"] == "sft"}
    synth = {r["step"]: r for r in lineage if r["stage"] == "synthesize"}
    assert sorted(sft) == sorted(synth) == [1, 2] and not any(r["stage"] == "merge" for r in lineage)
    assert all(r["model"] == base for r in sft.values())  # every iteration fine-tunes the base model afresh
    assert synth[1]["model"] == base and synth[2]["model"] == sft[1]["out"] != base  # the SFT model samples
    assert sft[1]["out"] != sft[2]["out"]
    evaluations = {p.stem: [json.loads(line) for line in open(p)] for p in (job / "evaluations").glob("*.jsonl")}
    assert sorted(evaluations) == ["Base", "SFT1", "SFT2"]  # per-item results for paired statistics
    assert {r["set"] for r in evaluations["SFT2"]} == {"id_addsub", "ood_wording", "ood_mult", "ood_multistep"}

    client, (run,) = runs_of(tmp_path)
    tags, m = run.data.tags, run.data.metrics
    assert (tags["method"], tags["restart"], tags["sft_intervention"]) == ("star", "true", "none")
    assert "history_share" in tags

    def history(key):
        return {x.step: x.value for x in client.get_metric_history(run.info.run_id, key)}

    for share in SHARES:  # the kept samples of each iteration, and each model's right answers
        assert sorted(history(f"gen/{share}")) == [1, 2]
        assert sorted(history(f"eval/sft/id_addsub/{share}")) == [1, 2]
        assert sorted(history(f"eval/base/ood/{share}")) == [0]
    for step in (1, 2):
        assert abs(sum(history(f"gen/{s}")[step] for s in SHARES) - 1) < 1e-9
        forms = [v for k, v in m.items() if k.startswith("gen/form/")]
        assert len(forms) == 8 and abs(sum(forms) - 1) < 1e-9  # the kept samples' forms (last iteration)
    for key in ("ood_mult/writes_product", "ood/right_procedure", "id/form/canonical", "ood/ran_to_limit"):
        assert 0 <= history(f"eval/sft/{key}")[2] <= 1
    assert "eval/base/ood/forgotten" not in m  # the base is what the others are measured against
    for name in ("id_addsub", "ood_wording", "ood_mult", "ood_multistep"):
        forgotten, solved = history(f"eval/sft/{name}/forgotten"), history(f"eval/sft/{name}/newly_solved")
        before, after = history(f"eval/base/{name}")[0], history(f"eval/sft/{name}")
        assert sorted(forgotten) == sorted(solved) == [1, 2]
        for step in (1, 2):  # greedy pass@1: the accuracy moves by what was gained minus what was lost
            assert abs(after[step] - before - (solved[step] - forgotten[step])) < 1e-9, (name, step)
    ood = [history(f"eval/sft/{n}/forgotten")[2] for n in ("ood_wording", "ood_mult", "ood_multistep")]
    assert abs(history("eval/sft/ood/forgotten")[2] - sum(ood) / 3) < 1e-9

    items = [json.loads(line) for f in (tmp_path / "stages" / "evaluate").glob("*/items.jsonl") for line in open(f)]
    assert len(items) == 3 * 4 * 24  # base and two SFT models, four sets of 24 items
    assert all(r["steps"][0] == "wrong" for r in items if not r["right"])
    assert all(column in out.stdout for column in ("sound ID", "forgot OOD", "kept samples", "shortcut"))
