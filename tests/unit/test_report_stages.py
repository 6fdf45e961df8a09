"""The every-stage table: per method line and stage, pass@1 per set, the no-answer and ran-to-limit
shares averaged over the single sets, and the OOD items moved since the base, over seeds."""

from imm.report.stages import stage_table
from imm.report.tables import RunRecord


def run(seed: int, method: str, sft_id: float, merged: dict | None = None) -> RunRecord:
    m = {"eval/base/id": {0: .1}, "eval/base/ood": {0: .05}, "eval/base/a": {0: .1}, "eval/base/b": {0: .05},
         "eval/base/a/no_answer": {0: .2}, "eval/base/b/no_answer": {0: .4},
         "eval/sft/id": {1: sft_id}, "eval/sft/a": {1: sft_id}, "eval/sft/ood": {1: 0.0},
         "eval/sft/ood/forgotten": {1: .05}, "eval/sft/a/ran_to_limit": {1: .5}, "eval/sft/b/ran_to_limit": {1: .1},
         "eval/sft/a/right_answered": {1: .6}, "eval/sft/b/right_answered": {1: .2}}
    return RunRecord(f"{method}{seed}", tags={"method": method, "alpha": "0.5", "seed": str(seed)},
                     metrics=m | (merged or {}))


def test_stages_over_seeds_with_shares_averaged_over_the_single_sets():
    header, body = stage_table([run(0, "vanilla", .2), run(1, "vanilla", .4)], ["a", "b", "id", "ood"])
    assert header == ["method", "stage", "seeds", "a", "b", "ID", "OOD", "no answer", "ran to limit",
                      "right among answered", "OOD forgotten", "OOD newly solved"]
    base, sft = body
    assert base[:3] == ["vanilla", "Base", "2"] and base[7] == "30.0 ± 0.0"  # (20 + 40) / 2, no ID / OOD mix-in
    assert sft[1] == "SFT 1" and sft[3] == "30.0 ± 14.1" and sft[4] == ""  # set b has no SFT pass@1 logged
    assert sft[8] == "30.0 ± 0.0" and sft[9] == "40.0 ± 0.0" and base[9] == ""  # (60 + 20) / 2; none logged
    assert sft[10] == "5.0 ± 0.0" and sft[11] == ""


def test_a_merging_line_shows_sft_and_merge_of_each_iteration():
    merged = {"eval/merged/id": {1: .3}, "eval/merged/a": {1: .3}, "eval/merged/ood": {1: .1}}
    _, body = stage_table([run(0, "imm", .2, merged)], ["a", "id", "ood"])
    assert [row[1] for row in body] == ["Base", "SFT 1", "Merge 1"]
    assert body[2][3:6] == ["30.0", "30.0", "10.0"] and body[2][2] == "1"


def test_a_merging_line_evaluated_only_at_its_end_still_shows_its_merged_model():
    # run.evaluate=final: a merging job evaluates the base and its last merged model, no SFT model
    r = RunRecord("imm0", tags={"method": "imm", "alpha": "0.3", "seed": "0"},
                  metrics={"eval/base/id": {0: .5}, "eval/base/a": {0: .5}, "eval/merged/id": {2: .7}, "eval/merged/a": {2: .7}})
    _, body = stage_table([r], ["a", "id"])
    assert [row[1] for row in body] == ["Base", "Merge 2"] and body[1][3:5] == ["70.0", "70.0"]
