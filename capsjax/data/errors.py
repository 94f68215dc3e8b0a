"""The one error the data package raises for bad files, sources and settings."""

__all__ = ["DataError", "MnistFileError"]


class DataError(ValueError):
  """Data that cannot be loaded or built as asked; the message names it and the fix."""


class MnistFileError(DataError):
  """A missing, truncated or corrupt IDX file (the message names it)."""
