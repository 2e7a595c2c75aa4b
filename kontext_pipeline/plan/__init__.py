"""Pure planning: a recipe (with variables) becomes tasks with rendered prompts, seeds and cache
keys; which of them the cache already holds, and why each step would run."""
