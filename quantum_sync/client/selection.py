"""Selective sync: which paths this client keeps (its own include and exclude rules).

Unlike ``.syncignore`` (rules shared by everyone, carried in the folder), a selection
belongs to one client's configuration: a path outside it is neither downloaded nor
deleted on the server, and a local file there is left alone. Patterns use gitignore
syntax through pathspec, as ``.syncignore`` does. Pure: no I/O.
"""

import pathspec

from quantum_sync.client.ignore import IGNORE_FILE, spec_matches

_GLOB = set("*?[")


class Selection:
    """``include`` (empty: everything) minus ``exclude``; :meth:`selects` answers for
    canonical paths. The directories leading to an included path are selected too (so
    that it has somewhere to go), and so is ``.syncignore`` (everyone's rules)."""

    def __init__(self, include=(), exclude=()):
        self.include = tuple(include)
        self.exclude = tuple(exclude)
        self._include = pathspec.GitIgnoreSpec.from_lines(self.include) if self.include else None
        self._exclude = pathspec.GitIgnoreSpec.from_lines(self.exclude) if self.exclude else None
        self._leads = _leading_directories(self.include)

    @property
    def everything(self) -> bool:
        return not self.include and not self.exclude

    def selects(self, path: str, is_directory: bool = False) -> bool:
        if path == IGNORE_FILE or self.everything:
            return True
        if self._exclude is not None and spec_matches(self._exclude, path, is_directory):
            return False
        if self._include is None or spec_matches(self._include, path, is_directory):
            return True
        return is_directory and self._leads_to_included(path)

    def _leads_to_included(self, directory: str) -> bool:
        if self._leads is None:
            return True  # a pattern that matches at any depth may match below any directory
        return any(lead == directory or lead.startswith(directory + "/") for lead in self._leads)

    def __eq__(self, other):
        return isinstance(other, Selection) and (self.include, self.exclude) == (other.include, other.exclude)

    def __hash__(self):
        return hash((self.include, self.exclude))

    def __repr__(self):
        return f"Selection(include={self.include!r}, exclude={self.exclude!r})"


def _leading_directories(patterns):
    """The literal directory each include pattern is anchored under (``docs/a`` for
    ``/docs/a/*.txt``); None when one of them may match at any depth."""
    leads = []
    for pattern in patterns:
        pattern = pattern.strip()
        if not pattern or pattern.startswith("#"):
            continue
        if pattern.startswith("!"):
            return None
        lead = _leading_directory(pattern)
        if lead is None:
            return None
        leads.append(lead)
    return leads


def _leading_directory(pattern: str):
    """The literal directory one include pattern is anchored under, or None."""
    body = pattern.rstrip("/")
    if "/" not in body.lstrip("/") and not pattern.startswith("/"):
        return None  # "name" or "*.pdf": matches at any depth
    segments = []
    for segment in body.lstrip("/").split("/"):
        if segment == "**" or _GLOB & set(segment):
            break
        segments.append(segment)
    return "/".join(segments) if segments else None


EVERYTHING = Selection()
