// Test plugin in JavaScript that misbehaves in collect, as its `mode`
// setting says:
// - `spin`: loops forever (only the CPU budget stops it)
// - `raise`: throws an uncaught Error
// - `hog`: allocates 1 MiB blocks, each written to, until the memory limit stops it
// - anything else: returns `mode` = the mode (well-behaved)
import { settings } from "ygg:agent-plugin/host@0.1.0";

export function describe() {
  return { name: "js_hostile", version: "0.1.0", suggestedIntervalMs: undefined };
}

export function init(_pairs) {}

export function collect(_instance) {
  const mode = new Map(settings()).get("mode") ?? "";
  if (mode === "spin") {
    let n = 0;
    for (;;) n += 1;
  }
  if (mode === "raise") throw new Error("boom in collect");
  if (mode === "hog") {
    const blocks = [];
    for (;;) blocks.push(new Uint8Array(1 << 20).fill(0xa5));
  }
  return [["mode", mode]];
}
