"""The recipe's JSON Schema: loading it, and turning its errors into positioned, plain messages.

``schemas/pipeline.schema.json`` is the single source of the format. Its subschemas may carry an
``x-expected`` annotation (ignored by validators) that words what a value should be.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from importlib import resources
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from kontext_pipeline.findings import Findings, did_you_mean
from kontext_pipeline.yamlsource import JsonPath

__all__ = ["check_schema", "schema_text", "load_schema"]

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


@functools.cache
def _validator() -> Draft202012Validator:
    return Draft202012Validator(load_schema())


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
    names = [types] if isinstance(types, str) else list(types)
    return " or ".join(_TYPE_NAMES.get(t, t) for t in names)


def _report(error: ValidationError, findings: Findings) -> None:
    path: JsonPath = tuple(error.absolute_path)
    if "propertyNames" in error.absolute_schema_path:
        _report_key(error, path, findings)
        return
    kind, value, instance = error.validator, error.validator_value, error.instance
    field = str(path[-1]) if path and isinstance(path[-1], str) else "value"
    if kind == "additionalProperties":
        _report_unknown_keys(error, path, findings)
    elif kind == "required":
        for name in value:
            if isinstance(instance, dict) and name not in instance:
                findings.add(path, f"missing required key '{name}'")
    elif kind == "type" or kind == "anyOf":
        findings.add(path, f"expected {_expected(error)}, got {_describe(instance)}")
    elif kind == "enum":
        choices = ", ".join(f"'{c}'" for c in value)
        hint = did_you_mean(str(instance), map(str, value))
        findings.add(path, f"{_describe(instance)} is not a valid {field}{hint}; "
                           f"expected one of {choices}")
    elif kind == "const":
        if path == ("version",):
            findings.add(path, f"unsupported version {_describe(instance)}; "
                               "this kontext-pipeline reads version 1")
        else:
            findings.add(path, f"must be {_describe(value)}")
    elif kind in ("minimum", "maximum"):
        side = "below the minimum" if kind == "minimum" else "above the maximum"
        findings.add(path, f"{_describe(instance)} is {side} of {value}")
    elif kind == "minLength" and value == 1:
        findings.add(path, "must not be empty")
    elif kind == "maxLength":
        findings.add(path, f"is longer than {value} characters")
    elif kind == "pattern":
        findings.add(path, f"{_describe(instance)} is not {_expected(error)}")
    elif kind in ("minItems", "minProperties"):
        findings.add(path, "must not be empty" if value == 1 else f"needs at least {value} items")
    elif kind == "maxItems":
        findings.add(path, f"has {len(instance)} items; at most {value} are allowed")
    else:  # a keyword the schema gained later: jsonschema's own words are still accurate
        findings.add(path, error.message)


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
        special = _KEY_HINTS.get((*path, key)) if len(path) == 1 else None
        hint = f"; {special}" if special else did_you_mean(key, known)
        findings.add((*path, key), f"unknown key '{key}'{hint}", at="key")
