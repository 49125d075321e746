"""The JSON Schema of the wire protocol, generated from the types in broker.protocol.

`protocol_schema()` describes every request (by `op`), every response (one per operation,
plus the error response) and every event (by `event`), for those who generate clients from it.
It is written to docs/protocol.schema.json by

    python -m broker.protocol.schema > docs/protocol.schema.json

and tests/test_protocol_schema.py checks that the file is up to date and that real frames
exchanged with a live broker validate against it.
"""

from __future__ import annotations

import copy
import json
import sys
from typing import Any, Final

import msgspec

from .events import EVENT_TYPES
from .requests import KINDS, MAX_REQUEST_ID, NOT_BLANK, Request
from .responses import RESULT_TYPES, Failure, Result

SCHEMA_DIALECT: Final = "https://json-schema.org/draft/2020-12/schema"
REF: Final = "#/$defs/{name}"

_REQUEST_TYPES: Final = msgspec.inspect.type_info(Request)

# What the types cannot say: which fields a kind of message needs (docs/protocol.md §5, send).
_SEND_BY_KIND: Final[dict[str, dict[str, Any]]] = {
    "email": {"required": ["to", "subject", "body"], "to": {"minItems": 1}},
    "text": {"required": ["to", "body"], "to": {"minItems": 1, "maxItems": 1}},
    "announcement": {"required": ["subject", "body"], "to": {"maxItems": 0}},
    "rickroll": {"required": ["to"], "to": {"minItems": 1, "maxItems": 1}},
}


def request_types() -> list[type[msgspec.Struct]]:
    assert isinstance(_REQUEST_TYPES, msgspec.inspect.UnionType)
    return [t.cls for t in _REQUEST_TYPES.types if isinstance(t, msgspec.inspect.StructType)]


def response_name(result_type: type[Result]) -> str:
    """LoginResult -> LoginResponse: the result with the envelope (re, ok) around it."""
    return result_type.__name__.removesuffix("Result") + "Response"


def _request_id_schema() -> dict[str, Any]:
    return {
        "type": "integer",
        "minimum": 0,
        "maximum": MAX_REQUEST_ID,
        "description": "Chosen by the client, echoed as `re` in the response.",
    }


def _with_request_id(schema: dict[str, Any]) -> dict[str, Any]:
    """Put the optional `id` right after `op`, as clients write it."""
    properties = schema["properties"]
    schema["properties"] = {"op": properties["op"], "id": _request_id_schema()} | {
        name: value for name, value in properties.items() if name != "op"
    }
    return schema


def _refine_send(schema: dict[str, Any]) -> None:
    props = schema["properties"]
    username = copy.deepcopy(props["to"]["items"])
    props["to"] = {
        "anyOf": [props["to"], username],
        "description": "The recipients; a single name may be given as a string.",
    }
    props["body"]["description"] = "Not blank; absent or empty for a rickroll."
    rules = []
    for kind, rule in _SEND_BY_KIND.items():
        then: dict[str, Any] = {"required": rule["required"]}
        then["properties"] = {
            "to": {"anyOf": [{"type": "array", **rule["to"]}, {"type": "string"}]}
        }
        if rule["to"].get("maxItems") == 0:
            then["properties"]["to"] = {
                "anyOf": [{"type": "array", "maxItems": 0}, {"type": "null"}]
            }
        if "body" in rule["required"]:
            then["properties"]["body"] = {"type": "string", "minLength": 1, "pattern": NOT_BLANK}
        if "subject" in rule["required"]:
            then["properties"]["subject"] = {"type": "string"}
        else:
            then["properties"]["subject"] = {"type": "null"}  # absent or null
        if not rule["required"].count("body"):
            then["properties"]["body"] = {"maxLength": 0}  # absent or ""
        rules.append({"if": {"properties": {"kind": {"const": kind}}}, "then": then})
    schema["allOf"] = rules


def _null_is_absent(schema: dict[str, Any]) -> None:
    """A field given as null counts as absent (docs/protocol.md §3): every optional field
    of a request may be null."""
    required = set(schema.get("required", ()))
    for name, prop in schema["properties"].items():
        if name in required or name == "id":
            continue
        if {"type": "null"} in prop.get("anyOf", ()):
            continue
        outer = {k: prop[k] for k in ("default", "description") if k in prop}
        inner = {k: v for k, v in prop.items() if k not in outer}
        schema["properties"][name] = {"anyOf": [inner, {"type": "null"}], **outer}


