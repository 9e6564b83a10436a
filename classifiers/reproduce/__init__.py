"""``decaf reproduce``: the DeCAF paper's tables in one command.

:mod:`~classifiers.reproduce.paper` holds the paper's numbers as data (with their table and
citation), :mod:`~classifiers.reproduce.runner` gets the official dataset, extracts features into
a normal feature store and runs the paper's protocol with the existing probes and splitters,
:mod:`~classifiers.reproduce.report` writes JSON, Markdown and a PNG bar chart, and
:mod:`~classifiers.reproduce.cli` is the command. Importing this package imports nothing heavy.
"""
