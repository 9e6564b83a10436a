"""resolve_weights: cache layout, explicit files, env override, verification and clear errors.

No test touches the network: "downloads" use file:// URLs to a local file, which exercise the same
torch.hub.download_url_to_file call and hash check that a real download goes through.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest
import torch
from torchvision.models import AlexNet_Weights

from featurizer.errors import WeightsError
from featurizer.extractor import Featurizer
from featurizer.weights import BACKBONES, resolve_weights

pytestmark = pytest.mark.filterwarnings("ignore:USING RANDOM WEIGHTS")

TEST_BACKBONE = "alexnet-testcache"


@dataclasses.dataclass
class NotATensor:
    """Pickled as a class reference: torch.load(weights_only=True) must refuse to build it."""

    payload: str = "arbitrary code could run here"


@pytest.fixture(scope="module")
def random_state_dict() -> dict[str, torch.Tensor]:
    return resolve_weights("random", seed=7).state_dict


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory, random_state_dict) -> Path:
    path = tmp_path_factory.mktemp("weights") / "my-alexnet.pth"
    torch.save(random_state_dict, path)
    return path


@pytest.fixture(scope="module")
def weights_sha(weights_file) -> str:
    return sha256(weights_file)


@pytest.fixture
def torch_home(tmp_path, monkeypatch) -> Path:
    """An empty TORCH_HOME (torch.hub.get_dir() re-reads it on every call)."""
    home = tmp_path / "torch-home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.delenv("DECAF_WEIGHTS", raising=False)
    return home


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def register_test_spec(monkeypatch, weights_file: Path, digest: str, url: str | None = None):
    """A spec whose published file *is* our random state_dict: same code path as IMAGENET1K_V1."""
    prefix = digest[:8]
    spec = dataclasses.replace(
        BACKBONES["alexnet"],
        name=TEST_BACKBONE,
        filename=f"alexnet-test-{prefix}.pth",
        sha256_prefix=prefix,
        url=url or weights_file.as_uri(),
    )
    monkeypatch.setitem(BACKBONES, TEST_BACKBONE, spec)
    return spec


def assert_same_tensors(got: dict, expected: dict) -> None:
    assert got.keys() == expected.keys()
    for key in expected:
        assert torch.equal(got[key], expected[key]), key


def test_alexnet_spec_matches_torchvision_metadata():
    spec, tv = BACKBONES["alexnet"], AlexNet_Weights.IMAGENET1K_V1
    assert spec.url == tv.url
    assert spec.filename == tv.url.rsplit("/", 1)[1] == "alexnet-owt-7be5be79.pth"
    assert spec.sha256_prefix == "7be5be79"
    assert spec.accuracy["acc@1"] == tv.meta["_metrics"]["ImageNet-1K"]["acc@1"] == 56.522
    transforms = tv.transforms()
    assert list(spec.preprocess.mean) == list(transforms.mean)
    assert list(spec.preprocess.std) == list(transforms.std)
    assert [spec.preprocess.resize] == transforms.resize_size
    assert [spec.preprocess.crop] == transforms.crop_size


def put_in_cache(torch_home: Path, spec, source: Path) -> Path:
    cached = torch_home / "hub" / "checkpoints" / spec.filename
    cached.parent.mkdir(parents=True)
    cached.hardlink_to(source)  # 244 MB: link rather than copy
    return cached


def test_imagenet_from_torch_home_cache_equals_explicit_path(
    torch_home, monkeypatch, weights_file, weights_sha, random_state_dict
):
    spec = register_test_spec(monkeypatch, weights_file, weights_sha)
    cached = put_in_cache(torch_home, spec, weights_file)
    from_cache = Featurizer(["decaf7"], weights="imagenet", backbone=TEST_BACKBONE, download=False)
    assert from_cache.weights.weights_id == f"{TEST_BACKBONE}/IMAGENET1K_V1"
    assert from_cache.weights.source == str(cached)
    assert from_cache.weights.sha256 == weights_sha
    assert_same_tensors(from_cache.model.net.state_dict(), random_state_dict)

    from_file = Featurizer(["decaf7"], weights=str(weights_file), backbone=TEST_BACKBONE)
    assert from_file.weights.source == str(weights_file.resolve())
    assert_same_tensors(from_file.model.net.state_dict(), random_state_dict)
    # A file whose hash is a registered spec's gets that spec's id, so probes stay compatible.
    assert from_file.describe()["weights_id"] == from_cache.describe()["weights_id"]
    assert from_file.describe()["weights_sha256"] == weights_sha
    batch = torch.randint(0, 256, (1, 3, 224, 224), dtype=torch.uint8)
    assert (from_file.forward(batch)["decaf7"] == from_cache.forward(batch)["decaf7"]).all()


def test_unregistered_file_gets_a_file_id(weights_file, weights_sha):
    loaded = resolve_weights(str(weights_file))  # the test spec is not registered here
    assert loaded.weights_id == "file:my-alexnet.pth"
    assert loaded.sha256 == weights_sha


def test_missing_cache_offline_names_path_and_how_to_supply(torch_home):
    expected = torch_home / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth"
    with pytest.raises(WeightsError) as info:
        resolve_weights("imagenet", download=False)
    message = str(info.value)
    assert str(expected) in message
    assert "--weights PATH" in message and "DECAF_WEIGHTS=PATH" in message
    assert not expected.exists()


def test_download_when_missing_verifies_hash_and_fills_cache(
    torch_home, monkeypatch, weights_file, weights_sha, random_state_dict
):
    spec = register_test_spec(
        monkeypatch, weights_file, weights_sha
    )  # url = file://... (no network)
    loaded = resolve_weights("imagenet", TEST_BACKBONE, download=True)
    cached = torch_home / "hub" / "checkpoints" / spec.filename
    assert cached.is_file() and loaded.source == str(cached)
    assert_same_tensors(loaded.state_dict, random_state_dict)


def test_failed_download_is_a_weights_error_and_leaves_no_file(
    torch_home, monkeypatch, weights_file, weights_sha, tmp_path
):
    spec = register_test_spec(
        monkeypatch, weights_file, weights_sha, url=(tmp_path / "gone.pth").as_uri()
    )
    with pytest.raises(WeightsError, match="could not download") as info:
        resolve_weights("imagenet", TEST_BACKBONE, download=True)
    cached = torch_home / "hub" / "checkpoints" / spec.filename
    assert str(cached) in str(info.value) and "--weights PATH" in str(info.value)
    assert not cached.exists()


def test_download_with_wrong_hash_is_refused(
    torch_home, monkeypatch, weights_file, weights_sha, tmp_path
):
    impostor = tmp_path / "impostor.pth"
    torch.save({"x": torch.zeros(1)}, impostor)
    spec = register_test_spec(monkeypatch, weights_file, weights_sha, url=impostor.as_uri())
    with pytest.raises(WeightsError, match="hash"):
        resolve_weights("imagenet", TEST_BACKBONE, download=True)
    assert not (torch_home / "hub" / "checkpoints" / spec.filename).exists()


def test_corrupt_cache_file_is_refused_not_used(torch_home, monkeypatch, weights_file, weights_sha):
    spec = register_test_spec(monkeypatch, weights_file, weights_sha)
    cached = torch_home / "hub" / "checkpoints" / spec.filename
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"half a download")
    with pytest.raises(WeightsError, match="corrupt") as info:
        resolve_weights("imagenet", TEST_BACKBONE, download=True)
    assert str(cached) in str(info.value)


def test_decaf_weights_env_overrides_imagenet(
    torch_home, monkeypatch, weights_file, random_state_dict
):
    monkeypatch.setenv("DECAF_WEIGHTS", str(weights_file))
    loaded = resolve_weights("imagenet", download=False)
    assert loaded.source == str(weights_file.resolve())
    assert_same_tensors(loaded.state_dict, random_state_dict)
    monkeypatch.setenv("DECAF_WEIGHTS", str(weights_file.parent / "absent.pth"))
    with pytest.raises(WeightsError, match="DECAF_WEIGHTS"):
        resolve_weights("imagenet", download=False)


def test_wrapped_and_dataparallel_checkpoints_are_accepted(tmp_path, random_state_dict):
    path = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in random_state_dict.items()}}, path)
    assert_same_tensors(resolve_weights(str(path)).state_dict, random_state_dict)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("garbage", "cannot read"),
        ("wrong-shape", "wrong shapes"),
        ("missing-keys", "missing"),
        ("not-a-dict", "does not contain a state_dict"),
        ("pickled-code", "cannot read"),
    ],
)
def test_bad_weight_files_raise_clear_errors(tmp_path, random_state_dict, content, reason):
    # Small files: each is refused before the architecture check needs a full state_dict.
    path = tmp_path / f"{content}.pth"
    conv1 = {"features.0.weight": random_state_dict["features.0.weight"]}
    if content == "garbage":
        path.write_bytes(b"definitely not a checkpoint")
    elif content == "wrong-shape":
        torch.save({**conv1, "classifier.6.weight": torch.zeros(10, 4096)}, path)
    elif content == "missing-keys":
        torch.save(conv1, path)
    elif content == "not-a-dict":
        torch.save([torch.zeros(1)], path)
    else:
        torch.save({"state_dict": NotATensor()}, path)
    with pytest.raises(WeightsError, match=reason):
        resolve_weights(str(path))


def test_unknown_source_and_backbone():
    with pytest.raises(WeightsError, match="neither 'imagenet', 'random' nor an existing file"):
        resolve_weights("/no/such/file.pth")
    with pytest.raises(WeightsError, match="unknown backbone"):
        resolve_weights("random", backbone="vgg99")


def test_random_weights_are_loud_seeded_and_untracked():
    rng_before = torch.random.get_rng_state()
    with pytest.warns(UserWarning, match="RANDOM WEIGHTS"):
        first = resolve_weights("random", seed=3)
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # caller's RNG untouched
    again = resolve_weights("random", seed=3)
    other = resolve_weights("random", seed=4)
    assert first.weights_id == "random" and first.sha256 is None
    assert_same_tensors(again.state_dict, first.state_dict)
    conv1 = "features.0.weight"
    assert not torch.equal(other.state_dict[conv1], first.state_dict[conv1])
    json.dumps({"id": first.weights_id, "sha": first.sha256, "source": first.source})
