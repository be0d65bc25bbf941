"""The results README: one section per sweep document, and the goals judged.

A sweep names the goals it is judged against (``settings.goals``): issue 5's (every
preset but ``mc`` and ``blocks``), issue 18's (``mc``: ratios to the best peer and the
fraction of the measured FMA peak per configuration, :func:`issue18_goal`) or issue 17's
(``blocks``: ratios to the best peer computing the same real block, :func:`issue17_goal`).

:func:`write_readme` regenerates ``<out>/README.md`` from every ``bench-*.json`` (and
``paper/paper.json``) in the folder, including documents written by older versions of
the harness (fields added since are optional here).
"""

import json
import os
import warnings

import numpy as np

from ..studies.output import write_text

#: Order of the presets' sections in the README.
PRESET_ORDER = ("full", "mc", "blocks", "quick", "custom", "ci")

#: Issue 18's goals per configuration: (× the best peer, in float32 and float64;
#: fraction of the measured FMA peak, in float32 only).
ISSUE18_GOALS = {
    "tiny": (2.5, 0.50),
    "small": (2.5, 0.50),
    "medium": (1.5, 0.70),
    "large": (1.5, 0.70),
}


#: Issue 17's goals per size of the real blocks' configurations (``tiny-gpt2``,
#: ``large-bert``, …): × the best peer computing the same block, float32; no peak goal
#: (the fraction of peak is reported beside it).
ISSUE17_GOALS = {"tiny": 2.0, "small": 2.0, "medium": 1.2, "large": 1.2}

#: The goal sets whose points are judged one by one (:func:`point_goal`).
PER_POINT_GOALS = ("issue18", "issue17")


def load_docs(out_dir):
    """Every ``bench-*.json`` in ``out_dir``, ordered full, mc, quick, custom, ci."""
    docs = []
    for name in sorted(os.listdir(out_dir)):
        if name.startswith("bench-") and name.endswith(".json"):
            with open(os.path.join(out_dir, name)) as fh:
                docs.append(json.load(fh))
    rank = {p: i for i, p in enumerate(PRESET_ORDER)}
    return sorted(docs, key=lambda d: rank.get(d["preset"], len(rank)))


def fmt(x, spec=".3g"):
    """``x`` formatted with ``spec``; "—" for None and non-finite floats."""
    return "—" if x is None or (isinstance(x, float) and not np.isfinite(x)) else format(x, spec)


def readme_throughput(doc):
    """Markdown table: one row per throughput point, ratios against each peer."""
    names = list(doc["throughput"][0]["peers"]) if doc["throughput"] else []
    head = (
        ["config (T, d, H)", "dtype", "N", "B", "tfkernels traj-layers/s", "GFLOP/s", "% peak"]
        + [f"{n}: traj-layers/s (×ours)" for n in names]
        + ["busy"]
    )
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for p in doc["throughput"]:
        o = p["ours"]
        cells = [
            f"{p['config']} ({p['T']}, {p['d']}, {p['heads']})",
            p["dtype"],
            p["N"],
            p["B"],
            fmt(o["traj_layers_per_s"], ",.0f"),
            fmt(o["gflops"], ".1f"),
            fmt(100 * o["frac_peak"], ".1f"),
        ]
        for n in names:
            peer = p["peers"][n]
            if peer["status"] == "ok":
                cells.append(
                    f"{peer['traj_layers_per_s']:,.0f} [{peer['best_variant']}] "
                    f"(**{peer['speedup']:.2f}×**)"
                )
            else:
                cells.append(peer["status"])
        busy = p.get("contention", {}).get("foreign_cpu_frac")
        cells.append("—" if busy is None else f"{100 * busy:.0f} %")
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return lines


def goal_set(doc):
    """The goals a sweep document is judged against: ``issue5`` or ``issue18``."""
    return doc.get("settings", {}).get("goals", "issue5")


def _all_met(verdicts):
    """False if any verdict is False, else None if any is None (not judged), else True."""
    if False in verdicts:
        return False
    return None if None in verdicts else True


