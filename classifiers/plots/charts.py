"""Result charts: the few-shot curve, the confusion matrix and the per-layer table.

Each takes a :class:`~classifiers.plots.results.ResultDoc` (or a path to the JSON) and writes a
.png or .svg; accuracies are drawn in percent, the papers' unit.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from classifiers.plots.figure import (
    PlotError,
    mark_random_weights,
    new_figure,
    provenance_title,
    save,
)
from classifiers.plots.results import ResultDoc, ResultRow, load_result

MOST_CONFUSED = 8  # pairs listed beside the confusion matrix
MAX_TICK_LABELS = 40  # more class names than this on an axis are unreadable: numbers instead


def _doc(result: ResultDoc | str | Path) -> ResultDoc:
    return result if isinstance(result, ResultDoc) else load_result(result)


def _finish(figure: Any, doc: ResultDoc, out: str | Path) -> Path:
    if doc.random_weights:
        mark_random_weights(figure)
    return save(figure, out)


def _title(doc: ResultDoc, what: str, layer: str | None = None) -> str:
    title = provenance_title(what, backbone=doc.backbone, layer=layer, weights=doc.weights)
    return f"{title}\n{doc.source}" if doc.source else title


# --------------------------------------------------------------------------- few-shot curve
def plot_curve(result: ResultDoc | str | Path, out: str | Path) -> Path:
    """Mean per-class accuracy vs training images per class, one line per layer and classifier,
    with a ± std band over splits."""
    doc = _doc(result)
    rows = [row for row in doc.rows if row.shots is not None]
    if not rows:
        raise PlotError(
            "this result has no few-shot rows; make one with `decaf probe eval STORE --shots "
            "1,2,5,10 --json > curve.json`"
        )
    figure = new_figure(8.0, 5.5)
    axes = figure.add_subplot()
    for (layer, method), line in _group(rows).items():
        shots = np.array([row.shots for row in line], dtype=float)
        mean = 100 * np.array([row.mean for row in line])
        std = 100 * np.array([row.std for row in line])
        (drawn,) = axes.plot(shots, mean, marker="o", label=f"{layer} · {method}")
        axes.fill_between(shots, mean - std, mean + std, color=drawn.get_color(), alpha=0.18)
    classes = doc.num_classes()
    if classes:
        axes.axhline(
            100 / classes, color="grey", linestyle=":", label=f"chance ({classes} classes)"
        )
    axes.set_xscale("log")
    ticks = sorted({row.shots for row in rows if row.shots is not None})
    axes.set_xticks(ticks, [str(t) for t in ticks])
    axes.minorticks_off()
    axes.set_xlabel("training images per class")
    axes.set_ylabel("mean per-class accuracy (%)")
    axes.set_ylim(0, 100)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    axes.set_title(_title(doc, "Few-shot curve"), fontsize=10)
    return _finish(figure, doc, out)


def _group(rows: Sequence[ResultRow]) -> dict[tuple[str, str], list[ResultRow]]:
    groups: dict[tuple[str, str], list[ResultRow]] = {}
    for row in rows:
        groups.setdefault((row.layer, row.method), []).append(row)
    return {key: sorted(line, key=lambda r: r.shots or 0) for key, line in groups.items()}


# --------------------------------------------------------------------------- confusion
def pick_row(
    doc: ResultDoc,
    *,
    layer: str | None = None,
    classifier: str | None = None,
    shots: int | None = None,
    need_confusion: bool = False,
) -> ResultRow:
    """The row asked for; unspecified choices pick the best mean (the most shots on a curve)."""
    rows = [
        row
        for row in doc.rows
        if (layer is None or row.layer == layer)
        and (classifier is None or row.classifier == classifier)
        and (shots is None or row.shots == shots)
        and (not need_confusion or row.confusion is not None)
    ]
    if not rows:
        have = sorted({(r.layer, r.classifier, r.shots) for r in doc.rows}, key=str)
        what = "with a confusion matrix " if need_confusion else ""
        raise PlotError(
            f"no result row {what}matches layer={layer} classifier={classifier} shots={shots}; "
            f"rows (layer, classifier, shots): {have}"
            + (
                "; `decaf reproduce` results carry no confusion matrices: use `decaf probe "
                "eval --json`"
                if need_confusion and doc.kind == "reproduce"
                else ""
            )
        )
    return max(rows, key=lambda r: (r.shots or 0, r.mean))


def most_confused(
    classes: Sequence[str], matrix: np.ndarray, top: int = MOST_CONFUSED
) -> list[tuple[str, str, float, int]]:
    """The largest off-diagonal cells: ``(true, predicted, share of the true class, count)``."""
    counts = np.asarray(matrix, dtype=np.int64)
    totals = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)
    np.fill_diagonal(shares, 0.0)
    order = np.argsort(-shares, axis=None, kind="stable")[:top]
    pairs = []
    for flat in order:
        i, j = np.unravel_index(flat, shares.shape)
        if shares[i, j] <= 0:
            break
        pairs.append((classes[i], classes[j], float(shares[i, j]), int(counts[i, j])))
    return pairs


def plot_confusion(
    result: ResultDoc | str | Path,
    out: str | Path,
    *,
    layer: str | None = None,
    classifier: str | None = None,
    shots: int | None = None,
) -> Path:
    """Row-normalised confusion matrix (summed over splits) with the most confused pairs listed
    and outlined."""
    doc = _doc(result)
    row = pick_row(doc, layer=layer, classifier=classifier, shots=shots, need_confusion=True)
    assert row.confusion is not None
    classes = row.confusion.classes
    counts = np.asarray(row.confusion.matrix, dtype=np.int64)
    totals = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)
    side = float(np.clip(4.0 + 0.18 * len(classes), 6.0, 16.0))
    figure = new_figure(side + 4.0, side)
    axes, notes = figure.subplots(1, 2, width_ratios=[side, 4.0])
    image = axes.imshow(100 * shares, cmap="Blues", vmin=0, vmax=100, interpolation="nearest")
    figure.colorbar(image, ax=axes, shrink=0.7, label="% of the true class")
    _class_ticks(axes, classes)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    pairs = most_confused(classes, counts)
    position = {name: k for k, name in enumerate(classes)}
    for rank, (true, predicted, _share, _count) in enumerate(pairs, start=1):
        i, j = position[true], position[predicted]
        axes.add_patch(_outline(j, i))
        axes.annotate(str(rank), (j, i), ha="center", va="center", fontsize=7, color="#d62728")
    notes.axis("off")
    lines = [f"{k}. {t} → {p}: {100 * s:.0f} % ({c})" for k, (t, p, s, c) in enumerate(pairs, 1)]
    notes.text(0, 1, "most confused (true → predicted)\n\n" + ("\n".join(lines) or "none"),
               va="top", fontsize=8, family="monospace", wrap=True)  # fmt: skip
    shot_text = f", {row.shots}-shot" if row.shots else ""
    summary = f"{row.method}{shot_text}: {100 * row.mean:.1f} ± {100 * row.std:.1f} %"
    figure.suptitle(_title(doc, "Confusion", row.layer) + f"\n{summary}", fontsize=10)
    return _finish(figure, doc, out)


def _class_ticks(axes: Any, classes: Sequence[str]) -> None:
    if len(classes) > MAX_TICK_LABELS:
        return  # matplotlib's numeric ticks: names would overlap
    ticks = range(len(classes))
    axes.set_xticks(ticks, classes, rotation=90, fontsize=7)
    axes.set_yticks(ticks, classes, fontsize=7)


def _outline(x: int, y: int) -> Any:
    from matplotlib.patches import Rectangle

    return Rectangle((x - 0.5, y - 0.5), 1, 1, fill=False, edgecolor="#d62728", linewidth=1.2)


# --------------------------------------------------------------------------- layers
def plot_layers(result: ResultDoc | str | Path, out: str | Path) -> Path:
    """Accuracy per layer (groups) and classifier (bars), ± std, with the paper's number beside
    ours where the result carries it (hatched bars): the DeCAF table as a chart."""
    doc = _doc(result)
    rows = _table_rows(doc.rows)
    layers = list(dict.fromkeys(row.layer for row in rows))
    methods = list(dict.fromkeys(row.method for row in rows))
    cell = {(row.layer, row.method): row for row in rows}
    has_paper = any(row.paper is not None for row in rows)
    bars_per_group = len(methods) * (2 if has_paper else 1)
    width = 0.8 / bars_per_group
    figure = new_figure(max(6.0, 1.4 + 0.45 * bars_per_group * len(layers)), 5.5)
    axes = figure.add_subplot()
    palette = _method_colours(len(methods))
    for k, method in enumerate(methods):
        colour = palette[k]
        offsets = np.arange(len(layers)) - 0.4 + width * (k * (2 if has_paper else 1) + 0.5)
        ours = [cell.get((layer, method)) for layer in layers]
        _bars(axes, offsets, ours, width, colour, f"{method} (ours)" if has_paper else method)
        if has_paper:
            papers = [row.paper if row is not None else None for row in ours]
            _paper_bars(axes, offsets + width, papers, width, colour, f"{method} (paper)")
    axes.set_xticks(np.arange(len(layers)), layers)
    axes.set_ylabel("mean per-class accuracy (%)")
    axes.set_ylim(0, 105)
    axes.grid(axis="y", alpha=0.3)
    # Below the axes: inside, it would hide the bars' value labels near 100 %.
    entries = len(methods) * (2 if has_paper else 1)
    axes.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.08),
                ncols=min(entries, 4), frameon=False)  # fmt: skip
    shots = {row.shots for row in rows if row.shots is not None}
    what = "Accuracy per layer" + (f" ({max(shots)}-shot)" if shots else "")
    axes.set_title(_title(doc, what), fontsize=10)
    citations = sorted({r.paper.citation for r in rows if r.paper and r.paper.citation})
    if citations:
        figure.text(0.01, 0.0, "paper: " + "; ".join(citations), fontsize=7, va="bottom")
    return _finish(figure, doc, out)


def _method_colours(count: int) -> list[str]:
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    cmap = colormaps["tab10"]
    return [to_hex(cmap(k % cmap.N)) for k in range(count)]


def _table_rows(rows: Sequence[ResultRow]) -> list[ResultRow]:
    """Rows of the protocol run, or, for a pure curve, the largest shot of each line."""
    fixed = [row for row in rows if row.shots is None]
    if fixed:
        return fixed
    if not rows:
        raise PlotError("this result has no rows to plot")
    largest = max(row.shots or 0 for row in rows)
    return [row for row in rows if row.shots == largest]


def _bars(axes: Any, x: np.ndarray, rows: list[ResultRow | None], width: float, colour: str,
          label: str) -> None:  # fmt: skip
    present = [(xi, row) for xi, row in zip(x, rows, strict=True) if row is not None]
    if not present:
        return
    xs = [xi for xi, _ in present]
    means = [100 * row.mean for _, row in present]
    stds = [100 * row.std for _, row in present]
    drawn = axes.bar(xs, means, width, yerr=stds, capsize=3, color=colour, label=label)
    axes.bar_label(drawn, [f"{m:.1f}" for m in means], fontsize=7, padding=2)


def _paper_bars(axes: Any, x: np.ndarray, papers: list[Any], width: float, colour: str,
                label: str) -> None:  # fmt: skip
    present = [(xi, p) for xi, p in zip(x, papers, strict=True) if p is not None]
    if not present:
        return
    xs = [xi for xi, _ in present]
    means = [100 * p.mean for _, p in present]
    stds = [100 * (p.std or 0.0) for _, p in present]
    drawn = axes.bar(xs, means, width, yerr=stds, capsize=3, color="white", edgecolor=colour,
                     hatch="///", label=label)  # fmt: skip
    axes.bar_label(drawn, [f"{m:.1f}" for m in means], fontsize=7, padding=2)


# --------------------------------------------------------------------------- all at once
def write_result_plots(result: ResultDoc | Any, out_dir: str | Path) -> list[Path]:
    """Every chart the result supports, into ``out_dir`` as PNGs: ``layers.png`` always,
    ``curve.png`` for a few-shot run, ``confusion.png`` when a row has a confusion matrix."""
    from classifiers.plots.results import parse_result

    doc = result if isinstance(result, ResultDoc) else parse_result(result)
    folder = Path(out_dir)
    written = [plot_layers(doc, folder / "layers.png")]
    if any(row.shots is not None for row in doc.rows):
        written.append(plot_curve(doc, folder / "curve.png"))
    if any(row.confusion is not None for row in doc.rows):
        written.append(plot_confusion(doc, folder / "confusion.png"))
    return written
