// Example ygg-agent plugin in JavaScript: who runs an instance, and where.
//
// Keys: `owner` (the `owner` setting, required), `host` (the machine's
// hostname), `uptime_hours`, and `endpoint_count`. Built by
// scripts/build-polyglot.
import { log, settings, system } from "ygg:agent-plugin/host@0.1.0";

export function describe() {
  // u64 and option<u64> are BigInt in JavaScript.
  return { name: "js-example", version: "0.1.0", suggestedIntervalMs: undefined };
}

// Throwing a string makes the `result` an error: the plugin does not load.
export function init(pairs) {
  const owner = new Map(pairs).get("owner");
  if (!owner) throw "the `owner` setting is required";
  log("info", `js-example ready (owner ${owner})`);
}

export function collect(instance) {
  const owner = new Map(settings()).get("owner");
  const sys = system();
  return [
    ["owner", owner],
    ["host", sys.hostname],
    ["uptime_hours", String(sys.uptimeSeconds / 3600n)],
    ["endpoint_count", String(instance.endpoints.length)],
  ];
}
