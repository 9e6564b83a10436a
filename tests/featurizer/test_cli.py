"""`decaf extract` / `decaf info`, including a real process killed mid-extraction and resumed.

(`decaf store upgrade` and `decaf info` on damaged stores: tests/featurizer/test_store*.py.)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import featurizer.extraction
from featurizer import cli as fcli
from featurizer.extraction import ExtractionResult
from featurizer.store import ERRORS_NAME, MANIFEST_NAME, FeatureStore, read_errors
from tests._gate import gated_decaf
from tests.featurizer.test_batch import BAD_FILES, build_dataset, part_files

REPO = Path(__file__).resolve().parents[2]
# The real entry point (`decaf` = service.cli:main) run as a separate Python process.
DECAF = [sys.executable, "-m", "service.cli"]
SMALL = ["--weights", "random", "--batch-size", "4", "--part-size", "4", "--workers", "1",
         "--backbone", "alexnet"]  # fmt: skip
TIMESTAMPS = ("created_at", "finished_at")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    root = tmp_path_factory.mktemp("images")
    return root, build_dataset(root, per_class=8)  # 26 good + 3 bad files -> 8 parts of 4


@pytest.fixture(scope="module")
def clean_store(
    images: tuple[Path, list[str]], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, str]:
    """An uninterrupted `decaf extract` run (a fresh process, like the killed one)."""
    root, _ = images
    out = tmp_path_factory.mktemp("stores") / "clean"
    done = subprocess.run(
        [*DECAF, "extract", str(root), "--out", str(out), *SMALL],
        capture_output=True, text=True, env=_env(), cwd=REPO, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return out, done.stdout + done.stderr


def test_extract_reports_progress_and_summary(clean_store: tuple[Path, str]) -> None:
    _, output = clean_store
    assert "26 images" in output and "3 unreadable" in output and "0 part(s) resumed" in output
    assert "29/29" in output and "img/s" in output  # the tqdm bar on stderr


PASSES = 2  # parts of 4 images written before the kill


def _kill_after_two_parts(root: Path, out: Path, log: Path) -> int:
    """Start `decaf extract` behind a gate (tests/_gate.py) that holds its third model pass;
    SIGKILL its whole process group once the two parts before it are on disk."""
    arm_file = log.with_name("armed")
    arm_file.touch()
    decaf, env = gated_decaf(arm_file, PASSES)
    with log.open("wb") as stderr:
        proc = subprocess.Popen(
            [*decaf, "extract", str(root), "--out", str(out), *SMALL],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env=env,
            cwd=REPO,
            start_new_session=True,  # its own group: the decode worker dies with it
        )
        # Polls a state the gate guarantees (the deadline only turns a hang into a failure).
        deadline = time.monotonic() + 180
        try:
            while len(part_files(out) if out.exists() else []) < PASSES:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"extract ended/hung before {PASSES} parts:\n{log.read_text()}")
                time.sleep(0.01)
            os.killpg(proc.pid, signal.SIGKILL)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
    return proc.returncode


@pytest.mark.slow  # three fresh `decaf` processes (imports + model init each)
def test_killed_extraction_resumes_to_the_same_store(
    images: tuple[Path, list[str]], clean_store: tuple[Path, str], tmp_path: Path
) -> None:
    root, good = images
    clean, _ = clean_store
    out = tmp_path / "killed"
    returncode = _kill_after_two_parts(root, out, tmp_path / "stderr.log")
    assert returncode == -signal.SIGKILL
    written = part_files(out)
    assert len(written) == PASSES, "the gate holds the third part"
    assert json.loads((out / MANIFEST_NAME).read_text())["complete"] is False

    resumed = subprocess.run(
        [*DECAF, "extract", str(root), "--out", str(out), *SMALL, "--json", "--no-progress"],
        capture_output=True, text=True, env=_env(), cwd=REPO, timeout=300, check=False,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads(resumed.stdout)
    assert summary["resumed_parts"] == PASSES and summary["num_images"] == len(good)

    clean_parts = part_files(clean)
    assert [p.name for p in part_files(out)] == [p.name for p in clean_parts]
    for part in clean_parts:
        assert (out / part.name).read_bytes() == part.read_bytes(), part.name
    assert (out / ERRORS_NAME).read_bytes() == (clean / ERRORS_NAME).read_bytes()
    assert [e["path"] for e in read_errors(out)] == sorted(BAD_FILES)
    manifests = [json.loads((s / MANIFEST_NAME).read_text()) for s in (out, clean)]
    for manifest in manifests:
        for key in TIMESTAMPS:
            assert manifest.pop(key)
    assert manifests[0] == manifests[1]
    assert manifests[0]["complete"] is True


def test_info_text_summary(
    clean_store: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert fcli.main(["info", str(clean_store[0])]) == 0
    text = capsys.readouterr().out
    assert "status:       complete" in text
    assert "images:       26" in text and "errors:       3 (see _errors.jsonl)" in text
    assert "layers:       decaf6 (4096), decaf7 (4096)" in text
    assert "weights: random" in text and "precision:    fp32" in text
    assert "backbone:     alexnet" in text and "format:       version 2" in text
    assert "classes:      3" in text
    # per-class counts: 8 per class + the CMYK file in b, 1 unlabeled (bad files excluded)
    assert [line.split() for line in text.splitlines()[-4:]] == [
        ["<none>", "1"], ["a", "8"], ["b", "9"], ["c", "8"],
    ]  # fmt: skip


def test_info_json(clean_store: tuple[Path, str], capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert fcli.main(["info", str(clean_store[0]), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["complete"] is True and info["num_images"] == 26 and info["num_errors"] == 3
    assert info["class_counts"] == {"<none>": 1, "a": 8, "b": 9, "c": 8}
    assert info["manifest"]["layers"] == {"decaf6": 4096, "decaf7": 4096}
    assert info["manifest"]["backbone"] == "alexnet" and info["manifest"]["engine"] == "local"
    assert info["disk_bytes"] > 0 and info["problems"] == []
    assert FeatureStore.open(clean_store[0]).manifest.to_dict() == info["manifest"]


def test_info_on_missing_store_is_a_clean_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert fcli.main(["info", str(tmp_path / "nope")]) == 5  # not found
    assert "decaf: error: feature store not found" in capsys.readouterr().err


def test_extract_unknown_layer_is_a_clean_error(
    images: tuple[Path, list[str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root, _ = images
    code = fcli.main(["extract", str(root), "--out", str(tmp_path / "s"), *SMALL,
                      "--layers", "decaf6,fc9"])  # fmt: skip
    assert code == 3  # bad input
    assert "fc9" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_ray_engine_receives_the_cli_options(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from featurizer.engines.ray import RayOptions

    calls: list[tuple[tuple, dict]] = []

    def fake_extract(*args: object, **kwargs: object) -> ExtractionResult:
        calls.append((args, kwargs))
        return ExtractionResult(tmp_path / "s", 5, 1, 0.5, 0, None)  # type: ignore[arg-type]

    monkeypatch.setattr(featurizer.extraction, "extract_dataset", fake_extract)
    argv = ["extract", "imgs", "--out", "s", "--engine", "ray", "--address", "head:6379",
            "--num-gpus-per-worker", "0.5", "--concurrency", "3", "--backbone", "alexnet",
            "--layers", "decaf5", "--precision", "bf16", "--json", "--no-progress"]  # fmt: skip
    assert fcli.main(argv) == 0
    ((args, kwargs),) = calls
    assert args == ("imgs", "s")
    assert kwargs["engine"] == "ray" and kwargs["layers"] == ("decaf5",)
    assert kwargs["ray"] == RayOptions("head:6379", num_gpus_per_worker=0.5, concurrency=3)
    assert kwargs["precision"] == "bf16" and kwargs["batch_size"] == 64
    assert kwargs["backbone"] == "alexnet" and kwargs["workers"] is None
    assert json.loads(capsys.readouterr().out)["num_images"] == 5

    calls.clear()
    assert fcli.main(["extract", "imgs", "--out", "s", "--no-progress"]) == 0
    ((_, kwargs),) = calls
    assert kwargs["layers"] is None, "default: the backbone's default taps"
    assert kwargs["engine"] == "local" and kwargs["ray"] is None


def test_ray_options_without_the_ray_engine_are_refused(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert fcli.main(["extract", "imgs", "--out", "s", "--concurrency", "2"]) == 3
    assert "--concurrency only apply with --engine ray" in capsys.readouterr().err


def test_unknown_backbone_lists_the_known_ones(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        fcli.main(["extract", "imgs", "--out", "s", "--backbone", "lenet"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "argument --backbone: invalid choice: 'lenet'" in error
    known = "'alexnet', 'bvlc_alexnet', 'caffenet', 'resnet50', 'vgg16', 'vit_b_16'"
    assert known in error  # from the registry


def test_help_imports_no_heavy_module() -> None:
    """`--help` of extract/info/store upgrade loads neither torch, pyarrow nor sklearn."""
    script = (
        "import json, sys\n"
        "from featurizer import cli\n"
        "for argv in (['extract', '-h'], ['info', '-h'], ['store', 'upgrade', '-h']):\n"
        "    try:\n"
        "        cli.main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "heavy = [m for m in ('torch', 'pyarrow', 'sklearn', 'numpy') if m in sys.modules]\n"
        "print(json.dumps(heavy), file=sys.stderr)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(REPO / "featurizer")],
        capture_output=True, text=True, env=_env(), cwd=REPO, timeout=60, check=True,
    )  # fmt: skip
    assert "--backbone {alexnet,bvlc_alexnet,caffenet,resnet50,vgg16,vit_b_16}" in done.stdout
    assert "see `decaf backbones`" in done.stdout
    assert "decaf6" not in done.stdout, "layer help must not hard-code AlexNet's taps"
    assert json.loads(done.stderr.strip().splitlines()[-1]) == []


def test_extract_with_another_backbone_writes_a_store_any_parquet_reader_opens(
    images: tuple[Path, list[str]], tmp_path: Path
) -> None:
    """The issue's acceptance run: `decaf extract ROOT --out S --backbone resnet50 --layers pool
    --weights random`, then `pandas.read_parquet(S)` with no glob."""
    import pandas as pd

    root, _ = images
    out = tmp_path / "r50"
    command = ["extract", str(root), "--out", str(out), "--backbone", "resnet50"]
    options = ["--layers", "pool", "--weights", "random", "--workers", "0", "--json"]
    done = subprocess.run(
        [*DECAF, *command, *options],
        capture_output=True, text=True, env=_env(), cwd=REPO, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest["backbone"] == "resnet50" and manifest["layers"] == {"pool": 2048}
    assert manifest["preprocessing"]["resize"] == 232  # the default tag's (IMAGENET1K_V2)
    frame = pd.read_parquet(out)
    assert len(frame) == manifest["num_images"] == json.loads(done.stdout)["num_images"] > 0
    assert list(frame.columns) == ["path", "label", "pool"] and len(frame["pool"][0]) == 2048
