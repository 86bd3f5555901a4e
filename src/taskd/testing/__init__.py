"""Test helpers that ship with taskd: real servers on loopback, never mocks.

:class:`FakeLumina` is a fake of the external Lumina API that the ``lumina`` handler drives.
"""

from taskd.testing.fake_lumina import FakeLumina, FakeLuminaStats

__all__ = ["FakeLumina", "FakeLuminaStats"]
