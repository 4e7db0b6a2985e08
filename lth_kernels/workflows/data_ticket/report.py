"""Results of ``lth data-ticket``: ticket export/import, ``summary.json``, the a/b/c table and the plots.

The headline columns follow the paper: (a) the ticket student tested on its tickets, (b) the random-patch
student tested on the selector's patches (and, next to it, on random patches), (c) the all-patches student
tested on all patches. ``summary.json`` also holds every student under every evaluation.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from lth_kernels.training.rundir import atomic_save, atomic_write_json

FORMAT = "lth_kernels.data_ticket/1"


SUMMARY = "summary.json"


STABILITY = "stability.json"


# (column, student, evaluation)
HEADLINE = (("a ticket", "ticket", "ticket"), ("b random", "random", "ticket"), ("b @random", "random", "random"),
            ("fixed", "random_fixed", "ticket"), ("scaled", "random_scaled", "ticket"), ("c all", "all", "all"))


@torch.no_grad()
def select_dataset(selector, ds, batch_size: int = 256, device=None) -> torch.Tensor:
    """(len(ds), K) int64 tickets of every image of ``ds`` in order (no augmentation is applied here: pass
    an evaluation split)."""
    device = torch.device(device) if device is not None else next(selector.parameters()).device
    selector.to(device)
    t = getattr(ds, "tensors", None)
    if t is not None:
        chunks = t[0].split(batch_size)
    else:
        loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False)
        chunks = (x for x, _ in loader)
    out = [selector.select(x.to(device)).cpu() for x in chunks]
    return torch.cat(out) if out else torch.empty(0, selector.num_kept, dtype=torch.long)


def export_tickets(selector, ds, path: str | Path, *, batch_size: int = 256, dataset: str = "?",
                   split: str = "test") -> torch.Tensor:
    """Write the tickets of ``ds`` as safetensors: ``indices`` (N, K) int32, row i = image i's kept patch
    positions (row-major over the patch grid, ascending); string metadata names the selector (model, keep
    rate, drop blocks, grid, a digest of its weights), the data set and the split. Returns the indices."""
    idx = select_dataset(selector, ds, batch_size)
    meta = {"format": FORMAT, "dataset": dataset, "split": split, "num_images": str(idx.shape[0]),
            "num_kept": str(selector.num_kept), **selector.identity()}
    atomic_save({"indices": idx.to(torch.int32).contiguous()}, Path(path), metadata=meta)
    return idx


def load_tickets(path: str | Path) -> tuple[torch.Tensor, dict[str, str]]:
    """``(indices (N, K) int64, metadata)`` of a file written by ``export_tickets``."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"path: no ticket file at {path}")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("format") != FORMAT or "indices" not in set(f.keys()):
            raise ValueError(f"path: {path} is not a data-ticket file (format {meta.get('format')!r})")
        idx = f.get_tensor("indices").long()
    n = int(meta["num_patches"])
    if idx.dim() != 2 or idx.shape[1] != int(meta["num_kept"]) or (idx.numel() and (idx.min() < 0 or idx.max() >= n)):
        raise ValueError(f"path: {path} holds indices of shape {tuple(idx.shape)} that do not fit its metadata "
                         f"(K={meta['num_kept']}, {n} patches)")
    return idx, meta


def _agg(values: list) -> dict:
    vals = [v for v in values if v is not None]
    if not vals:
        return {"mean": None, "std": None, "n": 0, "values": []}
    mean = sum(vals) / len(vals)
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
    return {"mean": mean, "std": std, "n": len(vals), "values": vals}


def _done_acc(stage: Path):
    done = stage / "done.json"
    return json.loads(done.read_text())["metrics"].get("test_acc") if done.exists() else None


