//! The benchmark program (not a test): starts its own etcd and prints, for
//! each measurement, our figure beside a baseline measured in the same run,
//! and the budget it is held to.
//!
//!     ./scripts/bench                 # builds in release, then runs this
//!     ./scripts/bench stall plugins   # only these sections (first, many,
//!                                     # recovery, edits, stall, plugins,
//!                                     # polyglot, checks, checkplugin, idle, api,
//!                                     # flood, upgrade)
//!     ./scripts/bench watchers        # 10 minutes; only when named
//!     ./scripts/bench --fleet         # 1,000 agents against a 3-member cluster
//!                                     # (only when asked for: about 5 minutes;
//!                                     # YGG_FLEET_AGENTS=200 for fewer)
//!
//! Registration figures use the registry actor in-process against raw
//! etcd-client code doing the same writes; the other rows run the real
//! binary and watch etcd from outside.

mod api;
mod checkplugin;
mod checks;
mod common;
mod edits;
mod first;
mod fleet;
mod flood;
mod idle;
mod many;
mod plugins;
mod recovery;
mod stall;
// The benchmark uses only part of the test support.
#[allow(dead_code, unused_imports)]
#[path = "../../../tests/integration/support.rs"]
mod support;
mod upgrade;
mod watchers;

use api::{API_CLIENTS, API_SUSTAINED, API_TRIALS, api_registrations};
use checkplugin::check_plugin_call;
use checks::health_checks;
use common::machine;
use edits::edits_and_drop_ins;
use first::first_registration;
use fleet::fleet;
use flood::{FLOOD_CALLS, flood};
use idle::{IDLE_WINDOW, idle_footprint};
use many::{MANY, many_instances};
use plugins::{plugin_costs, polyglot_costs};
use recovery::recovery;
use stall::stall_during_compile;
use support::Etcd;
use upgrade::{UPGRADE_INSTANCES, upgrade_in_place};
use watchers::{WATCH_WINDOW, watchers};

#[tokio::main]
async fn main() {
    // `./scripts/bench [SECTION...]` runs only the sections named.
    // `--fleet` (or `fleet`) runs the fleet, which no default run includes.
    let only: Vec<String> = std::env::args()
        .skip(1)
        .map(|a| a.trim_start_matches("--").to_string())
        .collect();
    let wanted = |section: &str| {
        (only.is_empty() && section != "fleet") || only.iter().any(|o| o == section)
    };
    println!("ygg-agent benchmark — {}", machine());
    let etcd = Etcd::start().await;
    let mut rows = Vec::new();
    if wanted("first") {
        eprintln!("bench: first registration");
        first_registration(&etcd, &mut rows).await;
    }
    if wanted("many") {
        eprintln!("bench: {MANY} instances (about 40 s)");
        many_instances(&etcd, &mut rows).await;
    }
    if wanted("recovery") {
        eprintln!("bench: recovery after a wiped etcd");
        recovery(&mut rows).await;
    }
    if wanted("edits") {
        eprintln!("bench: config edits and plugin drop-ins");
        edits_and_drop_ins(&etcd, &mut rows).await;
    }
    if wanted("stall") {
        eprintln!("bench: the event loop during a cold compile");
        stall_during_compile(&etcd, &mut rows).await;
    }
    if wanted("plugins") {
        eprintln!("bench: plugin call and load costs");
        plugin_costs(&mut rows);
    }
    if wanted("polyglot") {
        eprintln!("bench: Python and JavaScript plugins (about 2 minutes)");
        polyglot_costs(&etcd, &mut rows).await;
    }
    if wanted("checks") {
        eprintln!("bench: health checks (about 2 minutes)");
        health_checks(&etcd, &mut rows).await;
    }
    // Ten minutes: run only when named.
    if only.iter().any(|o| o == "watchers") {
        eprintln!("bench: minRewriteInterval and Yggdrasil-style watchers ({WATCH_WINDOW:?})");
        watchers(&etcd, &mut rows).await;
    }
    if wanted("checkplugin") {
        eprintln!("bench: a check plugin call against a local redis");
        check_plugin_call(&mut rows).await;
    }
    if wanted("fleet") {
        eprintln!("bench: a fleet of agents (1,000 unless YGG_FLEET_AGENTS says otherwise)");
        fleet(&mut rows).await;
    }
    if wanted("idle") {
        eprintln!("bench: idle footprint ({IDLE_WINDOW:?})");
        idle_footprint(&etcd, &mut rows).await;
    }

    if wanted("flood") {
        eprintln!(
            "bench: the operator's command line under a connection flood ({FLOOD_CALLS} calls twice; needs root)"
        );
        flood(&etcd, &mut rows).await;
    }

    if wanted("api") {
        eprintln!(
            "bench: local API registrations ({API_TRIALS} one by one, then {API_SUSTAINED} from {API_CLIENTS} clients)"
        );
        api_registrations(&etcd, &mut rows).await;
    }

    if wanted("upgrade") {
        eprintln!("bench: upgrade in place with {UPGRADE_INSTANCES} instances");
        upgrade_in_place(&mut rows).await;
    }

    println!();
    println!("| measurement | ygg-agent | baseline (same run) | budget | |");
    println!("|---|---|---|---|---|");
    for row in &rows {
        println!(
            "| {} | {} | {} | {} | {} |",
            row.what, row.ours, row.baseline, row.budget, row.verdict
        );
    }
}
