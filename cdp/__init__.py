"""Customer data platform core: settings, storage, schema and the composition root."""

__version__ = "0.1.0"
