"""What each step's model takes, checked at the line, from the models table (:mod:`._models`).

A step's model is its own ``model``, else the recipe's; either may be a template naming a matrix
key (``model: "{{ model }}"``), and then every rule is checked for each variant's model, a
problem naming the variants it concerns (as prompt problems do). The rules: a field the model
does not take (a ``defaults`` field applies only to the steps whose model takes it, and is an
error when none does), more references than the model takes, ``width`` and ``height`` (at least
64, multiples of 16, both or neither, an output of at most 4 megapixels, and at most 9 megapixels
of input images and output together where the model says so: a chained input counts as its
step's output, and an output that follows its first input as that input's size, both by
:func:`~._models.output_size` as the plan counts them), ``safety_tolerance``, ``steps`` and
``guidance`` within the model's ranges, and the warning about a Kontext step with an input
image and a tolerance the API lowers to 2.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kontext_pipeline._support.diagnostics import Severity
from kontext_pipeline.recipe._checks import image_refs, step_ids, steps_of
from kontext_pipeline.recipe._findings import Findings, did_you_mean
from kontext_pipeline.recipe._matrix import Variant
from kontext_pipeline.recipe._models import (
    MEGAPIXEL,
    MODELS,
    REQUEST_FIELDS,
    Model,
    megapixels,
    model_key,
    output_size,
    takers,
)
from kontext_pipeline.recipe._prompts import recipe_model, variant_list
from kontext_pipeline.recipe._yamlsource import JsonPath

__all__ = ["check_models"]

_MOST_REFERENCES = max(m.references for m in MODELS.values())
"""The schema's own limit on ``image`` (it reports a longer list)."""


def check_models(data: Mapping[str, Any], variants: Sequence[Variant] | None,
                 sizes: Mapping[str, tuple[int, int]], findings: Findings) -> None:
    """Check every step against its model (in each variant). ``variants`` is None while the
    matrix is malformed (templated models are then not checked); ``sizes`` holds the size of
    each input image that validation could read."""
    defaults = data.get("defaults")
    report = _Report(findings, variants or ())
    taken: set[str] = set()
    checked = False
    made: dict[str, dict[str, tuple[int, int] | None]] = {}  # by variant: each step's output
    ids_of = step_ids(data)
    for index, step in steps_of(data):
        refs = (image_refs(step) if "image" in step
                else [r for r in ids_of[index - 1:index] if r is not None] if index else [])
        for model, ids in _models_of(data, step, index, variants, report).items():
            checked = True
            taken.update(model.fields)
            rules = _Step(step, index, defaults=defaults if isinstance(defaults, dict) else {},
                          sizes=sizes, made=made, refs=refs, model=model, ids=ids,
                          report=report)
            rules.check()
            own = ids_of[index]
            if own is not None:
                for variant in ids:
                    made.setdefault(variant, {})[own] = rules.output(variant)
    if checked and isinstance(defaults, dict):
        for name, value in defaults.items():
            if name in REQUEST_FIELDS and name not in taken and not _harmless(name, value):
                findings.add(("defaults", name), f"no step uses a model that takes `{name}` "
                             f"({_only(name)}); remove it")
    report.flush()


def _harmless(name: str, value: Any) -> bool:
    """``prompt_upsampling: false`` is what a model without upsampling does anyway (and a value
    that is not a boolean is the schema's to report)."""
    return name == "prompt_upsampling" and value is not True


def _only(name: str) -> str:
    who = takers(name)
    return f"only {who} {'do' if who.startswith('the ') or ' and ' in who else 'does'}"


# a message about models says which: _M becomes their names, _S "s" after one name, _ES "es"
_M, _S, _ES = "\0M\0", "\0S\0", "\0ES\0"


@dataclass
class _Said:
    ids: set[str] = field(default_factory=set)
    steps: set[int] = field(default_factory=set)
    models: set[str] = field(default_factory=set)


class _Report:
    """Problems gathered over steps, variants and models, each said once: a step's own with
    the variants it concerns, one about a default with the steps that inherit it, and either
    with the models it concerns where it names them."""

    def __init__(self, findings: Findings, variants: Sequence[Variant]) -> None:
        self.findings = findings
        self.order = {v.id: n for n, v in enumerate(variants)}
        self.total = max(len(variants), 1)
        self.said: dict[tuple[JsonPath, str, Severity, bool], _Said] = {}

    def add(self, path: JsonPath, message: str, ids: Sequence[str], *, step: int | None = None,
            model: str = "", severity: Severity = "error") -> None:
        """``message`` about the value at ``path``: a step's own for the variants ``ids``, or,
        with ``step``, a default that step inherits; about ``model`` where it says ``_M``."""
        said = self.said.setdefault((path, message, severity, step is not None), _Said())
        said.ids.update(ids)
        if step is not None:
            said.steps.add(step)
        if model:
            said.models.add(model)

    def flush(self) -> None:
        for (path, message, severity, inherited), said in self.said.items():
            names = [m for m in MODELS if m in said.models]
            one = len(names) <= 1
            listed = (f"{', '.join(names[:-1])} and {names[-1]}" if len(names) > 1
                      else "".join(names))
            text = (message.replace(_M, listed).replace(_S, "s" if one else "")
                    .replace(_ES, "es" if one else ""))
            if inherited:
                text += f" ({', '.join(f'steps[{i}]' for i in sorted(said.steps))})"
            else:
                ordered = sorted(said.ids, key=lambda i: self.order.get(i, 0))
                text += variant_list(ordered, self.total)
            self.findings.add(path, text, severity=severity)


