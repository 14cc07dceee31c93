"""One small registry class, instantiated once per extension point (timm's shape).

A registry is a dict of name -> factory filled by a decorator; third-party packages add
entries through a Python entry-point group, loaded lazily the first time a name is looked up.
"""
from __future__ import annotations

import fnmatch
import re
import warnings
from importlib.metadata import entry_points
from typing import Any, Callable, TypeVar

T = TypeVar("T")

# One naming convention for every registry: lower snake_case (`crop_paste`, `dhdiff_dda`);
# a family of names shares a prefix and a colon (`anomalib:Padim`). Checked by the contract
# tests over every registry (tests/test_contracts.py), not at import: a plugin never breaks imports.
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]*(:\*)?$")


class UnknownNameError(KeyError):
    """A name that no registry entry has; its message is one line listing the known names."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class Registry:
    def __init__(self, kind: str, group: str):
        self.kind = kind
        self.group = group
        self._entries: dict[str, Callable[..., Any]] = {}
        self._aliases: dict[str, str] = {}   # old name -> current name (warns when used)
        self._plugins_loaded = False

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._entries and self._entries[name] is not obj:
                raise ValueError(f"duplicate {self.kind} name {name!r}")
            self._entries[name] = obj
            try:
                obj.registry_name = name  # type: ignore[attr-defined]
            except (AttributeError, TypeError):
                pass
            return obj

        return deco

    def alias(self, old: str, new: str) -> None:
        """Keep an old name working after a rename; using it warns (DeprecationWarning)."""
        self._aliases[old] = new

    def canonical(self, name: str) -> str:
        """The current name for ``name`` (itself unless it is a deprecated alias)."""
        if name in self._aliases and name not in self._entries:
            new = self._aliases[name]
            warnings.warn(f"{self.kind} name {name!r} is deprecated; use {new!r}", DeprecationWarning,
                          stacklevel=3)
            return new
        return name

    def _load_plugins(self) -> None:
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        for ep in entry_points(group=self.group):
            if ep.name in self._entries:
                continue
            obj = ep.load()
            self._entries.setdefault(ep.name, obj)

    def names(self, pattern: str = "*") -> list[str]:
        self._load_plugins()
        return sorted(n for n in self._entries if fnmatch.fnmatch(n, pattern))

    def get(self, name: str) -> Callable[..., Any]:
        self._load_plugins()
        name = self.canonical(name)
        if name not in self._entries:
            # prefixed families such as "anomalib:Padim" resolve through their prefix entry
            prefix = name.split(":", 1)[0] + ":*"
            if ":" in name and prefix in self._entries:
                return self._entries[prefix]
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}; registered: {', '.join(self.names())}"
            )
        return self._entries[name]

    def create(self, name: str, **kwargs: Any) -> Any:
        name = self.canonical(name)
        factory = self.get(name)
        if name not in self._entries:  # prefixed family: pass the part after the colon
            return factory(name.split(":", 1)[1], **kwargs)
        return factory(**kwargs)

    def __contains__(self, name: str) -> bool:
        try:
            self.get(name)
        except UnknownNameError:
            return False
        return True
