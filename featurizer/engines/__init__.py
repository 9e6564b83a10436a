"""Extraction engines: each turns the pending parts of a store into complete :class:`Part`\\ s.

``local`` (:mod:`featurizer.engines.local`): DataLoader decode workers + the model in this
process. ``ray`` (:mod:`featurizer.engines.ray`): Ray Data decode tasks + model actors on a
cluster. Neither knows the store format: :func:`featurizer.extraction.extract_dataset` opens the
store, asks an engine for the pending parts and writes them.
"""
