"""The recipe: YAML read with positions, the JSON Schema, semantic checks, the matrix, prompt
templates and their sandbox, derived seeds and keys, and the starter recipes of ``init``."""