def issue18_goal(point):
    """Issue 18's goal of one throughput point, judged (None for an unnamed config).

    Returns
    -------
    dict or None
        ``speedup_need`` / ``speedup`` / ``speedup_met`` against the best timed peer
        (``speedup_met`` None when no peer was timed); in float32 also ``peak_need`` /
        ``frac_peak`` / ``peak_met`` / ``peak_basis`` (the measured FMA peak, or the
        peak the sweep used where none was measured); ``met``: all of them (None when
        a part could not be judged).
    """
    need = ISSUE18_GOALS.get(point["config"])
    if need is None:
        return None
    speedup_need, peak_need = need
    g = _speedup_goal(point, speedup_need)
    verdicts = [g["speedup_met"]]
    if point["dtype"] == "float32":
        frac = point["ours"].get("frac_measured_peak")
        basis = "measured FMA peak"
        if frac is None:
            frac, basis = point["ours"]["frac_peak"], "peak used"
        g.update(peak_need=peak_need, frac_peak=frac, peak_met=frac >= peak_need, peak_basis=basis)
        verdicts.append(g["peak_met"])
    g["met"] = _all_met(verdicts)
    return g


def _speedup_goal(point, need):
    """``speedup_need`` / ``speedup`` / ``speedup_met`` of a point against its best timed
    peer (``speedup`` and ``speedup_met`` None when no peer was timed)."""
    best = point.get("best_peer")
    return {
        "speedup_need": need,
        "speedup": best["speedup"] if best else None,
        "speedup_met": best["speedup"] >= need if best else None,
    }


def issue17_goal(point):
    """Issue 17's goal of one throughput point of a real block, judged (None for a
    configuration without one, or a dtype other than float32): ``speedup_need`` /
    ``speedup`` / ``speedup_met`` / ``met`` as in :func:`issue18_goal`."""
    need = ISSUE17_GOALS.get(point["config"].split("-")[0])
    if need is None or point.get("model", "paper") == "paper" or point["dtype"] != "float32":
        return None
    g = _speedup_goal(point, need)
    g["met"] = g["speedup_met"]
    return g


def point_goal(point, goals):
    """The goal of one point under the goal set ``goals`` (None for issue 5's, which
    are judged over the whole sweep)."""
    if goals == "issue18":
        return issue18_goal(point)
    if goals == "issue17":
        return issue17_goal(point)
    return None


def add_goals(points, goals="issue5"):
    """Add ``goal`` (:func:`point_goal`) to each point of an ``issue18`` or ``issue17``
    sweep."""
    if goals in PER_POINT_GOALS:
        for p in points:
            p["goal"] = point_goal(p, goals)
    return points


def _yes_no(ok):
    return "not judged" if ok is None else ("yes" if ok else "**no**")


def goal_cell(goal):
    """The goal column of a point: the verdict, then each part of it."""
    if not goal:
        return "—"
    word = lambda ok: _yes_no(ok).strip("*")  # noqa: E731
    parts = [f"≥ {goal['speedup_need']:g}× {word(goal['speedup_met'])}"]
    if "peak_need" in goal:
        parts.append(f"≥ {100 * goal['peak_need']:.0f} % peak {word(goal['peak_met'])}")
    return f"{_yes_no(goal['met'])} ({', '.join(parts)})"


def _ms(seconds):
    return fmt(None if seconds is None else 1e3 * seconds, ",.1f")


def readme_ratios(doc):
    """Markdown table of an ``issue18`` sweep: times, ratios, % of the FMA peak, goals.

    One row per point: our time per call, each peer's (its fastest variant) with our
    ratio over it, the best peer and our ratio over it, our GFLOP/s and fraction of the
    measured FMA peak, and issue 18's goal.
    """
    names = list(doc["throughput"][0]["peers"]) if doc["throughput"] else []
    head = (
        ["config (T, d, H)", "dtype", "N", "B", "tfkernels ms"]
        + [f"{n} ms (×ours)" for n in names]
        + ["best peer (×ours)", "GFLOP/s", "% measured FMA peak"]
        + [f"goal (issue {goal_set(doc)[5:]})", "busy"]
    )
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for p in doc["throughput"]:
        o = p["ours"]
        cells = [
            f"{p['config']} ({p['T']}, {p['d']}, {p['heads']})",
            p["dtype"],
            p["N"],
            p["B"],
            _ms(o["median_s"]),
        ]
        for n in names:
            peer = p["peers"][n]
            cells.append(
                f"{_ms(peer['median_s'])} [{peer['best_variant']}] ({peer['speedup']:.2f}×)"
                if peer["status"] == "ok"
                else peer["status"]
            )
        b = p.get("best_peer")
        cells.append(f"**{b['speedup']:.2f}×** {b['peer']}[{b['variant']}]" if b else "—")
        frac = o.get("frac_measured_peak")
        cells += [
            fmt(o["gflops"], ".1f"),
            fmt(None if frac is None else 100 * frac, ".1f"),
            goal_cell(p.get("goal", point_goal(p, goal_set(doc)))),
        ]
        busy = p.get("contention", {}).get("foreign_cpu_frac")
        cells.append("—" if busy is None else f"{100 * busy:.0f} %")
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return lines


