"""Tables and the label-efficiency figure of a benchmark's ``results.json``.

Every cell is mean ± sample standard deviation over seeds (a single seed is marked n=1).
The goal check compares each set of pretrained weights with each random initialisation
(weights given as ``scratch:...``) at 10 or fewer labelled patients: the difference of
mean Dice, and whether the seeds' ranges overlap.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import write_text_atomic
from .jobs import CLASSIFICATION, CLASSIFICATION_PROBE, SEGMENTATION, SEGMENTATION_PROBE
from .openkbp import ORGANS

REPORT = "RESULTS.md"
FIGURE = "label_efficiency.png"
PATIENTS, FRACTION = "labelled patients", "fraction of labels"
PANELS = (
    (SEGMENTATION, "mean_dice", "OpenKBP organs, fine-tuned", PATIENTS),
    (SEGMENTATION_PROBE, "mean_dice", "OpenKBP organs, linear probe (frozen encoder)", PATIENTS),
    (CLASSIFICATION, "auc", "AdrenalMNIST3D, fine-tuned", FRACTION),
    (CLASSIFICATION_PROBE, "auc", "AdrenalMNIST3D, linear probe (frozen encoder)", FRACTION),
)
GOAL_MARGIN = 0.05
FEW_LABELS = 10


def write_report(results: dict[str, Any], output: str | Path) -> None:
    """``RESULTS.md`` and ``label_efficiency.png`` in ``output``."""
    output = Path(output)
    write_text_atomic(output / REPORT, markdown(results))
    plot(results, output / FIGURE)


def collect(results: dict[str, Any], task: str, metric: str) -> dict[str, dict[Any, list]]:
    """weights label -> label count or fraction -> the metric of each seed; the labels in
    the command's order (records arrive in the order jobs finish), so that every table
    lists them alike."""
    table: dict[str, dict[Any, list]] = defaultdict(lambda: defaultdict(list))
    for record in results["records"]:
        if record["task"] == task and record.get(metric) is not None:
            table[record["weights"]][record["labels"]].append(record[metric])
    return _in_command_order(results, table)


def _in_command_order(results: dict[str, Any], rows: dict[str, Any]) -> dict[str, Any]:
    """``rows`` keyed by weights label, in the order ``--weights`` gave them."""
    return {label: rows[label] for label in results["weights"] if label in rows}


def markdown(results: dict[str, Any]) -> str:
    protocol = results["protocol"]
    lines = [
        "# Transfer benchmark",
        "",
        f"Command: `{results['command']}`",
        "",
        f"Protocol `{protocol['name']}`, seeds {protocol['seeds']}; machine: "
        f"{results['environment']['cpu']}, {results['environment']['cores']} cores, "
        f"{results['environment']['workers']} worker processes of one thread, torch "
        f"{results['environment']['torch']}; wall time {results['seconds'] / 60:.1f} min.",
        "",
        "Weights:",
        "",
    ]
    for label, weights in results["weights"].items():
        digest = f" (sha256 `{weights['sha256'][:12]}...`)" if weights["sha256"] else ""
        lines.append(f"- `{label}`: `{weights['source']}`{digest}")
    for task, metric, title, axis in PANELS:
        table = collect(results, task, metric)
        if table:
            lines += ["", f"## {title}: {metric.replace('_', ' ')}", ""]
            lines += _table(table, axis)
    lines += _organ_tables(results)
    lines += _goal(results)
    return "\n".join(lines) + "\n"


def _table(table: dict[str, dict[Any, list]], axis: str) -> list[str]:
    columns = sorted({c for row in table.values() for c in row}, key=_order)
    header = f"| weights \\ {axis} | " + " | ".join(_name(c) for c in columns) + " |"
    lines = [header, "|---" * (len(columns) + 1) + "|"]
    for label, row in table.items():
        cells = [_cell(row.get(c, [])) for c in columns]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def _organ_tables(results: dict[str, Any]) -> list[str]:
    lines = []
    per: dict[Any, dict[str, dict[str, list]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(list))
    )
    for record in results["records"]:
        if record["task"] == SEGMENTATION:
            for organ, value in record["dice_per_organ"].items():
                per[record["labels"]][record["weights"]][organ].append(value)
    for count in sorted(per, key=_order):
        lines += ["", f"### Fine-tuned Dice per organ, {_name(count)} labelled patients", ""]
        lines += ["| weights | " + " | ".join(ORGANS) + " |", "|---" * (len(ORGANS) + 1) + "|"]
        for label, organs in _in_command_order(results, per[count]).items():
            lines.append(f"| {label} | " + " | ".join(_cell(organs[o]) for o in ORGANS) + " |")
    return lines


def goal_check(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Pretrained vs random init at <= 10 labelled patients, fine-tuned segmentation."""
    table = collect(results, SEGMENTATION, "mean_dice")
    baselines = [k for k, w in results["weights"].items() if not w["pretrained"] and k in table]
    rows = []
    for label, row in table.items():
        if label in baselines:
            continue
        for baseline in baselines:
            for count in sorted(row, key=_order):
                if isinstance(count, str) or count > FEW_LABELS or not table[baseline][count]:
                    continue
                ours, theirs = row[count], table[baseline][count]
                rows.append(
                    {
                        "weights": label,
                        "baseline": baseline,
                        "labels": count,
                        "difference": float(np.mean(ours) - np.mean(theirs)),
                        "separated": min(ours) > max(theirs),
                    }
                )
    return rows


