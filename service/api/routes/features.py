"""`POST /v1/features`: DeCAF features of uploaded images, from the backbone of your choice.

Request (multipart/form-data): one or many files in the field `images`. Options as query
parameters or form fields (query wins when both are given): `backbone`, `layers`, `crop`,
`normalize`, `dtype`, and `format` (see `service.feature_options`). Response: JSON, `.npy` or
`.npz` (see `service.feature_encoding`), 200 when at least one image worked. When no image
worked: the first image's problem (422 undecodable, 413 too big, 415 not an image) with every
image's problem in `errors`.
"""

from __future__ import annotations

from typing import Annotated, get_args

from fastapi import File, Form, Query, Request, UploadFile
from fastapi.responses import Response

from featurizer.options import CROP_MODES
from service.api.deps import ModelsDep, SettingsDep, UploadsDep
from service.api.errors import problem_responses
from service.api.routing import v1_router
from service.feature_encoding import features_response
from service.feature_options import (
    NPY_MEDIA_TYPE,
    NPZ_MEDIA_TYPE,
    OUTPUT_FORMATS,
    FeatureOptions,
    OutputDtype,
    check_representable,
    choose_format,
    parse_crop,
    parse_dtype,
    parse_layers,
    parse_normalize,
)
from service.schemas import FeaturesResponse
from service.uploads import ImagesFailedError

router = v1_router("features")

_BINARY = {"schema": {"type": "string", "format": "binary"}}


@router.post(
    "/features",
    summary="DeCAF features of one or many uploaded images",
    responses={
        200: {
            "model": FeaturesResponse,
            "content": {NPY_MEDIA_TYPE: _BINARY, NPZ_MEDIA_TYPE: _BINARY},
            "description": "features as JSON, .npy or .npz (see Accept)",
        },
        **problem_responses(406, 413, 415),
    },
)
async def post_features(
    request: Request,
    settings: SettingsDep,
    models: ModelsDep,
    uploads: UploadsDep,
    images: Annotated[list[UploadFile], File(description="one or many image files", min_length=1)],
    backbone: Annotated[
        str | None, Query(description="a loaded backbone (GET /v1/model); default: the default")
    ] = None,
    layers: Annotated[
        str | None, Query(description="comma list or 'all'; default: the backbone's default")
    ] = None,
    crop: Annotated[str | None, Query(description=" | ".join(CROP_MODES))] = None,
    normalize: Annotated[str | None, Query(description="l2 | none")] = None,
    dtype: Annotated[str | None, Query(description=" | ".join(get_args(OutputDtype)))] = None,
    format: Annotated[
        str | None, Query(description=" | ".join(OUTPUT_FORMATS) + " (else Accept)")
    ] = None,
    backbone_form: Annotated[str | None, Form(alias="backbone")] = None,
    layers_form: Annotated[str | None, Form(alias="layers")] = None,
    crop_form: Annotated[str | None, Form(alias="crop")] = None,
    normalize_form: Annotated[str | None, Form(alias="normalize")] = None,
    dtype_form: Annotated[str | None, Form(alias="dtype")] = None,
) -> Response:
    model = models.get(backbone if backbone is not None else backbone_form)
    options = FeatureOptions(
        model=model,
        layers=parse_layers(layers if layers is not None else layers_form, models, model),
        crop=parse_crop(crop if crop is not None else crop_form, settings.crop),
        normalize=parse_normalize(normalize if normalize is not None else normalize_form),
        dtype=parse_dtype(dtype if dtype is not None else dtype_form),
        format=choose_format(format, request.headers.get("accept", "")),
    )
    check_representable(options.format, options.layers)
    results = await uploads.featurize(
        images, model=model, layers=options.layers, crop=options.crop, receive=request.receive
    )
    if not any(result.ok for result in results):
        raise ImagesFailedError(results)
    return features_response(results, options)
