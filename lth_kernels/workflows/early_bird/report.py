"""The early-bird table: one row per ratio and retraining variant."""

from __future__ import annotations


def summary_table(rows: list[dict]) -> str:
    """The paper-style table; savings are against full dense training (the first row)."""
    from lth_kernels.workflows.common.structured import markdown_table

    base = rows[0] if rows and rows[0].get("method", "").startswith("dense") else {}
    shown = []
    for r in rows:
        r = dict(r)
        if base.get("train_flops") and r.get("train_flops"):
            r["flop_saving"] = f"{base['train_flops'] / r['train_flops']:.2f}x"
        if base.get("wall_s") and r.get("wall_s"):
            r["time_saving"] = f"{base['wall_s'] / r['wall_s']:.2f}x"
        for k in ("flops", "train_flops"):
            if isinstance(r.get(k), (int, float)):
                r[k] = f"{r[k] / 1e6:.4g}" if k == "flops" else f"{r[k] / 1e12:.4g}"
        if isinstance(r.get("wall_s"), float):
            r["wall_s"] = f"{r['wall_s']:.1f}"
        shown.append(r)
    return markdown_table(shown, [("method", "method"), ("ratio", "ratio %"), ("eb_epoch", "EB epoch"),
                                  ("params", "params"), ("flops", "MFLOPs/sample"),
                                  ("train_flops", "train TFLOPs"), ("flop_saving", "FLOPs saved"),
                                  ("wall_s", "wall s"), ("time_saving", "time saved"), ("test_acc", "top-1 %")],
                          percent=("test_acc",))
