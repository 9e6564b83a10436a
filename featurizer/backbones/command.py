"""``decaf backbones [--json]``: what the registry offers, for people and for scripts.

Reads only the records, so it never imports torch (the whole command runs in well under a second).
``service/cli.py`` wires it in with ``command.register(sub)``.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from featurizer.backbones import DEFAULT_BACKBONE, Backbone, backbone_names, get_backbone


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``backbones`` sub-command to ``decaf``'s sub-parsers."""
    parser = sub.add_parser(
        "backbones",
        help="list backbones, their weight tags and layer taps",
        description=(
            "List every registered backbone: weight tags (id, ImageNet acc@1, preprocessing), "
            "layer taps with dims and meanings, input size and default layers."
        ),
    )
    parser.add_argument("--json", action="store_true", help="print the records as JSON")
    parser.set_defaults(func=run_backbones)


def run_backbones(args: argparse.Namespace) -> int:
    if args.json:
        print(json.dumps(describe_backbones(), indent=2))
    else:
        print(format_backbones())
    return 0


def describe_backbones() -> list[dict[str, Any]]:
    """Every record's JSON-safe description, the default backbone first."""
    return [get_backbone(name).describe() for name in backbone_names()]


def format_backbones() -> str:
    """Human-readable listing of every registered backbone."""
    return "\n\n".join(_format_backbone(get_backbone(name)) for name in backbone_names())


def _format_backbone(backbone: Backbone) -> str:
    default = " (default)" if backbone.name == DEFAULT_BACKBONE else ""
    lines = [
        f"{backbone.name}{default}: {backbone.summary}",
        f"  input {backbone.input_size}x{backbone.input_size}; "
        f"default layers: {', '.join(backbone.default_layers)}",
        f"  weights (imagenet = {backbone.default_tag_name}):",
    ]
    id_width = max(len(backbone.weights_id(tag)) for tag in backbone.weight_tags)
    for tag in backbone.weight_tags:
        spec = tag.preprocess
        resize = f"{spec.resize} {spec.interpolation}"
        if spec.resize_mode != "shorter":
            resize += f" ({spec.resize_mode})"
        order = ", BGR" if spec.channel_order == "bgr" else ""
        lines.append(
            f"    {backbone.weights_id(tag):<{id_width}}  acc@1 {tag.acc1:6.3f}  "
            f"acc@5 {tag.acc5:6.3f}  resize {resize}, crop {spec.crop}{order}"
        )
    lines.append("  taps:")
    name_width = max(len(tap.name) for tap in backbone.taps)
    for tap in backbone.taps:
        lines.append(f"    {tap.name:<{name_width}}  {tap.dim:>6}  {tap.meaning}")
    return "\n".join(lines)
