"""Write a sampler comparison: CSV of every row, a Markdown report and a log-log plot.

Rows are dicts with `problem, backend, method, schedule, twin_of, stochastic, tolerance,
nfe_target, nfe, steps` and the metrics (`rmse`, then `sw2`, `mmd`, `mode_tv` or the adherence
scores). A "curve" is one (backend, method, schedule, twin_of) over its NFE budgets (an adaptive
sampler: over its tolerances); its fitted order is the slope of -log(RMSE) against log(NFE).
"""

from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jaxdiff.atomic_write import atomic_path, write_atomically
from jaxdiff.benchmarks.on_mixtures import fitted_order

Row = dict[str, Any]
CurveKey = tuple[str, str, str, str]


def curves(rows: Sequence[Row], problem: str) -> dict[CurveKey, list[Row]]:
    """Rows of one problem grouped by (backend, method, schedule, twin_of), sorted by NFE."""
    grouped: dict[CurveKey, list[Row]] = defaultdict(list)
    for row in rows:
        if row["problem"] == problem:
            grouped[row["backend"], row["method"], row["schedule"], row["twin_of"]].append(row)
    return {k: sorted(v, key=lambda r: r["nfe"]) for k, v in grouped.items()}


def curve_order(points: Sequence[Row]) -> float:
    return fitted_order([r["nfe"] for r in points], [r["rmse"] for r in points])


def write_csv(rows: Sequence[Row], path: Path) -> None:
    """Every row, one column per key of the first, written whole or not at all."""
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_atomically(path, text.getvalue())


def _fmt(v: float) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2e}"


def _label(key: CurveKey) -> str:
    backend, method, schedule, _ = key
    return f"{method} ({schedule})" if backend == "jaxdiff" else f"diffusers {method}"


def best_at(rows: Sequence[Row], problem: str, backend: str, nfe: int) -> Row | None:
    """The lowest-RMSE deterministic row of a backend at an NFE budget (twins excluded)."""
    pool = [
        r
        for r in rows
        if r["problem"] == problem
        and r["backend"] == backend
        and r["nfe_target"] == nfe
        and not r["twin_of"]
        and not r["stochastic"]
    ]
    return min(pool, key=lambda r: r["rmse"], default=None)


def twin_ratios(rows: Sequence[Row], problem: str) -> list[tuple[str, str, int, float]]:
    """(diffusers spec, jaxdiff method, NFE, jaxdiff RMSE / diffusers RMSE) per shared sampler."""
    ref = {
        (r["method"], r["nfe_target"]): r
        for r in rows
        if r["problem"] == problem and r["backend"] == "diffusers"
    }
    return [
        (
            r["twin_of"],
            r["method"],
            r["nfe_target"],
            r["rmse"] / ref[r["twin_of"], r["nfe_target"]]["rmse"],
        )
        for r in rows
        if r["problem"] == problem and r["twin_of"]
    ]


GMM_METRICS = {"sw2": "sliced W2", "mmd": "MMD²", "mode_tv": "mode-weight TV"}


def gmm_notes(floors: dict[str, dict[str, float]]) -> dict[str, list[str]]:
    """Per mixture: the reference's tolerance drift, the exact samples' noise floors and how
    much the exact trajectories bend in flow and VP coordinates."""
    return {
        name: [
            f"Reference PF-ODE endpoint change when the tolerance is halved: "
            f"{floor['reference_drift']:.1e}. Medians over seeds. Noise floor of exact samples: "
            + ", ".join(f"{label} {floor[m]:.2e}" for m, label in GMM_METRICS.items()),
            "Bend of the exact trajectories from t = 1 (arc length / chord - 1, mean over "
            f"samples; 0 is straight): flow coordinates x_t {floor['bend_flow']:.3f}, "
            f"VP coordinates z {floor['bend_vp']:.3f}.",
        ]
        for name, floor in floors.items()
    }


def _rmse_table(points_by_curve: dict[CurveKey, list[Row]], nfes: Sequence[int]) -> list[str]:
    lines = [
        "| sampler | " + " | ".join(f"NFE {n}" for n in nfes) + " | order |",
        "|---|" + "---:|" * (len(nfes) + 1),
    ]
    for key, points in points_by_curve.items():
        if points[0]["stochastic"]:
            continue  # its distance is to the ODE solution, not a discretization error
        by_nfe = {r["nfe_target"]: r for r in points}
        if points[0]["nfe_target"] == 0:  # adaptive step size: the tolerances in one cell
            cells = [
                "; ".join(
                    f"{_fmt(r['rmse'])} at NFE {r['nfe']} (rtol {r['tolerance']:g})" for r in points
                )
            ]
            cells += [""] * (len(nfes) - 1)
        else:
            cells = [
                "—"
                if (r := by_nfe.get(n)) is None
                else _fmt(r["rmse"]) + ("" if r["nfe"] == n else f" [{r['nfe']}]")
                for n in nfes
            ]
        label = _label(key) + (f" = twin of {key[3]}" if key[3] else "")
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {curve_order(points):.2f} |")
    return lines