def throughput_table(doc):
    """The throughput table of a sweep: :func:`readme_ratios` for issue 18's goals, else
    :func:`readme_throughput`."""
    return readme_ratios(doc) if goal_set(doc) in PER_POINT_GOALS else readme_throughput(doc)


def _ghz(value):
    return f"{value:.2f} GHz" if isinstance(value, (int, float)) else str(value)


def readme_machine_facts(machine):
    """One paragraph of the machine facts a sweep recorded (none for older documents)."""
    f = machine.get("facts")
    if not f:
        return []
    c = f["clock"]
    mhz = c["reported_mhz"]
    implied = c.get("implied_ghz", {})
    peaks = f.get("measured_peak_gflops", {})
    n = f.get("sweep_threads", "?")
    bits = lambda b: f"{b}-bit" if isinstance(b, int) else str(b)  # noqa: E731
    text = (
        f"Machine facts: {f['model_name']} ({f['vendor']}, family {f['family']} model "
        f"{f['model']}); vector ISA {f['vector_isa']} ({bits(f['vector_bits'])} registers, "
        f"FMA datapath {bits(f['fma_datapath_bits'])}, tfkernels' vectors "
        f"{bits(f['kernel_vector_bits'])}); {f['physical_cores']} physical core(s) × "
        f"{f['threads_per_core']} thread(s) per core, {f['sockets']} socket(s), "
        f"{f['logical_cpus']} logical CPU(s), {f['usable_cpus']} usable; clocks: base "
        f"{_ghz(c['base_ghz'])}, max {_ghz(c['max_ghz'])}, reported "
        + (f"{mhz:.0f} MHz" if isinstance(mhz, (int, float)) else str(mhz))
    )
    if any(v is not None for v in implied.values()):
        text += ", implied by the FMA peak " + " / ".join(
            f"{_ghz(v)} {dt}" for dt, v in implied.items() if v is not None
        )
    if any(v is not None for v in peaks.values()):
        text += f"; measured FMA peak on {n} thread(s): " + ", ".join(
            f"{v:.0f} GFLOP/s {dt}" for dt, v in peaks.items() if v is not None
        )
    blas = [b for b in machine.get("blas", []) if b.get("architecture")]
    if blas:
        text += "; BLAS: " + ", ".join(
            f"{b['internal_api']} {b['version']} ({b.get('library', '?')}, "
            f"{b['architecture']} kernel)"
            for b in blas
        )
    env = machine.get("env", {})
    set_vars = [k for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if env.get(k)]
    if set_vars:
        text += "; " + ", ".join(f"{k}={env[k]}" for k in set_vars) + " was set (it can slow NumPy)"
    return [text + ".", ""]


def compile_entries(compile_doc):
    """The probed workloads of a compile section: ``[(label, entry)]``.

    One ``flow, <dtype>`` entry per dtype, then ``tfkernels decay`` (the default decay
    study) when it was probed; the section's other keys (``mode``) are left out.
    """
    out = [(f"flow, {dt}", compile_doc[dt]) for dt in ("float32", "float64") if dt in compile_doc]
    if "decay" in compile_doc:
        out.append(("`tfkernels decay`", compile_doc["decay"]))
    return out


