"""Protocols are registry entries: names, help and errors derive from the registry."""

from __future__ import annotations

from typing import get_args

import numpy as np
import pytest

from classifiers import ProbeError, make_splits, registry
from classifiers.registry import (
    PROTOCOL_NAMES,
    PROTOCOLS,
    ProtocolEntry,
    ProtocolName,
    ProtocolParams,
    get_protocol,
    protocol_names,
    protocols_help,
    register_protocol,
)
from classifiers.splits import PerClassSplitter, Split, SplitPlan


def test_names_derive_from_the_registry():
    assert PROTOCOL_NAMES == protocol_names() == tuple(PROTOCOLS)
    assert PROTOCOL_NAMES == ("caltech101", "sun397", "stratified", "predefined")
    assert get_args(ProtocolName) == PROTOCOL_NAMES
    for name, entry in PROTOCOLS.items():
        assert entry.name == name
        assert entry.description and "\n" not in entry.description
        assert f"{name}: {entry.description}" in protocols_help().splitlines()


def test_unknown_protocol_is_a_clear_error():
    with pytest.raises(ProbeError, match="unknown protocol 'imagenet'; choose one of caltech101"):
        get_protocol("imagenet")


def test_builders_apply_each_protocols_defaults():
    assert get_protocol("caltech101").splitter(ProtocolParams()) == PerClassSplitter(
        n_train=30, max_test=50, n_splits=5, seed=0
    )
    sun = get_protocol("sun397").splitter(ProtocolParams(splits=2, seed=3))
    assert (sun.n_train, sun.max_test, sun.n_splits, sun.seed) == (50, 50, 2, 3)
    with pytest.raises(ProbeError, match="n_train must be at least 1"):
        get_protocol("caltech101").splitter(ProtocolParams(n_train=0))
    assert get_protocol("predefined").needs_split_file
    with pytest.raises(ProbeError, match="split file"):
        get_protocol("predefined").splitter(ProtocolParams())


def test_recorded_params_leave_out_what_a_protocol_does_not_read():
    params = ProtocolParams(n_train=7, train_fraction=0.3, split_file="s.txt")
    assert get_protocol("stratified").recorded_params(params) == {
        "n_train": None,
        "max_test": None,
        "splits": 5,
        "seed": 0,
        "train_fraction": 0.3,
        "split_file": None,
    }
    assert get_protocol("predefined").recorded_params(params)["split_file"] == "s.txt"


class _EveryOther:
    def split(self, y, paths=None):
        rows = np.arange(len(y))
        return SplitPlan([Split(rows[::2], rows[1::2])], [])


def test_a_registered_protocol_is_usable_by_name(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    entry = ProtocolEntry("every_other", "even rows train", reads=(), build=lambda p: _EveryOther())
    register_protocol(entry)
    assert protocol_names()[-1] == "every_other"
    y = np.array(list("abab"), dtype=object)
    (split,), notes = make_splits(y, None, protocol="every_other")
    assert notes == []
    np.testing.assert_array_equal(split.train, [0, 2])
    with pytest.raises(ValueError, match="already registered"):
        register_protocol(entry)


def test_entries_only_read_known_parameters():
    with pytest.raises(ValueError, match="unknown parameters"):
        ProtocolEntry("bad", "reads a typo", reads=("n_trian",), build=lambda p: _EveryOther())
