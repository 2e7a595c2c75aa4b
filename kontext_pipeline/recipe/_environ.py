"""What of the environment prompt templates see: a plan memo checks it as validation reads it,
without importing Jinja."""

from __future__ import annotations

from collections.abc import Collection, Mapping

__all__ = ["ENV_PREFIX", "env_visible", "is_secret_name", "template_environ"]

_SECRET_WORDS = ("KEY", "SECRET", "TOKEN", "PASS", "CREDENTIAL", "AUTH", "PRIVATE", "COOKIE",
                 "SESSION")


def is_secret_name(name: str) -> bool:
    """Whether an environment variable looks like a secret (``BFL_API_KEY``, ``GH_TOKEN``…)."""
    upper = name.upper()
    return any(word in upper for word in _SECRET_WORDS)


ENV_PREFIX = "KONTEXT_VAR_"
"""Environment variables named with this prefix are visible to every recipe's templates."""


def env_visible(name: str, allowed: Collection[str] = ()) -> bool:
    """Whether templates may see the environment variable ``name``: one the recipe lists in
    ``env`` (``allowed``) or one named ``KONTEXT_VAR_*``, and never one that looks secret."""
    return (name in allowed or name.startswith(ENV_PREFIX)) and not is_secret_name(name)


def template_environ(environ: Mapping[str, str], allowed: Collection[str] = ()) -> dict[str, str]:
    """What templates see as ``env``: only the variables :func:`env_visible` allows, never the
    whole environment, so a prompt carries no database URL or token into a request, the cache,
    a manifest or an image's metadata."""
    return {k: v for k, v in environ.items() if env_visible(k, allowed)}
