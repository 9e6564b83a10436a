"""Getting the official distributions: download, resume, checksums, damaged and hostile archives,
the user's own copy, and the offline message. All against fake archives in the official layouts
served from 127.0.0.1."""

from __future__ import annotations

from pathlib import Path

import pytest

from classifiers.datasets.errors import ArchiveError, ChecksumError, DatasetMissingError
from classifiers.datasets.layouts import class_of, read_class_names, read_partition
from classifiers.datasets.prepare import default_data_dir, prepare_dataset
from classifiers.datasets.sources import SOURCES, Digest
from tests.classifiers.datasets.fakes import (
    caltech_source,
    caltech_zip,
    serve,
    sun_archives,
    sun_source,
    tar_gz,
    zip_bytes,
)

CLASSES = {"BACKGROUND_Google": 3, "Faces": 2, "accordion": 4}


@pytest.fixture(scope="module")
def caltech_archives() -> tuple[bytes, bytes]:
    return caltech_zip(CLASSES)


def _images(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.jpg"))


def _nothing_final_left(home: Path) -> None:
    """No folder under a final name, no staging leftovers: a rerun starts clean."""
    assert not (home / "101_ObjectCategories").exists()
    assert not list(home.glob(".extracting-*"))


def test_download_verifies_and_extracts_the_nested_archive(tmp_path, caltech_archives):
    outer, inner = caltech_archives
    with serve({"caltech-101.zip": outer}) as server:
        prepared = prepare_dataset(caltech_source(server.base_url, outer, inner), tmp_path)
    assert prepared.images == tmp_path / "caltech101" / "101_ObjectCategories"
    assert len(_images(prepared.images)) == sum(CLASSES.values())
    assert sorted(p.name for p in prepared.images.iterdir()) == sorted(CLASSES)
    assert (tmp_path / "caltech101" / "caltech-101.zip").read_bytes() == outer
    # A second call finds the extracted folder and fetches nothing.
    with serve({}) as server:
        again = prepare_dataset(caltech_source(server.base_url, outer, inner), tmp_path)
        assert server.requests == []
    assert again.images == prepared.images


def test_an_interrupted_download_resumes_with_a_range_request(tmp_path, caltech_archives):
    outer, inner = caltech_archives
    source_args = (outer, inner)
    with serve({"caltech-101.zip": outer}) as server:
        server.cut_after["caltech-101.zip"] = len(outer) // 3
        with pytest.raises(DatasetMissingError, match="resumes"):
            prepare_dataset(caltech_source(server.base_url, *source_args), tmp_path)
        part = tmp_path / "caltech101" / "caltech-101.zip.part"
        assert part.stat().st_size == len(outer) // 3
        _nothing_final_left(tmp_path / "caltech101")

        prepared = prepare_dataset(caltech_source(server.base_url, *source_args), tmp_path)
        assert server.requests == [
            ("caltech-101.zip", None),
            ("caltech-101.zip", f"bytes={len(outer) // 3}-"),
        ]
    assert not part.exists()
    assert len(_images(prepared.images)) == sum(CLASSES.values())


def test_a_checksum_mismatch_deletes_our_download_and_extracts_nothing(tmp_path, caltech_archives):
    outer, inner = caltech_archives
    tampered = outer[:-10] + b"x" * 10
    with (
        serve({"caltech-101.zip": tampered}) as server,
        pytest.raises(ChecksumError, match=r"not the official file.*deleted"),
    ):
        prepare_dataset(caltech_source(server.base_url, outer, inner), tmp_path)
    home = tmp_path / "caltech101"
    _nothing_final_left(home)
    assert not (home / "caltech-101.zip").exists()


def test_a_users_archive_with_the_wrong_checksum_is_kept_and_named(tmp_path, caltech_archives):
    outer, inner = caltech_archives
    (tmp_path / "caltech-101.zip").write_bytes(b"PK not really")
    with pytest.raises(ChecksumError, match=r"caltech-101\.zip is not the official file"):
        prepare_dataset(caltech_source("http://127.0.0.1:9", outer, inner), tmp_path)
    assert (tmp_path / "caltech-101.zip").read_bytes() == b"PK not really"  # loses nothing
    _nothing_final_left(tmp_path / "caltech101")


def test_a_damaged_archive_is_a_clear_error_and_leaves_nothing_half_extracted(tmp_path):
    good = tar_gz({f"101_ObjectCategories/a/image_{i:04d}.jpg": b"x" * 5000 for i in range(20)})
    damaged = good[: len(good) // 2]
    # The published checksum is that of the damaged bytes: only extraction can notice.
    (tmp_path / "101_ObjectCategories.tar.gz").write_bytes(damaged)
    source = caltech_source("http://127.0.0.1:9", b"unused", damaged)
    with pytest.raises(ArchiveError, match="damaged"):
        prepare_dataset(source, tmp_path, allow_download=False)
    _nothing_final_left(tmp_path / "caltech101")


def test_a_tar_member_with_dotdot_is_refused(tmp_path):
    hostile = tar_gz({"101_ObjectCategories/a/image_0001.jpg": b"x", "../escaped.jpg": b"gotcha"})
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "101_ObjectCategories.tar.gz").write_bytes(hostile)
    source = caltech_source("http://127.0.0.1:9", b"unused", hostile)
    with pytest.raises(ArchiveError, match="outside the target folder"):
        prepare_dataset(source, tmp_path / "data", allow_download=False)
    assert not list(tmp_path.rglob("escaped.jpg"))
    _nothing_final_left(tmp_path / "data" / "caltech101")


def test_a_zip_member_with_dotdot_is_refused(tmp_path):
    hostile = zip_bytes({"caltech-101/../../escaped.txt": b"gotcha"})
    with (
        serve({"caltech-101.zip": hostile}) as server,
        pytest.raises(ArchiveError, match="outside the target folder"),
    ):
        prepare_dataset(caltech_source(server.base_url, hostile, b""), tmp_path)
    assert not list(tmp_path.rglob("escaped.txt"))
    _nothing_final_left(tmp_path / "caltech101")


def test_offline_without_the_archive_says_which_file_goes_where(tmp_path):
    source = SOURCES["caltech101"]
    with pytest.raises(DatasetMissingError) as caught:
        prepare_dataset(source, tmp_path, allow_download=False)
    message = str(caught.value)
    assert "caltech-101.zip" in message and "3138e1922a9193bfa496528edbbc45d0" in message
    assert str(tmp_path) in message and "101_ObjectCategories/" in message
    assert caught.value.http_status == 503


def test_an_unreachable_server_is_the_same_clear_error(tmp_path, caltech_archives):
    outer, inner = caltech_archives
    with serve({}) as server:
        url = server.base_url
    # The server is gone: the connection is refused.
    with pytest.raises(DatasetMissingError, match=r"Put the official file caltech-101\.zip"):
        prepare_dataset(caltech_source(url, outer, inner), tmp_path)


@pytest.mark.parametrize("where", ["101_ObjectCategories", "caltech-101/101_ObjectCategories", "."])
def test_the_users_extracted_folder_is_used_in_place(tmp_path, where):
    folder = tmp_path / "101_ObjectCategories" if where == "." else tmp_path / where
    (folder / "Faces").mkdir(parents=True)
    (folder / "Faces" / "image_0001.jpg").write_bytes(b"x")
    data_dir = folder if where == "." else tmp_path
    prepared = prepare_dataset(SOURCES["caltech101"], data_dir, allow_download=False)
    assert prepared.images == folder


def test_the_users_inner_archive_is_verified_then_used(tmp_path, caltech_archives):
    outer, inner = caltech_archives
    (tmp_path / "101_ObjectCategories.tar.gz").write_bytes(inner)
    prepared = prepare_dataset(
        caltech_source("http://127.0.0.1:9", outer, inner), tmp_path, allow_download=False
    )
    assert len(_images(prepared.images)) == sum(CLASSES.values())


def test_sun397_downloads_images_and_partitions(tmp_path):
    images, partitions = sun_archives()
    with serve({"SUN397.tar.gz": images, "Partitions.zip": partitions}) as server:
        prepared = prepare_dataset(sun_source(server.base_url, images, partitions), tmp_path)
    assert read_class_names(prepared.images) == ["a/abbey", "b/bakery/shop", "c/campus"]
    first = read_partition(prepared.folders["Partitions"], 1)
    assert len(first.train) == len(first.test) == 6
    assert not set(first.train) & set(first.test)
    assert all((prepared.images / path).is_file() for path in first.train + first.test)
    assert {class_of("sun397", p) for p in first.train} == {"a/abbey", "b/bakery/shop", "c/campus"}


def test_the_real_records_cite_their_checksums():
    for source in SOURCES.values():
        for remote in source.files:
            assert remote.url.startswith("http")
            assert all(isinstance(d, Digest) and d.source for d in remote.digests)
    assert SOURCES["sun397"].file_yielding("Partitions").loose


def test_the_data_dir_defaults_to_the_env_var_then_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("DECAF_DATA_DIR", str(tmp_path))
    assert default_data_dir() == tmp_path
    monkeypatch.delenv("DECAF_DATA_DIR")
    assert default_data_dir() == Path.home() / ".cache" / "decaf" / "datasets"
