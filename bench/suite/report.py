"""Results out: a console table, a JSON file, PNG plots, and ratios between two targets."""

from __future__ import annotations

import json
import platform
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.suite.scenarios import Result


def table(results: Sequence[Result]) -> str:
    header = (f"{'scenario':44} {'target':10} {'ops':>6} {'items/s':>10} {'MB/s':>8} "
              f"{'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8}  status")
    lines = [header, "-" * len(header)]
    for r in results:
        if r.skipped:
            status = f"skipped: {r.skipped}"
        elif r.errors:
            status = f"{len(r.errors)} errors: {r.errors[0][:60]}"
        else:
            status = "ok"
        lines.append(f"{r.scenario[:44]:44} {r.target[:10]:10} {r.operations:6d} "
                     f"{r.items_per_second:10.1f} {r.mb_per_second:8.2f} "
                     f"{r.percentile(50):8.2f} {r.percentile(90):8.2f} "
                     f"{r.percentile(99):8.2f}  {status}")
    return "\n".join(lines)


def ratios(results: Sequence[Result], first: str, second: str) -> list[dict[str, Any]]:
    """Per scenario run on both targets: throughput first/second and p50 latency second/first
    (both > 1 when ``first`` is faster)."""
    by_key = {(r.scenario, r.target): r for r in results if not r.skipped and not r.errors}
    rows = []
    for scenario in dict.fromkeys(r.scenario for r in results):
        a, b = by_key.get((scenario, first)), by_key.get((scenario, second))
        if a is None or b is None:
            continue
        rows.append({
            "scenario": scenario,
            "throughput_ratio": round(a.items_per_second / b.items_per_second, 3)
            if b.items_per_second else None,
            "p50_latency_ratio": round(b.percentile(50) / a.percentile(50), 3)
            if a.percentile(50) else None,
        })
    return rows


def ratio_table(rows: list[dict[str, Any]], first: str, second: str) -> str:
    lines = [f"{'scenario':44} {first + '/' + second + ' items/s':>22} "
             f"{second + '/' + first + ' p50':>20}"]
    for row in rows:
        tp = row["throughput_ratio"]
        lat = row["p50_latency_ratio"]
        lines.append(f"{row['scenario'][:44]:44} {'-' if tp is None else f'{tp:.2f}x':>22} "
                     f"{'-' if lat is None else f'{lat:.2f}x':>20}")
    lines.append("(> 1 means the first target is faster)")
    return "\n".join(lines)


def write_json(path: Path, results: Sequence[Result], meta: dict[str, Any],
               compare: list[dict[str, Any]] | None) -> None:
    document = {
        "meta": {**meta, "python": platform.python_version(), "machine": platform.machine()},
        "results": [r.summary() for r in results],
        "compare": compare or [],
    }
    path.write_text(json.dumps(document, indent=2) + "\n")


def plots(folder: Path, results: Sequence[Result]) -> list[Path]:
    """``throughput.png`` (items/s per scenario and target) and ``latency.png`` (p50/p90/p99)."""
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    done = [r for r in results if not r.skipped]
    targets = list(dict.fromkeys(r.target for r in done))
    written = []
    def throughput(r: Result) -> float:
        return r.items_per_second

    def p50(r: Result) -> float:
        return r.percentile(50)

    charts: list[tuple[str, Callable[[Result], float], str]] = [
        ("throughput.png", throughput, "items per second"),
        ("latency.png", p50, "p50 latency, ms (bars) and p90/p99 (ticks)"),
    ]
    for name, metric, label in charts:
        scenarios = list(dict.fromkeys(r.scenario for r in done))
        fig, ax = plt.subplots(figsize=(11, 0.45 * len(scenarios) * len(targets) + 1.5))
        height = 0.8 / max(len(targets), 1)
        for t_index, target in enumerate(targets):
            rows = {r.scenario: r for r in done if r.target == target}
            ys = [i + t_index * height for i in range(len(scenarios))]
            values = [metric(rows[s]) if s in rows else 0.0 for s in scenarios]
            ax.barh(ys, values, height=height, label=target)
            if name == "latency.png":
                for y, s in zip(ys, scenarios, strict=True):
                    if s in rows:
                        ax.plot([rows[s].percentile(90), rows[s].percentile(99)], [y, y], "k|")
        ax.set_yticks([i + 0.4 - height / 2 for i in range(len(scenarios))], scenarios,
                      fontsize=8)
        ax.set_xlabel(label)
        if name == "latency.png":
            ax.set_xscale("log")
        ax.invert_yaxis()
        ax.legend()
        fig.tight_layout()
        path = folder / name
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written
