"""The α curve (imm.report.plots.alpha_figure): the merged model's points and the reference lines it draws."""

import pytest

from imm.report import plots


def test_the_alpha_curve_draws_the_merged_points_and_the_reference_lines(tmp_path, monkeypatch):
    drawn = {}

    def keep(fig, path, top=None):
        drawn["axes"] = fig.axes
        return path

    monkeypatch.setattr(plots, "_save", keep)
    rows = [{"set": s, "alpha": a, "mean": m, "std": 0.01} for s, pts in
            (("id", ((0.9, 0.50), (0.1, 0.70), (0.5, 0.65))), ("ood", ((0.1, 0.53), (0.9, 0.40))), ("gsm8k", ((0.1, 0.7),)))
            for a, m in pts]
    path = plots.alpha_figure(rows, {"Base": {"id": 0.5, "ood": 0.395}, "vanilla": {"id": 0.718, "ood": None}},
                              tmp_path, "α")
    assert path == tmp_path / "alpha.png"
    id_ax, ood_ax = drawn["axes"]
    merged = id_ax.lines[0]
    assert list(merged.get_xdata()) == [0.1, 0.5, 0.9] and list(merged.get_ydata()) == pytest.approx([70, 65, 50])
    assert [line.get_label() for line in id_ax.lines[1:]] == ["Base", "vanilla"]
    assert id_ax.lines[2].get_ydata()[0] == pytest.approx(71.8)
    assert [line.get_label() for line in ood_ax.lines[1:]] == ["Base"]  # no OOD value: no line
    assert ood_ax.lines[1].get_ydata()[0] == pytest.approx(39.5)


def test_no_id_or_ood_rows_draw_nothing(tmp_path):
    assert plots.alpha_figure([{"set": "gsm8k", "alpha": 0.1, "mean": 0.7, "std": 0.0}], {}, tmp_path, "α") is None
