"""The report of a ``decaf reproduce`` run: JSON (the record), Markdown (the table) and a PNG bar
chart (ours beside the paper's, mean ± std).

JSON shape (``decaf plot`` and other tools read it; keys may be added, never renamed)::

    {"kind": "reproduce", "dataset": "caltech101", "protocol": {...}, "backbone": "caffenet",
     "weights": "imagenet", "random_weights": false,
     "rows": [{"backbone", "weights", "layer", "classifier", "dropout": bool,
               "accuracies": [per split, %], "mean", "std",
               "paper": {"mean", "std" | null, "table", "citation"} | null}, ...],
     "created": "2026-11-30T18:00:00+00:00", ...}

A report made with random weights says so in every output: a banner in the Markdown, the chart's
title, ``random_weights: true`` in the JSON.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from classifiers.datasets.sources import SOURCES

RANDOM_BANNER = (
    "**RANDOM WEIGHTS: this is NOT a reproduction.** The features come from an untrained "
    "network (`--weights random`, for tests); the numbers below say nothing about DeCAF."
)


def weights_slug(weights: str) -> str:
    """A folder-safe name for the weights: the tag itself, or the file's stem + path hash."""
    if re.fullmatch(r"[A-Za-z0-9_.-]+", weights) and not Path(weights).suffix:
        return weights.lower()
    resolved = str(Path(weights).expanduser().resolve())
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(weights).stem)[:40]
    return f"file-{stem}-{hashlib.sha256(resolved.encode()).hexdigest()[:8]}"


def report_stem(report: dict[str, Any]) -> str:
    return f"{report['dataset']}-{report['backbone']}-{weights_slug(report['weights'])}"


def write_report(report: dict[str, Any], out: Path) -> dict[str, Path]:
    """Write ``<stem>.json``, ``.md`` and ``.png`` into ``out``; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    stem = out / report_stem(report)
    paths = {
        "json": stem.with_suffix(".json"),
        "markdown": stem.with_suffix(".md"),
        "png": stem.with_suffix(".png"),
    }
    _write_atomic(paths["json"], json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    _write_atomic(paths["markdown"], format_markdown(report) + "\n")
    write_chart(report, paths["png"])
    return paths


def _write_atomic(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text, encoding="utf-8")
    temporary.replace(path)


# ---------------------------------------------------------------- markdown
def format_markdown(report: dict[str, Any]) -> str:
    """The report as a Markdown document: header, warnings, one table row per report row."""
    protocol = report["protocol"]
    title = SOURCES[report["dataset"]].title if report["dataset"] in SOURCES else report["dataset"]
    lines = [f"# DeCAF reproduction: {title}", ""]
    if report["random_weights"]:
        lines += [f"> {RANDOM_BANNER}", ""]
    lines += [
        f"Backbone `{report['backbone']}`, weights `{report['weights']}`; "
        f"{protocol['splits']} split(s), {protocol['train_per_class']} training images per "
        f"class, test: {protocol['test']}. Mean per-class accuracy (%), mean ± std over splits.",
        "",
    ]
    if not protocol["matches_paper"]:
        paper = protocol["paper_protocol"]
        lines += [
            f"> Protocol differs from the paper's ({paper['train_per_class']} training images "
            f"per class, {paper['splits']} splits): the paper's numbers are shown for "
            "orientation only, not comparable.",
            "",
        ]
    lines += [
        "| backbone | layer | classifier | dropout | ours | paper | ours − paper |",
        "|---|---|---|---|---:|---:|---:|",
    ]
    lines += [_markdown_row(row) for row in report["rows"]]
    cited = sorted({f"{r['paper']['table']}" for r in report["rows"] if r["paper"]})
    if cited:
        citation = next(r["paper"]["citation"] for r in report["rows"] if r["paper"])
        lines += ["", f"Paper: {citation}, {', '.join(cited)}. `-`: not reported there."]
    lines += [f"- note: {note}" for note in protocol.get("notes", [])]
    return "\n".join(lines)


def _markdown_row(row: dict[str, Any]) -> str:
    ours = f"{row['mean']:.2f} ± {row['std']:.2f}"
    paper = row["paper"]
    if paper is None:
        theirs, delta = "-", "-"
    else:
        spread = "" if paper["std"] is None else f" ± {paper['std']:.1f}"
        theirs, delta = f"{paper['mean']:.2f}{spread}", f"{row['mean'] - paper['mean']:+.2f}"
    dropout = "yes" if row["dropout"] else "no"
    return (
        f"| {row['backbone']} | {row['layer']} | {row['classifier']} | {dropout} | {ours} | "
        f"{theirs} | {delta} |"
    )


# ------------------------------------------------------------------- chart
def write_chart(report: dict[str, Any], path: Path) -> None:
    """Grouped bars per row: ours and the paper's, with ± std error bars."""
    import matplotlib

    matplotlib.use("Agg")  # files only: never a window, works without a display
    import matplotlib.pyplot as plt

    rows = report["rows"]
    labels = [f"{r['layer']}\n{r['classifier']}{' +drop' if r['dropout'] else ''}" for r in rows]
    positions = range(len(rows))
    width = 0.4
    figure, axes = plt.subplots(figsize=(max(6.0, 1.1 * len(rows) + 2), 4.5), dpi=100)
    axes.bar(
        [p - width / 2 for p in positions],
        [r["mean"] for r in rows],
        width,
        yerr=[r["std"] for r in rows],
        capsize=3,
        label=f"ours ({report['backbone']}, {report['weights']})",
        color="#1f77b4",
    )
    paper_rows = [(p, r["paper"]) for p, r in zip(positions, rows, strict=True) if r["paper"]]
    if paper_rows:
        axes.bar(
            [p + width / 2 for p, _ in paper_rows],
            [paper["mean"] for _, paper in paper_rows],
            width,
            yerr=[paper["std"] or 0.0 for _, paper in paper_rows],
            capsize=3,
            label="DeCAF paper (Donahue et al., ICML 2014)",
            color="#ff7f0e",
        )
    axes.set_xticks(list(positions), labels, fontsize=8)
    axes.set_ylabel("mean per-class accuracy (%)")
    axes.set_ylim(0, 105)  # room for the error bars of rows near 100 %
    axes.legend(fontsize=8, loc="lower right")
    title = f"{report['dataset']}: {report['protocol']['splits']} split(s)"
    if report["random_weights"]:
        title = "RANDOM WEIGHTS - NOT A REPRODUCTION\n" + title
        axes.set_title(title, color="red", fontweight="bold")
    else:
        axes.set_title(title)
    figure.tight_layout()
    temporary = path.with_name(path.stem + ".tmp.png")
    figure.savefig(temporary, format="png")
    plt.close(figure)
    temporary.replace(path)
