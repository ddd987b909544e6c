"""What a caption request may carry, read defensively: the body (size-limited), a multipart
form or raw picture bytes, the options, and the picture itself (read by hin's one rule,
`hin.extract.images.read_picture`). Everything stays in memory; every refusal is a `RequestError` whose status
and message go back to the client as JSON.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hin.config import DecodingConfig, Setting, SettingError, decoding_settings, setting_type
from hin.errors import HINError
from hin.extract.images import PictureError, ReadPicture, picture_size, read_picture
from hin.serve.settings import MAX_BEAM_SIZE


def _http_help(name: str, setting: Setting) -> str:
    text = setting.help.format(**{other: other for other in decoding_settings()})
    return f"{'sampling' if setting.mode == 'sampling' else 'beam search'}: {text}" \
        if setting.mode != "both" else text


# What this server allows beyond DecodingConfig's own ranges, from the settings chosen so far.
SERVER_MAXIMUM: dict[str, Callable[[dict[str, Any], DecodingConfig], int]] = {
    "beam_size": lambda chosen, defaults: MAX_BEAM_SIZE,
    "num_captions": lambda chosen, defaults: MAX_BEAM_SIZE if chosen["sample"] else chosen["beam_size"],
    "min_len": lambda chosen, defaults: defaults.max_len - 1,
    "no_repeat_ngram": lambda chosen, defaults: defaults.max_len,
    "diversity_groups": lambda chosen, defaults: chosen["beam_size"],
}
LARGEST_COUNT = 10**9      # a whole-number option without a maximum of its own
EXPLAIN = "true to add the attention maps of the best caption (a bare `explain` is true)"


def decoding_options() -> dict[str, Setting]:
    """DecodingConfig's settings a request may change (hin.config.Setting.http), in table
    order, read from the table at each use."""
    return {name: setting for name, setting in decoding_settings().items() if setting.http}


def option_help() -> dict[str, str]:
    """Every option a request may carry, with what it means."""
    return {**{name: _http_help(name, setting) for name, setting in decoding_options().items()},
            "explain": EXPLAIN}


OPTIONS = option_help()
# A bare `?explain` (or an empty form field) means true, as a flag on a command line does.
TRUE, FALSE = {"", "1", "true", "yes", "on"}, {"0", "false", "no", "off"}
MAX_PARTS = 1 + len(OPTIONS)   # a form holds one file and at most the options: more are refused
NAMED_UNKNOWN = 3      # an error names at most this many unknown options
MAX_NUMBER_TEXT = 19   # digits read at most: no 4000-digit int() (2**63 has 19)
_WHOLE_NUMBER = re.compile(r"[0-9]+")    # ASCII digits only: never '²', '١' or '３'
_DECIMAL = re.compile(r"-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")   # nor 'inf', 'nan', '1_0', '1e9'


class RequestError(HINError, ValueError):
    """A request that cannot be served as sent; `status` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status, self.retry_after = status, retry_after


@dataclass(frozen=True)
class Options:
    """One request's settings. Requests are batched together only when these are equal."""

    decoding: DecodingConfig
    explain: bool = False


@dataclass(frozen=True)
class Upload:
    picture: bytes
    fields: dict[str, str]


def declared_size(content_length: str | None, limit: int) -> int | None:
    """The body's declared length (None when none is declared in plain ASCII digits), refused
    with 413 past `limit` before a byte of the body is read."""
    if not content_length or not (content_length.isascii() and content_length.isdigit()):
        return None
    if int(content_length) > limit:
        raise too_large(int(content_length), limit)
    return int(content_length)


def too_large(size: int, limit: int) -> RequestError:
    return RequestError(413, f"the upload is {size / 2**20:.2f} MiB, over this server's limit of "
                             f"{limit / 2**20:.3g} MiB (--max-upload-mb)")


def read_upload(body: bytes, content_type: str) -> Upload:
    """Raw picture bytes, or a multipart form with exactly one file and option fields."""
    if not body:
        raise RequestError(400, "the request body is empty: send a picture as raw bytes or as "
                                "the file of a multipart form (field `file`)")
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type == "multipart/form-data":
        return _multipart(body, content_type)
    if media_type == "application/x-www-form-urlencoded":
        raise RequestError(415, "a url-encoded form cannot carry a picture: send multipart/form-"
                                "data with the picture as field `file`, or the raw picture bytes "
                                "labelled as a picture (curl --data-binary @pic.png labels them "
                                "url-encoded: add -H 'Content-Type: image/png')")
    return Upload(body, {})


class _TooManyParts(Exception):
    pass