def build_summary(run_dir: str | Path) -> dict:
    """Aggregate every finished student (``keep_<r>/<student>/replicate_<i>/eval.json``) over replicates."""
    run_dir = Path(run_dir)
    rows: dict[str, dict] = {}
    for ev in sorted(run_dir.glob("keep_*/*/replicate_*/eval.json")):
        rec = json.loads(ev.read_text())
        row = rows.setdefault(f"{rec['keep_rate']:g}", {
            "keep_rate": rec["keep_rate"], "num_kept": rec["num_kept"], "num_patches": rec["num_patches"],
            "selector_acc": _done_acc(ev.parents[2] / "selector"), "students": {}})
        st = row["students"].setdefault(rec["student"], {"records": []})
        st["records"].append(rec)
    for row in rows.values():
        for st in row["students"].values():
            recs = st.pop("records")
            for e in ("all", "ticket", "random"):
                st[e] = _agg([r["test_acc"][e] for r in recs])
            st["train_samples_per_s"] = _agg([r["train_samples_per_s"] for r in recs])
            st["steps"] = recs[0]["steps"]
        row["headline"] = {col: row["students"].get(s, {}).get(e, _agg([])) for col, s, e in HEADLINE}
    for path in run_dir.glob(f"keep_*/{STABILITY}"):  # per-image ticket overlap (stability.py)
        rec = json.loads(path.read_text())
        key = path.parent.name.removeprefix("keep_")
        if key in rows:
            rows[key]["stability"] = rec
    speed = run_dir / "speed.json"
    return {"run_dir": str(run_dir), "dense_acc": _done_acc(run_dir / "dense"),
            "rows": dict(sorted(rows.items(), key=lambda kv: -kv[1]["keep_rate"])),
            "speed": json.loads(speed.read_text()) if speed.exists() else None}


def write_summary(run_dir: str | Path) -> dict:
    summary = build_summary(run_dir)
    atomic_write_json(Path(run_dir) / SUMMARY, summary)
    return summary


def load_summary(run_dir: str | Path) -> dict:
    path = Path(run_dir) / SUMMARY
    return json.loads(path.read_text()) if path.exists() else build_summary(run_dir)


def _cell(a: dict) -> str:
    if not a or a.get("mean") is None:
        return "-"
    return f"{100 * a['mean']:.1f}" + (f"±{100 * a['std']:.1f}" if a["n"] > 1 else "")


