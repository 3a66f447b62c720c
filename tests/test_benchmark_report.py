"""The benchmark's report on a real results file: tables and figure read alike everywhere."""

from __future__ import annotations

import re
from pathlib import Path

from pcrlv2_hub.benchmark.report import label_efficiency_figure, load_results, markdown

RESULTS = Path(__file__).parents[1] / "benchmarks" / "openct" / "results" / "results.json"


def test_every_table_lists_the_weights_in_the_commands_order():
    results = load_results(RESULTS)
    order = list(results["weights"])
    finished = [r["weights"] for r in results["records"] if r["task"] == "segmentation_probe"]
    assert list(dict.fromkeys(finished)) != order  # records arrive as jobs finish
    tables = [t for t in markdown(results).split("\n\n| weights")[1:] if " vs " not in t[:9]]
    assert len(tables) == 9  # four tasks, five per-organ tables
    for table in tables:
        rows = re.findall(r"^\| (\w+) \| [\d-]", table, flags=re.MULTILINE)
        assert rows == [label for label in order if label in rows] and len(rows) >= 3


def test_each_set_of_weights_keeps_its_colour_in_every_panel():
    results = load_results(RESULTS)
    figure = label_efficiency_figure(results)
    colours: dict[str, set] = {}
    for axis in figure.axes:
        for container in axis.containers:
            colours.setdefault(container.get_label(), set()).add(container.lines[0].get_color())
    assert set(colours) == set(results["weights"])
    assert all(len(seen) == 1 for seen in colours.values())
    assert len({next(iter(seen)) for seen in colours.values()}) == len(colours)
