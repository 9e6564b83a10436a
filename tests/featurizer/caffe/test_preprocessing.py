"""Caffe's preprocessing (caffe.Classifier): stretch to 256, BGR, 0-255 minus the mean, 227 crop
or oversampling; and the mean image, resized as pycaffe did and recorded in the provenance."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from featurizer.backbone import build_backbone
from featurizer.backbones import get_backbone
from featurizer.backbones.caffe import CAFFE_PREPROCESS, ILSVRC_2012_MEAN_BGR
from featurizer.caffe.mean import load_mean_image
from featurizer.errors import WeightsError
from featurizer.extractor import Featurizer
from featurizer.preprocess import preprocess
from featurizer.spec import PreprocessSpec
from featurizer.weights import resolve_weights, sha256_of_file

from ..conftest import sample_photo, textured_rgb
from .writer import BlobStyle, blob

pytestmark = pytest.mark.filterwarnings("ignore:USING RANDOM WEIGHTS")


def test_the_spec_is_caffe_classifier_s():
    spec = CAFFE_PREPROCESS
    assert (spec.resize, spec.crop, spec.resize_mode, spec.channel_order) == (
        256,
        227,
        "stretch",
        "bgr",
    )
    # ilsvrc_2012_mean.npy averaged over H, W (examples/00-classification.ipynb), 0-255 scale.
    assert np.allclose(np.array(spec.mean) * 255, [104.00698793, 116.66876762, 122.67891434])
    assert np.allclose(np.array(spec.std) * 255, 1.0)
    for name in ("caffenet", "bvlc_alexnet"):
        record = get_backbone(name)
        assert record.default_tag.preprocess == spec
        assert record.input_size == record.min_input_size == 227


def stretched(image: Image.Image) -> np.ndarray:
    """caffe.io.resize_image(image, (256, 256)): both sides to 256 (PIL's bilinear here)."""
    return np.asarray(image.resize((256, 256), Image.Resampling.BILINEAR))


def test_centre_crop_is_the_middle_227_of_the_stretched_image():
    image = sample_photo("china.jpg")  # 640 x 427: stretching changes its aspect
    got = preprocess(image, CAFFE_PREPROCESS, "center").numpy()
    # Classifier.predict: centre 128 +- 113.5 -> rows/cols 14..241 (numpy truncated 14.5).
    expected = stretched(image)[14:241, 14:241].transpose(2, 0, 1)
    np.testing.assert_array_equal(got, expected)


def test_tencrop_is_caffe_oversample():
    image = textured_rgb((300, 200))
    got = preprocess(image, CAFFE_PREPROCESS, "tencrop").numpy()
    pixels = stretched(image)
    # caffe.io.oversample: corners (0,0), (0,29), (29,0), (29,29), centre (14,14); then mirrors.
    anchors = [(0, 0), (0, 29), (29, 0), (29, 29), (14, 14)]
    crops = [pixels[y : y + 227, x : x + 227] for y, x in anchors]
    crops += [crop[:, ::-1] for crop in crops]
    np.testing.assert_array_equal(got, np.stack(crops).transpose(0, 3, 1, 2))


@pytest.fixture(scope="module")
def random_caffenet():
    return resolve_weights("random", "caffenet", seed=3)


def test_the_model_input_is_bgr_minus_the_mean(random_caffenet):
    model = build_backbone("caffenet", random_caffenet)
    crops = torch.stack(
        [preprocess(sample_photo(n), CAFFE_PREPROCESS) for n in ("china.jpg", "flower.jpg")]
    )
    got = model.normalize(crops).numpy()
    expected = crops.numpy()[:, ::-1].astype(np.float64) - np.reshape(
        ILSVRC_2012_MEAN_BGR, (3, 1, 1)
    )
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)


# ----------------------------------------------------------------------------- the mean image


def ilsvrc_like_mean(seed: int = 0) -> np.ndarray:
    """A smooth 3 x 256 x 256 BGR mean in 0-255, like ilsvrc_2012_mean (values ~100-125)."""
    y, x = np.mgrid[0:256, 0:256] / 255.0
    base = np.array(ILSVRC_2012_MEAN_BGR).reshape(3, 1, 1)
    noise = np.random.default_rng(seed).normal(0, 2, (3, 256, 256))
    return base + 10 * np.sin(3 * x + np.arange(3).reshape(3, 1, 1)) * np.cos(2 * y) + noise


@pytest.fixture(scope="module")
def mean_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("means")
    mean = ilsvrc_like_mean()
    npy = folder / "ilsvrc_2012_mean.npy"
    np.save(npy, mean)  # float64, as BVLC's .npy
    binaryproto = folder / "ilsvrc_2012_mean.binaryproto"
    binaryproto.write_bytes(blob(mean.astype(np.float32)[None], BlobStyle(legacy_shape=True)))
    return {"mean": mean, "npy": npy, "binaryproto": binaryproto}


