"""Writing a sweep document: CSV, plots and JSON as one set, then the results README."""

import csv
import json

import numpy as np

from ..studies.output import ResultSet
from . import plots as _plots
from .report import write_readme

#: (document key, plot function name in :mod:`.plots`, file suffix) of every plot.
PLOTS = (
    ("throughput", "plot_throughput", "throughput"),
    ("throughput", "plot_speedup", "speedup"),
    ("errors", "plot_errors", "errors"),
    ("scaling", "plot_scaling", "scaling"),
)


def write_outputs(doc, out_dir, plots=True):
    """Write CSV, plots and JSON of one sweep as one set, then the README.

    Every file goes to a temporary name and all are renamed at the end, the JSON last
    (:class:`~tfkernels.studies.output.ResultSet`), so ``out_dir`` holds the previous
    sweep's files or this one's, never a mix; the README is regenerated only when it
    is missing or was generated (:func:`~.report.write_readme`).
    """
    stem = f"bench-{doc['preset']}"
    with ResultSet(out_dir, name="out_dir") as rs:
        write_csv(doc, rs.path(stem + ".csv"))
        if plots:
            doc["plots"] = []
            for key, fn, suffix in PLOTS:
                if doc.get(key):
                    name = f"{stem}-{suffix}.png"
                    getattr(_plots, fn)(doc, rs.path(name))
                    doc["plots"].append(name)
        with open(rs.path(stem + ".json"), "w") as fh:
            json.dump(doc, fh, indent=1, default=_json_default)
    write_readme(out_dir)


def _json_default(obj):
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")


CSV_FIELDS = (
    "section",
    "dtype",
    "config",
    "B",
    "N",
    "T",
    "d",
    "heads",
    "method",
    "impl",
    "variant",
    "status",
    "median_s",
    "traj_layers_per_s",
    "gflops",
    "frac_peak",
    "frac_measured_peak",
    "speedup",
    "goal_met",
    "axis",
    "value",
    "threads",
    "system",
    "error",
    "order",
)


def csv_rows(doc):
    """Flatten a sweep document into CSV rows (dicts over :data:`CSV_FIELDS`)."""
    rows = []
    for p in doc.get("throughput", []):
        base = {
            "section": "throughput",
            **{k: p[k] for k in ("dtype", "config", "B", "N", "T", "d", "heads", "method")},
        }
        rows.append(
            {
                **base,
                "impl": "tfkernels",
                "status": "ok",
                **{
                    k: p["ours"][k]
                    for k in ("median_s", "traj_layers_per_s", "gflops", "frac_peak")
                },
                "frac_measured_peak": p["ours"].get("frac_measured_peak"),
                "speedup": (p.get("best_peer") or {}).get("speedup"),
                "goal_met": (p.get("goal") or {}).get("met"),
            }
        )
        for name, peer in p["peers"].items():
            for vname, v in peer["variants"].items():
                rows.append(
                    {
                        **base,
                        "impl": name,
                        "variant": vname,
                        "status": v["status"],
                        **{
                            k: v.get(k)
                            for k in ("median_s", "traj_layers_per_s", "gflops", "frac_peak")
                        },
                        "speedup": (
                            v["median_s"] / p["ours"]["median_s"] if "median_s" in v else None
                        ),
                    }
                )
    for axis, entry in doc.get("scaling", {}).items():
        if not isinstance(entry, dict) or "points" not in entry:
            continue
        for e in entry["points"]:
            rows.append(
                {
                    "section": "scaling",
                    "dtype": doc["scaling"]["dtype"],
                    "axis": axis,
                    "impl": "tfkernels",
                    **{
                        k: e[k]
                        for k in ("value", "B", "N", "T", "d", "heads", "threads", "median_s")
                    },
                    "speedup": e.get("speedup"),
                }
            )
    for system, entry in doc.get("errors", {}).items():
        for m, r in entry["methods"].items():
            for N, err in zip(entry["layers"], r["errors"]):
                rows.append(
                    {
                        "section": "errors",
                        "system": system,
                        "method": m,
                        "N": N,
                        "error": err,
                        "order": r["order"],
                        "impl": "tfkernels",
                    }
                )
    return rows


def write_csv(doc, path):
    """Write :func:`csv_rows` to ``path``."""
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        for row in csv_rows(doc):
            w.writerow(row)
