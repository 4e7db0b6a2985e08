"""The workflows' pictures carry the elements they promise: ticks at each IMP level's density, an accuracy axis
that does not magnify noise, the replicate spread, one colour scale and the epsilon contour for early-bird,
symlog swaps for jackpots, hatched dropped patches for data tickets. Each plot is caught as it is saved."""

import matplotlib

matplotlib.use("Agg")

import pytest
import torch
from matplotlib.collections import PolyCollection
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from lth_kernels.workflows.common.plots import plot_mask_distance
from lth_kernels.workflows.data_ticket.report import plot_tickets
from lth_kernels.workflows.imp.report import MIN_ACC_SPAN
from lth_kernels.workflows.imp.report import plot as imp_plot
from lth_kernels.workflows.jackpot.report import write_report as jackpot_report


@pytest.fixture
def saved(monkeypatch):
    """The figures saved during the test, in order."""
    figs, original = [], Figure.savefig

    def record(self, *args, **kwargs):
        figs.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", record)
    return figs


def _agg(values):
    mean = sum(values) / len(values)
    std = (sum((v - mean) ** 2 for v in values) / max(1, len(values) - 1)) ** 0.5
    return {"mean": mean, "std": std, "n": len(values), "values": values}


def _imp_summary(accs_per_level, density=0.8):
    levels = {}
    for lvl, accs in enumerate(accs_per_level):
        d = density ** lvl
        levels[str(lvl)] = {"main": {"density": _agg([d] * len(accs)), "test_acc_end": _agg(accs),
                                     "layers": {"fc.weight": d}}}
    return {"levels": levels, "branches": ["main"], "replicates": len(accs_per_level[0]), "run": "imp-test"}


def test_imp_accuracy_plot_ticks_each_level_shows_spread_and_a_sane_range(saved, tmp_path):
    # Three levels, accuracies within 0.4 points of each other: the axis must not stretch that to full height.
    imp_plot(_imp_summary([[0.902, 0.900], [0.903, 0.899], [0.901, 0.904]]), tmp_path)
    ax = saved[0].axes[0]
    ticks = sorted(round(t, 4) for t in ax.get_xticks())
    assert ticks == [64.0, 80.0, 100.0]  # one tick per level's density (in %)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["64", "80", "100"]
    low, high = ax.get_ylim()
    assert high - low >= MIN_ACC_SPAN and low <= 89.9 and high >= 90.4
    assert any(isinstance(c, PolyCollection) for c in ax.collections)  # the replicates' min-max band
    assert (tmp_path / "plots" / "accuracy_vs_density.png").stat().st_size > 0


def test_imp_accuracy_plot_of_one_replicate_has_no_band(saved, tmp_path):
    imp_plot(_imp_summary([[0.9], [0.8]]), tmp_path)
    assert not any(isinstance(c, PolyCollection) for c in saved[0].axes[0].collections)


def test_early_bird_heatmaps_share_one_scale_and_draw_the_epsilon_contour(saved, tmp_path):
    a = [[0.0, 0.3, 0.5], [0.3, 0.0, 0.05], [0.5, 0.05, 0.0]]
    b = [[0.0, 0.6, 0.9], [0.6, 0.0, 0.2], [0.9, 0.2, 0.0]]
    plot_mask_distance(tmp_path / "md.png", {"30": a, "50": b}, [1, 2, 3], {"30": 2, "50": None}, epsilon=0.1)
    fig = saved[0]
    images = [im for ax in fig.axes for im in ax.get_images()]
    assert len(images) == 2 and {im.get_clim() for im in images} == {(0.0, 0.9)}
    colorbars = [ax for ax in fig.axes if not ax.get_images() and ax.get_label() == "<colorbar>"]
    assert len(colorbars) == 1  # one scale, one bar
    contoured = [ax for ax in fig.axes if ax.get_images() and ax.collections]
    assert len(contoured) == 2  # both matrices cross epsilon = 0.1
    assert (tmp_path / "md.png").stat().st_size > 0


def test_jackpot_swaps_are_symlog_and_keep_zero_at_zero(saved, tmp_path):
    rule = {"curve": [(0, 0.5), (1, 0.7)], "swaps": [{"epoch": 1, "swaps": 120}, {"epoch": 2, "swaps": 0}],
            "acc": 0.7, "overlap_with_magnitude_init": 0.5}
    summary = {"sparsities": {"0.9": {"rules": {"jackpot": rule}, "overlap": {"magnitude": 0.4}}},
               "dense_acc": 0.9, "model": "m", "dataset": "d", "source": "trained:x"}
    jackpot_report(tmp_path, summary)
    ax_sw = saved[0].axes[1]
    assert ax_sw.get_yscale() == "symlog"
    assert list(ax_sw.lines[0].get_ydata()) == [120, 0]
    assert (tmp_path / "plots" / "jackpot.png").stat().st_size > 0


def test_data_ticket_dropped_patches_are_hatched(saved, tmp_path):
    images = torch.rand(2, 1, 8, 8)
    kept = torch.tensor([[0, 3], [1, 2]])  # 2 of the 4 patches (4x4) of each image
    plot_tickets(images, {0.5: kept}, (4, 4), mean=(0.0,), std=(1.0,), path=tmp_path / "tickets.png")
    fig = saved[0]
    rows = [fig.axes[0:2], fig.axes[2:4]]
    assert not any(isinstance(p, Rectangle) and p.get_hatch() for ax in rows[0] for p in ax.patches)
    for ax, dropped in zip(rows[1], ([1, 2], [0, 3])):
        hatched = [p for p in ax.patches if isinstance(p, Rectangle) and p.get_hatch()]
        corners = sorted((int(p.get_x() + 0.5), int(p.get_y() + 0.5)) for p in hatched)
        assert corners == sorted(((d % 2) * 4, (d // 2) * 4) for d in dropped)
    assert (tmp_path / "tickets.png").stat().st_size > 0
