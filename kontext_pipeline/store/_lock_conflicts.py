"""A lock git merged with conflicts: its markers, each at its line (found before YAML reads
the text), and its two sides, which ``run --frozen --relock`` reads as two locks."""

from __future__ import annotations

from kontext_pipeline._support.diagnostics import Problem

__all__ = ["conflict_problems", "conflict_sides"]

_MARKERS = ("<<<<<<<", "|||||||", "=======", ">>>>>>>")


def _marker(line: str) -> str | None:
    """The git merge conflict marker ``line`` starts with, if it is one."""
    marker = line[:7]
    if marker in _MARKERS and (len(line) == 7 or line[7] in " \t\r"):
        return marker
    return None


def conflict_problems(text: str, file: str) -> list[Problem]:
    """Git's merge conflict markers, each at its line, found before YAML reads the text."""
    found = []
    for number, line in enumerate(text.split("\n"), start=1):
        marker = _marker(line)
        if marker is not None:
            found.append(Problem(file, number, 1, f"git merge conflict marker '{marker}': "
                                                  "the lock was merged with conflicts"))
    return found


def conflict_sides(text: str) -> tuple[str, str] | None:
    """The two sides of a text git merged with conflicts: the lines common to both with, at
    each conflict, "ours" (the first) or "theirs" (the second); the base lines of a diff3
    conflict belong to neither. None when the markers do not follow each other as git writes
    them."""
    ours: list[str] = []
    theirs: list[str] = []
    state = "common"
    moves = {("common", "<<<<<<<"): "ours", ("ours", "|||||||"): "base",
             ("ours", "======="): "theirs", ("base", "======="): "theirs",
             ("theirs", ">>>>>>>"): "common"}
    for line in text.split("\n"):
        marker = _marker(line)
        if marker is not None:
            if (state, marker) not in moves:
                return None
            state = moves[(state, marker)]
            continue
        if state in ("common", "ours"):
            ours.append(line)
        if state in ("common", "theirs"):
            theirs.append(line)
    return ("\n".join(ours), "\n".join(theirs)) if state == "common" else None
