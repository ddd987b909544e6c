"""DecodingConfig's table (hin.config.Setting) is what every surface offers: the `hin` flags,
`hin serve`'s HTTP options and its OpenAPI schema are made from it, so a field added to the
table appears in each; errors name the settings as each surface's users wrote them; and the
API's schema validates the answers the server really gives."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import pytest

import hin.config
from helpers.extract_models import write_picture_annotations, write_picture_checkpoint
from hin.cli import main
from hin.cli.options import add_decoding_options, decoding
from hin.config import DecodingConfig, SettingError, _setting
from hin.errors import HINError

pytest.importorskip("transformers")
pytest.importorskip("fastapi")
jsonschema = pytest.importorskip("jsonschema")
from fastapi.testclient import TestClient  # noqa: E402

from hin.serve import ServeSettings, create_app  # noqa: E402
from hin.serve.inputs import RequestError, parse_options  # noqa: E402
from hin.serve.schema import captions_openapi  # noqa: E402


@dataclass(frozen=True)
class WithAnotherOption(DecodingConfig):
    """DecodingConfig with one more row in its table, as a contributor would add it."""

    repetition_penalty: float = _setting(1.0, "divide the scores of words already in the caption "
                                              "by this", minimum=1, example=1.2)


def test_a_field_added_to_the_table_appears_in_the_cli_the_http_options_and_the_api(monkeypatch):
    monkeypatch.setattr(hin.config, "DecodingConfig", WithAnotherOption)
    # The Python API: a field, checked by its range.
    assert WithAnotherOption(repetition_penalty=1.5).repetition_penalty == 1.5
    with pytest.raises(SettingError, match=r"DecodingConfig.repetition_penalty must be a number "
                                           r">= 1, got 0.5"):
        WithAnotherOption(repetition_penalty=0.5)
    # The command line: a flag named after the field, with the table's help.
    parser = argparse.ArgumentParser()
    add_decoding_options(parser)
    assert "divide the scores of words" in parser.format_help()
    assert decoding(parser.parse_args(["--repetition-penalty", "1.25"])).repetition_penalty == 1.25
    with pytest.raises(HINError, match=r"--repetition-penalty must be a number >= 1, got 0.5"):
        decoding(parser.parse_args(["--repetition-penalty", "0.5"]))
    # HTTP: an option, typed and ranged in the schema.
    options = parse_options([("repetition_penalty", "1.5")], {}, WithAnotherOption())
    assert options.decoding.repetition_penalty == 1.5
    with pytest.raises(RequestError, match="repetition_penalty must be a number >= 1, got 0.5"):
        parse_options([("repetition_penalty", "0.5")], {}, WithAnotherOption())
    parameters = {p["name"]: p["schema"] for p in captions_openapi()["parameters"]}
    assert parameters["repetition_penalty"] == {
        "type": "number", "minimum": 1, "default": 1.0, "examples": [1.2],
        "description": "divide the scores of words already in the caption by this"}


def test_cli_errors_name_the_flags_as_typed_and_top_k_says_it_is_deprecated(capsys):
    parser = argparse.ArgumentParser()
    add_decoding_options(parser, num_captions=True)
    with pytest.raises(HINError, match=r"^--top-k \(5\) cannot exceed --beam \(3\): beam search"):
        decoding(parser.parse_args(["--top-k", "5", "--beam", "3"]))
    assert "--top-k is deprecated and will change its meaning in the next release: use " \
           "--num-captions" in capsys.readouterr().err
    with pytest.raises(HINError, match=r"^--num-captions \(4\) cannot exceed --beam-size \(2\)"):
        decoding(parser.parse_args(["--num-captions", "4", "--beam-size", "2"]))
    assert capsys.readouterr().err == ""
    assert decoding(parser.parse_args(["--num-captions", "2", "--sample-top-k", "7"])) == \
        DecodingConfig(num_captions=2, top_k=7)
    assert decoding(parser.parse_args(["--keep-repeats", "--sample"])) == \
        DecodingConfig(collapse_repeats=False, sample=True)
    with pytest.raises(HINError, match=r"^--top-p must be in \(0, 1\], got 2.0$"):
        decoding(parser.parse_args(["--top-p", "2"]))


def test_the_option_schema_types_each_setting_as_the_table_does():
    parameters = {p["name"]: p["schema"] for p in captions_openapi()["parameters"]}
    assert {name: schema["type"] for name, schema in parameters.items()} == {
        "beam_size": "integer", "num_captions": "integer", "length_penalty": "number",
        "min_len": "integer", "no_repeat_ngram": "integer", "sample": "boolean",
        "temperature": "number", "top_k": "integer", "top_p": "number", "seed": "integer",
        "diversity_groups": "integer", "diversity_strength": "number", "explain": "boolean"}
    assert parameters["top_p"] | {"description": ""} == {
        "type": "number", "exclusiveMinimum": 0, "maximum": 1, "default": 1.0,
        "examples": [0.9], "description": ""}
    assert parameters["seed"]["maximum"] == 2**63 - 1 and "default" not in parameters["seed"]
    assert parameters["temperature"]["description"].startswith("sampling: above 0")


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    root = tmp_path_factory.mktemp("schema")
    checkpoint, _, _ = write_picture_checkpoint(
        root, {"11.png": (40, 60), "12.png": (50, 30)}, config={"data": {"annotations": "pictures"}})
    write_picture_annotations(root / "pictures", ["11.png", "12.png"])
    settings = ServeSettings(checkpoint, decoding=DecodingConfig(beam_size=3), device="cpu",
                             max_batch=2, max_wait_ms=5, allow_hosts=("testserver",))
    with TestClient(create_app(settings)) as client:
        yield client, (root / "pictures" / "12.png").read_bytes()


def _validator(spec, path, method, status, media="application/json"):
    schema = spec["paths"][path][method]["responses"][str(status)]["content"][media]["schema"]
    return jsonschema.Draft202012Validator({**schema, "components": spec["components"]})


def test_the_api_schema_validates_the_answers_the_server_gives(client):
    client, png = client
    spec = client.get("/openapi.json").json()
    answers = [
        ("/v1/captions", "post", client.post("/v1/captions?explain&num_captions=2&temperature=0.5"
                                             "&top_p=0.9&sample&seed=3", content=png)),
        ("/v1/captions", "post", client.post("/v1/captions?length_penalty=0.6&diversity_groups=3"
                                             "&num_captions=3", content=png)),
        ("/v1/captions", "post", client.post("/v1/captions?beam_size=99", content=png)),
        ("/v1/captions", "post", client.post("/v1/captions?colour=red", content=png)),
        ("/v1/info", "get", client.get("/v1/info")),
        ("/healthz", "get", client.get("/healthz")),
        ("/v1/demo/{index}", "get", client.get("/v1/demo/first")),
        ("/v1/demo/{index}", "get", client.get("/v1/demo/7")),
    ]
    statuses = []
    for path, method, answer in answers:
        statuses.append(answer.status_code)
        _validator(spec, path, method, answer.status_code).validate(answer.json())
    assert statuses == [200, 200, 422, 400, 200, 200, 404, 404]
    sampled = answers[0][2].json()["decoding"]
    assert sampled["temperature"] == 0.5 and sampled["sample"] is True and sampled["seed"] == 3
    with pytest.raises(jsonschema.ValidationError):   # the schema can fail: a string is no number
        _validator(spec, "/v1/captions", "post", 200).validate(
            {**answers[0][2].json(), "decoding": {**sampled, "temperature": "0.5"}})


def test_the_cli_refuses_decoding_settings_naming_the_flag_typed(capsys, tmp_path):
    assert main(["caption", str(tmp_path / "x.png"), "--checkpoint", str(tmp_path / "c.pt"),
                 "--beam", "2", "--top-k", "3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("hin: --top-k is deprecated")
    assert len(err) == 2 and "--top-k (3) cannot exceed --beam (2)" in err[1]
