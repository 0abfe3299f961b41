"""Example ygg-agent plugin in Python: how busy the machine is.

Keys: `load_per_cpu` (the 1-minute load average per CPU),
`memory_used_percent`, and `busy` (`yes` when the load per CPU is above the
`threshold` setting, default 0.8). Built by scripts/build-polyglot.
"""

import wit_world
from componentize_py_types import Err
from wit_world.imports import host, types


def threshold(settings):
    value = dict(settings).get("threshold", "0.8")
    try:
        return float(value)
    except ValueError:
        raise Err(f"threshold: not a number: {value!r}")


class WitWorld(wit_world.WitWorld):
    def describe(self):
        return types.PluginInfo(name="python-example", version="0.1.0", suggested_interval_ms=None)

    def init(self, settings):
        host.log(host.Level.INFO, f"python-example ready (threshold {threshold(settings)})")

    def collect(self, instance):
        # A new WitWorld is made for every call, so nothing set on `self` in
        # init is here: read the settings again (they never change).
        limit = threshold(host.settings())
        system = host.system()
        per_cpu = system.load1 / max(system.cpu_count, 1)
        used = 1 - system.memory_available_bytes / max(system.memory_total_bytes, 1)
        return [
            ("load_per_cpu", f"{per_cpu:.2f}"),
            ("memory_used_percent", f"{used * 100:.0f}"),
            ("busy", "yes" if per_cpu > limit else "no"),
        ]