def _models_of(data: Mapping[str, Any], step: Mapping[str, Any], index: int,
               variants: Sequence[Variant] | None, report: _Report) -> dict[Model, list[str]]:
    """The step's models, each with the variants it has it in; a templated model's problems
    (no such matrix key, a value that is not a model) go to ``report``."""
    own = step.get("model")
    written = own if isinstance(own, str) else recipe_model(data)
    path: JsonPath = ("steps", index, "model") if isinstance(own, str) else ("model",)
    key = model_key(written)
    if key is None:
        model = MODELS.get(written)  # else the schema reported it
        ids = [v.id for v in variants] if variants else ["default"]
        return {model: ids} if model else {}
    if variants is None:
        return {}
    keys = list(dict.fromkeys(k for v in variants for k in v.values))
    all_ids = [v.id for v in variants]
    if key not in keys:
        report.add(path, f"'{written}' names '{key}', which is not a matrix key"
                         f"{did_you_mean(key, keys)}; a templated model takes each variant's "
                         "model from a matrix key that lists them", all_ids)
        return {}
    found: dict[Model, list[str]] = {}
    for variant in variants:
        value = variant.values.get(key)
        if value is None:
            report.add(path, f"'{key}' has no value in this variant, so the step has no model",
                       [variant.id])
        elif isinstance(value, str) and value in MODELS:
            found.setdefault(MODELS[value], []).append(variant.id)
        else:
            shown = json.dumps(value, ensure_ascii=False)
            choices = ", ".join(f"'{m}'" for m in MODELS)
            report.add(path, f"{shown} is not a valid model{did_you_mean(str(value), MODELS)}; "
                             f"expected one of {choices}", [variant.id])
    return found


