"""The recipe's JSON Schema: loading it, and turning its errors into positioned, plain messages.

``schemas/pipeline.schema.json`` is the single source of the format. Its subschemas may carry an
``x-expected`` annotation (ignored by validators) that words what a value should be.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterator
from importlib import resources
from typing import Any

from jsonschema import Draft202012Validator, validators
from jsonschema.exceptions import ValidationError

from kontext_pipeline.recipe._findings import Findings, did_you_mean
from kontext_pipeline.recipe._yamlsource import JsonPath

__all__ = ["SEED_ZERO", "check_schema", "load_schema", "schema_text"]

_KEY_HINTS = {
    ("defaults", "model"): "set the model at the top level of the recipe or in a step",
    ("defaults", "seed"): "set the base seed at the top level of the recipe or in a step",
    ("defaults", "image"): "give each step its own image",
    ("defaults", "prompt"): "give each step its own prompt",
}

_TYPE_NAMES = {
    "string": "text",
    "integer": "an integer",
    "number": "a number",
    "boolean": "true or false",
    "object": "a mapping",
    "array": "a list",
    "null": "nothing",
}


def schema_text() -> str:
    """The JSON Schema as shipped in the package (what ``kontext-pipeline schema`` prints)."""
    return (resources.files("kontext_pipeline") / "schemas" / "pipeline.schema.json").read_text(
        encoding="utf-8"
    )


@functools.cache
def load_schema() -> dict[str, Any]:
    """The parsed JSON Schema of recipe format version 1."""
    schema: dict[str, Any] = json.loads(schema_text())
    return schema


def _is_integer(_checker: object, instance: object) -> bool:
    """An integer as written: JSON Schema also counts ``2.0`` as one, which would reach the
    request and the cache key as a float."""
    return isinstance(instance, int) and not isinstance(instance, bool)


_StrictIntegers = validators.extend(  # type: ignore[no-untyped-call]
    Draft202012Validator,
    type_checker=Draft202012Validator.TYPE_CHECKER.redefine("integer", _is_integer))


@functools.cache
def _validator() -> Draft202012Validator:
    validator: Draft202012Validator = _StrictIntegers(load_schema())
    return validator


def check_schema(data: Any, findings: Findings) -> None:
    """Add one finding per schema violation in ``data`` to ``findings``."""
    for error in _leaf_errors(_validator().iter_errors(data)):
        _report(error, findings)


def _leaf_errors(errors: Iterator[ValidationError]) -> Iterator[ValidationError]:
    """Replace each anyOf failure by the errors of the branch that matches the value's type."""
    for error in errors:
        if error.validator == "anyOf" and error.context:
            same_type = [e for e in error.context if e.validator != "type" or e.relative_path]
            if same_type:
                yield from _leaf_errors(iter(same_type))
                continue
        yield error


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "nothing"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return json.dumps(value, ensure_ascii=False)


def _expected(error: ValidationError) -> str:
    schema = error.schema if isinstance(error.schema, dict) else {}
    if "x-expected" in schema:
        return str(schema["x-expected"])
    types = error.validator_value if error.validator == "type" else schema.get("type", "")
    names = [types] if isinstance(types, str) else _list(types)
    return " or ".join(_TYPE_NAMES.get(t, t) for t in names)


def _report(error: ValidationError, findings: Findings) -> None:
    path: JsonPath = tuple(error.absolute_path)
    if "propertyNames" in error.absolute_schema_path:
        _report_key(error, path, findings)
    elif error.validator == "additionalProperties":
        _report_unknown_keys(error, path, findings)
    elif error.validator == "required":
        instance = error.instance if isinstance(error.instance, dict) else {}
        for name in _list(error.validator_value):
            if name not in instance:
                findings.add(path, f"missing required key '{name}'")
    else:
        wording = _WORDINGS.get(str(error.validator))
        # a keyword the schema gained later: jsonschema's own words are still accurate
        findings.add(path, wording(error, path) if wording else error.message)