def _fresh_start(kind, e):
    """One fresh-process start (``cold`` or ``warm``) in words."""
    text = (
        f"{kind} start (import + first call, fresh process) {e['total_s']:.2f} s = "
        f"{e['import_s']:.2f} + {e['first_call_s']:.2f}"
    )
    if e.get("compiled"):
        return text + f" ({len(e['compiled'])} kernels compiled)"
    if e.get("loaded"):
        return text + f" ({len(e['loaded'])} kernels loaded from the cache)"
    return text


def readme_compile(doc):
    """Bullet list of first-call, cold-compile and warm-start times of each workload."""
    lines = []
    for label, e in compile_entries(doc["compile"]):
        parts = []
        if "workload" in e:
            parts.append(e["workload"])
        if "in_process" in e:
            ip = e["in_process"]
            parts.append(f"first call in the harness {ip['first_call_s']:.3f} s ({ip['how']})")
        parts += [_fresh_start(k, e[k]) for k in ("cold", "warm") if "total_s" in e.get(k, {})]
        lines.append(f"- {label}: " + "; ".join(parts))
    return lines


def readme_scaling(doc):
    """Bullet list of scaling exponents and parallel efficiency."""
    sc = doc["scaling"]
    base = ", ".join(f"{k}={v}" for k, v in sc["base"].items())
    lines = [
        f"Base ({sc['dtype']}): {base}. Fitted exponent of time against each axis (1 = linear):",
        "",
    ]
    for axis in ("B", "N", "T", "d"):
        if axis in sc:
            pts = sc[axis]["points"]
            lines.append(
                f"- {axis}: exponent {fmt(sc[axis]['exponent'], '.2f')} over "
                f"{pts[0]['value']}…{pts[-1]['value']}"
            )
    if "threads" in sc:
        for e in sc["threads"]["points"]:
            lines.append(
                f"- {e['value']} thread(s): {e['median_s'] * 1e3:.2f} ms, speed-up "
                f"{e['speedup']:.2f}×, efficiency {100 * e['efficiency']:.0f} %"
            )
    return lines


def readme_errors(doc):
    """Markdown table of fitted orders."""
    lines = [
        "| system | reference | method | expected order | fitted order | E at largest N |",
        "|---|---|---|---|---|---|",
    ]
    for system, e in doc["errors"].items():
        for m, r in e["methods"].items():
            lines.append(
                f"| {system} | {e['reference']} | {m} | {r['expected_order']} | "
                f"{fmt(r['order'], '.2f')} | {r['errors'][-1]:.2e} |"
            )
    return lines


def readme_decay(doc):
    """Bullet list of the decay study's cost relative to the flow."""
    dec = doc["decay"]
    if dec.get("status") != "ok":
        return [f"- {dec.get('message', 'not measured')}"]
    return [
        f"- {dec['dtype']}, B={dec['B']}, T={dec['T']}, d={dec['d']}, N={dec['N']}: flow "
        f"{dec['flow_s'] * 1e3:.2f} ms; pair mode {dec['pair_s'] * 1e3:.2f} ms "
        f"({dec['pair_ratio']:.2f}×); tangent mode {dec['tangent_s'] * 1e3:.2f} ms "
        f"({dec['tangent_ratio']:.2f}×) — the study's chunk loop, λ̂ estimate excluded"
    ]


def readme_memory(doc):
    """Bullet list of peak-RSS growth."""
    mem = doc["memory"]
    lines = []
    for r in mem["points"]:
        if "error" in r:
            lines.append(f"- B={r['B']}: failed")
            continue
        lines.append(
            f"- B={r['B']} (state {r['state_mb']:.1f} MB): peak RSS grew "
            f"{r['extra_mb']:.1f} MB during the call, "
            f"{r['beyond_output_mb']:.1f} MB beyond its output array"
        )
    return lines


def goals(doc):
    """The goals of one sweep document, judged: ``[(goal, verdict, figure)]``.

    Issue 18's or 17's per point (:func:`point_goals`), else issue 5's.
    """
    if goal_set(doc) in PER_POINT_GOALS:
        return point_goals(doc)
    return issue5_goals(doc)


