"""Is reduced-scale JPEG decoding (PIL ``draft``) fast *and* faithful? Measures both.

For large JPEGs, libjpeg can decode at 1/2, 1/4 or 1/8 scale straight from the DCT
coefficients. This script compares, on the same files and in the same run:

* the reference: full decode, then torchvision-style resize (shorter side 256, antialiased
  bilinear) and centre crop 224 - what ``torchvision.transforms`` would give;
* draft rules "decoded short side >= F x 256" for several F (each picks the largest divisor
  8/4/2 that satisfies it, like ``featurizer.images.draft_scale``);
* the full-decode path with PIL's ``reducing_gap`` (box pre-reduction), for reference;
* the product path, ``featurizer.preprocess.load_and_preprocess`` (the chosen rule).

Per rule it prints time per image (decode + resize + crop, best of ``--repeats``), speed-up over
the reference, and the max / mean absolute difference of the final uint8 224x224 crop. If
``featurizer.Featurizer`` is importable it also reports the worst cosine similarity of
decaf6/decaf7 features to the reference's, with ``weights="random"`` - a PROXY, as pretrained
weights may not be available; run with ``--weights imagenet`` where they are.

Photos: scikit-learn's sample images (china.jpg, flower.jpg; shipped with scikit-learn, no
download) upscaled to ~2500x1700 (one landscape, one portrait) and re-encoded as JPEG quality 90,
china once more at 1600x1067 (the chosen rule's edge: 1/2 scale leaves just over 2 x 256), plus
synthetic sharp-edged / fine-texture 2560x1920 JPEGs (worst cases for a low-pass decode).

    python benchmarks/draft_fidelity.py            # full size
    python benchmarks/draft_fidelity.py --quick    # smaller, fewer repeats (a smoke test)
"""

from __future__ import annotations

from featurizer.runtime import configure_process

configure_process()  # this script is an entry point: set before torch starts its OpenMP runtime

import argparse
import io
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from featurizer.images import (
    DRAFT_BOX_KEY,
    DRAFT_DECODED_SIZE_KEY,
    DRAFT_FULL_SIZE_KEY,
    DRAFT_SAFETY_FACTOR,
    draft_scale,
)
from featurizer.preprocess import (
    PreprocessSpec,
    load_and_preprocess,
    preprocess,
    resize_shorter_side,
)

SPEC = PreprocessSpec()


@dataclass
class RuleResult:
    name: str
    seconds: list[float]  # wall clock
    cpu_seconds: list[float]  # this process's CPU time: steadier on a shared machine
    scales: list[int]
    crops: list[torch.Tensor]


def make_photos(long_side: int, quality: int = 90) -> dict[str, bytes]:
    """Sample photos upscaled to ``long_side`` plus two synthetic worst cases, as JPEG bytes."""
    from sklearn.datasets import load_sample_images

    short_side = round(long_side * 0.68)
    china, flower = load_sample_images().images
    pictures = {
        "china (landscape)": Image.fromarray(china).resize(
            (long_side, short_side), Image.Resampling.BICUBIC
        ),
        "flower (portrait)": Image.fromarray(flower)
        .transpose(Image.Transpose.ROTATE_90)
        .resize((short_side, long_side), Image.Resampling.BICUBIC),
    }
    # The chosen rule's worst case: 1/2 scale leaves just over 2 x 256 (least headroom).
    edge_short = 2 * 2 * SPEC.resize + 43
    pictures["china at the rule's edge"] = Image.fromarray(china).resize(
        (round(edge_short * 1.5), edge_short), Image.Resampling.BICUBIC
    )
    synth_size = (round(long_side * 1.024), round(long_side * 0.768))
    pictures["synthetic fine texture"] = _fine_texture(synth_size)
    pictures["synthetic sharp blocks"] = _sharp_blocks(synth_size)
    out = {}
    for name, picture in pictures.items():
        buffer = io.BytesIO()
        picture.save(buffer, "JPEG", quality=quality)
        out[name] = buffer.getvalue()
    return out


def _fine_texture(size: tuple[int, int]) -> Image.Image:
    # Sinusoids from coarse to a 6-pixel period: detail a 1/8 decode would smear.
    width, height = size
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    channels = [
        np.sin(x / 3.0 + c) * np.cos(y / 5.0) * 60
        + np.sin((x + y) / 40.0 + c) * 50
        + np.cos(x / 300.0 - y / 200.0 + c) * 30
        for c in (0.0, 1.0, 2.0)
    ]
    return Image.fromarray(np.clip(np.stack(channels, -1) + 128, 0, 255).astype(np.uint8))


