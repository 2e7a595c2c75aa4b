"""Semantic checks: the rules of a recipe that a JSON Schema cannot express.

They run on the parsed data even when the schema found problems, skipping whatever is malformed
(the schema has reported it), so that every problem in a recipe is reported at once.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kontext_pipeline._support.images import ImageCheckError, inspect_image
from kontext_pipeline.recipe._environ import is_secret_name
from kontext_pipeline.recipe._findings import Findings, did_you_mean

__all__ = ["MAX_ASPECT", "check_env", "check_inputs", "check_outputs", "check_params",
           "check_steps", "image_refs", "input_path", "is_device_name", "step_ids", "steps_of"]

MAX_ASPECT = 21 / 9
"""Aspect ratios from 21:9 to 9:21 are accepted by the API."""

def steps_of(data: Mapping[str, Any]) -> list[tuple[int, dict[str, Any]]]:
    """Each step that is a mapping, with its index."""
    steps = data.get("steps")
    if not isinstance(steps, list):
        return []
    return [(i, s) for i, s in enumerate(steps) if isinstance(s, dict)]


def _inputs(data: Mapping[str, Any]) -> dict[str, Any]:
    inputs = data.get("inputs")
    return inputs if isinstance(inputs, dict) else {}


def step_ids(data: Mapping[str, Any]) -> list[str | None]:
    """Each step's id, or None where it has none (index-aligned with ``steps``)."""
    steps = data.get("steps")
    if not isinstance(steps, list):
        return []
    return [s.get("id") if isinstance(s, dict) and isinstance(s.get("id"), str) else None
            for s in steps]


def image_refs(step: Mapping[str, Any]) -> list[str]:
    """The names a step's ``image`` lists (as written; empty when it has none)."""
    image = step.get("image")
    if isinstance(image, str):
        return [image]
    if isinstance(image, list):
        return [i for i in image if isinstance(i, str)]
    return []


def check_steps(data: Mapping[str, Any], findings: Findings) -> None:
    """Unique ids, no clash with input names, and ``image`` naming inputs or earlier steps."""
    inputs = _inputs(data)
    ids = step_ids(data)
    first_index: dict[str, int] = {}
    for index, step_id in enumerate(ids):
        if step_id is None:
            continue
        if step_id in first_index:
            findings.add(("steps", index, "id"), f"duplicate step id '{step_id}' "
                         f"(steps[{first_index[step_id]}] has it too); step ids must be unique")
            continue
        first_index[step_id] = index
        if step_id in inputs:
            findings.add(("steps", index, "id"), f"step id '{step_id}' is also an input name; "
                         "rename one so that `image` is unambiguous")
    for index, step in steps_of(data):
        refs = image_refs(step)
        path = ("steps", index, "image")
        if len(set(refs)) != len(refs):
            findings.add(path, "lists the same image twice")
        for position, ref in enumerate(refs):
            ref_path = (*path, position) if isinstance(step.get("image"), list) else path
            _check_ref(ref, index, first_index=first_index, inputs=inputs, path=ref_path,
                       findings=findings)


def _check_ref(ref: str, index: int, *, first_index: Mapping[str, int],
               inputs: Mapping[str, Any], path: tuple[str | int, ...],
               findings: Findings) -> None:
    if ref in inputs:
        return
    if ref in first_index:
        target = first_index[ref]
        if target == index:
            findings.add(path, f"'{ref}' is this step itself; a step can use only inputs and "
                               "earlier steps")
        elif target > index:
            findings.add(path, f"'{ref}' is a later step (steps[{target}]); a step can use only "
                               "inputs and earlier steps")
        return
    earlier = [s for s, i in first_index.items() if i < index]
    hint = did_you_mean(ref, [*inputs, *earlier])
    findings.add(path, f"unknown image '{ref}'{hint}; expected an input name or an earlier "
                       "step id")


def check_inputs(data: Mapping[str, Any], base_dir: Path,
                 findings: Findings) -> dict[str, tuple[int, int]]:
    """Each input is a relative path to a complete image within the API's limits, inside the
    recipe's directory, and used by some step. Returns the size (width, height) of each input
    that is such an image, by name."""
    used = {ref for _, step in steps_of(data) for ref in image_refs(step)}
    root = base_dir.resolve()
    sizes: dict[str, tuple[int, int]] = {}
    for name, source in _inputs(data).items():
        if not isinstance(source, str) or not source:
            continue
        path = ("inputs", name)
        problem = _input_problem(source, root)
        if isinstance(problem, str):
            findings.add(path, problem)
        else:
            sizes[name] = problem
        if name not in used:
            findings.warn(path, f"input '{name}' is not used by any step", at="key")
    return sizes


