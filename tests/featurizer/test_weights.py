"""resolve_weights: cache layout, explicit files, env override, verification and clear errors.

No test touches the network: "downloads" use file:// URLs to a local file, which exercise the same
torch.hub.download_url_to_file call and hash check that a real download goes through.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import pytest
import torch
from torchvision.models import AlexNet_Weights

from featurizer.backbones import Backbone, get_backbone
from featurizer.errors import UnknownBackboneError, WeightsError
from featurizer.extractor import Featurizer
from featurizer.weights import cache_path, canonical_state_dict, resolve_weights

pytestmark = pytest.mark.filterwarnings("ignore:USING RANDOM WEIGHTS")

ALEXNET = get_backbone("alexnet")
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


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def published_copy(source: Path, url_path: Path) -> Path:
    """Hard-link ``source`` at ``url_path`` (a torchvision-style name with the sha256 prefix)."""
    url_path.parent.mkdir(parents=True, exist_ok=True)
    if not url_path.exists():
        os.link(source, url_path)
    return url_path


def test_record(weights_file: Path, digest: str, url_path: Path | None = None) -> Backbone:
    """A record whose published file *is* our random state_dict: same code path as
    IMAGENET1K_V1. ``url_path`` (default: a link to ``weights_file`` named like torchvision's
    files) is where its url points."""
    prefix = digest[:8]
    if url_path is None:
        url_path = published_copy(weights_file, weights_file.parent / f"alexnet-test-{prefix}.pth")
    tag = dataclasses.replace(ALEXNET.default_tag, url=url_path.as_uri())
    return dataclasses.replace(ALEXNET, name=TEST_BACKBONE, weight_tags=(tag,))


test_record.__test__ = False  # a helper, not a test


def assert_same_tensors(got: dict, expected: dict) -> None:
    assert got.keys() == expected.keys()
    for key in expected:
        assert torch.equal(got[key], expected[key]), key


def test_alexnet_spec_matches_torchvision_metadata():
    tag, tv = ALEXNET.default_tag, AlexNet_Weights.IMAGENET1K_V1
    assert tag.url == tv.url
    assert tag.filename == tv.url.rsplit("/", 1)[1] == "alexnet-owt-7be5be79.pth"
    assert tag.sha256_prefix == "7be5be79"
    assert tag.acc1 == tv.meta["_metrics"]["ImageNet-1K"]["acc@1"] == 56.522
    transforms = tv.transforms()
    assert list(tag.preprocess.mean) == list(transforms.mean)
    assert list(tag.preprocess.std) == list(transforms.std)
    assert [tag.preprocess.resize] == transforms.resize_size
    assert [tag.preprocess.crop] == transforms.crop_size


def put_in_cache(torch_home: Path, record: Backbone, source: Path) -> Path:
    cached = torch_home / "hub" / "checkpoints" / record.default_tag.filename
    cached.parent.mkdir(parents=True)
    cached.hardlink_to(source)  # 244 MB: link rather than copy
    return cached


def test_imagenet_from_torch_home_cache_equals_explicit_path(
    torch_home, weights_file, weights_sha, random_state_dict
):
    record = test_record(weights_file, weights_sha)
    cached = put_in_cache(torch_home, record, weights_file)
    from_cache = Featurizer(["decaf7"], weights="imagenet", backbone=record, download=False)
    assert from_cache.weights.weights_id == f"{TEST_BACKBONE}/IMAGENET1K_V1"
    assert from_cache.weights.source == str(cached)
    assert from_cache.weights.sha256 == weights_sha
    assert_same_tensors(from_cache.model.net.state_dict(), random_state_dict)

    from_file = Featurizer(["decaf7"], weights=str(weights_file), backbone=record)
    assert from_file.weights.source == str(weights_file.resolve())
    assert_same_tensors(from_file.model.net.state_dict(), random_state_dict)
    # A file whose hash is a registered tag's gets that tag's id, so probes stay compatible.
    assert from_file.describe()["weights_id"] == from_cache.describe()["weights_id"]
    assert from_file.describe()["weights_sha256"] == weights_sha
    batch = torch.randint(0, 256, (1, 3, 224, 224), dtype=torch.uint8)
    assert (from_file.forward(batch)["decaf7"] == from_cache.forward(batch)["decaf7"]).all()


def test_unregistered_file_gets_a_file_id(weights_file, weights_sha):
    loaded = resolve_weights(str(weights_file))  # plain alexnet: no tag has this hash
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
    torch_home, weights_file, weights_sha, random_state_dict
):
    record = test_record(weights_file, weights_sha)  # url = file://... (no network)
    loaded = resolve_weights("imagenet", record, download=True)
    cached = torch_home / "hub" / "checkpoints" / record.default_tag.filename
    assert cached.is_file() and loaded.source == str(cached)
    assert_same_tensors(loaded.state_dict, random_state_dict)


def test_failed_download_is_a_weights_error_and_leaves_no_file(
    torch_home, weights_file, weights_sha, tmp_path
):
    gone = tmp_path / f"gone-{weights_sha[:8]}.pth"
    record = test_record(weights_file, weights_sha, url_path=gone)
    with pytest.raises(WeightsError, match="could not download") as info:
        resolve_weights("imagenet", record, download=True)
    cached = torch_home / "hub" / "checkpoints" / record.default_tag.filename
    assert str(cached) in str(info.value) and "--weights PATH" in str(info.value)
    assert not cached.exists()


def test_download_with_wrong_hash_is_refused(torch_home, weights_file, weights_sha, tmp_path):
    impostor = tmp_path / f"impostor-{weights_sha[:8]}.pth"  # right name, wrong content
    torch.save({"x": torch.zeros(1)}, impostor)
    record = test_record(weights_file, weights_sha, url_path=impostor)
    with pytest.raises(WeightsError, match="hash"):
        resolve_weights("imagenet", record, download=True)
    assert not (torch_home / "hub" / "checkpoints" / record.default_tag.filename).exists()


def test_corrupt_cache_file_is_refused_not_used(torch_home, weights_file, weights_sha):
    record = test_record(weights_file, weights_sha)
    cached = torch_home / "hub" / "checkpoints" / record.default_tag.filename
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"half a download")
    with pytest.raises(WeightsError, match="corrupt") as info:
        resolve_weights("imagenet", record, download=True)
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


def test_decaf_weights_set_to_the_word_imagenet_means_the_default_tag(
    torch_home, monkeypatch, weights_file, weights_sha
):
    # `decaf serve --weights imagenet` exports DECAF_WEIGHTS=imagenet: not a file called "imagenet".
    record = test_record(weights_file, weights_sha)
    monkeypatch.setenv("DECAF_WEIGHTS", "imagenet")
    with pytest.raises(WeightsError) as info:
        resolve_weights("imagenet", record, download=False)
    assert "$DECAF_WEIGHTS" not in str(info.value)  # the origin of a file override
    assert record.default_tag.filename in str(info.value)


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
    with pytest.raises(WeightsError, match="neither 'imagenet', 'random', a weight tag") as info:
        resolve_weights("/no/such/file.pth")
    assert "IMAGENET1K_V1" in str(info.value) and "an existing file" in str(info.value)
    with pytest.raises(UnknownBackboneError, match=r"unknown backbone 'vgg99'.*alexnet"):
        resolve_weights("random", backbone="vgg99")


def test_a_tag_name_reads_that_tags_cache_file(torch_home, weights_file, weights_sha):
    record = test_record(weights_file, weights_sha)
    cached = put_in_cache(torch_home, record, weights_file)
    loaded = resolve_weights("IMAGENET1K_V1", record, download=False)
    assert loaded.source == str(cached) == str(cache_path(record.default_tag))
    assert loaded.weights_id == f"{TEST_BACKBONE}/IMAGENET1K_V1"
    assert loaded.preprocess == record.default_tag.preprocess


def test_files_and_random_weights_carry_the_default_tags_preprocessing(weights_file):
    assert resolve_weights(str(weights_file)).preprocess == ALEXNET.default_tag.preprocess
    assert resolve_weights("random").preprocess == ALEXNET.default_tag.preprocess


def test_legacy_key_names_load_as_torchvision_loads_them():
    # Published checkpoints predating a module rename: ViT's MLP was linear_1/linear_2 before
    # torchvision 0.14; torchvision's load hook renames them, and so does our check (meta
    # tensors: names and shapes are all that is checked here).
    vit = get_backbone("vit_b_16")
    with torch.device("meta"):
        expected = vit.build().state_dict()
    legacy = {
        key.replace("mlp.0.", "mlp.linear_1.").replace("mlp.3.", "mlp.linear_2."): value
        for key, value in expected.items()
    }
    assert "encoder.layers.encoder_layer_0.mlp.linear_1.weight" in legacy
    canonical = canonical_state_dict(vit, legacy, source="legacy.pth")
    assert canonical.keys() == expected.keys()
    del legacy["encoder.layers.encoder_layer_0.mlp.linear_1.weight"]
    with pytest.raises(WeightsError, match=r"missing \['encoder.layers.encoder_layer_0.mlp.0"):
        canonical_state_dict(vit, legacy, source="legacy.pth")


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
