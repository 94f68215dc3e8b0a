"""Test setup: 8 CPU host devices, so data-parallel code is exercised on CPU.

Must run before JAX initialises its backends. A user's own ``XLA_FLAGS`` are
kept; only the host device count is set.
"""
import os

import pytest

_COUNT = "--xla_force_host_platform_device_count"
_flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith(_COUNT)]
os.environ["XLA_FLAGS"] = " ".join([*_flags, f"{_COUNT}=8"])
os.environ["JAX_PLATFORMS"] = "cpu"


@pytest.fixture
def registered():
  """Registers into a registry for one test, then removes it."""
  added = []

  def register(registry, name, item):
    registry.register(name, item)
    added.append((registry, name))
    return item

  yield register
  for registry, name in added:
    registry.unregister(name)
