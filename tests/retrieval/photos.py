"""A small photo folder for retrieval tests: crops of scikit-learn's two real photos, two classes,
plus planted near-duplicates of one crop (a resized copy and a re-encoded JPEG copy).

The crops tile each photo without overlapping, so only the planted copies are near-duplicates.
"""

from __future__ import annotations

from pathlib import Path

from tests.featurizer.conftest import sample_photo

CLASSES = ("china", "flower")
CROP = 140
ORIGINAL = "china/china_003.jpg"
PLANTED = ("china/dup_resized.jpg", "china/dup_reencoded.jpg")


def crop_boxes(per_class: int) -> list[tuple[int, int, int, int]]:
    """Non-overlapping CROP x CROP boxes on a 4 x 3 grid of a 640 x 427 photo."""
    boxes = [(x, y, x + CROP, y + CROP) for y in (0, 140, 280) for x in (0, 160, 320, 480)]
    if per_class > len(boxes):
        raise ValueError(f"at most {len(boxes)} crops per class")
    return boxes[:per_class]


def write_photo_folder(root: Path, per_class: int = 12) -> list[str]:
    """Write ``<root>/<class>/<class>_NNN.jpg`` crops and the planted copies; relative paths."""
    written = []
    for name in CLASSES:
        photo = sample_photo(f"{name}.jpg")
        (root / name).mkdir(parents=True, exist_ok=True)
        for number, box in enumerate(crop_boxes(per_class)):
            relative = f"{name}/{name}_{number:03d}.jpg"
            photo.crop(box).resize((112, 112)).save(root / relative, quality=92)
            written.append(relative)
    from PIL import Image

    with Image.open(root / ORIGINAL) as original:
        original.resize((150, 150)).save(root / PLANTED[0], quality=92)
        original.save(root / PLANTED[1], quality=55)
    return [*written, *PLANTED]
