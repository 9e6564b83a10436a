"""``decaf backbones [--json]`` through its own sub-parser (service/cli.py wires it into decaf)."""

from __future__ import annotations

import argparse
import json

import pytest

from featurizer.backbones import backbone_names, command, get_backbone


@pytest.fixture
def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="decaf")
    command.register(parser.add_subparsers(dest="command", required=True))
    return parser


def run(parser: argparse.ArgumentParser, argv: list[str]) -> int:
    args = parser.parse_args(argv)
    return args.func(args)


def test_json_lists_every_record(parser, capsys):
    assert run(parser, ["backbones", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [entry["name"] for entry in listed] == list(backbone_names())
    assert listed == [get_backbone(name).describe() for name in backbone_names()]


def test_text_lists_tags_taps_and_defaults(parser, capsys):
    assert run(parser, ["backbones"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("alexnet (default): ")
    for name in backbone_names():
        record = get_backbone(name)
        assert f"default layers: {', '.join(record.default_layers)}" in text
        assert f"(imagenet = {record.default_tag_name})" in text
        for tag in record.weight_tags:
            assert record.weights_id(tag) in text
            assert f"acc@1 {tag.acc1:6.3f}" in text
        for tap in record.taps:
            assert f"{tap.dim:>6}  {tap.meaning}" in text
    tag_line = "alexnet/IMAGENET1K_V1  acc@1 56.522  acc@5 79.066  resize 256 bilinear, crop 224"
    assert tag_line in text
    caffe_line = (
        "caffenet/BVLC  acc@1 57.400  acc@5 80.400  resize 256 bilinear (stretch), crop 227, BGR"
    )
    assert caffe_line in text
    assert "decaf5        9216  pool5:" in text


def test_help_names_the_command(parser, capsys):
    with pytest.raises(SystemExit):
        parser.parse_args(["backbones", "--help"])
    assert "--json" in capsys.readouterr().out