def point_goals(doc):
    """Issue 18's or 17's goals of every throughput point with one: ``[(goal, verdict,
    figure)]``.

    A verdict is None where it could not be judged (no peer was timed).
    """
    out = []
    for p in doc.get("throughput", []):
        g = p.get("goal", point_goal(p, goal_set(doc)))
        if not g:
            continue
        where = f"{p['config']} {p['dtype']} N={p['N']} B={p['B']}"
        b = p.get("best_peer")
        out.append(
            (
                f"{where}: ≥ {g['speedup_need']:g}× best peer",
                g["speedup_met"],
                f"{b['speedup']:.2f}× vs {b['peer']}[{b['variant']}]" if b else "no peer timed",
            )
        )
        if "peak_need" in g:
            out.append(
                (
                    f"{where}: ≥ {100 * g['peak_need']:.0f} % of the {g['peak_basis']}",
                    g["peak_met"],
                    f"{100 * g['frac_peak']:.1f} %",
                )
            )
    return out


def issue5_goals(doc):
    """Issue 5's goals, judged from one sweep document: ``[(goal, verdict, figure)]``."""
    out = []
    pts = doc.get("throughput", [])

    def at(cfg, dt):
        cand = [p for p in pts if p["config"] == cfg and p["dtype"] == dt]
        return max(cand, key=lambda p: p["N"]) if cand else None

    for cfgs, need, label in (
        (("tiny", "small"), 2.0, "≥ 2× best peer"),
        (("medium", "large"), 1.2, "≥ 1.2× best peer"),
    ):
        for cfg in cfgs:
            for dt in ("float32", "float64"):
                p = at(cfg, dt)
                if p is None or not p.get("best_peer"):
                    continue
                s = p["best_peer"]
                out.append(
                    (
                        f"{cfg} {dt}: {label}",
                        s["speedup"] >= need,
                        f"{s['speedup']:.2f}× vs {s['peer']}[{s['variant']}]",
                    )
                )
    for cfgs, need in ((("tiny", "small"), 0.40), (("medium", "large"), 0.60)):
        for cfg in cfgs:
            p = at(cfg, "float32")
            if p is not None:
                out.append(
                    (
                        f"{cfg} float32: ≥ {need:.0%} of peak",
                        p["ours"]["frac_peak"] >= need,
                        f"{100 * p['ours']['frac_peak']:.1f} %",
                    )
                )
    out += _goal_memory(doc) + _goal_threads(doc) + _goal_compile(doc) + _goal_decay(doc)
    return out


def _goal_decay(doc):
    dec = doc.get("decay")
    if not dec or dec.get("status") != "ok":
        return []
    return [
        (f"{m} mode costs ≤ 2.2× the flow", dec[f"{m}_ratio"] <= 2.2, f"{dec[f'{m}_ratio']:.2f}×")
        for m in ("pair", "tangent")
    ]


def _goal_memory(doc):
    mem = doc.get("memory")
    if not mem:
        return []
    ok_pts = [r for r in mem["points"] if "beyond_output_mb" in r]
    if not ok_pts:
        return []
    worst = max(r["beyond_output_mb"] for r in ok_pts)
    return [
        (
            f"peak RSS growth beyond input and output < {mem['limit_mb']} MB "
            f"(B up to {max(r['B'] for r in ok_pts)})",
            worst < mem["limit_mb"],
            f"{worst:.1f} MB",
        )
    ]


def _goal_threads(doc):
    th = doc.get("scaling", {}).get("threads")
    if not th or len(th["points"]) < 2:
        return []
    e = th["points"][1]
    return [
        ("parallel speed-up 1 → 2 threads ≥ 1.85×", e["speedup"] >= 1.85, f"{e['speedup']:.2f}×")
    ]


def _goal_compile(doc):
    out = []
    for label, e in compile_entries(doc.get("compile", {})):
        if "total_s" in e.get("cold", {}):
            out.append(
                (
                    f"cold compile, {label} < 10 s",
                    e["cold"]["total_s"] < 10,
                    f"{e['cold']['total_s']:.1f} s",
                )
            )
        if "total_s" in e.get("warm", {}):
            out.append(
                (
                    f"warm start, {label} < 1 s",
                    e["warm"]["total_s"] < 1,
                    f"{e['warm']['total_s']:.2f} s",
                )
            )
    return out


def _section_times(doc):
    """`` (machine 9 s, throughput 310 s)``: the seconds of each section, if recorded."""
    times = doc.get("section_s")
    if not times:
        return ""
    return " (" + ", ".join(f"{k} {v:.0f} s" for k, v in times.items()) + ")"


