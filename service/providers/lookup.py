"""The adapters a worker holds, by name: a row is served by the one it was submitted to.

A resumed row keeps the provider (and model) it was submitted with, whatever the
settings say now, so the runtime registers every adapter it can build and each row
looks its own up; ``default`` (``SORA_PROVIDER``) serves rows that name none. One
``add`` per provider, in ``runtime.py``.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from service.providers.base import VideoProvider


class UnknownProvider(LookupError):
    """A row names a provider this worker has no adapter for; ``str()`` says which exist."""


class Providers:
    """Registered adapters by ``name``, and the host each one talks to."""

    def __init__(self, default: str) -> None:
        self.default = default
        self._adapters: dict[str, VideoProvider] = {}
        self._urls: dict[str, str | None] = {}

    def add(self, adapter: VideoProvider, base_url: str | None = None) -> None:
        """Register ``adapter`` under its name; ``base_url`` is where it sends requests
        (a model's retirement is per host, see ``models.py``)."""
        self._adapters[adapter.name] = adapter
        self._urls[adapter.name] = base_url

    def __contains__(self, name: object) -> bool:
        return name in self._adapters

    @property
    def names(self) -> frozenset[str]:
        """Every registered adapter's name."""
        return frozenset(self._adapters)

    def get(self, name: str | None) -> VideoProvider:
        """The adapter for a row's provider (None: the default)."""
        wanted = name or self.default
        try:
            return self._adapters[wanted]
        except KeyError:
            known = ", ".join(sorted(self._adapters)) or "none"
            raise UnknownProvider(
                f"provider {wanted!r} is not configured on this worker (configured: {known})"
            ) from None

    def host(self, name: str) -> str | None:
        """The host name ``name`` talks to, if it was given."""
        url = self._urls.get(name)
        return urlsplit(url).hostname if url else None

    def where(self, name: str) -> str:
        """Where ``name`` sends requests, for a person: its base URL, else its name."""
        return self._urls.get(name) or name

    async def aclose(self) -> None:
        for adapter in self._adapters.values():
            await adapter.aclose()