def _sharp_blocks(size: tuple[int, int]) -> Image.Image:
    # Random colour blocks with hard edges (nearest-neighbour upscaled noise).
    width, height = size
    rng = np.random.default_rng(0)
    cells = rng.integers(0, 256, (height // 12, width // 12, 3), dtype=np.uint8)
    return Image.fromarray(cells).resize(size, Image.Resampling.NEAREST)


def decode_with_factor(
    data: bytes, factor: float | None, *, exact_geometry: bool = True
) -> tuple[Image.Image, int]:
    """Decode with the draft rule "short side >= factor x target" (None: full decode).

    With ``exact_geometry`` the draft box is recorded the way ``decode_image`` records it, so
    the resize maps exactly the full picture; without, the naive way (resize what was decoded).
    """
    image = Image.open(io.BytesIO(data))
    full_size = image.size
    scale, box = 1, None
    if factor is not None:
        scale = draft_scale(image.width, image.height, SPEC.resize, safety_factor=factor)
        if scale > 1:
            box = image.draft(None, (image.width // scale, image.height // scale))[1]
    rgb = image.convert("RGB")
    if exact_geometry and box is not None:
        rgb.info[DRAFT_BOX_KEY] = box
        rgb.info[DRAFT_FULL_SIZE_KEY] = full_size
        rgb.info[DRAFT_DECODED_SIZE_KEY] = rgb.size
    return rgb, scale


def rule_full_or_draft(
    factor: float | None, *, exact_geometry: bool = True
) -> Callable[[bytes], tuple[torch.Tensor, int]]:
    def run(data: bytes) -> tuple[torch.Tensor, int]:
        image, scale = decode_with_factor(data, factor, exact_geometry=exact_geometry)
        return preprocess(image, SPEC), scale

    return run


def rule_reducing_gap(gap: float) -> Callable[[bytes], tuple[torch.Tensor, int]]:
    def run(data: bytes) -> tuple[torch.Tensor, int]:
        image, _ = decode_with_factor(data, None)
        size = resize_shorter_side(image, SPEC.resize).size  # reuses the torchvision size rule
        small = image.resize(size, Image.Resampling.BILINEAR, reducing_gap=gap)
        return preprocess(small, SPEC), 1

    return run


def rule_product(data: bytes) -> tuple[torch.Tensor, int]:
    return load_and_preprocess(data, SPEC), 0


def measure_all(
    rules: list[tuple[str, Callable[[bytes], tuple[torch.Tensor, int]]]],
    photos: list[bytes],
    repeats: int,
) -> list[RuleResult]:
    """Best-of-``repeats`` time per rule and photo, rules interleaved within each repeat so that
    load from other processes hits every rule alike."""
    results = [
        RuleResult(name, [float("inf")] * len(photos), [float("inf")] * len(photos), [], [])
        for name, _ in rules
    ]
    for repeat in range(repeats):
        for (_, rule), result in zip(rules, results, strict=True):
            for index, data in enumerate(photos):
                start, start_cpu = time.perf_counter(), time.process_time()
                crop, scale = rule(data)
                cpu = time.process_time() - start_cpu
                elapsed = time.perf_counter() - start
                result.seconds[index] = min(result.seconds[index], elapsed)
                result.cpu_seconds[index] = min(result.cpu_seconds[index], cpu)
                if repeat == 0:
                    result.crops.append(crop)
                    result.scales.append(scale)
    return results


def feature_similarity(
    reference: RuleResult, other: RuleResult, weights: str
) -> dict[str, float] | None:
    """Worst cosine similarity per layer, or None when the Featurizer is not available."""
    try:
        from featurizer import Featurizer  # type: ignore[attr-defined]
    except ImportError:
        try:
            from featurizer.extractor import Featurizer
        except ImportError:
            return None
    global _FEATURIZER
    if _FEATURIZER is None:
        _FEATURIZER = Featurizer(layers=("decaf6", "decaf7"), weights=weights, device="cpu")
    ref = _FEATURIZER.forward(torch.stack(reference.crops))
    got = _FEATURIZER.forward(torch.stack(other.crops))
    worst = {}
    for layer in ("decaf6", "decaf7"):
        a, b = ref[layer].astype(np.float64), got[layer].astype(np.float64)
        cosine = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
        worst[layer] = float(cosine.min())
    return worst


_FEATURIZER = None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1600-px photos, 2 repeats")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--long-side", type=int, default=None)
    parser.add_argument("--weights", default="random", help="random (proxy) or imagenet / PATH")
    parser.add_argument("--no-features", action="store_true", help="skip the cosine columns")
    args = parser.parse_args()
    long_side = args.long_side or (1600 if args.quick else 2500)
    repeats = args.repeats or (2 if args.quick else 5)
    torch.set_num_threads(max(1, torch.get_num_threads()))

    photos = make_photos(long_side)
    sizes = [Image.open(io.BytesIO(d)).size for d in photos.values()]
    print(f"photos: {', '.join(f'{n} {w}x{h}' for n, (w, h) in zip(photos, sizes, strict=True))}")
    print(f"target: shorter side {SPEC.resize}, centre crop {SPEC.crop}; best of {repeats} runs\n")

    rules: list[tuple[str, Callable[[bytes], tuple[torch.Tensor, int]]]] = [
        ("full decode (reference)", rule_full_or_draft(None)),
        ("full + reducing_gap=3", rule_reducing_gap(3.0)),
        ("full + reducing_gap=2", rule_reducing_gap(2.0)),
        ("draft 2x, naive geometry", rule_full_or_draft(2.0, exact_geometry=False)),
        ("draft: short >= 1x target", rule_full_or_draft(1.0)),
        ("draft: short >= 1.5x target", rule_full_or_draft(1.5)),
        ("draft: short >= 2x target", rule_full_or_draft(2.0)),
        ("draft: short >= 3x target", rule_full_or_draft(3.0)),
        (f"load_and_preprocess (F={DRAFT_SAFETY_FACTOR:g})", rule_product),
    ]
    data = list(photos.values())
    results = measure_all(rules, data, repeats)
    reference = results[0]
    with_features = not args.no_features
    header = (
        f"{'rule':34} {'scales':>9} {'wall ms':>7} {'cpu ms':>7} {'speed-up':>8} {'max|d|':>6} "
        f"{'mean|d|':>7}"
    )
    if with_features:
        header += f" {'cos6 min':>9} {'cos7 min':>9}"
    print(header)
    print("-" * len(header))
    ref_cpu_ms = 1000 * float(np.mean(reference.cpu_seconds))
    for result in results:
        diffs = [
            (a.int() - b.int()).abs() for a, b in zip(result.crops, reference.crops, strict=True)
        ]
        max_diff = max(int(d.max()) for d in diffs)
        mean_diff = float(np.mean([d.float().mean().item() for d in diffs]))
        ms = 1000 * float(np.mean(result.seconds))
        cpu_ms = 1000 * float(np.mean(result.cpu_seconds))
        scales = "/".join(str(s) if s else "-" for s in result.scales)
        line = (
            f"{result.name:34} {scales:>9} {ms:7.1f} {cpu_ms:7.1f} {ref_cpu_ms / cpu_ms:7.2f}x "
            f"{max_diff:6d} "
            f"{mean_diff:7.3f}"
        )
        if with_features:
            cos = feature_similarity(reference, result, args.weights)
            if cos is None:
                with_features = False
            else:
                line += f" {cos['decaf6']:9.6f} {cos['decaf7']:9.6f}"
        print(line)
    print(
        f"\nper photo, mean |d| (max |d|) vs the reference crop:\n{'rule':34} "
        + " ".join(f"{name[:22]:>22}" for name in photos)
    )
    for result in results[1:]:
        cells = []
        for a, b in zip(result.crops, reference.crops, strict=True):
            d = (a.int() - b.int()).abs()
            cells.append(f"{d.float().mean().item():14.3f} ({int(d.max()):3d})")
        print(f"{result.name:34} " + " ".join(f"{c:>22}" for c in cells))
    print(
        "\nscales: JPEG draft divisor per photo (1 = full decode, - = chosen by the product path)."
        "\nwall / cpu ms: decode + resize + crop per image (wall clock / this process's CPU time),"
        " mean over photos of the best run; speed-up from cpu ms; |d| in uint8 levels"
        " vs the reference crop (max over photos, mean of per-photo means)."
    )
    if with_features:
        print(
            f"cos: worst cosine similarity of decaf6/decaf7 to the reference, weights="
            f"{args.weights!r}"
            + (
                " (random weights: a PROXY for pretrained ones)."
                if args.weights == "random"
                else "."
            )
        )
    else:
        print("cos: skipped (featurizer.Featurizer not available or --no-features).")


if __name__ == "__main__":
    main()
