"""Former home of batch extraction, now :mod:`featurizer.extraction`; these names remain for
code not yet switched (``featurizer/__init__``, ``service/jobs.py``). Import from
``featurizer.extraction`` in new code."""

from featurizer.extraction import (
    ExtractionCancelled,
    ExtractionProgress,
    ExtractionResult,
    extract_dataset,
)

__all__ = ["ExtractionCancelled", "ExtractionProgress", "ExtractionResult", "extract_dataset"]