def format_table(summary: dict) -> str:
    """The a/b/c table (test accuracy %, mean ± std over replicates) and the speed lines."""
    cols = [c for c, _, _ in HEADLINE]
    lines = ["keep   K/N     selector  " + "  ".join(f"{c:>11}" for c in cols)]
    for row in summary["rows"].values():
        sel = "-" if row["selector_acc"] is None else f"{100 * row['selector_acc']:.1f}"
        lines.append(f"{row['keep_rate']:<6g} {row['num_kept']:>3}/{row['num_patches']:<4} {sel:>8}  "
                     + "  ".join(f"{_cell(row['headline'][c]):>11}" for c in cols))
    lines.append("a = ticket student on ticket patches; b = random-patch student on ticket patches (b @random: on "
                 "random patches); fixed / scaled = fixed random, random with 1/r^stages epochs (on ticket "
                 "patches); c = all-patches student on all patches. Test accuracy %, mean±std over replicates.")
    for row in summary["rows"].values():
        rates = {s: st["train_samples_per_s"]["mean"] for s, st in row["students"].items()
                 if st["train_samples_per_s"]["mean"] is not None}
        if rates:
            lines.append(f"training images/s at keep {row['keep_rate']:g}: "
                         + ", ".join(f"{s} {v:.0f}" for s, v in rates.items())
                         + " (ticket includes running the selector)")
    sp = summary.get("speed")
    if sp:
        lines.append(f"inference speed ({sp['device']}, {sp['threads']} threads, batch {sp['batch']}): dense ViT "
                     f"{sp['dense_images_per_s']:.0f} images/s")
        for r, v in sp["keep"].items():
            lines.append(f"  keep {r}: student on K={v['num_kept']} patches {v['student_images_per_s']:.0f} images/s "
                         f"({v['student_images_per_s'] / sp['dense_images_per_s']:.2f}x), selector "
                         f"{v['selector_images_per_s']:.0f} images/s")
    return "\n".join(lines)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_tickets(images: torch.Tensor, tickets: dict[float, torch.Tensor], patch: tuple[int, int], mean, std,
                 path: str | Path) -> None:
    """A grid: the images (first row), then one row per keep rate with the dropped patches covered by a flat
    neutral mask with a light cross-hatch (a wash of the image reads as strokes of the digit; a flat fill does
    not, and the hatch keeps it apart from a kept patch that happens to be grey)."""
    from matplotlib.patches import Rectangle

    plt = _plt()
    x = images.detach().cpu().float() * torch.tensor(std).view(1, -1, 1, 1) + torch.tensor(mean).view(1, -1, 1, 1)
    x = x.clamp(0, 1)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    b, _, h, w = x.shape
    gh, gw = h // patch[0], w // patch[1]
    rows = [("all", None)]
    for r, idx in tickets.items():
        keep = torch.zeros(b, gh * gw, dtype=torch.bool)
        keep[torch.arange(b).unsqueeze(1), idx.cpu().long()] = True
        rows.append((f"r={r:g}\nK={idx.shape[1]}/{gh * gw}", keep))
    fig, axes = plt.subplots(len(rows), b, figsize=(1.3 * b, 1.4 * len(rows)), squeeze=False)
    for i, (label, keep) in enumerate(rows):
        for j in range(b):
            ax = axes[i][j]
            ax.imshow(x[j].permute(1, 2, 0).numpy(), interpolation="nearest")
            for p in ([] if keep is None else (~keep[j]).nonzero().flatten().tolist()):
                ax.add_patch(Rectangle(((p % gw) * patch[1] - 0.5, (p // gw) * patch[0] - 0.5), patch[1], patch[0],
                                       facecolor="#d9d9d9", edgecolor="#9a9a9a", hatch="xx", lw=0.0,
                                       label="dropped"))
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(label, fontsize=8)
    fig.suptitle("data-level tickets: kept patches as they are, dropped patches hatched grey", fontsize=9)
    fig.tight_layout()
    _save(fig, path)


def plot_accuracy_vs_keep(summary: dict, path: str | Path) -> None:
    """Test accuracy of a, b and the other baselines against the fraction of patches kept; c as a line."""
    plt = _plt()
    rows = sorted(summary["rows"].values(), key=lambda r: r["keep_rate"])
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(5.5, 4))
    frac = [100 * r["num_kept"] / r["num_patches"] for r in rows]
    for col, style in (("a ticket", "o-"), ("b random", "s-"), ("b @random", "s:"), ("fixed", "^--"),
                       ("scaled", "v--")):
        pts = [(f, r["headline"][col]) for f, r in zip(frac, rows) if r["headline"][col]["mean"] is not None]
        if pts:
            ax.errorbar([p[0] for p in pts], [100 * p[1]["mean"] for p in pts],
                        yerr=[100 * p[1]["std"] for p in pts], fmt=style, capsize=3, label=col)
    c = [r["headline"]["c all"] for r in rows if r["headline"]["c all"]["mean"] is not None]
    if c:
        ax.axhline(100 * c[0]["mean"], color="k", lw=1, ls="-.", label="c all patches")
    ax.set_xlabel("% of patches kept (K / N)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("data-level tickets: a (ticket) vs b (random) vs c (all)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path)


def plot_stability(summary: dict, path: str | Path) -> None:
    """Histograms of the per-image ticket overlap (Jaccard) across augmentations and across selector
    checkpoints (the earliest against the final), one colour per keep rate, with the random-draw level."""
    rows = [r for r in sorted(summary["rows"].values(), key=lambda r: -r["keep_rate"]) if "stability" in r]
    if not rows:
        return
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
    bins = [i / 20 for i in range(21)]
    for row in rows:
        st, label = row["stability"], f"r={row['keep_rate']:g} (K={row['num_kept']})"
        line = axes[0].hist(st["augmentation"]["per_image"], bins=bins, histtype="step", label=label)[2][0]
        first = min(st["checkpoints"], key=int, default=None)
        if first is not None:
            axes[1].hist(st["checkpoints"][first]["per_image"], bins=bins, histtype="step", color=line.get_edgecolor(),
                         label=f"{label}, step {first} vs final")
        for ax in axes:
            ax.axvline(st["random_expectation"], color=line.get_edgecolor(), ls=":", lw=1)
    axes[0].set_title("across augmentations (flip + noise)", fontsize=9)
    axes[1].set_title("across selector checkpoints", fontsize=9)
    for ax in axes:
        ax.set_xlabel("Jaccard overlap of the K patches (dotted: random draws)")
        ax.legend(fontsize=7)
    axes[0].set_ylabel("images")
    fig.tight_layout()
    _save(fig, path)


def _save(fig, path: str | Path) -> None:
    import io

    from lth_kernels.training.rundir import atomic_write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    _plt().close(fig)
    atomic_write_bytes(path, buf.getvalue())