def _metric_table(
    points_by_curve: dict[CurveKey, list[Row]], nfe: int, metrics: dict[str, str]
) -> list[str]:
    lines = [
        "| sampler | NFE | " + " | ".join(metrics.values()) + " |",
        "|---|" + "---:|" * (len(metrics) + 1),
    ]
    for key, points in points_by_curve.items():
        if key[3]:
            continue  # a twin repeats its jaxdiff sampler's numbers
        row = {r["nfe_target"]: r for r in points}.get(nfe, points[-1])
        cells = [f"{row[m]:.3f}" if m.startswith("adherence") else _fmt(row[m]) for m in metrics]
        lines.append(f"| {_label(key)} | {row['nfe']} | " + " | ".join(cells) + " |")
    return lines


def _twin_table(rows: Sequence[Row], problem: str, nfes: Sequence[int]) -> list[str]:
    table: dict[tuple[str, str], dict[int, float]] = defaultdict(dict)
    for spec, method, nfe, ratio in twin_ratios(rows, problem):
        table[spec, method][nfe] = ratio
    if not table:
        return []
    lines = [
        "jaxdiff error / diffusers error for the same algorithm on the same steps:",
        "",
        "| diffusers scheduler | jaxdiff | " + " | ".join(f"NFE {n}" for n in nfes) + " |",
        "|---|---|" + "---:|" * len(nfes),
    ]
    for (spec, method), by_nfe in table.items():
        cells = [f"{by_nfe[n]:.3f}" if n in by_nfe else "—" for n in nfes]
        lines.append(f"| {spec} | {method} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def markdown(
    rows: Sequence[Row],
    notes: dict[str, list[str]],
    nfes: Sequence[int],
    metrics: dict[str, str],
    title: str,
) -> str:
    """The report: per problem (the keys of `notes`, whose lines head its section), coupled RMSE
    by NFE with fitted orders, `metrics` at the largest NFE, twin ratios and the best jaxdiff
    sampler against the best diffusers scheduler at NFE 10."""
    lines = [f"# {title}", ""]
    top = max(nfes)
    for problem, head in notes.items():
        by_curve = curves(rows, problem)
        lines += [
            f"## {problem}",
            "",
            *head,
            "",
            "Coupled RMSE to the reference solution by NFE budget, for the "
            "deterministic samplers; the counted NFE in brackets where it differs from the "
            "budget; order: the fitted slope of -log(RMSE) against log(NFE).",
            "",
            *_rmse_table(by_curve, nfes),
            "",
            f"At NFE {top}, every sampler (the stochastic ones compare here only):",
            "",
            *_metric_table(by_curve, top, metrics),
            "",
            *_twin_table(rows, problem, nfes),
        ]
        ours, theirs = (best_at(rows, problem, b, 10) for b in ("jaxdiff", "diffusers"))
        if ours and theirs:
            lines += [
                f"Best at NFE 10: jaxdiff {ours['method']} ({ours['schedule']}) "
                f"{_fmt(ours['rmse'])}, diffusers {theirs['method']} {_fmt(theirs['rmse'])}; "
                f"ratio {ours['rmse'] / theirs['rmse']:.3f}.",
                "",
            ]
    return "\n".join(lines)


def plot(rows: Sequence[Row], problems: Sequence[str], path: Path) -> None:
    """Log-log coupled RMSE against counted NFE of the deterministic samplers, one panel per
    problem, fitted order in the legend (a twin's curve is its diffusers scheduler's)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(problems), figsize=(8 * len(problems), 6), squeeze=False)
    for ax, problem in zip(axes[0], problems, strict=True):
        for key, points in curves(rows, problem).items():
            if points[0]["stochastic"] or key[3]:
                continue  # no discretization error / a twin: its diffusers curve
            style = "--" if key[0] == "diffusers" else "-"
            ax.loglog(
                [r["nfe"] for r in points],
                [r["rmse"] for r in points],
                style,
                marker="o",
                markersize=3,
                label=f"{_label(key)}: {curve_order(points):.2f}",
            )
        ax.set_title(problem)
        ax.set_xlabel("NFE (counted denoiser calls)")
        ax.set_ylabel("coupled RMSE to the reference ODE solution")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.12))
    with atomic_path(path) as partial:
        fig.savefig(partial, dpi=120, bbox_inches="tight")
    plt.close(fig)


def write_report(
    rows: Sequence[Row],
    notes: dict[str, list[str]],
    nfes: Sequence[int],
    metrics: dict[str, str],
    out_dir: Path,
    title: str,
) -> dict[str, Path]:
    """Write `results.csv`, `report.md` and `error_vs_nfe.png` into out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "csv": out_dir / "results.csv",
        "markdown": out_dir / "report.md",
        "plot": out_dir / "error_vs_nfe.png",
    }
    write_csv(rows, paths["csv"])
    write_atomically(paths["markdown"], markdown(rows, notes, nfes, metrics, title))
    plot(rows, list(notes), paths["plot"])
    return paths
