"""The evaluation stage on the shipped testbed model: per-set counts of unreadable answers and timeouts."""

from pathlib import Path


def test_evaluate_logs_no_answer_share_and_timeouts_per_set():
    # The shipped testbed model, greedy on a few ID and OOD questions: the counts sit beside pass@1.
    from imm.data import DatasetConfig, load_data
    from imm.evaluate import EvalConfig, evaluate
    from imm.models import ModelConfig, load_model, load_tokenizer

    path = str(Path(__file__).resolve().parents[2] / "imm" / "assets" / "testbed")
    model, tok = load_model(ModelConfig(path=path), path), load_tokenizer(path)
    data = load_data(DatasetConfig(n_train=1, n_test=2))
    m = evaluate(model, tok, data, lambda it: it.get("prompt") or f"Question: {it['question']}\nAnswer: "
                 "Let's think step by step.", EvalConfig(max_new_tokens=48, batch_size=8))
    for name in data.tests:
        assert 0.0 <= m[f"{name}/no_answer"] <= 1.0 and m[f"{name}/timeouts"] == 0
        assert m[name] <= 1.0 - m[f"{name}/no_answer"]  # a sample without an answer is never right
