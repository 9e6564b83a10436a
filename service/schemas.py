"""Request and response models of the HTTP API (pydantic), in one place.

Allowed values come from where they are declared: precision / crop / engine from
`featurizer.options`, classifier / score kind from `classifiers.options`, protocols from the
`classifiers.registry`,
job statuses from `service.state`. Layers and backbones are checked against the loaded models at
request time (`service.models`), not here: they depend on what the server has loaded.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from classifiers.options import ClassifierKind, ScoreKind
from classifiers.registry import PROTOCOLS
from featurizer.options import CropMode, Engine, Precision
from featurizer.store import StoreStatus
from service.paths import MAX_PATH_CHARS, NAME_PATTERN
from service.state import JobStatus

# `predefined` needs a split file on the server's disk, which a request must not name.
ServiceProtocol = Literal[  # type: ignore[valid-type]
    tuple(name for name, entry in PROTOCOLS.items() if not entry.needs_split_file)
]

BACKBONE_FIELD = Field(
    None, description="one of the server's backbones (GET /v1/model); default: its default one"
)


# --------------------------------------------------------------------------- errors
class Problem(BaseModel):
    """RFC 9457 problem details: the body of every error answer (application/problem+json)."""

    type: str = Field(
        description="problem type: '/problems/<name>' (one per error kind) or 'about:blank' "
        "(a plain HTTP condition, e.g. an unknown route)",
        examples=["/problems/image-decode"],
    )
    title: str = Field(description="short summary of the problem type")
    status: int = Field(description="the HTTP status code", examples=[422])
    detail: str = Field(description="what went wrong with this request, and what to do")
    errors: list[dict[str, Any]] | None = Field(
        None,
        description="the individual problems: per image (index, filename, type, status, "
        "detail) when no uploaded image could be used; per field (loc, detail, code) for an "
        "invalid request",
    )


# --------------------------------------------------------------------------- operations
class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready", "not ready"]
    reasons: list[str] | None = Field(None, description="why not ready")
    queue_depth: int | None = Field(None, description="images waiting, all backbones")


# --------------------------------------------------------------------------- model + features
class BackboneInfo(BaseModel):
    """One loaded backbone: weights, the layers it serves with their dims, preprocessing."""

    backbone: str
    weights_id: str
    weights_sha256: str | None = None
    layers: dict[str, int] = Field(description="served layers and their dimensions")
    default_layers: list[str]
    preprocessing: dict[str, Any]
    precision: str
    device: str


class BatchingInfo(BaseModel):
    max_batch_size: int
    max_wait_ms: float
    max_queue: int


class LimitsInfo(BaseModel):
    max_upload_bytes: int
    max_files_per_request: int
    max_pixels: int
    request_timeout_s: float


class ModelInfo(BackboneInfo):
    """The default backbone at the top level (for clients of a one-backbone server), plus all."""

    default_backbone: str
    backbones: list[BackboneInfo]
    offered_layers: list[str] = Field(description="layers of the default backbone")
    crop_modes: list[str]
    default_crop: str
    dtypes: list[str]
    batching: BatchingInfo
    limits: LimitsInfo


class FeatureResult(BaseModel):
    filename: str
    features: dict[str, list[float]] | None = None
    error: str | None = None
    error_type: str | None = Field(None, description="problem type of the error")


class FeaturesResponse(BaseModel):
    model: dict[str, Any] = Field(description="backbone, weights, layers, preprocessing used")
    options: dict[str, Any]
    results: list[FeatureResult]


# --------------------------------------------------------------------------- jobs + datasets
# The engine "ray" options, given with engine "local", are refused (see `_ray_options_need_ray`);
# said in the schema too, so a client (or a fuzzer) can know it.
_RAY_ONLY_OPTIONS = ("num_gpus_per_worker", "concurrency")
_RAY_OPTIONS_NEED_RAY = {
    "if": {"not": {"required": ["engine"], "properties": {"engine": {"const": "ray"}}}},
    "then": {"properties": {name: {"type": "null"} for name in _RAY_ONLY_OPTIONS}},
}
# Numbers outside these bounds were accepted and failed later, inside a job (issue 12).
MAX_COUNT = 1_000_000
MAX_SEED = 2**32 - 1  # numpy's RandomState accepts 0 … 2**32 - 1
MAX_C = 1e6


class ExtractionRequest(BaseModel):
    """Extract features of every image below `root` into the feature store `name`."""

    model_config = ConfigDict(
        extra="forbid", allow_inf_nan=False, json_schema_extra=_RAY_OPTIONS_NEED_RAY
    )

    root: str = Field(
        min_length=1,
        max_length=MAX_PATH_CHARS,
        description="directory to read: absolute, or relative to one of DECAF_DATA_ROOTS; it "
        "must resolve (symlinks and '..' included) inside DECAF_DATA_ROOTS",
        examples=["caltech101"],
    )
    name: str = Field(
        pattern=NAME_PATTERN,
        description="store name: the store is written to DECAF_DATA_DIR/datasets/<name>/",
        examples=["caltech101-decaf"],
    )
    backbone: str | None = BACKBONE_FIELD
    layers: list[Annotated[str, Field(min_length=1, max_length=128)]] | None = Field(
        None,
        min_length=1,
        max_length=64,
        description="taps of the backbone to store; default: its default taps",
    )
    crop: CropMode = "center"
    precision: Precision | None = Field(
        None, description="default: the server's precision (DECAF_PRECISION)"
    )
    batch_size: int = Field(64, ge=1, le=1024)
    part_size: int | None = Field(
        None, ge=1, le=1_000_000, description="rows per Parquet part (the unit of resume)"
    )
    engine: Engine = Field(
        "local",
        description="'local': this server's decode workers and model; 'ray': Ray Data on the "
        "server's DECAF_RAY_ADDRESS cluster (or a local Ray), needs the ray extra "
        "(pip install 'decaf[ray]')",
    )
    num_gpus_per_worker: float | None = Field(
        None,
        ge=0,
        le=8,
        description="engine 'ray' only: GPUs per model actor (default: 1 if the cluster has "
        "GPUs, else 0)",
    )
    concurrency: int | None = Field(
        None,
        ge=1,
        le=1024,
        description="engine 'ray' only: number of model actors (default: one per GPU, or one "
        "per CPU node)",
    )
    overwrite: bool = Field(
        False, description="replace a finished store of the same name instead of answering 409"
    )
    follow_symlinks: bool = Field(
        True,
        description="follow symbolic links below root, as torchvision's ImageFolder does (loops "
        "are not entered, links leaving DECAF_DATA_ROOTS are skipped); every skipped entry is "
        "listed in the store's _errors.jsonl and counted in the job's result",
    )

    @model_validator(mode="after")
    def _ray_options_need_ray(self) -> ExtractionRequest:
        # Silently ignoring them would let a client believe it got 4 GPU actors.
        if self.engine != "ray":
            given = [name for name in _RAY_ONLY_OPTIONS if getattr(self, name) is not None]
            if given:
                raise ValueError(f'{" and ".join(given)} only apply to "engine": "ray"')
        return self


class JobOut(BaseModel):
    id: str
    kind: str = Field(description="the job's handler: extraction | index_build | probe_fit")
    status: JobStatus = Field(
        description="queued | running | succeeded | failed | cancelled | "
        "interrupted (stopped by repeated server crashes; resubmit to resume)"
    )
    params: dict[str, Any]
    progress: dict[str, Any] = Field(
        description="done, total, errors, images_per_s, eta_s (extraction jobs)"
    )
    result: dict[str, Any] | None = Field(
        None,
        description="extraction: dataset, store, num_images, num_errors, resumed_parts; "
        "probe_fit: probe_id, probe",
    )
    error: str | None = None
    note: str | None = None
    cancel_requested: bool = False
    attempts: int = 0
    created_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    updated_at: str | None = None


class JobList(BaseModel):
    jobs: list[JobOut]


class DatasetSummary(BaseModel):
    name: str
    complete: bool
    status: StoreStatus = Field(
        description="complete | incomplete (being written or interrupted) | invalid (its "
        "manifest cannot be read: `error` says why; other routes answer 409 for it)"
    )
    backbone: str | None = None
    num_images: int | None = None
    num_errors: int | None = None
    num_classes: int | None = None
    layers: dict[str, int] | None = None
    source_root: str | None = None
    job_id: str | None = None
    created_at: str | None = None
    error: str | None = None


class DatasetList(BaseModel):
    datasets: list[DatasetSummary]


# --------------------------------------------------------------------------- probes
class ProtocolSpec(BaseModel):
    """Evaluation protocol run before the final fit (metrics land in the probe)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    name: ServiceProtocol = Field(  # type: ignore[valid-type]
        "stratified",
        description="caltech101: n_train per class, rest test (capped at max_test); sun397: "
        "50/50 per class; stratified: train_fraction per class",
    )
    n_train: int | None = Field(
        None,
        ge=1,
        le=MAX_COUNT,
        description="training images per class (default: caltech101 30, sun397 50)",
    )
    max_test: int | None = Field(
        None, ge=1, le=MAX_COUNT, description="test images per class, at most"
    )
    splits: int = Field(5, ge=1, le=100)
    seed: int = Field(0, ge=0, le=MAX_SEED)
    train_fraction: float = Field(0.5, gt=0, lt=1)


class ProbeOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    backbone: str | None = BACKBONE_FIELD
    layer: str | None = Field(None, description="default: the backbone's default layer")
    classifier: ClassifierKind = Field(
        "logreg", description="logreg: scores are probabilities; svm: scores are margins"
    )
    C: Literal["auto"] | Annotated[float, Field(gt=0, le=MAX_C)] = Field(
        "auto", description="'auto': chosen by cross-validation on the training data"
    )
    standardize: bool = True
    l2_normalize: bool = False
    class_weight: Literal["balanced"] | None = None


class ProbeFromDataset(ProbeOptions):
    """Fit a probe on a feature store produced by POST /v1/extractions (or `decaf extract`)."""

    dataset: str = Field(pattern=NAME_PATTERN, description="store name (GET /v1/datasets)")
    name: str | None = Field(None, pattern=NAME_PATTERN, description="default: <dataset>-<layer>")
    protocol: ProtocolSpec | None = Field(
        None, description="evaluate with this protocol first; its metrics are stored"
    )


class FewShotForm(ProbeOptions):
    name: str = Field("few-shot", pattern=NAME_PATTERN)
    crop: CropMode | None = None


class ProbeSummary(BaseModel):
    id: str
    name: str
    source: str = Field(description="'dataset' (fitted on a store) or 'upload' (few-shot)")
    dataset: str | None = None
    backbone: str | None = None
    layer: str
    classifier: str
    score_kind: ScoreKind = Field(description="what prediction scores are")
    classes: list[str]
    num_classes: int
    job_id: str | None = None
    created_at: str | None = None


