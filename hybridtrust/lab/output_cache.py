"""An opt-in cache of the lab's serialized Exchange objects, for benchmarks of large organizations.

Why: the lab builds every Exchange object it returns as a psrpcore object and serializes
it to CLIXML, a few milliseconds each. An audit of 1,000 servers asks for 11,000 objects,
so the lab needs a minute of CPU to answer one audit: on a 2-core machine the emulator,
not the suite, would set the pace, and a benchmark would measure psrpcore's serializer.
A real Exchange server answers from Active Directory; its cost is what the benchmark's
injected latency stands for.

With the cache on (``python -m hybridtrust.lab serve --cache-output``, or
`enable(state)`), each object is built and serialized once, by `warm` before the lab
says it is ready, and then answered from memory: the same bytes, byte for byte, that
psrpcore writes for the object (``tests/lab/test_output_cache.py``). It is keyed on the
state object (its identity), the cmdlet's rendering options and `LabState.revision`, which
every change through `LabState.changing()` advances: a ``Set-`` cmdlet or a Graph PATCH
empties it. Off by default: tests that change the state directly, without
``changing()``, never see a stale object.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any
from xml.etree import ElementTree

from psrpcore.types import serialize

from hybridtrust.lab.state import LabState

Builder = Callable[[], Any]


class OutputCache:
    """Built objects by (noun, state object, options); their CLIXML by object."""

    def __init__(self, state: LabState) -> None:
        self.state = state
        self._lock = threading.Lock()
        self._revision = state.revision
        self._objects: dict[tuple[Any, ...], tuple[object, Any]] = {}
        self._built: dict[int, Any] = {}
        """id -> object, for every object this cache built (kept alive, so ids stay theirs)."""
        self._wire: dict[int, bytes] = {}
        self.hits = 0
        self.misses = 0

    def _current(self) -> None:
        # Called under the lock: a change of the organization empties the cache.
        if self._revision != self.state.revision:
            self._objects.clear()
            self._built.clear()
            self._wire.clear()
            self._revision = self.state.revision

    def object(self, noun: str, data: object, options: Mapping[str, Any], build: Builder) -> Any:
        """The built object for this state object (or, for a selection, built object) and these
        options, built once per revision."""
        key = (noun, id(data), tuple(sorted(options.items())))
        with self._lock:
            self._current()
            found = self._objects.get(key)
            if found is not None and found[0] is data:
                self.hits += 1
                return found[1]
        value = build()
        with self._lock:
            self._current()
            self.misses += 1
            # The state object is kept with it, so its id() cannot be reused by another object.
            self._objects[key] = (data, value)
            self._built[id(value)] = value
        return value

    def serialized(self, value: Any) -> bytes | None:
        """The CLIXML of an object this cache built (serialized once), or None for any other object."""
        with self._lock:
            self._current()
            if self._built.get(id(value)) is not value:
                return None
            found = self._wire.get(id(value))
            if found is not None:
                return found
        data = clixml(value)
        with self._lock:
            if self._built.get(id(value)) is value:
                self._wire[id(value)] = data
        return data


def clixml(value: Any) -> bytes:
    """What psrpcore's ``prepare_message`` writes for one output object (no SecureString: no cipher)."""
    return ElementTree.tostring(serialize(value, None), encoding="utf-8", method="xml")  # type: ignore[arg-type]


def enable(state: LabState) -> OutputCache:
    """Turn the cache on for this state (idempotent)."""
    cache = getattr(state, "output_cache", None)
    if cache is None:
        cache = OutputCache(state)
        state.output_cache = cache
    return cache


def warm(state: LabState) -> int:
    """Build and serialize every Exchange object as the audit's Get- cmdlets return them; how many."""
    from hybridtrust.lab import cmdlets

    cache = enable(state)
    count = 0
    for value in cmdlets.render_everything(state):
        cache.serialized(value)
        count += 1
    for selection in cmdlets.render_selections(state):  # the live source's Select-Object projections
        if not isinstance(selection, BaseException):
            cache.serialized(selection)
            count += 1
    return count
