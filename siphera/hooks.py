"""Hooks: how a lower layer lets a higher one act on its changes without importing it.

A layer declares a `Hook` (orgs.hooks.device_revoked, say); an app above registers a
function on it from its AppConfig.ready(); the lower layer calls the hook where the change
happens, inside its transaction, so the higher app's work commits or rolls back with it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class Hook:
    def __init__(self, name: str, doc: str = "") -> None:
        self.name = name
        self.__doc__ = doc
        self._receivers: list[Callable[..., Any]] = []

    def register(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """Add a receiver (usable as a decorator); registering one twice is a no-op."""
        if fn not in self._receivers:
            self._receivers.append(fn)
        return fn

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        """Call every receiver in registration order; an exception propagates (and so
        rolls the caller's transaction back)."""
        for fn in self._receivers:
            fn(*args, **kwargs)

    def any(self, *args: Any, **kwargs: Any) -> bool:
        """Whether any receiver answers true (the rest are not asked)."""
        return any(fn(*args, **kwargs) for fn in self._receivers)

    def __repr__(self) -> str:
        return f"<Hook {self.name}: {len(self._receivers)} receivers>"
