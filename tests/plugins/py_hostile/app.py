"""Test plugin in Python that misbehaves in collect, as its `mode` setting says:

- `spin`: loops forever (only the CPU budget stops it)
- `raise`: raises an uncaught exception
- `hog`: allocates 1 MiB blocks, each written to, until the memory limit stops it
- anything else: returns `mode` = the mode (well-behaved)
"""

import wit_world
from wit_world.imports import host, types


class WitWorld(wit_world.WitWorld):
    def describe(self):
        return types.PluginInfo(name="py_hostile", version="0.1.0", suggested_interval_ms=None)

    def init(self, settings):
        pass

    def collect(self, instance):
        mode = dict(host.settings()).get("mode", "")
        if mode == "spin":
            n = 0
            while True:
                n += 1
        if mode == "raise":
            raise RuntimeError("boom in collect")
        if mode == "hog":
            blocks = []
            while True:
                blocks.append(bytearray(b"\xa5" * (1 << 20)))
        return [("mode", mode)]
