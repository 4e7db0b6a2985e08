"""The rows ``bench/e2e.py`` derives from its measurements: ratios against dense and W*M, the 10-level IMP cost
extrapolated from the measured step times, and the goals of the end-to-end benchmark against the ratios."""

from __future__ import annotations

IMP_LEVELS, IMP_FRACTION = 10, 0.2  # lth imp's default: 20 % of the remaining weights per level
UNSTRUCTURED = ("unstructured80", "unstructured95")
# (imp preset, training images per epoch) for the IMP extrapolation: CIFAR-10 and ImageNet-1k train splits.
IMP_PRESETS = {"resnet20": ("cifar_resnet_20-cifar10", 50_000), "resnet50": ("resnet50-imagenet", 1_281_167)}


def add_ratios(rows: list[dict]) -> None:
    """vs_dense: images/s over the dense row of the same section and mode (resnet20: the device pipeline's);
    vs_wm: over the W*M row of the same ticket."""
    ips = {(r["section"], r["mode"], r["pipeline"], r["variant"], r["ticket"]): r.get("images_per_s")
           for r in rows if r.get("images_per_s")}
    for r in rows:
        if not r.get("images_per_s"):
            continue
        dense_pipe = "device" if r["section"] == "resnet20" else "memory"
        dense = ips.get((r["section"], r["mode"], dense_pipe, "dense", "dense"))
        wm = ips.get((r["section"], r["mode"], r["pipeline"], "wm", r["ticket"]))
        r["vs_dense"] = r["images_per_s"] / dense if dense else None
        r["vs_wm"] = r["images_per_s"] / wm if wm and r["variant"] != "wm" and r["ticket"] != "dense" else None


def _interp(x: float, points: list[tuple[float, float]]) -> float:
    """Piecewise-linear through ``points`` (sorted by x), constant beyond the ends."""
    points = sorted(points)
    if x <= points[0][0]:
        return points[0][1]
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0) if x1 > x0 else y1
    return points[-1][1]


def imp_rows(rows: list[dict]) -> list[dict]:
    """Hours of a 10-level IMP run (level L keeps 0.8^L of the weights) on one device, per variant, from the
    eager rows: level 0 dense, level L>0 interpolated in sparsity between dense and the measured tickets."""
    from bench import _e2e_variants as ev

    out = []
    for section, (preset, num_train) in IMP_PRESETS.items():
        p = ev.imp_presets()[preset]
        images = ev.steps_for(p["training.training_steps"], num_train, p["dataset.batch_size"]) * \
            p["dataset.batch_size"]
        pipe = "device" if section == "resnet20" else "memory"
        eager = [r for r in rows if r["section"] == section and r["mode"] == "eager" and r.get("ms_per_step")]
        dense = next((r for r in eager if r["variant"] == "dense" and r["pipeline"] == pipe), None)
        if dense is None:
            continue
        sparsities = [1 - (1 - IMP_FRACTION) ** level for level in range(IMP_LEVELS)]
        variants = {"dense": [(0.0, dense["images_per_s"])]}
        for v in ("wm", "ours"):
            pts = [(1 - r["density"], r["images_per_s"]) for r in eager
                   if r["variant"] == v and r["ticket"] in UNSTRUCTURED and r["pipeline"] == pipe]
            if pts:
                variants[v] = [(0.0, dense["images_per_s"]), *pts]
        loaders = [r["images_per_s"] for r in eager if r["variant"] == "dense" and r["pipeline"].startswith("loader")]
        if loaders:
            variants["dense_loader"] = [(0.0, max(loaders))]
        for v, pts in variants.items():
            hours = sum(images / (_interp(s, pts) if s > 0 else pts[0][1]) for s in sparsities) / 3600
            out.append({"section": "imp10", "model": dense["model"], "variant": v, "ticket": f"{IMP_LEVELS} levels",
                        "mode": "eager", "pipeline": "loader" if v == "dense_loader" else pipe,
                        "batch": dense["batch"], "imp10_hours": hours})
    return out


def target_rows(rows: list[dict]) -> list[dict]:
    """The goals: measured value, goal, met (None when the rows were not measured)."""
    def find(**kw):
        return [r for r in rows if r.get("images_per_s") and all(r.get(k) == v for k, v in kw.items())]

    out = []

    def add(name, values, goal):
        value = min(values) if values else None
        out.append({"section": "target", "target": name, "value": value, "goal": goal,
                    "met": None if value is None else value >= goal})

    for mode in ("eager", "compile"):
        add(f"deit_s keep 0.7 data ticket (with selection) vs dense, {mode}",
            [r["vs_dense"] for r in find(section="deit_s", variant="student_selector", ticket="keep0.7", mode=mode)
             if r.get("vs_dense")], 1.6)
        add(f"vit_b 64-block 90% ticket vs dense, {mode}",
            [r["vs_dense"] for r in find(section="vit_b", variant="ours", ticket="block64_90", mode=mode)
             if r.get("vs_dense")], 1.5)
        add(f"every unstructured ticket vs W*M (min), {mode}",
            [r["vs_wm"] for r in rows if r.get("vs_wm") and r["mode"] == mode and r["ticket"] in UNSTRUCTURED
             and r["variant"] == "ours"], 1.0)
        dev = find(section="resnet20", variant="dense", pipeline="device", mode=mode)
        loaders = [r["images_per_s"] for r in rows if r["section"] == "resnet20" and r["mode"] == mode and
                   r["variant"] == "dense" and r["pipeline"].startswith("loader") and r.get("images_per_s")]
        add(f"resnet20 device pipeline vs the best DataLoader, {mode}",
            [dev[0]["images_per_s"] / max(loaders)] if dev and loaders else [], 3.0)
    return out
