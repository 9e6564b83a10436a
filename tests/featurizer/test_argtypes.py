"""The argparse converters every `decaf` sub-command shares."""

from __future__ import annotations

import argparse

import pytest

from featurizer.argtypes import (
    comma_list,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_float_or_auto,
    positive_int,
)


@pytest.mark.parametrize("text, value", [("1", 1), ("64", 64)])
def test_positive_int_accepts(text, value):
    assert positive_int(text) == value


@pytest.mark.parametrize("text", ["0", "-3", "1.5", "one", ""])
def test_positive_int_refuses(text):
    with pytest.raises(argparse.ArgumentTypeError, match="integer >= 1"):
        positive_int(text)


def test_non_negative_int_allows_zero_only_as_its_floor():
    assert non_negative_int("0") == 0
    with pytest.raises(argparse.ArgumentTypeError, match="integer >= 0"):
        non_negative_int("-1")


@pytest.mark.parametrize("text, value", [("0.5", 0.5), ("30", 30.0), ("1e-3", 1e-3)])
def test_positive_float_accepts_finite_numbers_above_zero(text, value):
    assert positive_float(text) == value


@pytest.mark.parametrize("text", ["0", "-1", "nan", "inf", "-inf", "1e999", "thirty", ""])
def test_positive_float_refuses_zero_negatives_and_non_finite(text):
    with pytest.raises(argparse.ArgumentTypeError, match=r"finite number > 0, got"):
        positive_float(text)


def test_positive_float_or_auto():
    assert positive_float_or_auto("auto") == "auto"
    assert positive_float_or_auto("0.01") == 0.01
    for text in ("Auto", "0", "nan", "inf"):
        with pytest.raises(argparse.ArgumentTypeError, match="'auto' or a finite number"):
            positive_float_or_auto(text)


def test_non_negative_float_refuses_nan_and_negatives():
    assert non_negative_float("0") == 0.0
    for text in ("-0.1", "nan"):
        with pytest.raises(argparse.ArgumentTypeError, match=">= 0"):
            non_negative_float(text)


def test_comma_list_drops_empty_items_and_refuses_an_empty_list():
    assert comma_list("a, b,,c") == ("a", "b", "c")
    with pytest.raises(argparse.ArgumentTypeError, match="comma-separated"):
        comma_list(" , ")