def bilinear_numpy(image: np.ndarray, size: int) -> np.ndarray:
    """skimage.transform.resize(order=1) without antialiasing: pixel-centre sampling positions
    (i + 0.5) * in / out - 0.5, bilinear between the four neighbours."""
    _, height, width = image.shape
    rows = (np.arange(size) + 0.5) * height / size - 0.5
    cols = (np.arange(size) + 0.5) * width / size - 0.5
    r0, c0 = np.floor(rows).astype(int), np.floor(cols).astype(int)
    r1, c1 = np.minimum(r0 + 1, height - 1), np.minimum(c0 + 1, width - 1)
    fr, fc = (rows - r0)[:, None], (cols - c0)[None, :]
    top = image[:, r0][:, :, c0] * (1 - fc) + image[:, r0][:, :, c1] * fc
    bottom = image[:, r1][:, :, c0] * (1 - fc) + image[:, r1][:, :, c1] * fc
    return top * (1 - fr) + bottom * fr


def test_the_mean_image_is_resized_to_227_as_pycaffe_did(mean_files):
    expected = bilinear_numpy(mean_files["mean"], 227)
    for kind in ("npy", "binaryproto"):
        loaded = load_mean_image(mean_files[kind], 227)
        assert loaded.pixels.shape == (3, 227, 227)
        np.testing.assert_allclose(loaded.pixels.numpy(), expected, rtol=0, atol=1e-3)
        assert loaded.sha256 == sha256_of_file(mean_files[kind])


def test_the_mean_image_is_subtracted_from_every_crop_and_recorded(mean_files, random_caffenet):
    weights = resolve_weights("random", "caffenet", seed=3, mean_image=mean_files["binaryproto"])
    assert weights.preprocess.mean_image == sha256_of_file(mean_files["binaryproto"])
    assert weights.preprocess.to_dict()["mean_image"] == weights.preprocess.mean_image
    assert PreprocessSpec.from_dict(weights.preprocess.to_dict()) == weights.preprocess
    model = build_backbone("caffenet", weights)
    views = preprocess(sample_photo("flower.jpg"), CAFFE_PREPROCESS, "tencrop")
    got = model.normalize(views).numpy()
    mean = bilinear_numpy(mean_files["mean"].astype(np.float32).astype(np.float64), 227)
    expected = views.numpy()[:, ::-1].astype(np.float64) - mean  # mirrors too: mean not flipped
    np.testing.assert_allclose(got, expected, rtol=0, atol=2e-3)
    # and it changes the features (the per-channel mean is not what was used)
    plain = build_backbone("caffenet", random_caffenet)
    with torch.inference_mode():
        a, b = model(views[:2], ["decaf5"])["decaf5"], plain(views[:2], ["decaf5"])["decaf5"]
    assert not torch.allclose(a, b)


def test_without_a_mean_image_the_spec_dict_is_unchanged():
    assert "mean_image" not in CAFFE_PREPROCESS.to_dict()  # old stores and probes still match


def test_featurizer_describes_the_mean_image(mean_files):
    featurizer = Featurizer(
        backbone="caffenet", weights="random", device="cpu", mean_image=str(mean_files["npy"])
    )
    described = featurizer.describe()["preprocessing"]
    assert described["mean_image"] == sha256_of_file(mean_files["npy"])
    assert described["channel_order"] == "bgr"


def test_a_mean_image_for_an_rgb_network_is_refused(mean_files):
    with pytest.raises(WeightsError, match=r"fits the Caffe networks.*not alexnet"):
        resolve_weights("random", "alexnet", mean_image=mean_files["npy"])


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (np.zeros((256, 256, 3)), r"shape \(256, 256, 3\); expected 3 x H x W"),
        (np.full((3, 8, 8), 0.5) - 1, r"ranges -0\.5\.\.-0\.5"),
        (np.full((3, 8, 8), np.nan), "NaN"),
    ],
)
def test_bad_mean_images_are_clear_errors(tmp_path, content, problem):
    path = tmp_path / "mean.npy"
    np.save(path, content)
    with pytest.raises(WeightsError, match=problem):
        load_mean_image(path, 227)


def test_pickled_or_unknown_mean_files_are_refused(tmp_path):
    pickled = tmp_path / "mean.npy"
    np.save(pickled, np.array([{"not": "an array"}], dtype=object), allow_pickle=True)
    with pytest.raises(WeightsError, match="pickled data is refused"):
        load_mean_image(pickled, 227)
    other = tmp_path / "mean.png"
    other.write_bytes(b"x")
    with pytest.raises(WeightsError, match=r"unknown format '\.png'"):
        load_mean_image(other, 227)
    with pytest.raises(WeightsError, match="does not exist"):
        load_mean_image(tmp_path / "absent.binaryproto", 227)


def test_extraction_records_the_mean_image_and_resume_checks_it(mean_files, tmp_path):
    from featurizer.errors import StoreError
    from featurizer.extraction import extract_dataset
    from featurizer.store import FeatureStore

    root = tmp_path / "images" / "class_a"
    root.mkdir(parents=True)
    for seed in range(2):
        textured_rgb((260, 200), seed=seed).save(root / f"{seed}.png")
    options = {"backbone": "caffenet", "weights": "random", "layers": ["decaf5"], "workers": 0}
    out = tmp_path / "store"
    extract_dataset(root.parent, out, mean_image=str(mean_files["npy"]), device="cpu", **options)
    manifest = FeatureStore.open(out).manifest
    assert manifest.preprocessing["mean_image"] == sha256_of_file(mean_files["npy"])
    # The same store with another mean (the binaryproto holds float32 values): refused.
    with pytest.raises(StoreError):
        extract_dataset(
            root.parent, out, mean_image=str(mean_files["binaryproto"]), device="cpu", **options
        )
