"""Every invalid recipe under tests/recipes/invalid is refused with exit 2 and exact messages.

Each case pins the whole of stderr: the problems, in source order, each as FILE:LINE:COL, and the
closing count. No case may produce a traceback.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import INVALID, RunCli

CASES: dict[str, list[str]] = {
    'aspect-ratio-range': [
        "4:17: defaults.aspect_ratio: '32:9' is outside the API's range of aspect ratios, from 21:9 to 9:21",
    ],
    'aspect-ratio-shape': [
        '6:19: steps[0] (id: edit): aspect_ratio: "16x9" is not a ratio such as "16:9"',
    ],
    'bad-indentation': [
        "5:6: the indentation of this line does not match the lines above it: indent 'prompt' to column 5, like 'id' on line 4",
    ],
    'bad-name': [
        '2:7: name: "Spring Poster" is not a slug of lower-case letters, digits, \'-\', \'_\' and \'.\', starting with a letter or digit',
    ],
    'bad-step-id': [
        '4:9: steps[0] (id: 2nd step): id: "2nd step" is not a name of letters, digits, \'_\' and \'-\', starting with a letter or \'_\'',
    ],
    'billion-laughs': [
        '4:40: the recipe expands to more than 100000 values (are YAML aliases repeating a large anchor?)',
    ],
    'custom-tag': [
        "4:10: YAML tag '!color' is not allowed in a recipe",
    ],
    'deep-nesting': [
        '4:58: nesting deeper than 50 levels',
    ],
    'env-bad-names': [
        '3:6: env: lists "BRAND" more than once',
        "3:14: env[1]: 'GITHUB_TOKEN' looks like a secret; templates cannot read secrets, so `env` cannot list it",
        '3:35: env[3]: "2nd-name" is not an environment variable name (letters, digits and \'_\', starting with a letter or \'_\', at most 128 characters)',
    ],
    'defaults-seed': [
        "4:3: defaults: unknown key 'seed'; set the base seed at the top level of the recipe or in a step",
        "5:3: defaults: unknown key 'model'; set the model at the top level of the recipe or in a step",
    ],
    'duplicate-key': [
        "3:1: duplicate key 'name' (first defined at line 2); remove one of them",
    ],
    'duplicate-step-id': [
        "6:9: steps[1] (id: edit): id: duplicate step id 'edit' (steps[0] has it too); step ids must be unique",
    ],
    'duplicate-step-key': [
        "6:5: duplicate key 'prompt' (first defined at line 5); remove one of them",
    ],
    'empty-prompt': [
        '5:13: steps[0] (id: edit): prompt: must not be empty',
    ],
    'empty-steps': [
        '3:8: steps: must not be empty',
    ],
    'empty': [
        "1:1: the recipe is empty; start with 'version: 1'",
    ],
    'image-forward-reference': [
        "5:12: steps[0] (id: first): image: 'second' is a later step (steps[1]); a step can use only inputs and earlier steps",
    ],
    'image-listed-twice': [
        '7:12: steps[0] (id: edit): image: lists the same image twice',
    ],
    'image-self-reference': [
        "5:12: steps[0] (id: first): image: 'first' is this step itself; a step can use only inputs and earlier steps",
    ],
    'image-too-many': [
        '10:12: steps[1] (id: two): image: lists 5 images; flux-kontext-pro takes at most 4',
        '10:12: steps[1] (id: two): image: lists the same image twice',
    ],
    'image-unknown': [
        "4:3: warning: inputs: input 'photo' is not used by any step",
        "7:12: steps[0] (id: edit): image: unknown image 'phot' (did you mean 'photo'?); expected an input name or an earlier step id",
    ],
    'image-wrong-type': [
        '5:12: steps[0] (id: edit): image: expected an image name or a list of 1 to 8 image names, got 5',
    ],
    'input-absolute-path': [
        "4:10: inputs.photo: '/etc/passwd' must be a path relative to the recipe file",
    ],
    'input-backslash-path': [
        "4:10: inputs.photo: 'images\\ok.png' does not exist; write paths with '/', which every system reads: 'images/ok.png'",
    ],
    'input-bad-name': [
        "4:3: inputs: 'my photo' is not a name of letters, digits, '_' and '-', starting with a letter or '_'",
        "4:3: warning: inputs: input 'my photo' is not used by any step",
    ],
    'input-directory': [
        "4:10: inputs.photo: 'images/folder' is a directory, not an image file",
    ],
    'input-escapes-directory': [
        "4:10: inputs.photo: '../../../pipelines/images/logo.png' leads outside the recipe's directory; keep input images beside the recipe or below it",
    ],
    'input-missing-file': [
        "4:10: inputs.photo: 'images/missing.png' does not exist",
    ],
    'input-not-an-image': [
        "4:10: inputs.photo: 'images/notes.txt' is not an image file that can be decoded",
    ],
    'input-nul-path': [
        "4:10: inputs.photo: 'images/ok.png\\x00.txt' holds a NUL character, which no file name can contain; remove it",
    ],
    'input-too-many-pixels': [
        "4:10: inputs.photo: 'images/huge.png' is 24.0 megapixels (6000×4000); the API accepts at most 20 megapixels",
    ],
    'input-truncated': [
        "4:10: inputs.photo: 'images/truncated.jpg' is a damaged or incomplete image (image file is truncated (0 bytes not processed))",
    ],
    'many-problems': [
        '2:7: name: "Many Problems" is not a slug of lower-case letters, digits, \'-\', \'_\' and \'.\', starting with a letter or digit',
        '3:8: model: "flux-kontext-maxx" is not a valid model (did you mean \'flux-kontext-max\'?); expected one of \'flux-kontext-pro\', \'flux-kontext-max\', \'flux-2-pro\', \'flux-2-max\', \'flux-2-flex\', \'flux-2-klein-4b\', \'flux-2-klein-9b\'',
        "6:12: steps[0] (id: recolor): image: unknown image 'car'; expected an input name or an earlier step id",
        "7:13: steps[0] (id: recolor): prompt: undefined variable 'colr'",
        '8:11: steps[0] (id: recolor): seed: -5 is below the minimum of 1',
        "9:5: steps[1] (id: recolor): missing required key 'prompt'",
        "9:9: steps[1] (id: recolor): id: duplicate step id 'recolor' (steps[0] has it too); step ids must be unique",
        "10:5: steps[1] (id: recolor): unknown key 'promt' (did you mean 'prompt'?)",
    ],
    'matrix-duplicate-variant': [
        "4:3: matrix: the matrix produces variant 'color=red' twice",
    ],
    'matrix-everything-excluded': [
        '4:3: matrix: the matrix leaves no variant: every combination is excluded',
    ],
    'matrix-exclude-unknown-key': [
        "6:7: matrix.exclude[0]: 'colour' is not a matrix key (did you mean 'color'?)",
    ],
    'matrix-not-a-list': [
        '4:10: matrix.color: expected a list of values, got "red"',
    ],
    'matrix-too-many-variants': [
        "4:3: matrix: the matrix makes 257 variants after `exclude`; at most 256 are allowed: split it into several recipes",
    ],
    'missing-prompt': [
        "4:5: steps[0] (id: edit): missing required key 'prompt'",
    ],
    'missing-steps': [
        "1:1: missing required key 'steps'",
    ],
    'missing-version': [
        "1:1: missing required key 'version'",
    ],
    'misspelt-step-key': [
        "4:5: steps[0] (id: edit): missing required key 'prompt'",
        "5:5: steps[0] (id: edit): unknown key 'promt' (did you mean 'prompt'?)",
    ],
    'misspelt-top-key': [
        "1:1: missing required key 'steps'",
        "3:1: unknown key 'stpes' (did you mean 'steps'?)",
    ],
    'not-a-mapping': [
        '1:1: the recipe must be a mapping of keys to values, not a list',
    ],
    'not-utf8': [
        '3:17: the recipe is not UTF-8 text',
    ],
    'output-format-jpg': [
        '4:18: defaults.output_format: "jpg" is not a valid output_format (did you mean \'jpeg\'?); expected one of \'png\', \'jpeg\', \'webp\'',
    ],
    'output-unknown-step': [
        "7:11: outputs.poster: unknown step 'edti' (did you mean 'edit'?)",
    ],
    'output-unsafe-name': [
        "7:3: outputs: '../poster' is not a file name of letters, digits, '.', '_' and '-', starting with a letter or digit",
    ],
    'prompt-upsampling-text': [
        '6:24: steps[0] (id: edit): prompt_upsampling: expected true or false, got "yes"',
    ],
    'python-tag': [
        "3:14: YAML tag '!!python/object/apply:os.system' is not allowed in a recipe",
        '3:14: description: expected text, got a list',
    ],
    'reserved-var-name': [
        "4:3: vars: 'env' is reserved for the template context; choose another name",
    ],
    'safety-tolerance-range': [
        '6:23: steps[0] (id: edit): safety_tolerance: 7 is above the maximum of 6',
    ],
    'sandbox-escape': [
        "5:13: steps[0] (id: edit): prompt: refused by the template sandbox: access to attribute '__class__' of 'str' object is unsafe.",
    ],
    'sandbox-huge-power': [
        '5:13: steps[0] (id: edit): prompt: refused by the template sandbox: exponent 999999 is too large (at most 64)',
    ],
    'scalar-document': [
        '1:1: the recipe must be a mapping of keys to values, not a single value',
    ],
    'seed-float': [
        '6:11: steps[0] (id: edit): seed: expected an integer, got 1.5',
    ],
    'seed-negative': [
        '3:7: seed: -1 is below the minimum of 1',
    ],
    'seed-text': [
        '6:11: steps[0] (id: edit): seed: expected an integer, got "lucky"',
    ],
    'float-integers': [
        '4:7: seed: expected an integer, got 2.0',
        '8:23: steps[0] (id: a): safety_tolerance: expected an integer, got 2.0',
    ],
    'seed-zero-base': [
        "3:7: seed: seed 0 means 'random' to the BFL API, so the image could not be made again; choose a seed from 1 to 4294967295",
    ],
    'seed-zero': [
        "7:11: steps[0] (id: edit): seed: seed 0 means 'random' to the BFL API, so the image could not be made again; choose a seed from 1 to 4294967295",
    ],
    'step-id-is-input': [
        "6:9: steps[0] (id: photo): id: step id 'photo' is also an input name; rename one so that `image` is unambiguous",
    ],
    'step-not-a-mapping': [
        '4:5: steps[0]: expected a mapping, got "Make it blue"',
    ],
    'step-unknown-model': [
        '6:12: steps[0] (id: edit): model: "flux-dev" is not a valid model (did you mean \'flux-2-flex\'?); expected one of \'flux-kontext-pro\', \'flux-kontext-max\', \'flux-2-pro\', \'flux-2-max\', \'flux-2-flex\', \'flux-2-klein-4b\', \'flux-2-klein-9b\'',
    ],
    'syntax-error': [
        "5:13: this '[' is never closed; close it with ']', or put the value in quotes if the '[' is part of the text",
    ],
    'template-division-by-zero': [
        '7:13: steps[0] (id: edit): prompt: ZeroDivisionError: division by zero',
    ],
    'template-later-step': [
        '5:13: steps[0] (id: first): prompt: steps.second is this step or a later one; a prompt can use only earlier steps',
    ],
    'template-missing-env': [
        "6:13: steps[0] (id: edit): prompt: environment variable 'KONTEXT_TEST_NEVER_SET' is not set",
    ],
    'template-env-not-allowed': [
        "5:13: steps[0] (id: edit): prompt: environment variable 'DATABASE_URL' is not visible to templates; list it in the recipe's `env` (env: [DATABASE_URL]) or name it KONTEXT_VAR_DATABASE_URL",
    ],
    'template-misspelt-context-name': [
        "7:13: steps[0] (id: edit): prompt: undefined variable 'varaint' (did you mean 'variant'?)",
    ],
    'template-renders-empty': [
        '7:13: steps[0] (id: edit): prompt: the rendered prompt is empty',
    ],
    'template-secret-env': [
        "5:13: steps[0] (id: edit): prompt: environment variable 'BFL_API_KEY' looks like a secret; templates cannot read secrets",
    ],
    'template-syntax-error': [
        "5:13: steps[0] (id: edit): prompt: template syntax error: unexpected end of template, expected 'end of print statement'.",
    ],
    'template-unknown-filter': [
        "7:13: steps[0] (id: edit): prompt: unknown filter 'uppr' (did you mean 'upper'?)",
    ],
    'template-unknown-input': [
        "8:13: steps[0] (id: edit): prompt: inputs.phot is not an input (did you mean 'photo'?)",
    ],
    'template-variant-only': [
        "10:13: steps[0] (id: edit): prompt: undefined variable 'shade' (variant color=blue)",
    ],
    'two-documents': [
        "6:1: a recipe holds one YAML document; remove the '---'",
    ],
    'undefined-variable-block': [
        "9:7: steps[0] (id: edit): prompt: undefined variable 'sky'",
    ],
    'undefined-variable': [
        "7:13: steps[0] (id: edit): prompt: undefined variable 'colour' (did you mean 'color'?)",
    ],
    'unknown-model': [
        '3:8: model: "flux-kontext-pr" is not a valid model (did you mean \'flux-kontext-pro\'?); expected one of \'flux-kontext-pro\', \'flux-kontext-max\', \'flux-2-pro\', \'flux-2-max\', \'flux-2-flex\', \'flux-2-klein-4b\', \'flux-2-klein-9b\'',
    ],
    'var-null-value': [
        '4:9: vars.color: expected a string, number, boolean, list or mapping, got nothing',
    ],
    'wrong-version': [
        '1:10: version: unsupported version 2; this kontext-pipeline reads version 1',
    ],
    'yaml-backslash-escape': [
        "4:17: '\\o' is not an escape in a double-quoted value: write a path with '/' (images/car.png), write '\\\\' for a backslash, or use single quotes",
    ],
    'yaml-colon-in-value': [
        '5:29: \': \' in a value that is not in quotes reads as another key; put the whole value in quotes (prompt: "Replace the sign: SALE with OPEN")',
    ],
    'yaml-indentation-key': [
        "6:3: the indentation of this line does not match the lines above it: indent 'seed' to column 5, like 'prompt' on line 5",
    ],
    'yaml-indentation-list': [
        "6:4: the indentation of this line does not match the lines above it: indent this '-' to column 3, like the '-' on line 5",
    ],
    'yaml-list-item-without-space': [
        "4:3: '-id' is not a list item: put a space after the '-' (- id)",
    ],
    'yaml-missing-colon': [
        "3:1: this line has no ':' after its key; write 'key: value', or indent a value that goes on from the line above further than its key",
    ],
    'yaml-tab': [
        "5:1: a tab character: YAML indents with spaces only; replace the tab with spaces",
    ],
    'yaml-template-only': [
        "7:13: steps[0] (id: edit): prompt: expected a prompt text (a Jinja template), got a mapping; put a value that starts with '{' in quotes: in YAML, '{' starts a mapping",
        "7:14: keys must be plain text, not lists or mappings",
    ],
    'yaml-template-unquoted': [
        '7:25: a value that starts with \'{\' is a YAML mapping, not text; put the whole value in quotes (prompt: "{{ color }} car, keep everything else")',
    ],
    'yaml-text-after-quote': [
        '5:21: text after the closing \'"\': a quoted value ends at its second \'"\'; put single quotes around the whole value, or write \'\\"\' for each \'"\' inside it',
    ],
    'yaml-unclosed-quote': [
        '5:13: this " is never closed; end the value with a matching "',
    ],
    'model-aspect-ratio-on-flux2': [
        '7:19: steps[0] (id: edit): aspect_ratio: flux-2-max does not take `aspect_ratio` (only the Kontext models do); set the size with `width` and `height`',
    ],
    'model-default-no-step-takes': [
        '5:17: defaults.aspect_ratio: no step uses a model that takes `aspect_ratio` (only the Kontext models do); remove it',
        '6:13: defaults.guidance: no step uses a model that takes `guidance` (only flux-2-flex does); remove it',
    ],
    'model-defaults-safety-over-5': [
        '5:21: defaults.safety_tolerance: 6 is above the maximum of 5 for flux-2-pro and flux-2-flex (steps[0], steps[2])',
        '5:21: warning: defaults.safety_tolerance: the API applies at most 2 to a step with an input image (steps[1])',
    ],
    'model-guidance-below-range': [
        '5:13: defaults.guidance: 1 is below the minimum of 1.5 for flux-2-flex (steps[0])',
    ],
    'model-guidance-on-pro': [
        '7:15: steps[0] (id: edit): guidance: flux-2-pro does not take `guidance` (only flux-2-flex does)',
    ],
    'model-guidance-text': [
        '7:15: steps[0] (id: edit): guidance: expected a number, got "high"',
    ],
    'model-height-below-minimum': [
        '8:13: steps[0] (id: edit): height: 48 is below the minimum of 64',
    ],
    'model-chained-input-over-9mp': [
        '12:12: steps[1] (id: both): image: the input images (9.72 megapixels) and the 1024×1024 output (1.00) make 10.72 megapixels; flux-2-pro takes at most 9 megapixels of input and output together',
    ],
    'model-followed-output-over-9mp': [
        "8:12: steps[0] (id: edit): image: the input images (5.72 megapixels) and the 2496×1664 output (3.96, the first image's size) make 9.68 megapixels; flux-2-max takes at most 9 megapixels of input and output together",
    ],
    'model-input-output-over-9mp': [
        '8:12: steps[0] (id: edit): image: the input images (5.72 megapixels) and the 2048×2048 output (4.00) make 9.72 megapixels; flux-2-pro takes at most 9 megapixels of input and output together',
    ],
    'model-inputs-alone-over-9mp': [
        "11:12: steps[1] (id: both): image: the input images (12.44 megapixels) and the 2496×1664 output (3.96, the first image's size) make 16.41 megapixels; flux-2-flex takes at most 9 megapixels of input and output together",
    ],
    'model-klein-prompt-upsampling': [
        '7:24: steps[0] (id: edit): prompt_upsampling: flux-2-klein-9b offers no prompt upsampling; remove `prompt_upsampling: true` (false is what it does)',
    ],
    'model-klein-too-many-references': [
        '12:12: steps[0] (id: edit): image: lists 5 images; flux-2-klein-4b takes at most 4',
    ],
    'model-output-over-4mp': [
        '7:12: steps[0] (id: edit): width: 2064×2048 is 4.03 megapixels; flux-2-max makes at most 4',
    ],
    'model-references-over-eight': [
        '16:12: steps[0] (id: edit): image: has 9 items; at most 8 are allowed',
    ],
    'model-safety-over-5': [
        '7:23: steps[0] (id: edit): safety_tolerance: 6 is above the maximum of 5 for flux-2-pro',
    ],
    'model-size-on-kontext': [
        '6:12: steps[0] (id: edit): width: flux-kontext-pro does not take `width` (only the FLUX.2 models do); set the shape with `aspect_ratio`',
        '7:13: steps[0] (id: edit): height: flux-kontext-pro does not take `height` (only the FLUX.2 models do); set the shape with `aspect_ratio`',
    ],
    'model-steps-on-klein': [
        '7:12: steps[0] (id: edit): steps: flux-2-klein-4b does not take `steps` (only flux-2-flex does)',
    ],
    'model-steps-out-of-range': [
        '7:12: steps[0] (id: edit): steps: 60 is above the maximum of 50 for flux-2-flex',
    ],
    'model-template-bad-value': [
        '3:8: model: "flux-2-prp" is not a valid model (did you mean \'flux-2-pro\'?); expected one of \'flux-kontext-pro\', \'flux-kontext-max\', \'flux-2-pro\', \'flux-2-max\', \'flux-2-flex\', \'flux-2-klein-4b\', \'flux-2-klein-9b\' (variant model=flux-2-prp)',
        '3:8: model: "flux-3" is not a valid model (did you mean \'flux-2-pro\'?); expected one of \'flux-kontext-pro\', \'flux-kontext-max\', \'flux-2-pro\', \'flux-2-max\', \'flux-2-flex\', \'flux-2-klein-4b\', \'flux-2-klein-9b\' (variant model=flux-3)',
    ],
    'model-template-field-per-variant': [
        '9:12: steps[0] (id: edit): width: flux-kontext-pro and flux-kontext-max do not take `width` (only the FLUX.2 models do); set the shape with `aspect_ratio` (variants model=flux-kontext-pro, model=flux-kontext-max)',
        '10:13: steps[0] (id: edit): height: flux-kontext-pro and flux-kontext-max do not take `height` (only the FLUX.2 models do); set the shape with `aspect_ratio` (variants model=flux-kontext-pro, model=flux-kontext-max)',
        '11:15: steps[0] (id: edit): guidance: flux-kontext-pro, flux-kontext-max and flux-2-pro do not take `guidance` (only flux-2-flex does) (variants model=flux-kontext-pro, model=flux-kontext-max, model=flux-2-pro)',
    ],
    'model-template-missing-value': [
        "3:8: model: 'model' has no value in this variant, so the step has no model (variant color=blue)",
    ],
    'model-template-not-one-key': [
        '8:12: steps[0] (id: edit): model: "{{ model | lower }}" is not a model name, or a template naming one matrix key ("{{ model }}")',
    ],
    'model-template-unknown-key': [
        "8:12: steps[0] (id: edit): model: '{{ modle }}' names 'modle', which is not a matrix key (did you mean 'model'?); a templated model takes each variant's model from a matrix key that lists them",
    ],
    'model-template-without-matrix': [
        "3:8: model: '{{ model }}' names 'model', which is not a matrix key; a templated model takes each variant's model from a matrix key that lists them",
    ],
    'model-width-float': [
        '7:12: steps[0] (id: edit): width: expected a whole number of pixels, got 1024.0',
    ],
    'model-width-not-multiple': [
        '7:12: steps[0] (id: edit): width: 1000 is not a multiple of 16; use 992 or 1008',
    ],
    'model-width-without-height': [
        "5:10: defaults.width: `width` needs `height` too; set both, or neither to follow the first input image's size (1024×1024 without one) (steps[0])",
    ],
}


def test_every_file_in_the_corpus_has_a_case() -> None:
    files = {path.stem for path in INVALID.glob("*.yaml")}
    assert files == set(CASES)
    assert len(CASES) >= 40
    assert len([c for c in CASES if c.startswith("model-")]) >= 20  # the models' rules


@pytest.mark.parametrize("name", sorted(CASES))
def test_invalid_recipe_is_refused_with_exact_messages(
    name: str, run_cli: RunCli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(INVALID)
    monkeypatch.delenv("KONTEXT_TEST_NEVER_SET", raising=False)
    result = run_cli("validate", f"{name}.yaml")
    errors = [line for line in CASES[name] if " warning: " not in line]
    noun = "problem" if len(errors) == 1 else "problems"
    expected = [f"{name}.yaml:{line}" for line in CASES[name]]
    expected.append(f"kontext-pipeline: {len(errors)} {noun} in {name}.yaml")
    assert result.exit_code == 2
    assert result.stderr.splitlines() == expected
    assert result.stdout == ""
    assert "Traceback" not in result.output


def test_all_problems_of_several_recipes_are_reported_together(
    run_cli: RunCli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(INVALID)
    result = run_cli("validate", "seed-negative.yaml", str(Path("..", "..", "..", "pipelines",
                                                                  "poster-chain.yaml")),
                     "wrong-version.yaml")
    assert result.exit_code == 2
    assert result.stdout == "../../../pipelines/poster-chain.yaml: ok (3 steps, 1 variant, " \
                            "3 tasks)\n"
    assert result.stderr.splitlines() == [
        "seed-negative.yaml:3:7: seed: -1 is below the minimum of 1",
        "wrong-version.yaml:1:10: version: unsupported version 2; this kontext-pipeline reads "
        "version 1",
        "kontext-pipeline: 2 problems in seed-negative.yaml, wrong-version.yaml",
    ]
