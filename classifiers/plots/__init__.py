"""Pictures of features and results: t-SNE maps of a store, few-shot curves, confusion matrices
and the per-layer table as a chart.

Every plot is a matplotlib ``Figure`` rendered by the Agg canvas (PNG) or the SVG canvas, chosen
by the output's extension; nothing touches pyplot or the process-wide backend, so plotting works
on a server without a display and changes nothing for other code. Names are imported on first use
(PEP 562): ``decaf --help`` loads neither matplotlib nor openTSNE.

Inputs: a feature store (through :class:`featurizer.store.FeatureStore`) or the JSON that
``decaf probe eval --json`` and ``decaf reproduce --json`` write (:mod:`classifiers.plots.results`).
"""

from __future__ import annotations

from featurizer.lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "PlotError": "classifiers.plots.figure",
    "PLOT_FORMATS": "classifiers.plots.figure",
    "embed": "classifiers.plots.tsne",
    "plot_tsne": "classifiers.plots.tsne",
    "ResultDoc": "classifiers.plots.results",
    "ResultRow": "classifiers.plots.results",
    "load_result": "classifiers.plots.results",
    "parse_result": "classifiers.plots.results",
    "plot_curve": "classifiers.plots.charts",
    "plot_confusion": "classifiers.plots.charts",
    "plot_layers": "classifiers.plots.charts",
    "write_result_plots": "classifiers.plots.charts",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
