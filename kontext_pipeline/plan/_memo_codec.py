"""A plan as a plan memo holds it (JSON), and back.

What is stored is what planning found that cannot be had without the YAML reader, the JSON
Schema and Jinja: the recipe as validation froze it, the variables and variants the overrides
chose, every rendered prompt and every input's size. The tasks themselves are made again by
:func:`~._plan.assemble_plan`, the function that makes them for :func:`~._plan.build_plan`.

A memo is input: :func:`decode` checks every field's type, and every name that becomes part of
a path (the recipe's name, step ids, output names, input names, variant ids) by the recipe's
own rules, raising ValueError (or KeyError, TypeError) at the first doubt. Paths are never
stored: each input's is found again from the recipe's folder and its source, by the rule
validation applies (:func:`~kontext_pipeline.recipe._checks.input_path`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from kontext_pipeline._support.diagnostics import Problem
from kontext_pipeline._support.images import RESULT_FORMATS
from kontext_pipeline.plan._plan import Plan, assemble_plan
from kontext_pipeline.recipe._checks import is_device_name
from kontext_pipeline.recipe._keys import MAX_SEED, MIN_SEED
from kontext_pipeline.recipe._matrix import Variant
from kontext_pipeline.recipe._models import MODELS, Range
from kontext_pipeline.recipe._positions import Position
from kontext_pipeline.recipe._spec import InputImage, Spec, Step
from kontext_pipeline.recipe._template import Prompt

__all__ = ["FILE_STEM", "IDENTIFIER", "SLUG", "SLUG_LENGTH", "decode", "encode"]

SLUG = re.compile(r"[a-z0-9][a-z0-9._-]*")
SLUG_LENGTH = 64
"""A recipe's name (the schema's ``name``: its pattern and its most characters)."""
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,63}")
"""A step id or an input's name (the schema's ``identifier``)."""
FILE_STEM = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
"""An output's name (the schema's ``file_stem``)."""


def encode(plan: Plan, sizes: Mapping[str, tuple[int, int] | None]) -> dict[str, Any]:
    """What a memo holds of ``plan`` (its inputs' ``sizes`` by name), as JSON values."""
    spec = plan.spec
    return {
        "spec": {
            "name": spec.name, "description": spec.description, "model": spec.model,
            "seed": spec.seed, "variables": dict(spec.variables),
            "inputs": {name: image.source for name, image in spec.inputs.items()},
            "matrix_keys": list(spec.matrix_keys),
            "variants": [[v.id, dict(v.values)] for v in spec.variants],
            "steps": [_step(step) for step in spec.steps],
            "outputs": dict(spec.outputs),
            "warnings": [[w.line, w.column, w.message, w.severity] for w in spec.warnings],
            "env_names": list(spec.env_names),
        },
        "variables": dict(plan.variables),
        "variants": [variant.id for variant in plan.variants],
        "prompts": {variant.id: [t.prompt for t in plan.tasks_of(variant.id)]
                    for variant in plan.variants},
        "sizes": {name: None if size is None else list(size) for name, size in sizes.items()},
    }


def _step(step: Step) -> dict[str, Any]:
    position = step.prompt_position
    return {"id": step.id, "prompt": step.prompt_source, "image": list(step.image),
            "seed": step.seed, "seed_explicit": step.seed_explicit, "model": step.model,
            "models": dict(step.models), "request": dict(step.request),
            "position": [position.line, position.column, position.style]}


def decode(document: Any, *, recipe: Path, file: str, text: str, provider: str,
           hashes: Mapping[str, str], paths: Mapping[str, Path]) -> Plan:
    """The plan a memo's ``document`` holds, for the recipe at ``recipe`` (named ``file`` in
    messages, its ``text`` as read), run by ``provider``; ``hashes`` and ``paths`` are the
    sha256 and the checked path of each input, by name."""
    data = _dict(document["spec"])
    spec = _spec(data, recipe=recipe, file=file, text=text, paths=paths)
    variants = {variant.id: variant for variant in spec.variants}
    chosen = [variants[_str(v)] for v in _list(document["variants"])]
    prompts = {_str(k): [_str(p) for p in _list(v)] for k, v in _dict(document["prompts"]).items()}
    sizes = {_str(k): _size(v) for k, v in _dict(document["sizes"]).items()}
    if set(sizes) != set(spec.inputs) or set(prompts) != {v.id for v in chosen}:
        raise ValueError("the memo's sizes or prompts do not fit its recipe")
    plan = assemble_plan(spec, provider=provider, variables=_dict(document["variables"]),
                         variants=chosen, prompts=prompts, hashes=hashes,
                         size_of=sizes.get)
    for params in {task.params for task in plan.tasks}:
        for field, kinds in _PARAMS.items():
            if type(getattr(params, field)) not in kinds:
                raise TypeError(f"the memo's {field} is {type(getattr(params, field)).__name__}")
        if not _plausible(params):
            raise ValueError("the memo's request parameters break the recipe's rules")
    if spec.model not in MODELS or any(step.model not in MODELS for step in spec.steps):
        raise ValueError("the memo names a model this version does not know")
    return plan


def _plausible(params: Any) -> bool:
    """Whether request parameters are of the kind validation lets through, by the models
    table's own limits (the memo is signed; this is one more line: the format names exported
    files, the rest is sent)."""
    model = MODELS.get(params.model)
    if model is None or params.output_format not in RESULT_FORMATS:
        return False

    def within(value: int | float | None, limits: Range | None) -> bool:
        return value is None or (limits is not None and
                                 limits.minimum <= value <= limits.maximum)

    return ((params.aspect_ratio is None or _RATIO.fullmatch(params.aspect_ratio) is not None)
            and 0 <= params.safety_tolerance <= model.safety
            and within(params.width, _PIXELS) and within(params.height, _PIXELS)
            and within(params.steps, model.steps) and within(params.guidance, model.guidance))


_PIXELS = Range(0, 16384, 0)  # a side no image of the API's reaches
_RATIO = re.compile(r"[0-9]{1,2}:[0-9]{1,2}")


_PARAMS: dict[str, tuple[type, ...]] = {
    "model": (str,), "aspect_ratio": (str, type(None)), "output_format": (str,),
    "safety_tolerance": (int,), "prompt_upsampling": (bool,), "width": (int, type(None)),
    "height": (int, type(None)), "steps": (int, type(None)), "guidance": (float, type(None)),
}
"""The type of each request parameter (a memo's ``request`` is checked through them)."""


def _spec(data: dict[str, Any], *, recipe: Path, file: str, text: str,
          paths: Mapping[str, Path]) -> Spec:
    name = _match(SLUG, data["name"])
    sources = {_match(IDENTIFIER, k): _str(v) for k, v in _dict(data["inputs"]).items()}
    if len(name) > SLUG_LENGTH or is_device_name(name) or set(sources) != set(paths):
        raise ValueError("the memo's recipe name or inputs break the recipe's rules")
    variants = tuple(_variant(item) for item in _list(data["variants"]))
    steps = _steps(_list(data["steps"]), sources, {v.id for v in variants})
    ids = {step.id for step in steps}
    outputs = {_match(FILE_STEM, k): _str(v) for k, v in _dict(data["outputs"]).items()}
    if not outputs or any(is_device_name(k) or v not in ids for k, v in outputs.items()):
        raise ValueError("the memo's outputs break the recipe's rules")
    return Spec(
        path=recipe, file=file, text=text, name=name, description=_str(data["description"]),
        model=_str(data["model"]), seed=_int(data["seed"]), variables=_dict(data["variables"]),
        inputs={n: InputImage(n, source, paths[n]) for n, source in sources.items()},
        matrix_keys=tuple(_str(k) for k in _list(data["matrix_keys"])),
        variants=variants, steps=steps, outputs=outputs,
        warnings=tuple(_warning(file, item) for item in _list(data["warnings"])),
        env_names=tuple(_str(n) for n in _list(data["env_names"])),
    )


def _variant(item: Any) -> Variant:
    variant_id, values = _list(item)
    variant = Variant.of(_dict(values))
    if variant.id != variant_id:
        raise ValueError("a variant's id is not its values'")
    return variant


def _steps(items: list[Any], inputs: Mapping[str, str], variants: set[str]) -> tuple[Step, ...]:
    steps: list[Step] = []
    compiled: dict[str, Prompt] = {}  # one template for prompts written alike, as validation
    for index, item in enumerate(items):
        data = _dict(item)
        step_id = _match(IDENTIFIER, data["id"])
        image = tuple(_str(ref) for ref in _list(data["image"]))
        earlier = {step.id for step in steps}
        if step_id in earlier or step_id in inputs or any(
                ref not in inputs and ref not in earlier for ref in image):
            raise ValueError("a step of the memo breaks the recipe's rules")
        models = {_str(k): _str(v) for k, v in _dict(data["models"]).items()}
        if set(models) != variants or any(model not in MODELS for model in models.values()):
            raise ValueError("a step's models are not the memo's variants'")
        source = _str(data["prompt"])
        line, column, style = _list(data["position"])
        seed = _int(data["seed"])
        if not MIN_SEED <= seed <= MAX_SEED:
            raise ValueError("a step's seed is out of range")
        steps.append(Step(
            index=index, id=step_id, prompt_source=source, image=image, seed=seed,
            seed_explicit=_bool(data["seed_explicit"]), model=_str(data["model"]),
            models=models, request=_dict(data["request"]),
            prompt_position=Position(_int(line), _int(column),
                                     None if style is None else _str(style)),
            prompt=compiled.setdefault(source, Prompt.deferred(source)),
        ))
    if not steps:
        raise ValueError("the memo's recipe has no steps")
    return tuple(steps)


def _warning(file: str, item: Any) -> Problem:
    line, column, message, severity = _list(item)
    if severity not in ("error", "warning"):
        raise ValueError("a warning of unknown severity")
    return Problem(file, _int(line), _int(column), _str(message), severity)


def _size(value: Any) -> tuple[int, int] | None:
    if value is None:
        return None
    width, height = _list(value)
    return _int(width), _int(height)


def _typed(kind: type | tuple[type, ...]) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if type(value) not in (kind if isinstance(kind, tuple) else (kind,)):
            raise TypeError(f"{type(value).__name__} where the memo has {kind}")
        return value

    return check


_str: Callable[[Any], str] = _typed(str)
_int: Callable[[Any], int] = _typed(int)
_bool: Callable[[Any], bool] = _typed(bool)
_list: Callable[[Any], list[Any]] = _typed(list)
_dict: Callable[[Any], dict[str, Any]] = _typed(dict)


def _match(pattern: re.Pattern[str], value: Any) -> str:
    if not pattern.fullmatch(_str(value)):
        raise ValueError(f"{value!r} is not a name the recipe's rules allow")
    return str(value)
