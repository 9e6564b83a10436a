"""Figures, output formats, titles and the random-weights mark shared by every plot.

Rendering: a plain ``matplotlib.figure.Figure`` attached to the Agg canvas, saved with the format
of the file's extension (``.png`` through Agg, ``.svg`` through matplotlib's SVG writer). No
pyplot: it would keep global figure state and pick a display backend; a ``Figure`` of its own is
collected like any object and safe from several threads.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from featurizer.errors import DecafError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

PlotFormat = Literal["png", "svg"]
PLOT_FORMATS: tuple[PlotFormat, ...] = ("png", "svg")
RANDOM_WEIGHTS_ID = "random"  # featurizer.weights.RANDOM_WEIGHTS, as manifests record it
RANDOM_MARK = "RANDOM WEIGHTS"
DPI = 120
# tab10 for up to 10 classes, tab20 up to 20; beyond that the largest classes get colours and
# the rest one grey, because 50 hues cannot be told apart (nor their legend read).
MAX_COLOURED = 20
OTHER_GREY = "#b0b0b0"


class PlotError(DecafError, ValueError):
    """A plot cannot be made from this input (wrong kind of result, missing data, bad path)."""

    http_status: ClassVar[int] = 422


def plot_format(out: str | Path) -> PlotFormat:
    """The format a path asks for by its extension; anything else is a PlotError."""
    suffix = Path(out).suffix.lower().lstrip(".")
    if suffix not in PLOT_FORMATS:
        raise PlotError(
            f"cannot tell the image format of {str(out)!r}: name it *.png or *.svg "
            f"(supported: {', '.join(PLOT_FORMATS)})"
        )
    return suffix  # type: ignore[return-value]


def new_figure(width: float, height: float) -> Figure:
    """A figure on the Agg canvas (inches); matplotlib is imported here, not at module import."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def save(figure: Figure, out: str | Path) -> Path:
    """Write the figure to ``out`` (format from the extension), creating its folder."""
    path = Path(out)
    fmt = plot_format(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    from matplotlib import rc_context

    # No date: the same plot gives the same SVG bytes. Text stays text (not glyph outlines), so
    # an SVG is searchable, smaller and editable.
    metadata: dict[str, Any] = {"Date": None} if fmt == "svg" else {}
    with rc_context({"svg.fonttype": "none"}):
        figure.savefig(path, format=fmt, metadata=metadata)
    return path


def is_random(weights_id: str | None) -> bool:
    return weights_id == RANDOM_WEIGHTS_ID


def provenance_title(
    what: str, *, backbone: str | None, layer: str | None, weights: str | None
) -> str:
    """``"t-SNE of decaf6 · alexnet · weights alexnet/IMAGENET1K_V1"`` (parts that are known)."""
    parts = [what]
    if layer:
        parts[0] = f"{what} of {layer}"
    if backbone:
        parts.append(backbone)
    if weights:
        parts.append(f"weights {weights}")
    return " · ".join(parts)


def mark_random_weights(figure: Figure) -> None:
    """A large diagonal "RANDOM WEIGHTS" across the figure: such features mean nothing, and a
    picture travels without its command line."""
    figure.text(
        0.5,
        0.5,
        RANDOM_MARK,
        rotation=25,
        fontsize=44,
        fontweight="bold",
        color="#d62728",
        alpha=0.28,
        ha="center",
        va="center",
        zorder=100,
    )


def class_colours(counts: dict[str, int], max_coloured: int = MAX_COLOURED) -> dict[str, str]:
    """A colour per class: distinct hues for the ``max_coloured`` largest, grey for the rest.

    Ties in size are broken by name, so the same store always gets the same colours.
    """
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    ranked = sorted(counts, key=lambda name: (-counts[name], name))
    coloured = ranked[:max_coloured]
    cmap = colormaps["tab10" if len(coloured) <= 10 else "tab20"]
    colours = {name: to_hex(cmap(i % cmap.N)) for i, name in enumerate(sorted(coloured))}
    colours.update({name: OTHER_GREY for name in ranked[max_coloured:]})
    return colours
