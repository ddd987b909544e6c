"""The API's answers as typed models, so /openapi.json (and /docs) show every field, and the
request options' schema; both decoding parts are made from DecodingConfig's table
(hin.config.Setting), as the options' parsing is (hin.serve.inputs)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field, create_model

from hin import config
from hin.config import Setting, decoding_settings, setting_type
from hin.serve.inputs import EXPLAIN, decoding_options, option_help
from hin.serve.settings import MAX_BEAM_SIZE

JSON_TYPES = {int: "integer", float: "number", bool: "boolean", str: "string"}


def option_schema(name: str, setting: Setting) -> dict[str, Any]:
    """The JSON schema of one decoding setting: type, range, default, description, example."""
    kind, default = setting_type(name), getattr(config.DecodingConfig(), name)
    schema: dict[str, Any] = {"type": JSON_TYPES[kind], "description": option_help()[name]}
    if default is not None:
        schema["default"] = default
    if setting.minimum is not None:
        schema["minimum"] = setting.minimum
    if setting.above is not None:
        schema["exclusiveMinimum"] = setting.above
    if setting.maximum is not None:
        schema["maximum"] = setting.maximum
    if name == "beam_size":
        schema["maximum"] = MAX_BEAM_SIZE      # this server's own limit (hin.serve.inputs)
    if setting.choices:
        schema["enum"] = list(setting.choices)
    if setting.example is not None:
        schema["examples"] = [setting.example]
    return schema


def captions_openapi() -> dict[str, Any]:
    """POST /v1/captions' parameters and body: the options in the query or the form."""
    options = {**{name: option_schema(name, setting) for name, setting in decoding_options().items()},
               "explain": {"type": "boolean", "default": False, "description": EXPLAIN}}
    return {
        "parameters": [{"name": name, "in": "query", "required": False,
                        "description": schema["description"], "schema": schema}
                       for name, schema in options.items()],
        "requestBody": {"required": True, "content": {
            "multipart/form-data": {"schema": {
                "type": "object", "required": ["file"],
                "properties": {"file": {"type": "string", "format": "binary"}, **options}}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            "image/*": {"schema": {"type": "string", "format": "binary"}}}},
    }


class ErrorAnswer(BaseModel):
    detail: str = Field(description="what is wrong and what to do, in one line")


class CaptionItem(BaseModel):
    caption: str
    log_prob: float = Field(description="summed token log-probability: the beam-search score "
                                        "(captions rank by it / length^length_penalty)")


def _decoding_fields() -> dict[str, Any]:
    """DecodingConfig's fields as pydantic fields: type, description, example."""
    described = {}
    for name, setting in decoding_settings().items():
        kind: Any = setting_type(name)
        if getattr(config.DecodingConfig(), name) is None:
            kind = kind | None
        described[name] = (kind, Field(description=setting.help.format(
            **{other: other for other in decoding_settings()}),
            examples=None if setting.example is None else [setting.example]))
    return described


if TYPE_CHECKING:
    Decoding = BaseModel          # its fields are made at run time, from the table
else:
    Decoding = create_model("Decoding", __doc__="The decoding settings the captions were made "
                            "with (hin.config.DecodingConfig).", **_decoding_fields())


class FeatureSource(BaseModel):
    extractor: str | None = Field(description="the hin extractor the features came from")
    model: str | None = Field(description="the extractor's weights")


class Training(BaseModel):
    """What the model was trained on, as its checkpoint records it (null: not recorded)."""

    dataset: str | None = Field(description="the annotations it was trained from")
    images: int | None = Field(description="training images (the check's record)")
    vocabulary_size: int
    extractors: dict[str, FeatureSource]
    validation_cider_d: float | None = Field(description="CIDEr-D x100 on the validation split "
                                                         "when this checkpoint was saved (e.g. 353.4)")
    familiarity_check: bool = Field(description="whether pictures are checked against the "
                                                "training pictures' features")


class ModelInfo(BaseModel):
    checkpoint: str
    sha256: str
    origin: str = Field(description="hin-trained, reference (imported from the authors' code) "
                                    "or unknown (an older checkpoint)")
    layers: int
    d_model: int
    heads: int
    vocabulary_size: int
    features: dict[str, FeatureSource]
    training: Training


class Picture(BaseModel):
    width: int = Field(description="upright width in pixels (EXIF orientation applied)")
    height: int = Field(description="upright height in pixels")
    format: str
    frames: int = Field(1, description="frames (animated GIF, WebP, PNG) or pages (TIFF) in the "
                                       "file; only the first is captioned")


class GridGeometry(BaseModel):
    rows: int
    cols: int
    box: list[float] = Field(description="x1, y1, x2, y2 of the picture the cells cover, in "
                                         "upright picture pixels")


class RegionGeometry(BaseModel):
    boxes: list[list[float]] = Field(description="x1, y1, x2, y2 per region, upright pixels")


class Explanation(BaseModel):
    words: list[str] = Field(description="the best caption as generated (before repeats "
                                         "are collapsed)")
    layers: int
    encoder_grid: list[list[float]] = Field(description="[layer][grid cell]")
    encoder_region: list[list[float]] = Field(description="[layer][region]")
    decoder_grid: list[list[list[float]]] = Field(description="[layer][word][grid cell]")
    decoder_region: list[list[list[float]]] = Field(description="[layer][word][region]")
    decoder_gate: list[list[float]] = Field(description="[layer][word]")
    grid: GridGeometry | None
    regions: RegionGeometry | None
    missing: list[str] = Field(description="why a null geometry is unknown")


class CaptionsAnswer(BaseModel):
    captions: list[CaptionItem] = Field(description="best first")
    unfamiliar: str | None = Field(
        description="set when the picture's features lie far from the training pictures' "
                    "(the rule is in docs/serving.md): the captions then come from a model "
                    "that knows only its training world")
    decoding: Decoding
    model: ModelInfo
    picture: Picture
    preview: str = Field(description="the upright picture as the model read it, at most 640 px "
                                     "a side (a short side kept at 32 px or the picture's), as "
                                     "a data URL (PNG up to 256x256 pixels, else JPEG): what "
                                     "a page draws when it cannot draw the upload itself")
    explanation: Explanation | None = Field(None, description="with explain=true only")


class Health(BaseModel):
    status: str
    can_caption: bool


class Readiness(BaseModel):
    ready: bool = Field(description="whether captions can be asked for now")
    reason: str | None = Field(description="why not (null when ready)")


class Colormap(BaseModel):
    name: str = Field(description="hin.explain.MAP_COLORMAP, also used by `hin explain`")
    stops: list[list[int]] = Field(description="evenly spaced RGB stops, low to high")


class Info(BaseModel):
    model: ModelInfo
    can_caption: bool
    unavailable: str | None
    decoding: Decoding
    max_beam_size: int
    max_upload_bytes: int
    max_pixels_in_flight: int
    max_queue: int
    demo_pictures: list[str]
    map_colormap: Colormap