def readme_section(doc):
    """The README section of one sweep document."""
    m = doc["machine"]
    stem = f"bench-{doc['preset']}"
    lines = [
        f"## Preset `{doc['preset']}` — {doc['created']}",
        "",
        f"`{doc['command']}` — {doc['elapsed_s']:.0f} s{_section_times(doc)}, "
        f"{m['threads']} thread(s), "
        f"git {(m['git']['commit'] or '?')[:10]}{' (dirty)' if m['git']['dirty'] else ''}, "
        f"Numba threading layer {m['numba_threading_layer']}.",
        "",
    ]
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v)
    lines += [f"Versions: {versions}.", ""]
    lines += readme_machine_facts(m)
    if m.get("peak_used"):
        used, nominal = m["peak_used"]["gflops"], m["peak_used"]["nominal_gflops"]
        lines += [
            "% peak below divides by "
            + ", ".join(f"{used[dt]:.0f} GFLOP/s {dt} (nominal {nominal[dt]:.0f})" for dt in used)
            + f": the larger of the nominal and the measured FMA peak on "
            f"{m['peak_used']['threads']} thread(s).",
            "",
        ]
    c = doc.get("contention", {})
    if c.get("foreign_cpu_frac") is not None:
        lines += [
            f"Other processes used {100 * c['foreign_cpu_frac']:.0f} % of the CPUs "
            f"during this run (hypervisor steal {100 * c['steal_frac']:.1f} %); the "
            "column 'busy' below is that share during each point. A busy core "
            "slows every multi-threaded implementation, so compare within a row.",
            "",
        ]
    if doc.get("throughput"):
        lines += (
            [
                "### Throughput (median of interleaved runs; ×ours = peer time / our time, "
                "> 1 means tfkernels is faster)",
                "",
            ]
            + throughput_table(doc)
            + [""]
        )
    sections = (
        ("compile", "Compile and start-up", readme_compile),
        ("scaling", "Scaling", readme_scaling),
        ("errors", "Error scaling (global error at t = 1)", readme_errors),
        ("decay", "Perturbation-decay study cost", readme_decay),
        ("memory", "Memory", readme_memory),
    )
    for key, title, fn in sections:
        if doc.get(key):
            lines += [f"### {title}", ""] + fn(doc) + [""]
    g = goals(doc)
    if g:
        issue = goal_set(doc)[5:]
        lines += [
            f"### Issue {issue} goals, judged from this run",
            "",
            "| goal | met | measured |",
            "|---|---|---|",
        ]
        lines += [f"| {name} | {_yes_no(ok)} | {fig} |" for name, ok, fig in g]
        lines += [""]
        busy = doc.get("contention", {}).get("foreign_cpu_frac")
        if busy is not None and busy > 0.25:
            lines += [
                f"Other processes used {100 * busy:.0f} % of the CPUs during this run: "
                "the speed verdicts above are not reliable; rerun on a quiet machine.",
                "",
            ]
    for png in doc.get("plots", []):
        lines += [f"![{png}]({png})", ""]
    lines += [f"Data: [`{stem}.json`]({stem}.json), [`{stem}.csv`]({stem}.csv).", ""]
    return lines


def readme_paper(out_dir):
    """The README section of ``paper/paper.json``, if present."""
    path = os.path.join(out_dir, "paper", "paper.json")
    if not os.path.exists(path):
        return []
    with open(path) as fh:
        p = json.load(fh)
    lines = ["## The paper's experiments (`tfkernels paper`)", ""]
    lines += [f"- {line}" for line in p.get("summary", [])]
    lines += [""] + [f"![{f}](paper/{f})" for f in p.get("plots", [])] + [""]
    return lines


def peak_used(machine):
    """``{dtype: GFLOP/s}``: the denominator of "% peak" of a sweep's machine section.

    Documents written before the peak was measured have only the nominal peak.
    """
    used = machine.get("peak_used")
    return dict(used["gflops"]) if used else dict(machine["peak"]["gflops"])


