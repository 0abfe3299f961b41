//! `flood`: the operator's command line on the API socket while another
//! local user holds 2,000 half-sent requests against each listener (admin,
//! API socket, API TCP) of an agent under `RLIMIT_NOFILE` 1,024, beside the
//! same calls with no flood, in the same run. Needs root (the attacker is
//! the second user `ygg-hostile`, created if missing).

use std::time::Duration;

use crate::common::*;
use crate::support::flood::*;
use crate::support::{Etcd, PATIENCE, try_entries, wait_for};

pub(crate) const FLOOD_CALLS: usize = 50;
const HELD: usize = 2_000;

pub(crate) async fn flood(etcd: &Etcd, rows: &mut Vec<Row>) {
    let what = "operator CLI (`instances`) on the API socket, 2,000 half-sent requests per listener from another user, RLIMIT_NOFILE 1,024: median / p99 / max of 50 calls";
    let limit = raise_own_open_files(4 * HELD as u64 + 1024);
    let Some(uid) = other_user("bench flood") else {
        rows.push(Row::new(what, "skipped: not root", "-"));
        return;
    };
    if limit < 3 * HELD as u64 + 512 {
        rows.push(Row::new(
            what,
            format!("skipped: {limit} open files allowed"),
            "-",
        ));
        return;
    }
    let hostile = Some((uid, other_group()));
    let flooded = FloodedAgent::start(etcd, hostile).await;
    wait_for(PATIENCE, "the checked instance registered", || async {
        try_entries(&etcd.endpoints(), "/yggdrasil/registry/")
            .await
            .filter(|e| !e.is_empty())
    })
    .await;
    let mut quiet = operator_calls(&flooded.socket, "steady", FLOOD_CALLS).await;
    let attack = Flood::start(hostile, &flooded.targets(), HELD, false).await;
    let mut loaded = operator_calls(&flooded.socket, "steady", FLOOD_CALLS).await;
    let answered = socket_calls(&flooded.socket, "steady", FLOOD_CALLS).await;
    let opened = attack.stop();
    let quiet_answered = socket_calls(&flooded.socket, "steady", FLOOD_CALLS).await;
    for slow in answered
        .iter()
        .filter(|t| t.total > Duration::from_millis(50))
    {
        eprintln!("flood: a slow call on the socket: {slow:?}");
    }
    let still = try_entries(&etcd.endpoints(), "/yggdrasil/registry/")
        .await
        .is_some_and(|e| e.keys().any(|k| k.contains("/steady/")));
    let figures = |samples: &mut Vec<Duration>| {
        let (median, p99) = (percentile(samples, 50), percentile(samples, 99));
        format!(
            "{:.1} / {:.1} / {:.1} ms",
            ms(median),
            ms(p99),
            ms(samples[samples.len() - 1])
        )
    };
    let median = percentile(&mut loaded, 50);
    rows.push(
        Row::new(
            what,
            format!(
                "{} (attacker connections: admin {}, API TCP {}, socket {}; instance {})",
                figures(&mut loaded),
                opened[0],
                opened[1],
                opened[2],
                if still {
                    "stayed registered"
                } else {
                    "LEFT etcd"
                }
            ),
            format!("no flood: {}", figures(&mut quiet)),
        )
        .budget(
            "median <= 100 ms, instance stays",
            median <= Duration::from_millis(100) && still,
        ),
    );
    let slowest = answered[answered.len() - 1].total;
    rows.push(
        Row::new(
            "the agent's answer time under the same flood (an in-process client on the socket, root: blocking connect, `GET /v1/instances`, the whole answer): median / p99 / max of 50 calls",
            timed_figures(&answered),
            format!("no flood: {}", timed_figures(&quiet_answered)),
        )
        .budget("every call <= 100 ms", slowest <= Duration::from_millis(100)),
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
