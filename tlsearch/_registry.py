# mypy: disallow-untyped-defs
"""One registry mechanism for the four kinds of things tlsearch can be extended with: backbones,
modalities, data formats and export formats.

A :class:`Registry` is a mapping from names to entries. Built-in entries are registered when their
package's ``__init__`` imports its modules (each module calls ``register``; the registry imports
none of them, so there is no import circle). Third-party packages add entries through a Python
entry-point group, as pytest plugins do: on first use (a lookup, a listing, a membership test) the
registry loads every entry point of its group once. An entry point's value is either a module,
whose import registers what it defines, or a function taking nothing, which is called. A plugin
that fails to load is left out with a :class:`PluginWarning` naming its package and the error:
one broken package must not break every study.

``register`` refuses a name registered twice (two modules, or a plugin reusing a built-in name:
silently replacing one would change what a study file means). Item assignment, ``reg[name] =
entry``, replaces on purpose (a test swapping in a fake writer).
"""

from __future__ import annotations

import difflib
import threading
import warnings
from collections.abc import Iterator, MutableMapping
from importlib.metadata import EntryPoint, entry_points
from types import ModuleType
from typing import TypeVar

__all__ = ["Registry", "PluginWarning", "GROUPS"]

T = TypeVar("T")

#: the entry-point groups a third-party package can register in, one per kind
GROUPS = ("tlsearch.backbones", "tlsearch.modalities", "tlsearch.data_formats",
          "tlsearch.export_formats")


class PluginWarning(UserWarning):
    """A package's tlsearch entry point could not be loaded; its entries are left out."""


class Registry(MutableMapping[str, T]):
    """Named entries of one kind, in registration order (built-ins first, then plugins).

    ``reg[name]`` of an unknown name raises :class:`KeyError` naming the kind, with the close
    names ("did you mean ...?") or, when none is close, the known ones. :meth:`origin` says which
    installed package registered a plugin's entry.
    """

    def __init__(self, kind: str, group: str) -> None:
        self.kind = kind
        self.group = group
        self._entries: dict[str, T] = {}
        self._origins: dict[str, tuple[str, str]] = {}
        self._loading: tuple[str, str] | None = None
        self._state = "new"  # then "loading" (by the thread holding the lock), then "loaded"
        self._lock = threading.RLock()

    # ---- registering
    def register(self, name: str, entry: T) -> T:
        """Add ``entry`` under ``name``; a name already taken is a :class:`ValueError`."""
        with self._lock:
            if name in self._entries:
                by = self._origins.get(name)
                where = f" (by package {by[0]!r})" if by else ""
                raise ValueError(f"{self.kind} {name!r} is already registered{where}")
            self._entries[name] = entry
            if self._loading is not None:
                self._origins[name] = self._loading
        return entry

    def __setitem__(self, name: str, entry: T) -> None:
        self._entries[name] = entry

    def __delitem__(self, name: str) -> None:
        del self._entries[name]
        self._origins.pop(name, None)

    # ---- reading (each loads the plugins first)
    def __getitem__(self, name: str) -> T:
        self.load_plugins()
        try:
            return self._entries[name]
        except KeyError:
            raise KeyError(self.unknown(name)) from None

    def __iter__(self) -> Iterator[str]:
        self.load_plugins()
        return iter(list(self._entries))

    def __len__(self) -> int:
        self.load_plugins()
        return len(self._entries)

    def __contains__(self, name: object) -> bool:
        self.load_plugins()
        return name in self._entries

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self)

    def unknown(self, name: str) -> str:
        """The message for a name nobody registered: the close ones, or else the known ones."""
        close = difflib.get_close_matches(name, list(self._entries), n=3, cutoff=0.5)
        if close:
            return f"unknown {self.kind} {name!r}; did you mean {', '.join(map(repr, close))}?"
        return f"unknown {self.kind} {name!r}; expected one of {sorted(self._entries)}"

    def origin(self, name: str) -> tuple[str, str] | None:
        """(package, version) of the installed package that registered ``name``; None for a
        built-in (or an entry registered by code that is not an entry point)."""
        self.load_plugins()
        return self._origins.get(name)

    # ---- plugins
    def load_plugins(self) -> None:
        """Load every entry point of :attr:`group`, once. A plugin may itself look entries up
        while it loads: it sees what is registered so far."""
        if self._state == "loaded":
            return
        with self._lock:  # another thread waits here until the plugins are in
            if self._state != "new":
                return  # loaded, or being loaded by this very thread (a plugin looking up)
            self._state = "loading"
            try:
                for ep in entry_points(group=self.group):
                    self._load_one(ep)
            finally:
                self._state = "loaded"

    def _load_one(self, ep: EntryPoint) -> None:
        dist = ep.dist
        package = (dist.name, dist.version) if dist is not None else (ep.value, "")
        self._loading = package
        before = set(self._entries)
        try:
            loaded = ep.load()
            if isinstance(loaded, ModuleType):
                pass  # importing it registered its entries
            elif callable(loaded):
                loaded()
            else:
                raise TypeError(f"{ep.value} is neither a module nor a function taking nothing")
        except Exception as e:
            # The entries it registered before failing go too: half a plugin is not a plugin.
            for name in set(self._entries) - before:
                self._entries.pop(name, None)
                self._origins.pop(name, None)
            warnings.warn(
                f"the {self.kind} plugin {ep.name!r} of package {package[0]!r} "
                f"({self.group}: {ep.value}) failed to load and is left out: "
                f"{type(e).__name__}: {e}", PluginWarning, stacklevel=2)
        finally:
            self._loading = None