class ProbeDetail(ProbeSummary):
    metrics: dict[str, Any]
    provenance: dict[str, Any]
    skipped: list[dict[str, Any]] | None = Field(
        None, description="few-shot uploads that could not be used, with the reason"
    )


class ProbeList(BaseModel):
    probes: list[ProbeSummary]


class Prediction(BaseModel):
    label: str
    score: float = Field(description="a probability or a margin: see `score_kind`")


class ImagePrediction(BaseModel):
    filename: str
    predictions: list[Prediction] | None = None
    error: str | None = None


class PredictResponse(BaseModel):
    probe_id: str
    backbone: str | None = None
    layer: str
    score_kind: ScoreKind = Field(
        description="'probability' (logistic regression: class probabilities, summing to 1) "
        "or 'margin' (linear SVM: signed distances to the class hyperplanes, uncalibrated)"
    )
    results: list[ImagePrediction]


def inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema with its `$defs` substituted in place.

    For routes that parse their body by hand (JSON or multipart): FastAPI does not register such
    a model under `components/schemas`, and an inlined schema cannot dangle.
    """
    schema = model.model_json_schema()
    definitions = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return resolve(definitions[ref.removeprefix("#/$defs/")])
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(item) for item in node]
        return node

    return resolve(schema)


# --------------------------------------------------------------------------- retrieval
# (Allowed values from `retrieval.options`; imported here, at the end, to keep merges easy.)
from retrieval.options import CODECS, INDEX_KINDS, Codec, IndexKind  # noqa: E402


class IndexRequest(BaseModel):
    """`POST /v1/datasets/{name}/index`: index one layer of a finished dataset (a job)."""

    model_config = ConfigDict(extra="forbid")

    layer: str = Field(description="a layer of the dataset (GET /v1/datasets/{name})")
    dim: Annotated[int, Field(ge=1)] | None = Field(
        None, description="PCA to this many dimensions (default: keep the layer's)"
    )
    whiten: bool = Field(False, description="PCA-whitening learned on the dataset (needs dim)")
    codec: Codec = Field("flat", description=" | ".join(CODECS))
    kind: IndexKind = Field(
        "auto", description=" | ".join(INDEX_KINDS) + " (auto: exact for small datasets)"
    )
    rebuild: bool = Field(False, description="replace an existing or outdated index")

    @model_validator(mode="after")
    def _whiten_needs_dim(self) -> IndexRequest:
        if self.whiten and self.dim is None:
            raise ValueError("whiten needs dim: whitening is learned with PCA")
        return self


class IndexOut(BaseModel):
    """A dataset's index: what it was built from and how (its `index.json`)."""

    model_config = ConfigDict(extra="allow")

    dataset: str
    name: str = Field(description="the index directory: <layer>-<dims>-<codec>-<kind>")
    layer: str
    rows: int
    backbone: str
    weights_id: str
    recipe: dict[str, Any] = Field(description="kind, factory, dim_in, dim_out, nlist, nprobe...")
    built_at: str | None = None
    build_seconds: float | None = None
    index_bytes: int | None = None


class SearchNeighbour(BaseModel):
    row: int = Field(description="row of the dataset (GET /v1/datasets/{name}/images/{row})")
    path: str = Field(description="relative to the dataset's source root")
    label: str | None = None
    score: float = Field(description="cosine similarity (in the PCA space, if the index has one)")


class ImageNeighbours(BaseModel):
    filename: str
    neighbours: list[SearchNeighbour] = Field(default_factory=list)
    error: Problem | None = Field(None, description="why this query image was not searched")


class SearchResponse(BaseModel):
    k: int = Field(description="neighbours per image (clamped to the dataset's size)")
    note: str | None = Field(None, description="e.g. why k was clamped")
    index: str = Field(description="the index searched")
    results: list[ImageNeighbours]