def _refine_history(schema: dict[str, Any]) -> None:
    schema["properties"]["since"] = {
        "anyOf": [{"type": "string", "maxLength": 40}, {"type": "null"}],
        "default": None,
        "description": "An ISO 8601 date or date-time (2026-11-01, 2026-11-01T09:00:00+01:00); "
        "without a zone, UTC.",
    }


def _refine_set_prefs(schema: dict[str, Any]) -> None:
    """set_prefs changes at least one preference (a boolean; null counts as absent)."""
    schema["anyOf"] = [
        {"required": [name], "properties": {name: {"type": "boolean"}}}
        for name in ("prank_opt_out", "read_receipts")
    ]


def _response_schema(result: dict[str, Any]) -> dict[str, Any]:
    envelope = {
        "re": {
            "anyOf": [{"type": "integer"}, {"type": "null"}],
            "description": "The request's id (null if it had none).",
        },
        "ok": {"const": True},
    }
    response: dict[str, Any] = {"title": result["title"].removesuffix("Result") + "Response"}
    response |= {k: v for k, v in result.items() if k not in ("properties", "required", "title")}
    response["properties"] = envelope | result["properties"]
    response["required"] = ["re", "ok", *result.get("required", [])]
    return response


def protocol_schema() -> dict[str, Any]:
    """The JSON Schema document (draft 2020-12) of every frame of the wire protocol."""
    results = list(dict.fromkeys(RESULT_TYPES.values()))  # login and resume share one
    types: list[Any] = [*request_types(), *results, Failure, *EVENT_TYPES]
    _, defs = msgspec.json.schema_components(types, ref_template=REF)
    for kind in request_types():
        _with_request_id(defs[kind.__name__])
    _refine_send(defs["Send"])
    _refine_history(defs["History"])
    _refine_set_prefs(defs["SetPrefs"])
    for kind in request_types():
        _null_is_absent(defs[kind.__name__])
    for result in results:
        name = result.__name__
        defs[response_name(result)] = _response_schema(defs[name])
    defs["ErrorResponse"] = {
        "title": "ErrorResponse",
        "description": "A request that failed, or an error that answers no request (re null).",
        "type": "object",
        "properties": {
            "re": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
            "ok": {"const": False},
            "error": {"$ref": REF.format(name="Failure")},
        },
        "required": ["re", "ok", "error"],
    }
    defs["Request"] = {
        "title": "Request",
        "oneOf": [{"$ref": REF.format(name=t.__name__)} for t in request_types()],
        "discriminator": {"propertyName": "op"},
    }
    defs["Event"] = {
        "title": "Event",
        "oneOf": [{"$ref": REF.format(name=t.__name__)} for t in EVENT_TYPES],
        "discriminator": {"propertyName": "event"},
    }
    defs["Response"] = {
        "title": "Response",
        "anyOf": [
            *({"$ref": REF.format(name=response_name(t))} for t in results),
            {"$ref": REF.format(name="ErrorResponse")},
        ],
    }
    operations = {}
    for kind in request_types():
        op = str(kind.__struct_config__.tag)
        result_type = RESULT_TYPES.get(op)
        operations[op] = {
            "request": REF.format(name=kind.__name__),
            "response": None
            if result_type is None
            else REF.format(name=response_name(result_type)),
        }
    return {
        "$schema": SCHEMA_DIALECT,
        "$id": "https://mailnet.invalid/protocol.schema.json",
        "title": "The mailnet wire protocol",
        "description": (
            "Every frame's JSON payload (docs/protocol.md): a Request from the client, a "
            "Response or an Event from the broker. x-mailnet-operations maps each `op` to its "
            "request and its success response (ack has none); any request may instead be "
            "answered by an ErrorResponse. Generated from broker/protocol by "
            "`python -m broker.protocol.schema`; do not edit."
        ),
        "oneOf": [
            {"$ref": REF.format(name="Request")},
            {"$ref": REF.format(name="Response")},
            {"$ref": REF.format(name="Event")},
        ],
        "x-mailnet-kinds": list(KINDS),
        "x-mailnet-operations": operations,
        "$defs": dict(sorted(defs.items())),
    }


def schema_text() -> str:
    """The document as written to docs/protocol.schema.json."""
    return json.dumps(protocol_schema(), indent=2, ensure_ascii=False) + "\n"


def main() -> None:
    sys.stdout.write(schema_text())


if __name__ == "__main__":
    main()

__all__ = ["protocol_schema", "request_types", "response_name", "schema_text"]