def _list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else []


def _field(path: JsonPath) -> str:
    return str(path[-1]) if path and isinstance(path[-1], str) else "value"


def _enum(error: ValidationError, path: JsonPath) -> str:
    choices = _list(error.validator_value)
    hint = did_you_mean(str(error.instance), map(str, choices))
    listed = ", ".join(f"'{c}'" for c in choices)
    return f"{_describe(error.instance)} is not a valid {_field(path)}{hint}; " \
           f"expected one of {listed}"


def _const(error: ValidationError, path: JsonPath) -> str:
    if path == ("version",):
        return f"unsupported version {_describe(error.instance)}; " \
               "this kontext-pipeline reads version 1"
    return f"must be {_describe(error.validator_value)}"


SEED_ZERO = ("seed 0 means 'random' to the BFL API, so the image could not be made again; "
             "choose a seed from 1 to 4294967295")
"""Why an explicit ``seed: 0`` is refused (the schema's minimum of a seed is 1)."""


def _bound(error: ValidationError, path: JsonPath) -> str:
    if _field(path) == "seed" and type(error.instance) is int and error.instance == 0:
        return SEED_ZERO
    side = "below the minimum" if error.validator == "minimum" else "above the maximum"
    return f"{_describe(error.instance)} is {side} of {error.validator_value}"


def _min_size(error: ValidationError, _path: JsonPath) -> str:
    if error.validator_value == 1:
        return "must not be empty"
    unit = "characters" if isinstance(error.instance, str) else "items"
    return f"needs at least {error.validator_value} {unit}"


def _max_items(error: ValidationError, _path: JsonPath) -> str:
    count = len(error.instance) if isinstance(error.instance, list) else 0
    return f"has {count} items; at most {error.validator_value} are allowed"


def _type(error: ValidationError, _path: JsonPath) -> str:
    message = f"expected {_expected(error)}, got {_describe(error.instance)}"
    if error.validator_value == "string" and isinstance(error.instance, dict):
        message += "; put a value that starts with '{' in quotes: in YAML, '{' starts a mapping"
    return message


_WORDINGS: dict[str, Callable[[ValidationError, JsonPath], str]] = {
    "type": _type,
    "anyOf": lambda e, _: f"expected {_expected(e)}, got {_describe(e.instance)}",
    "enum": _enum,
    "const": _const,
    "minimum": _bound,
    "maximum": _bound,
    "minLength": _min_size,
    "minItems": _min_size,
    "minProperties": _min_size,
    "maxLength": lambda e, _: f"is longer than {e.validator_value} characters",
    "maxItems": _max_items,
    "pattern": lambda e, _: f"{_describe(e.instance)} is not {_expected(e)}",
    "uniqueItems": lambda e, _: f"lists {_repeated(e.instance)} more than once",
}


def _repeated(items: Any) -> str:
    seen: list[Any] = []
    for item in _list(items):
        if item in seen:
            return _describe(item)
        seen.append(item)
    return "a value"


def _report_key(error: ValidationError, path: JsonPath, findings: Findings) -> None:
    key = str(error.instance)
    key_path = (*path, key)
    if error.validator == "not":
        findings.add(key_path, f"'{key}' is reserved for the template context; "
                               "choose another name", at="key")
    else:
        findings.add(key_path, f"'{key}' is not {_expected(error)}", at="key")


def _report_unknown_keys(error: ValidationError, path: JsonPath, findings: Findings) -> None:
    known = error.schema.get("properties", {}) if isinstance(error.schema, dict) else {}
    instance = error.instance if isinstance(error.instance, dict) else {}
    for key in instance:
        if key in known:
            continue
        special = _KEY_HINTS.get((str(path[0]), key)) if len(path) == 1 else None
        hint = f"; {special}" if special else did_you_mean(key, known)
        findings.add((*path, key), f"unknown key '{key}'{hint}", at="key")
