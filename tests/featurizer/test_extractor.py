"""Featurizer: the public Python API over decoding, the backbone and batching (random weights)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_sample_images

import featurizer
from featurizer import Featurizer
from featurizer.errors import ImageDecodeError, UnknownBackboneError, UnknownLayerError
from featurizer.runtime import default_num_threads

pytestmark = pytest.mark.filterwarnings("ignore:USING RANDOM WEIGHTS")

LAYERS = ("decaf5", "decaf6", "decaf7")


@pytest.fixture(scope="module")
def fz() -> Featurizer:
    return Featurizer(LAYERS, weights="random", device="cpu")


@pytest.fixture(scope="module")
def photos() -> list[Image.Image]:
    """scikit-learn's two sample photographs, shrunk (decoding speed is not under test here)."""
    images = [Image.fromarray(array) for array in load_sample_images().images]
    return [image.resize((image.width // 2, image.height // 2)) for image in images]


@pytest.fixture(scope="module")
def jpeg_files(tmp_path_factory, photos) -> list[Path]:
    folder = tmp_path_factory.mktemp("photos")
    paths = []
    for index, photo in enumerate(photos):
        path = folder / f"photo{index}.jpg"
        photo.save(path, quality=95)
        paths.append(path)
    return paths


def test_extract_shapes_dtypes_and_input_kinds_agree(fz, jpeg_files):
    from_paths = fz.extract([str(p) for p in jpeg_files])
    from_bytes = fz.extract([p.read_bytes() for p in jpeg_files])
    with Image.open(jpeg_files[0]) as first, Image.open(jpeg_files[1]) as second:
        from_pil = fz.extract([first, second])
    assert list(from_paths) == list(LAYERS)
    for layer, dim in fz.dims.items():
        array = from_paths[layer]
        assert array.shape == (2, dim) and array.dtype == np.float32
        assert array.flags.c_contiguous and np.isfinite(array).all()
        np.testing.assert_array_equal(from_bytes[layer], array)
        np.testing.assert_array_equal(from_pil[layer], array)
    assert not np.allclose(from_paths["decaf7"][0], from_paths["decaf7"][1])


def test_extract_equals_prepare_plus_forward_and_batch_size_does_not_matter(fz, jpeg_files):
    sources = [str(p) for p in jpeg_files] * 2  # 4 images
    batch = torch.stack([fz.prepare(source) for source in sources])
    assert batch.dtype == torch.uint8 and batch.shape == (4, 3, 224, 224)
    direct = fz.forward(batch)
    for batch_size in (1, 3):
        chunked = fz.extract(sources, batch_size=batch_size)
        for layer in LAYERS:
            np.testing.assert_allclose(chunked[layer], direct[layer], rtol=1e-4, atol=1e-5)


def test_layer_subset_override(fz, jpeg_files):
    out = fz.extract([str(jpeg_files[0])], layers=["decaf6"])
    assert list(out) == ["decaf6"] and out["decaf6"].shape == (1, 4096)
    with pytest.raises(UnknownLayerError, match="choose from"):
        fz.extract([str(jpeg_files[0])], layers=["fc6"])


def test_tencrop_averages_the_ten_views(jpeg_files):
    tencrop = Featurizer(["decaf7", "logits"], weights="random", crop="tencrop")
    views = torch.stack([tencrop.prepare(str(p)) for p in jpeg_files])
    assert views.shape == (2, 10, 3, 224, 224)
    averaged = tencrop.forward(views)
    per_view = tencrop.forward(views.reshape(-1, 3, 224, 224))
    for layer in ("decaf7", "logits"):
        assert averaged[layer].shape == (2, tencrop.dims[layer])
        expected = per_view[layer].reshape(2, 10, -1).mean(axis=1)
        np.testing.assert_allclose(averaged[layer], expected, rtol=1e-5, atol=1e-6)
    assert tencrop.describe()["preprocessing"]["crop_mode"] == "tencrop"


def test_bad_image_error_names_its_index(fz, jpeg_files):
    with pytest.raises(ImageDecodeError, match="image 1"):
        fz.extract([str(jpeg_files[0]), b"not an image", str(jpeg_files[1])])


def test_empty_input_gives_zero_rows(fz):
    out = fz.extract([])
    assert {layer: a.shape for layer, a in out.items()} == {
        "decaf5": (0, 9216),
        "decaf6": (0, 4096),
        "decaf7": (0, 4096),
    }


def test_forward_rejects_wrong_shapes_and_dtypes(fz):
    with pytest.raises(TypeError, match="uint8"):
        fz.forward(torch.zeros(1, 3, 224, 224))
    with pytest.raises(ValueError, match=r"\(N, 3, 224, 224\)"):
        fz.forward(torch.zeros(1, 3, 200, 200, dtype=torch.uint8))
    with pytest.raises(TypeError, match=r"torch\.Tensor"):
        fz.forward(np.zeros((1, 3, 224, 224), dtype=np.uint8))


def test_describe_is_json_safe_and_complete(fz):
    description = json.loads(json.dumps(fz.describe()))
    assert description == {
        "backbone": "alexnet",
        "weights_id": "random",
        "weights_sha256": None,
        "layers": {"decaf5": 9216, "decaf6": 4096, "decaf7": 4096},
        "preprocessing": {
            "resize": 256,
            "crop": 224,
            "mean": [0.485, 0.456, 0.406],
            "std": [0.229, 0.224, 0.225],
            "interpolation": "bilinear",
            "antialias": True,
            "resize_mode": "shorter",
            "channel_order": "rgb",
            "crop_mode": "center",
        },
        "precision": "fp32",
        "device": "cpu",
    }
    assert "random" in repr(fz)


def test_threads_default_to_usable_cores_and_can_be_set():
    before = torch.get_num_threads()
    try:
        Featurizer(["decaf5"], weights="random", num_threads=1)
        assert torch.get_num_threads() == 1
        Featurizer(["decaf5"], weights="random")
        assert torch.get_num_threads() == default_num_threads()
    finally:
        torch.set_num_threads(before)


def test_layers_default_to_the_backbones_default_layers():
    assert Featurizer(weights="random").layers == ("decaf6", "decaf7")
    vit = Featurizer(backbone="vit_b_16", weights="random")
    assert vit.backbone.name == "vit_b_16" and vit.layers == ("cls",)
    assert vit.describe()["backbone"] == "vit_b_16"
    assert vit.describe()["layers"] == {"cls": 768}
    with pytest.raises(UnknownLayerError, match=r"decaf6.*vit_b_16.*\['cls', 'logits'\]"):
        Featurizer(["decaf6"], backbone="vit_b_16", weights="random")


def test_preprocess_is_the_loaded_weights(fz):
    assert fz.preprocess == fz.weights.preprocess == fz.backbone.default_tag.preprocess


def test_constructor_validation():
    with pytest.raises(UnknownLayerError, match="decaf9"):
        Featurizer(["decaf9"], weights="random")
    with pytest.raises(ValueError, match="crop"):
        Featurizer(["decaf5"], weights="random", crop="five")  # type: ignore[arg-type]
    with pytest.raises(UnknownBackboneError, match="resnet9000"):
        Featurizer(weights="random", backbone="resnet9000")


def test_package_reexports_public_api():
    for name in (
        "Featurizer",
        "resolve_weights",
        "get_backbone",
        "backbone_names",
        "FeatureStore",
        "DecafError",
        "ImageDecodeError",
        "ImageTooLargeError",
        "WeightsError",
        "UnknownLayerError",
        "StoreError",
        "decode_image",
        "load_features",
        "extract_dataset",
    ):
        assert hasattr(featurizer, name), name


def test_png_with_alpha_is_accepted_end_to_end(fz, photos):
    buffer = io.BytesIO()
    photos[0].convert("RGBA").save(buffer, format="PNG")
    out = fz.extract([buffer.getvalue()], layers=["decaf5"])
    assert out["decaf5"].shape == (1, 9216)


def test_importing_featurizer_never_imports_the_web_stack():
    code = (
        "import sys, featurizer\n"
        "bad = [m for m in ('fastapi', 'starlette', 'uvicorn', 'sqlalchemy') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