def input_path(source: str, root: Path) -> Path | None:
    """Where the input ``source`` leads (links followed) when the rules of
    :func:`check_inputs` allow it, else None: a relative path without NUL characters, inside
    ``root`` (the recipe's folder, resolved). A plan memo's inputs are checked again with it."""
    found = _path_or_problem(source, root)
    return found if isinstance(found, Path) else None


def _path_or_problem(source: str, root: Path) -> Path | str:
    """Where the input ``source`` leads (links followed), or what is wrong with it as a path."""
    if "\0" in source:
        return f"'{source}' holds a NUL character, which no file name can contain; remove it"
    if Path(source).is_absolute() or source.startswith("~"):
        return f"'{source}' must be a path relative to the recipe file"
    resolved = Path(os.path.realpath(root / source))
    if not resolved.is_relative_to(root):
        return (f"'{source}' leads outside the recipe's directory; keep input images beside "
                "the recipe or below it")
    return resolved


def _input_problem(source: str, root: Path) -> str | tuple[int, int]:
    """What is wrong with the input ``source``, or its size when nothing is."""
    resolved = _path_or_problem(source, root)
    if isinstance(resolved, str):
        return resolved
    try:
        info = inspect_image(resolved)
    except ImageCheckError as exc:
        if "\\" in source and not os.path.lexists(root / source):
            forward = source.replace("\\", "/")
            return (f"'{source}' {exc}; write paths with '/', which every system reads: "
                    f"'{forward}'")
        return f"'{source}' {exc}"
    return info.width, info.height


def check_outputs(data: Mapping[str, Any], findings: Findings) -> None:
    """Every output names a step, and every name that becomes a file or folder (the outputs,
    the recipe's name) is one that every system can create."""
    name = data.get("name")
    if isinstance(name, str) and is_device_name(name):
        findings.add(("name",), _device_name(name))
    outputs = data.get("outputs")
    if not isinstance(outputs, dict):
        return
    ids = [i for i in step_ids(data) if i is not None]
    seen: dict[str, str] = {}
    for name, target in outputs.items():
        if isinstance(target, str) and target not in ids:
            findings.add(("outputs", name), f"unknown step '{target}'{did_you_mean(target, ids)}")
        if is_device_name(name):
            findings.add(("outputs", name), _device_name(name), at="key")
        first = seen.setdefault(name.casefold(), name)
        if first != name:
            findings.add(("outputs", name), f"'{name}' and '{first}' differ only in case: on "
                         "macOS and Windows they are one file; rename one", at="key")


_DEVICE_NAMES = frozenset({"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)),
                           *(f"lpt{i}" for i in range(10))})


def is_device_name(name: str) -> bool:
    """Whether ``name`` is one Windows reserves for a device, whatever its extension
    (``nul.png`` is the null device): no recipe's name or output may be one."""
    return name.split(".", 1)[0].casefold() in _DEVICE_NAMES


def _device_name(name: str) -> str:
    return (f"'{name}' is the name of a device on Windows (CON, PRN, AUX, NUL, COM0-9, "
            "LPT0-9), not a possible file name; choose another name")


def check_env(data: Mapping[str, Any], findings: Findings) -> None:
    """No name in ``env`` looks like a secret: templates never see secrets, listed or not."""
    names = data.get("env")
    for index, name in enumerate(names if isinstance(names, list) else []):
        if isinstance(name, str) and is_secret_name(name):
            findings.add(("env", index), f"'{name}' looks like a secret; templates cannot read "
                                         "secrets, so `env` cannot list it")


def check_params(data: Mapping[str, Any], findings: Findings) -> None:
    """Aspect ratios within the API's range (what each model takes, and the ranges that depend
    on the model, are :func:`._model_checks.check_models`')."""
    defaults = data.get("defaults")
    defaults = defaults if isinstance(defaults, dict) else {}
    _check_aspect(defaults.get("aspect_ratio"), ("defaults", "aspect_ratio"), findings)
    for index, step in steps_of(data):
        _check_aspect(step.get("aspect_ratio"), ("steps", index, "aspect_ratio"), findings)


def _check_aspect(value: Any, path: tuple[str | int, ...], findings: Findings) -> None:
    if not isinstance(value, str) or ":" not in value:
        return
    width, _, height = value.partition(":")
    if not (width.isdigit() and height.isdigit()) or int(width) == 0 or int(height) == 0:
        return  # the schema reports the shape
    ratio = int(width) / int(height)
    if not 1 / MAX_ASPECT - 1e-9 <= ratio <= MAX_ASPECT + 1e-9:
        findings.add(path, f"'{value}' is outside the API's range of aspect ratios, "
                           "from 21:9 to 9:21")
