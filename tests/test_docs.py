"""The docs stay true: the recipe reference against the JSON Schema, the cookbook against its
recipes (each validated and run), and troubleshooting against the exit codes and the errors."""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kontext_pipeline import errors
from kontext_pipeline.cli._base import EXIT_CODES, EXIT_INTERRUPTED, exit_code
from kontext_pipeline.recipe._schema import load_schema
from tests.conftest import PIPELINES, ROOT, RunCli

DOCS = ROOT / "docs"
COOKBOOK = PIPELINES / "cookbook"
FIELD_HEADING = re.compile(r"^### `([^`]+)`$", re.M)
# a field named by its path anywhere in a page: `defaults.output_format`, `steps[].seed`
FIELD_PATH = re.compile(r"`((?:defaults|matrix|steps\[\])\.[a-z_]+)`")


def schema_fields() -> dict[str, dict[str, Any]]:
    """Every property of the schema by its path (``steps[].prompt``), its subschema resolved."""
    schema = load_schema()

    def resolve(node: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in node:
            node = {**schema["$defs"][node["$ref"].rsplit("/", 1)[-1]],
                    **{k: v for k, v in node.items() if k != "$ref"}}
        return node

    def walk(path: str, node: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
        node = resolve(node)
        for name, child in node.get("properties", {}).items():
            field = f"{path}.{name}" if path else name
            yield field, resolve(child)
            yield from walk(field, child)
        if isinstance(node.get("items"), dict):
            yield from walk(f"{path}[]", node["items"])

    return dict(walk("", schema))


def sections(text: str, heading: re.Pattern[str], level: int = 3) -> dict[str, str]:
    """Each heading's captured name and its text, up to the next heading of ``level`` or
    above (``##`` is level 2)."""
    found: dict[str, str] = {}
    for match in heading.finditer(text):
        rest = text[match.end():]
        end = re.search(rf"^#{{1,{level}}} ", rest, re.M)
        found[match.group(1)] = rest[:end.start()] if end else rest
    return found


def test_schema_fields_sees_nested_and_referenced_properties() -> None:
    fields = schema_fields()
    assert len(fields) == 35
    assert fields["steps[].output_format"]["enum"] == ["png", "jpeg", "webp"]
    assert {"defaults.safety_tolerance", "matrix.include", "steps[].image"} <= set(fields)


def test_the_recipe_reference_describes_exactly_the_schema_fields() -> None:
    text = (DOCS / "recipe-reference.md").read_text(encoding="utf-8")
    described = FIELD_HEADING.findall(text)
    fields = schema_fields()
    assert sorted(set(fields) - set(described)) == [], "fields the reference does not describe"
    assert sorted(set(described) - set(fields)) == [], "fields the schema does not have"
    assert len(described) == len(set(described)), "a field described twice"
    for page in DOCS.glob("*.md"):
        named = set(FIELD_PATH.findall(page.read_text(encoding="utf-8")))
        assert sorted(named - set(fields)) == [], f"{page.name} names fields that do not exist"


def test_the_recipe_reference_states_the_values_and_limits_of_each_field() -> None:
    text = (DOCS / "recipe-reference.md").read_text(encoding="utf-8")
    described = sections(text, FIELD_HEADING)
    missing: list[str] = []
    for field, node in schema_fields().items():
        section = described[field]
        facts = [str(v) for v in node.get("enum", [])]
        if "const" in node:
            facts.append(str(node["const"]))
        for branch in (node, *node.get("anyOf", [])):
            facts += [str(branch[k]) for k in ("minimum", "maximum", "maxItems", "maxLength")
                      if k in branch]
        if node.get("type") == "boolean":
            facts += ["true", "false"]
        missing += [f"{field}: {fact}" for fact in facts
                    if not re.search(rf"(?<![\w.]){re.escape(fact)}(?![\w])", section)]
    assert missing == []


def cookbook_recipes() -> list[Path]:
    return sorted(COOKBOOK.glob("*.yaml"))


def test_the_cookbook_shows_each_recipe_as_it_is() -> None:
    text = (DOCS / "cookbook.md").read_text(encoding="utf-8")
    shown = re.findall(r"```yaml\n(.*?)```", text, re.S)
    files = {p.read_text(encoding="utf-8") for p in cookbook_recipes()}
    assert len(files) == 3
    assert sorted(shown) == sorted(files)
    for image in re.findall(r"\]\((\.\./pipelines/cookbook/images/[^)]+)\)", text):
        assert (DOCS / image).resolve().is_file(), image


@pytest.mark.parametrize("recipe", cookbook_recipes(), ids=lambda p: p.stem)
def test_every_cookbook_recipe_validates_and_runs(run_cli: RunCli, tmp_path: Path,
                                                  recipe: Path) -> None:
    validated = run_cli("validate", "--strict", str(recipe))
    assert (validated.exit_code, validated.stderr) == (0, "")
    out = tmp_path / "out"
    ran = run_cli("run", str(recipe), "--provider", "preview", "--cache-dir",
                  str(tmp_path / "cache"), "--out", str(out))
    assert ran.exit_code == 0, ran.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert all(s["status"] == "done" for s in manifest["steps"])
    assert all((out / s["output"]).is_file() for s in manifest["steps"] if s["output"])


def test_the_cookbook_prompts_follow_the_guide() -> None:
    texts = {p.stem: p.read_text(encoding="utf-8") for p in cookbook_recipes()}
    assert "Change the car's color to {{ color }}, keep everything else unchanged" in \
        texts["object-change"]
    assert "Replace '{{ old_text }}' with '{{ new_text }}'" in texts["text-replacement"]
    assert "character: the woman with short black hair" in texts["character-consistency"]
    assert texts["character-consistency"].count("image:") == 1  # then a chain of edits


EXIT_HEADING = re.compile(r"^## Exit code (\d+): .+$", re.M)
CLASS_HEADING = re.compile(r"^### `(\w+)`$", re.M)


def error_classes() -> list[type[errors.KontextError]]:
    return [cls for name in errors.__all__
            if inspect.isclass(cls := getattr(errors, name))
            and issubclass(cls, errors.KontextError)]


def test_troubleshooting_covers_every_exit_code() -> None:
    text = (DOCS / "troubleshooting.md").read_text(encoding="utf-8")
    codes = {0, EXIT_INTERRUPTED, 130, *(code for _, code in EXIT_CODES)}
    headed = [int(code) for code in EXIT_HEADING.findall(text)]
    assert headed == sorted(codes)
    table = {int(code) for code in re.findall(r"^\| (\d+) \|", text, re.M)}
    assert table == codes


def test_troubleshooting_covers_every_error_class_under_its_exit_code() -> None:
    text = (DOCS / "troubleshooting.md").read_text(encoding="utf-8")
    classes = error_classes()
    assert len(classes) == len(errors.__all__)
    under: dict[str, int] = {}
    for code, body in sections(text, EXIT_HEADING, level=2).items():
        for name in re.findall(r"^### `(\w+)`$", body, re.M):
            under[name] = int(code)
    assert sorted(CLASS_HEADING.findall(text)) == sorted(under), "a class outside an exit code"
    assert sorted(under) == sorted(cls.__name__ for cls in classes)
    wrong = {cls.__name__: (under[cls.__name__], exit_code(cls.__new__(cls)))
             for cls in classes if under[cls.__name__] != exit_code(cls.__new__(cls))}
    assert wrong == {}


def test_troubleshooting_entries_say_what_it_means_and_what_to_do() -> None:
    text = (DOCS / "troubleshooting.md").read_text(encoding="utf-8")
    for name, body in sections(text, CLASS_HEADING).items():
        assert "**Means:**" in body, name
        assert "**Do:**" in body, name
