"""The registry: lookup, validation of records, layer checks, and importing without torch."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from featurizer.backbones import (
    DEFAULT_BACKBONE,
    Tap,
    backbone_names,
    get_backbone,
    register,
)
from featurizer.errors import UnknownBackboneError, UnknownLayerError, WeightsError

ROOT = Path(__file__).resolve().parents[3]
ALEXNET = get_backbone("alexnet")


def test_names_list_the_default_first_then_alphabetical():
    names = backbone_names()
    assert names[0] == DEFAULT_BACKBONE == "alexnet"
    assert list(names[1:]) == sorted(names[1:])
    assert {"alexnet", "vgg16", "vit_b_16"} <= set(names)
    assert all(get_backbone(name).name == name for name in names)


def test_unknown_backbone_names_the_known_ones():
    with pytest.raises(UnknownBackboneError, match=r"'alexnett'.*alexnet, ") as info:
        get_backbone("alexnett")
    assert info.value.http_status == 422


def test_check_layers_keeps_order_drops_duplicates_and_names_choices():
    assert ALEXNET.check_layers(["decaf7", "decaf5", "decaf7"]) == ("decaf7", "decaf5")
    assert ALEXNET.check_layers("logits") == ("logits",)
    with pytest.raises(UnknownLayerError, match=r"\['fc7'\] for backbone alexnet.*'decaf7'"):
        ALEXNET.check_layers(["fc7"])
    with pytest.raises(UnknownLayerError, match="no layers"):
        ALEXNET.check_layers([])


def test_weight_tags_are_looked_up_by_name():
    assert ALEXNET.default_tag is ALEXNET.weight_tag("IMAGENET1K_V1")
    assert ALEXNET.find_tag("IMAGENET1K_V9") is None
    with pytest.raises(WeightsError, match=r"no weight tag 'IMAGENET1K_V9'.*IMAGENET1K_V1"):
        ALEXNET.weight_tag("IMAGENET1K_V9")
    assert ALEXNET.weights_id(ALEXNET.default_tag) == "alexnet/IMAGENET1K_V1"


def test_file_name_and_hash_prefix_are_read_from_the_url():
    tag = ALEXNET.default_tag
    assert (tag.filename, tag.sha256_prefix) == ("alexnet-owt-7be5be79.pth", "7be5be79")
    with pytest.raises(ValueError, match="no sha256 prefix"):
        dataclasses.replace(tag, url="https://example.org/alexnet.pth")


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"taps": (*ALEXNET.taps, ALEXNET.taps[0])}, "duplicate tap names"),
        (
            {"taps": (*ALEXNET.taps, Tap("again", "flatten", 9216, "same node"))},
            "same graph node",
        ),
        ({"default_layers": ("fc7",)}, "default layers"),
        ({"default_layers": ()}, "default layers"),
        ({"default_tag_name": "IMAGENET1K_V9"}, "default tag"),
        (
            {
                "weight_tags": (
                    ALEXNET.default_tag,
                    dataclasses.replace(
                        ALEXNET.default_tag,
                        name="BIG",
                        preprocess=dataclasses.replace(
                            ALEXNET.default_tag.preprocess, resize=320, crop=288
                        ),
                    ),
                )
            },
            "disagree on the input size",
        ),
    ],
)
def test_inconsistent_records_are_refused(change, problem):
    with pytest.raises(ValueError, match=problem):
        dataclasses.replace(ALEXNET, **change)


def test_taps_validate_their_reduction_and_dim():
    with pytest.raises(ValueError, match="reduce"):
        Tap("x", "node", 4, "meaning", reduce="max")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="dim"):
        Tap("x", "node", 0, "meaning")


def test_a_name_is_registered_once():
    assert register(ALEXNET) is ALEXNET  # re-importing a family module is harmless
    with pytest.raises(ValueError, match="registered twice"):
        register(dataclasses.replace(ALEXNET, summary="another alexnet"))


def test_describe_is_json_safe_and_complete():
    description = json.loads(json.dumps(ALEXNET.describe()))
    assert description["default_weights"] == "IMAGENET1K_V1"
    assert description["input_size"] == 224
    assert description["taps"][0] == {
        "name": "decaf5",
        "node": "flatten",
        "dim": 9216,
        "meaning": "pool5: conv5 -> ReLU -> max-pool, flattened 256x6x6",
        "reduce": "none",
    }
    [weights] = description["weights"]
    assert weights["id"] == "alexnet/IMAGENET1K_V1"
    assert (weights["acc@1"], weights["acc@5"]) == (56.522, 79.066)
    assert weights["preprocessing"]["resize"] == 256
    assert weights["sha256_prefix"] == "7be5be79"


# Imports the registry, every family, the command and its JSON without the featurizer package's
# __init__ (which imports torch today): what `decaf backbones` will load.
NO_TORCH_PROBE = """
import sys, time, types
start = time.perf_counter()
package = types.ModuleType("featurizer")
package.__path__ = ["featurizer"]
sys.modules["featurizer"] = package
import argparse
from featurizer.backbones import backbone_names, get_backbone
from featurizer.backbones import command
parser = argparse.ArgumentParser()
command.register(parser.add_subparsers())
args = parser.parse_args(["backbones", "--json"])
args.func(args)
elapsed = time.perf_counter() - start
heavy = sorted(m for m in ("torch", "torchvision", "numpy", "PIL") if m in sys.modules)
print(f"HEAVY={heavy} NAMES={list(backbone_names())} SECONDS={elapsed:.3f}", file=sys.stderr)
"""


def test_registry_and_command_never_import_torch_numpy_or_pil(record_property):
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", NO_TORCH_PROBE],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    record_property("backbones_command_process_seconds", time.perf_counter() - started)
    report = result.stderr.strip().splitlines()[-1]
    assert report.startswith("HEAVY=[] "), report
    assert len(json.loads(result.stdout)) == len(backbone_names())