class _Step:
    """The rules for one step with one model, in the variants ``ids``."""

    def __init__(self, step: Mapping[str, Any], index: int, *, defaults: Mapping[str, Any],
                 sizes: Mapping[str, tuple[int, int]],
                 made: Mapping[str, Mapping[str, tuple[int, int] | None]], refs: Sequence[str],
                 model: Model, ids: Sequence[str], report: _Report) -> None:
        self.step, self.index, self.defaults, self.sizes = step, index, defaults, sizes
        self.made, self.refs = made, refs  # earlier steps' outputs by variant; inputs' names
        self.model, self.ids, self.report = model, ids, report
        self.requested: tuple[int, int] | None = None  # a valid width × height
        self.sized = False  # width or height is set (valid or not)

    def input_size(self, variant: str, name: str) -> tuple[int, int] | None:
        """The size of the input ``name`` in ``variant``: a file's, or an earlier step's
        output; None where validation does not know it."""
        return self.sizes.get(name) or self.made.get(variant, {}).get(name)

    def output(self, variant: str) -> tuple[int, int] | None:
        """The size of the step's result in ``variant``, as the plan computes it; None when
        the step's size is invalid or its first input's size is unknown."""
        first = self.input_size(variant, self.refs[0]) if self.refs else None
        if self.model.sizes is None:
            ratio = self.value("aspect_ratio")
            try:
                return output_size(self.model.name, source=first, aspect_ratio=(
                    ratio[0] if ratio and isinstance(ratio[0], str) else None))
            except (ValueError, ZeroDivisionError):  # a bad ratio: the schema reported it
                return None
        if self.sized:
            return self.requested
        if self.refs and first is None:
            return None
        return output_size(self.model.name, source=first)

    def value(self, name: str) -> tuple[Any, JsonPath, bool] | None:
        """The value the step has for ``name``, where it is written, and whether it is
        inherited from ``defaults``; None when neither sets it."""
        if name in self.step:
            return self.step[name], ("steps", self.index, name), False
        if name in self.defaults:
            return self.defaults[name], ("defaults", name), True
        return None

    def add(self, path: JsonPath, message: str, inherited: bool,
            severity: Severity = "error") -> None:
        self.report.add(path, message, self.ids, step=self.index if inherited else None,
                        model=self.model.name, severity=severity)

    def check(self) -> None:
        self.refused()
        self.references()
        self.dimensions()
        self.tolerance()
        for name in ("steps", "guidance"):
            self.within(name)

    def refused(self) -> None:
        model = self.model
        for name in model.refuses:
            if name not in self.step or _harmless(name, self.step[name]):
                continue
            if name == "prompt_upsampling":
                message = (f"{_M} offer{_S} no prompt upsampling; remove "
                           "`prompt_upsampling: true` (false is what it does)")
            else:
                message = f"{_M} do{_ES} not take `{name}` ({_only(name)})"
                if name == "aspect_ratio":
                    message += "; set the size with `width` and `height`"
                elif name in ("width", "height") and model.takes("aspect_ratio"):
                    message += "; set the shape with `aspect_ratio`"
            self.add(("steps", self.index, name), message, False)

    def references(self) -> None:
        image = self.step.get("image")
        count = len(image) if isinstance(image, list) else 0
        if self.model.references < count <= _MOST_REFERENCES:
            self.add(("steps", self.index, "image"), f"lists {count} images; {_M} take{_S} at "
                     f"most {self.model.references}", False)

    def integer(self, name: str) -> tuple[int, JsonPath, bool] | None:
        found = self.value(name)
        if found is None or not self.model.takes(name):
            return None
        value, path, inherited = found
        if not isinstance(value, int) or isinstance(value, bool):
            return None  # the schema reported it
        return value, path, inherited

    def dimensions(self) -> None:
        rules = self.model.sizes
        if rules is None:
            return
        width, height = self.integer("width"), self.integer("height")
        good = True
        for name, found in (("width", width), ("height", height)):
            if found is None:
                continue
            value, path, inherited = found
            if value < rules.minimum:
                self.add(path, f"{value} is below the minimum of {rules.minimum}", inherited)
                good = False
            elif value % rules.multiple:
                lower = value - value % rules.multiple
                self.add(path, f"{value} is not a multiple of {rules.multiple}; use "
                               f"{lower} or {lower + rules.multiple}", inherited)
                good = False
            other = "height" if name == "width" else "width"
            if self.value(other) is None:
                self.add(path, f"`{name}` needs `{other}` too; set both, or neither to follow "
                               "the first input image's size (1024×1024 without one)", inherited)
                good = False
        self.sized = width is not None or height is not None or any(
            self.value(name) is not None for name in ("width", "height"))
        output = None
        if good and width is not None and height is not None:
            output = width[0], height[0]
            if output[0] * output[1] > rules.max_output_mp * MEGAPIXEL:
                own = [f for f in (width, height) if not f[2]]  # the step's own, else defaults'
                path, inherited = (own[0][1], False) if own else (width[1], True)
                self.add(path, f"{output[0]}×{output[1]} is {megapixels(*output):.2f} "
                               f"megapixels; {_M} make{_S} at most {rules.max_output_mp:g}",
                         inherited)
                output = None
        self.requested = output
        if rules.max_total_mp is not None:
            for variant in self.ids:
                self.total(rules.max_total_mp, variant)

    def total(self, most: float, variant: str) -> None:
        """Input images and output together, in ``variant``: a chained input is its step's
        output, and an output that follows the first input is counted at that size."""
        names = list(dict.fromkeys(self.refs))
        known = [size for size in (self.input_size(variant, r) for r in names) if size]
        if not known:
            return
        inputs = sum(megapixels(*size) for size in known)
        what = ("the input images" if len(known) == len(names)
                else "the input images of known size")
        both = f"; {_M} take{_S} at most {most:g} megapixels of input and output together"
        path = ("steps", self.index, "image")
        output = self.output(variant)
        if output is None:
            if inputs > most:
                self.report.add(path, f"{what} alone make {inputs:.2f} megapixels{both}",
                                [variant], model=self.model.name)
            return
        made = megapixels(*output)
        follows = "" if self.sized else ", the first image's size"
        if inputs + made > most:
            self.report.add(path, f"{what} ({inputs:.2f} megapixels) and the "
                                  f"{output[0]}×{output[1]} output ({made:.2f}{follows}) make "
                                  f"{inputs + made:.2f} megapixels{both}",
                            [variant], model=self.model.name)

    def tolerance(self) -> None:
        found = self.integer("safety_tolerance")
        if found is None:
            return
        value, path, inherited = found
        model = self.model
        if value > model.safety and not self.report.findings.has_errors_under(path):
            self.add(path, f"{value} is above the maximum of {model.safety} for {_M}", inherited)
        cap = model.safety_with_image
        has_image = bool(image_refs(self.step)) or (self.index > 0 and "image" not in self.step)
        if cap is not None and has_image and value > cap:
            self.add(path, f"the API applies at most {cap} to a step with an input image",
                     inherited, severity="warning")

    def within(self, name: str) -> None:
        found = self.value(name)
        limits = self.model.steps if name == "steps" else self.model.guidance
        if found is None or limits is None:
            return
        value, path, inherited = found
        if (not isinstance(value, int | float) or isinstance(value, bool)
                or self.report.findings.has_errors_under(path)):
            return  # the schema reported it
        for bound, side, beyond in ((limits.minimum, "below the minimum", value < limits.minimum),
                                    (limits.maximum, "above the maximum", value > limits.maximum)):
            if beyond:
                self.add(path, f"{json.dumps(value)} is {side} of {bound:g} for {_M}",
                         inherited)
