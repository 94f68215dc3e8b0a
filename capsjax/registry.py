"""A name -> object registry: how capsjax chooses routers, models, datasets and presets.

Each registry is a plain mapping filled at import time by the module that
defines the object. A user adds their own without editing capsjax::

  from capsjax.routing import ROUTERS

  @ROUTERS.register("uniform")
  def uniform_routing(u_hat, num_iters, **options):
    ...

and then selects it by name (``--routing uniform``).
"""
from __future__ import annotations

from typing import Generic, Iterator, TypeVar

__all__ = ["Registry", "UnknownNameError"]

T = TypeVar("T")


class UnknownNameError(KeyError):
  """A name that is not registered; the message lists the registered ones."""

  def __str__(self) -> str:  # KeyError would quote the whole message
    return str(self.args[0])


class Registry(Generic[T]):
  """Names of one kind of thing (``kind``: "router", "model", ...) mapped to objects."""

  def __init__(self, kind: str, where: str):
    self.kind = kind
    self.where = where  # the import path users register with, for messages
    self._items: dict[str, T] = {}

  def register(self, name: str, item: T | None = None, *, replace: bool = False):
    """Registers ``item`` as ``name``; without ``item``, returns a decorator.

    Registering a taken name raises ``ValueError`` unless ``replace=True``.
    """
    if not isinstance(name, str) or not name:
      raise ValueError(f"a {self.kind} name must be a non-empty string, got {name!r}.")

    def add(item: T) -> T:
      if name in self._items and not replace and self._items[name] is not item:
        raise ValueError(
            f"{self.kind} {name!r} is already registered in {self.where}; pick another "
            "name, or pass replace=True.")
      self._items[name] = item
      return item

    return add if item is None else add(item)

  def unregister(self, name: str) -> None:
    self._items.pop(name, None)

  def get(self, name: str) -> T:
    try:
      return self._items[name]
    except KeyError:
      raise UnknownNameError(self.unknown(name)) from None

  def unknown(self, name: str) -> str:
    """The message for an unknown ``name``."""
    return (f"unknown {self.kind} {name!r}; registered: {', '.join(self.names()) or 'none yet'} "
            f"(add one with {self.where}.register).")

  def names(self) -> list[str]:
    return sorted(self._items)

  def __getitem__(self, name: str) -> T:
    return self.get(name)

  def __contains__(self, name: object) -> bool:
    return name in self._items

  def __iter__(self) -> Iterator[str]:
    return iter(self.names())

  def __len__(self) -> int:
    return len(self._items)

  def __repr__(self) -> str:
    return f"Registry({self.kind!r}: {', '.join(self.names())})"