def readme_peak(machine):
    """README lines on the peak: nominal, measured (implied clock), and the one used."""
    lines = [
        f"Nominal machine {machine['peak']['explanation']} (the clock the machine "
        "reports; a virtual machine reports its base clock, and the cores boost above "
        "it under load).",
        "",
    ]
    mp = machine.get("measured_peak")
    if not mp or not mp.get("gflops"):
        return lines + ["% peak divides by the nominal peak (no measured peak in this run).", ""]
    used = machine["peak_used"]
    n = used["threads"]
    lines += [
        "Measured FMA peak (`tfkernels.bench.flops.measured_peak`: "
        f"{mp['fma_chains']} independent vector FMA chains per thread in registers, "
        f"nothing else; median of {mp['repeats']} runs of ≥ {mp['min_seconds']:g} s "
        "of CPU time): "
    ]
    parts = []
    for k in sorted({int(t) for per in mp["gflops"].values() for t in per}):
        rates = [(dt, per[str(k)]) for dt, per in mp["gflops"].items() if str(k) in per]
        clocks = dict.fromkeys(f"{mp['implied_clock_ghz'][dt][str(k)]:.2f}" for dt, _ in rates)
        parts.append(
            " / ".join(f"{v:.0f} GFLOP/s {dt}" for dt, v in rates)
            + f" on {k} thread(s) (implied clock "
            + " / ".join(clocks)
            + " GHz)"
        )
    lines[-1] += "; ".join(parts) + "."
    nominal = used["nominal_gflops"]
    lines += [
        "",
        f"% peak uses the larger of nominal and measured on the sweep's {n} "
        "thread(s): "
        + ", ".join(
            f"{dt} {used['gflops'][dt]:.0f} GFLOP/s "
            f"({'measured' if used['gflops'][dt] > nominal[dt] else 'nominal'}; "
            f"nominal {nominal[dt]:.0f})"
            for dt in used["gflops"]
        )
        + ".",
        "",
    ]
    return lines


#: The first line and the marker of a README that :func:`write_readme` generated.
README_TITLE = "# Benchmark results"
README_MARKER = "Generated by `tfkernels bench`"


def is_generated_readme(path):
    """Whether ``path`` is missing or holds a README that :func:`write_readme` wrote."""
    try:
        with open(path, encoding="utf-8") as fh:
            head = fh.read(4096)
    except FileNotFoundError:
        return True
    except (OSError, UnicodeDecodeError):
        return False
    return head.startswith(README_TITLE + "\n") and README_MARKER in head


def write_readme(out_dir):
    """Regenerate ``<out_dir>/README.md`` from every sweep and paper result there.

    A README that this function did not write (no :data:`README_MARKER`) is never
    replaced: a warning is issued and None returned. The file is written atomically.

    Returns
    -------
    str or None
        The README's path, or None when a hand-written README was left alone.
    """
    path = os.path.join(out_dir, "README.md")
    if not is_generated_readme(path):
        warnings.warn(
            f"{path} was not generated by tfkernels; left unchanged (move it away to "
            "get the generated results README)",
            stacklevel=2,
        )
        return None
    docs = load_docs(out_dir)
    lines = [
        README_TITLE,
        "",
        README_MARKER + " (and `tfkernels paper`); do not edit by hand —",
        "rerun the harness instead. Every ratio is formed within one run on one machine.",
        "",
    ]
    if docs:
        m = docs[0]["machine"]
        g = m["gemm_gflops"]
        used = peak_used(m)
        lines += (
            [f"Machine: {m['cpu']}, {m['logical_cpus']} logical CPU(s), {m['platform']}.", ""]
            + readme_peak(m)
            + [
                f"Attainable: a 1024×1024 NumPy/OpenBLAS GEMM reaches "
                f"{g['float32']:.0f} GFLOP/s float32 and {g['float64']:.0f} float64 "
                f"({100 * g['float32'] / used['float32']:.0f} % and "
                f"{100 * g['float64'] / used['float64']:.0f} % of peak).",
                "",
                "FLOPs per trajectory-layer: the model in `tfkernels/bench/flops.py` "
                "(every matmul 2·m·k·n; 15 flops per softmax score; 20 per GELU; "
                "bias, damping, term sums and RK combinations counted).",
                "",
            ]
        )
    for doc in docs:
        lines += readme_section(doc)
    lines += readme_paper(out_dir)
    write_text(path, "\n".join(lines))
    return path
