"""The PNG plots of a sweep: throughput, speed-up, error scaling and scaling.

matplotlib is imported (with the Agg backend) only when a plot is drawn.
"""

import os

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _log_xticks(ax, values, labels=None, fontsize=8):
    """Ticks exactly at ``values`` on a log x axis, no minor tick labels."""
    from matplotlib.ticker import NullFormatter

    ax.set_xticks(
        list(values), [str(v) for v in values] if labels is None else labels, fontsize=fontsize
    )
    ax.xaxis.set_minor_formatter(NullFormatter())


def _at_largest_n(points, dtype):
    """The throughput points of ``dtype`` at the sweep's largest N, sorted by d."""
    pts = [p for p in points if p["dtype"] == dtype]
    if not pts:
        return []
    n_max = max(p["N"] for p in pts)
    return sorted((p for p in pts if p["N"] == n_max), key=lambda p: (p["d"], p["T"]))


def _figure(n_panels, width=5.5, height=4.0):
    """``(plt, fig, axes)``: one row of ``n_panels`` panels."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, n_panels, figsize=(width * n_panels, height), squeeze=False)
    return plt, fig, axes[0]


def _save(plt, fig, path):
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _by_dtype(doc):
    """``[(title, points at the largest N)]`` of the throughput sweep, one per dtype, and
    per model when the sweep has more than one (the ``blocks`` preset's GPT-2 and BERT
    layers at the same widths)."""
    dtypes = sorted({p["dtype"] for p in doc["throughput"]})
    models = list(dict.fromkeys(p.get("model", "paper") for p in doc["throughput"]))
    panels = []
    for dt in dtypes:
        pts = _at_largest_n(doc["throughput"], dt)
        if len(models) == 1:
            panels.append((dt, pts))
            continue
        for m in models:
            panels.append((f"{dt} {m}", [p for p in pts if p.get("model", "paper") == m]))
    return panels


def _finish_width_panel(ax, pts):
    """Config, width and batch ticks, grid and legend of a panel over the widths of ``pts``."""
    _log_xticks(
        ax,
        [p["d"] for p in pts],
        [f"{p['config']}\nd={p['d']}\nB={p['B']}" for p in pts],
        fontsize=7,
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)


def plot_throughput(doc, path):
    """GFLOP/s against d for ours and each peer (largest N), one panel per dtype."""
    panels = _by_dtype(doc)
    plt, fig, axes = _figure(len(panels))
    for ax, (dt, pts) in zip(axes, panels):
        ds = [p["d"] for p in pts]
        ax.plot(ds, [p["ours"]["gflops"] for p in pts], "o-", lw=2, label="tfkernels")
        for name in pts[0]["peers"]:
            ys = [p["peers"][name].get("gflops", np.nan) for p in pts]
            if np.any(np.isfinite(ys)):
                ax.plot(ds, ys, "s--", label=name)
        measured = pts[0].get("measured_peak_gflops")
        if measured:
            ax.axhline(measured, color="gray", ls=":", label="measured FMA peak")
        pk = pts[0]["peak_gflops"]  # max(nominal, measured)
        which = "measured" if pk > pts[0].get("nominal_peak_gflops", pk) else "nominal"
        ax.set(
            xscale="log",
            yscale="log",
            xlabel="width d",
            ylabel="GFLOP/s",
            title=f"{dt}, N={pts[0]['N']} (peak {pk:.0f} GFLOP/s, {which})",
        )
        _finish_width_panel(ax, pts)
    _save(plt, fig, path)


def plot_speedup(doc, path):
    """Our speed-up over each peer and the best one against d (largest N), one panel per
    dtype; with issue 18's goals, the goal of each configuration as a red tick."""
    panels = _by_dtype(doc)
    plt, fig, axes = _figure(len(panels))
    for ax, (dt, pts) in zip(axes, panels):
        ds = [p["d"] for p in pts]
        for name in pts[0]["peers"]:
            ys = [p["peers"][name].get("speedup", np.nan) for p in pts]
            if np.any(np.isfinite(ys)):
                ax.plot(ds, ys, "o-", label=f"vs {name}")
        best = [(p.get("best_peer") or {}).get("speedup", np.nan) for p in pts]
        if np.any(np.isfinite(best)):
            ax.plot(ds, best, "k^-", lw=2, label="vs best peer")
        need = [(p.get("goal") or {}).get("speedup_need", np.nan) for p in pts]
        if np.any(np.isfinite(need)):
            issue = "17" if doc.get("preset") == "blocks" else "18"
            ax.plot(ds, need, "r_", ms=18, mew=2, label=f"goal (issue {issue})")
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set(
            xscale="log",
            yscale="log",
            xlabel="width d",
            ylabel="speed-up (peer time / our time)",
            title=f"{dt}, N={pts[0]['N']}",
        )
        _finish_width_panel(ax, pts)
    _save(plt, fig, path)


def plot_errors(doc, path):
    """E(N) against N, log-log, with fitted orders; one panel per system."""
    systems = list(doc["errors"])
    plt, fig, axes = _figure(len(systems))
    for ax, system in zip(axes, systems):
        e = doc["errors"][system]
        for m, r in e["methods"].items():
            order = "n/a" if r["order"] is None else f"{r['order']:.2f}"
            style = ":" if m == "averaged" else "-"
            ax.plot(
                e["layers"],
                np.maximum(r["errors"], 1e-17),
                "o" + style,
                label=f"{m}: order {order} (expect {r['expected_order']})",
            )
        ax.axhline(e["floor"], color="gray", lw=0.8, ls="--")
        ax.set(
            xscale="log",
            yscale="log",
            xlabel="layers N",
            ylabel="relative error E(N)",
            title=f"{system} (reference: {e['reference']})",
        )
        _log_xticks(ax, e["layers"])
        ax.title.set_fontsize(8)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    _save(plt, fig, path)


def plot_scaling(doc, path):
    """Time against B, N, T, d (log-log) and speed-up against threads."""
    sc = doc["scaling"]
    axes_names = [a for a in ("B", "N", "T", "d", "threads") if a in sc]
    plt, fig, axes = _figure(len(axes_names), width=3.6, height=3.4)
    for ax, name in zip(axes, axes_names):
        pts = sc[name]["points"]
        xs = [p["value"] for p in pts]
        if name == "threads":
            ax.plot(xs, [p["speedup"] for p in pts], "o-", label="measured")
            ax.plot(xs, xs, "k--", lw=0.8, label="ideal")
            ax.set(xlabel="threads", ylabel="speed-up", title="parallel speed-up")
            ax.set_xticks(xs)
            ax.legend(fontsize=8)
        else:
            ax.plot(xs, [p["median_s"] for p in pts], "o-")
            exp = sc[name]["exponent"]
            ax.set(
                xscale="log",
                yscale="log",
                xlabel=name,
                ylabel="seconds per call",
                title=f"time ~ {name}^{exp:.2f}" if exp is not None else name,
            )
            _log_xticks(ax, xs)
        ax.grid(True, which="both", alpha=0.3)
    _save(plt, fig, path)


def write_plots(doc, stem):
    """Write every plot the document has data for; return their file names."""
    jobs = [
        ("throughput", plot_throughput, "throughput"),
        ("throughput", plot_speedup, "speedup"),
        ("errors", plot_errors, "errors"),
        ("scaling", plot_scaling, "scaling"),
    ]
    names = []
    for key, fn, suffix in jobs:
        if doc.get(key):
            path = f"{stem}-{suffix}.png"
            fn(doc, path)
            names.append(os.path.basename(path))
    return names
