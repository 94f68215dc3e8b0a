"""Test setup: 8 CPU host devices, so data-parallel code is exercised on CPU.

Must run before JAX initialises its backends.
"""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
