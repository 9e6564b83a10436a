"""Full-size random-weight .caffemodel files, one per network and encoding, made once per module.

CaffeNet's fixed 227 input and 9216-wide fc6 rule out small models: each file holds 61 M
parameters (233-305 MB), so they are written once per test module, into one TORCH_HOME whose
conversion cache the module's tests share.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from .writer import BlobStyle, random_caffe_params, write_caffemodel

# caffenet: today's encoding (LayerParameter, BlobShape, packed floats); bvlc_alexnet: the 2014
# model zoo's (V1LayerParameter, legacy 4-D shapes) with one record per float, the least compact.
ENCODINGS = {
    "caffenet": {"encoding": "layer", "style": BlobStyle()},
    "bvlc_alexnet": {
        "encoding": "layers",
        "style": BlobStyle(legacy_shape=True, packed=False),
    },
}


@pytest.fixture(scope="module")
def caffe_home(tmp_path_factory) -> Path:
    """A TORCH_HOME (for the conversion cache) shared by the module, without DECAF_WEIGHTS."""
    home = tmp_path_factory.mktemp("caffe-torch-home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TORCH_HOME", str(home))
        patch.delenv("DECAF_WEIGHTS", raising=False)
        yield home


@pytest.fixture(scope="module")
def caffe_params() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return random_caffe_params(seed=0)


@pytest.fixture(scope="module")
def caffemodels(tmp_path_factory, caffe_params) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("caffemodels")
    return {
        name: write_caffemodel(
            folder / f"{name}-random.caffemodel",
            caffe_params,
            lrn_before_pool=name == "bvlc_alexnet",
            **options,
        )
        for name, options in ENCODINGS.items()
    }