def _goal(results: dict[str, Any]) -> list[str]:
    rows = goal_check(results)
    if not rows:
        return []
    lines = [
        "",
        f"## Goal: >= {GOAL_MARGIN} mean Dice over random init at <= {FEW_LABELS} patients, "
        "seeds not overlapping",
        "",
        "| weights | vs | patients | difference | seeds separated | goal |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        met = row["difference"] >= GOAL_MARGIN and row["separated"]
        lines.append(
            f"| {row['weights']} | {row['baseline']} | {row['labels']} | "
            f"{row['difference']:+.3f} | {'yes' if row['separated'] else 'no'} | "
            f"{'met' if met else 'not met'} |"
        )
    return lines


def plot(results: dict[str, Any], path: Path) -> None:
    figure = label_efficiency_figure(results)
    if figure is not None:
        import matplotlib.pyplot as plt

        figure.savefig(path, dpi=110)
        plt.close(figure)


def label_efficiency_figure(results: dict[str, Any]) -> Any:
    """One panel per task with results (None if none); each set of weights keeps one
    colour in every panel, so the first panel's legend reads for all of them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(p, collect(results, p[0], p[1])) for p in PANELS]
    panels = [(p, t) for p, t in panels if t]
    if not panels:
        return None
    figure, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.8), squeeze=False)
    colours = {label: f"C{index}" for index, label in enumerate(results["weights"])}
    for axis, ((_, metric, title, x_label), table) in zip(axes[0], panels, strict=True):
        columns = sorted({c for row in table.values() for c in row}, key=_order)
        for label, row in table.items():
            means = [np.mean(row[c]) if row.get(c) else np.nan for c in columns]
            stds = [np.std(row[c], ddof=1) if len(row.get(c, [])) > 1 else 0 for c in columns]
            axis.errorbar(
                range(len(columns)),
                means,
                yerr=stds,
                marker="o",
                capsize=3,
                label=label,
                color=colours[label],
            )
        axis.set_xticks(range(len(columns)), [_name(c) for c in columns])
        axis.set_title(title, fontsize=9)
        axis.set_xlabel(x_label)
        axis.set_ylabel(metric.replace("_", " "))
        axis.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    figure.tight_layout()
    return figure


def _order(value: Any) -> float:
    return float("inf") if isinstance(value, str) else float(value)


def _name(value: Any) -> str:
    if isinstance(value, float) and value <= 1:
        return f"{value:.0%}"
    return str(value)


def _cell(values: list) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3f} (n=1)"
    return f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f}"


def load_results(path: str | Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text(encoding="utf-8"))