def _multipart(body: bytes, content_type: str) -> Upload:
    """Parsed with python-multipart's streaming parser, stopping at the first part over
    MAX_PARTS (run it off the event loop: a large body takes a while)."""
    from python_multipart.multipart import MultipartParser, parse_options_header

    _, parameters = parse_options_header(content_type)
    boundary = parameters.get(b"boundary")
    if not boundary:
        raise RequestError(400, "multipart/form-data without a boundary parameter")
    parts: list[dict] = []
    header = {"name": b"", "value": b""}

    def begin() -> None:
        if len(parts) == MAX_PARTS:
            raise _TooManyParts
        parts.append({"headers": {}, "data": bytearray()})

    def header_field(data: bytes, start: int, end: int) -> None:
        header["name"] += data[start:end]

    def header_value(data: bytes, start: int, end: int) -> None:
        header["value"] += data[start:end]

    def header_end() -> None:
        parts[-1]["headers"][header["name"].lower()] = header["value"]
        header.update(name=b"", value=b"")

    def part_data(data: bytes, start: int, end: int) -> None:
        parts[-1]["data"] += data[start:end]

    ended: list[bool] = []
    parser = MultipartParser(boundary, {"on_part_begin": begin, "on_header_field": header_field,
                                        "on_header_value": header_value,
                                        "on_header_end": header_end, "on_part_data": part_data,
                                        "on_end": lambda: ended.append(True)})
    try:
        parser.write(body)
        parser.finalize()
    except _TooManyParts:
        raise RequestError(400, f"the form has more than {MAX_PARTS} parts; send one picture "
                                f"(field `file`) and at most the options {', '.join(OPTIONS)}"
                           ) from None
    except Exception as error:  # python-multipart's errors have no common public base
        raise RequestError(400, f"malformed multipart body: {error}") from error
    if not ended:
        raise RequestError(400, "the multipart body ends before its closing boundary: was the "
                                "upload cut short?")
    files, fields = [], {}
    for part in parts:
        _, disposition = parse_options_header(part["headers"].get(b"content-disposition"))
        name = disposition.get(b"name", b"").decode("utf-8", "replace")
        if b"filename" in disposition:
            files.append(bytes(part["data"]))
        elif name in fields:
            raise RequestError(400, f"form field {name!r} is given twice")
        else:
            fields[name] = part["data"].decode("utf-8", "replace")
    if len(files) != 1:
        raise RequestError(400, f"the form carries {len(files)} files; send exactly one picture "
                                "(field `file`)")
    if not files[0]:
        raise RequestError(400, "the uploaded file is empty")
    return Upload(files[0], fields)


def parse_options(query: Sequence[tuple[str, str]], fields: Mapping[str, str],
                  defaults: DecodingConfig) -> Options:
    """Query parameters (name, value pairs as sent) and form fields -> checked options. An
    option given twice, in the query or in the query and the form, is refused."""
    given: dict[str, str] = {}
    for name, value in [*query, *fields.items()]:
        if name in given:
            raise RequestError(400, f"option {name!r} is given twice; give each option once, "
                                    "in the query or in the form")
        given[name] = value
    table = decoding_options()
    unknown = sorted(set(given) - {*table, "explain"})
    if unknown:
        known = option_help()           # its help texts are formatted only for the message
        named = ", ".join(repr(name[:40]) for name in unknown[:NAMED_UNKNOWN])
        more = f" and {len(unknown) - NAMED_UNKNOWN} more" if len(unknown) > NAMED_UNKNOWN else ""
        listed = "; ".join(f"{name}: {meaning}" for name, meaning in known.items())
        raise RequestError(400, f"unknown option(s) {named}{more}; the options are {listed}")
    changed: dict[str, Any] = {name: _flag(given, name, getattr(defaults, name))
                               for name in table if setting_type(name) is bool}
    for name, setting in table.items():
        kind = setting_type(name)
        if kind is int:
            least = int(setting.minimum if setting.minimum is not None else 0)
            most = (SERVER_MAXIMUM[name](changed, defaults) if name in SERVER_MAXIMUM
                    else int(setting.maximum) if setting.maximum is not None else LARGEST_COUNT)
            default = getattr(defaults, name)
            if name in given or default is not None:
                changed[name] = _integer(given, name, least if default is None else min(default, most),
                                         least, most)
        elif kind is float and name in given:
            changed[name] = _decimal(given, name)
    try:
        decoding = dataclasses.replace(defaults, **changed)
    except SettingError as error:
        raise RequestError(422, error.naming(str)) from error
    return Options(decoding, _flag(given, "explain", False))


def _integer(given: Mapping[str, str], name: str, default: int, smallest: int,
             largest: int) -> int:
    if name not in given:
        return default
    if not _WHOLE_NUMBER.fullmatch(given[name]):
        raise RequestError(400, f"option {name} must be a whole number in ASCII digits, got "
                                f"{given[name][:40]!r}")
    number = int(given[name]) if len(given[name]) <= MAX_NUMBER_TEXT else None
    if number is None or not smallest <= number <= largest:
        raise RequestError(422, f"option {name} must be from {smallest} to {largest}, got "
                                f"{given[name][:40]!r}")
    return number


def _decimal(given: Mapping[str, str], name: str) -> float:
    """A number written in ASCII digits with an optional sign and decimal point; its range
    is DecodingConfig's to check."""
    text = given[name]
    if len(text) > 2 * MAX_NUMBER_TEXT or not _DECIMAL.fullmatch(text):
        raise RequestError(400, f"option {name} must be a decimal number in ASCII digits (such "
                                f"as 0.5), got {text[:40]!r}")
    return float(text)


def _flag(given: Mapping[str, str], name: str, default: bool) -> bool:
    if name not in given:
        return default
    value = given[name].lower()
    if value not in TRUE | FALSE:
        raise RequestError(400, f"option {name} must be true or false (or given bare), got "
                                f"{given[name][:40]!r}")
    return value in TRUE


def decode_picture(data: bytes) -> ReadPicture:
    """Bytes -> the picture by hin's one reading rule (`hin.extract.images.read_picture`: its
    formats, its pixel limit, truncation refused), every refusal a 400 saying why."""
    try:
        return read_picture(data, name="the upload")
    except PictureError as error:
        raise RequestError(400, str(error)) from error


def declared_pixels(data: bytes) -> int:
    """Width x height from the picture's header, without decoding it: what admission counts.
    0 when the header cannot be read (decode_picture then says what is wrong)."""
    size = picture_size(data)
    return 0 if size is None else size[0] * size[1]
