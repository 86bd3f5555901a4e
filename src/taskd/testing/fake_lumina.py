"""The older name of :mod:`taskd.testing.fake_apis`: ``python -m taskd.testing.fake_lumina``
runs the same server, and ``FakeLumina`` is :class:`taskd.testing.fake_apis.FakeApis`."""

from __future__ import annotations

from taskd.testing.fake_apis import FakeLumina, FakeLuminaStats, main

__all__ = ["FakeLumina", "FakeLuminaStats", "main"]

if __name__ == "__main__":
    main(prog="python -m taskd.testing.fake_lumina", label="fake lumina")
