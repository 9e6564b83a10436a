"""The one progress bar: silent and tqdm-free when disabled, tqdm on a stream when enabled."""

from __future__ import annotations

import io
import sys

import pytest

from featurizer.progress import ProgressBar


def test_disabled_bar_prints_nothing_and_never_imports_tqdm(monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)  # any `import tqdm` would now fail
    stream = io.StringIO()
    with ProgressBar(enabled=False, total=5, desc="work", stream=stream) as bar:
        bar.update(2)
        bar.set_postfix(score="0.5")
        bar.advance_to(4, total=6)
    assert stream.getvalue() == ""
    assert bar.done == 4 and bar.total == 6


def test_enabled_bar_writes_to_the_given_stream():
    stream = io.StringIO()
    # leave=True: the final state stays on the stream (redraws in between are rate-limited)
    with ProgressBar(total=5, desc="C search", leave=True, stream=stream) as bar:
        bar.update()
        bar.update(2)
        bar.set_postfix(acc="91.00")
        assert bar.done == 3
    text = stream.getvalue()
    assert "C search" in text and "3/5" in text and "acc=91.00" in text


def test_first_advance_starts_at_the_resumed_position():
    stream = io.StringIO()
    with ProgressBar(unit="img", leave=True, stream=stream) as bar:
        bar.advance_to(40, total=100)  # 40 done by an earlier run: not part of this run's rate
        assert bar._bar.initial == 40
        bar.advance_to(70)
        assert bar._bar.n == 70 and bar.done == 70
    assert "70/100" in stream.getvalue()


def test_default_stream_is_stderr_at_draw_time(capsys):
    with ProgressBar(total=2, desc="splits", leave=True) as bar:
        bar.update(2)
    out, err = capsys.readouterr()
    assert out == "" and "2/2" in err


@pytest.mark.parametrize("enabled", [True, False])
def test_close_is_idempotent(enabled):
    bar = ProgressBar(enabled=enabled, total=1, stream=io.StringIO())
    bar.update()
    bar.close()
    bar.close()
