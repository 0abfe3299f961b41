use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use super::*;

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

#[test]
fn first_runs_fall_on_steps_across_the_whole_interval() {
    let interval = secs(1);
    assert_eq!(spread(interval, 0.0), Duration::ZERO);
    assert_eq!(spread(interval, 0.5), Duration::from_millis(500));
    assert_eq!(spread(interval, 0.999_999), Duration::from_millis(990));
    let slots: std::collections::BTreeSet<Duration> = (0..1000)
        .map(|i| spread(interval, f64::from(i) / 1000.0))
        .collect();
    // 100 steps of 10 ms, every one used, none past the interval.
    assert_eq!(slots.len(), 100);
    assert!(
        slots
            .iter()
            .all(|s| s.as_nanos() % SPREAD_STEP.as_nanos() == 0 && *s < interval)
    );
    // An interval that is not a multiple of the step: any point.
    let odd = Duration::from_millis(105);
    assert_eq!(spread(odd, 0.5), odd / 2);
}

/// A check whose fake probe is told by its address: `pass`, `fail`, or
/// `switch` (the shared switch says).
fn config(address: &str, interval: u64, initial_status: CheckStatus) -> CheckConfig {
    CheckConfig {
        probe: Probe::Tcp {
            address: address.to_string(),
        },
        interval: secs(interval),
        timeout: Duration::from_millis(900),
        success_before_passing: 2,
        failures_before_critical: 3,
        initial_status,
    }
}

fn id(key: &str, index: usize) -> CheckId {
    CheckId {
        instance_key: key.to_string(),
        index,
    }
}

#[derive(Clone, Default)]
struct Fake {
    switch: Arc<AtomicBool>,
    delay: Duration,
    in_flight: Arc<AtomicUsize>,
    most_in_flight: Arc<AtomicUsize>,
}

impl Fake {
    fn host(&self, tracker: &TaskTracker) -> (CheckHost, mpsc::Receiver<CheckReport>) {
        let fake = self.clone();
        let probe: ProbeFn = Arc::new(move |_id, probe, _timeout| {
            let fake = fake.clone();
            Box::pin(async move {
                let now = fake.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                fake.most_in_flight.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(fake.delay).await;
                fake.in_flight.fetch_sub(1, Ordering::SeqCst);
                let Probe::Tcp { address } = probe else {
                    unreachable!()
                };
                let pass = match address.as_str() {
                    "pass" => true,
                    "switch" => fake.switch.load(Ordering::SeqCst),
                    _ => false,
                };
                if pass {
                    Ok("up".to_string())
                } else {
                    Err("down".to_string())
                }
            })
        });
        CheckHost::with_probe(tracker.clone(), probe, MAX_PROBES_IN_FLIGHT)
    }
}

#[test]
fn thresholds_change_the_status_only_after_enough_equal_outcomes() {
    let config = config("pass", 10, CheckStatus::Passing);
    let mut threshold = Threshold::new(CheckStatus::Passing);
    let mut run = |passed| {
        let changed = threshold.record(passed, &config);
        (threshold.status, threshold.consecutive(), changed)
    };
    use CheckStatus::{Critical, Passing};
    // failuresBeforeCritical = 3: two failures and a pass change nothing.
    assert_eq!(run(false), (Passing, 1, false));
    assert_eq!(run(false), (Passing, 2, false));
    assert_eq!(run(true), (Passing, 1, false));
    assert_eq!(run(false), (Passing, 1, false));
    assert_eq!(run(false), (Passing, 2, false));
    assert_eq!(run(false), (Critical, 3, true));
    assert_eq!(run(false), (Critical, 4, false));
    // successBeforePassing = 2.
    assert_eq!(run(true), (Critical, 1, false));
    assert_eq!(run(false), (Critical, 1, false));
    assert_eq!(run(true), (Critical, 1, false));
    assert_eq!(run(true), (Passing, 2, true));
    assert_eq!(run(true), (Passing, 3, false));
}

#[test]
fn an_instance_is_withheld_while_any_of_its_checks_is_critical() {
    let (a0, a1, b0) = (id("a", 0), id("a", 1), id("b", 0));
    let statuses = [
        (&a0, CheckStatus::Passing),
        (&a1, CheckStatus::Critical),
        (&b0, CheckStatus::Passing),
    ];
    assert_eq!(withheld(statuses), BTreeSet::from(["a".to_string()]));
    assert!(withheld([(&b0, CheckStatus::Passing)]).is_empty());
}

#[test]
fn from_config_names_each_check_by_its_instance_key_and_position() {
    let example = Instance::seed_example();
    let other = Instance {
        name: "other".into(),
        ..example.clone()
    };
    let agent = AgentConfig {
        instances: vec![example, other],
        checks: vec![
            vec![
                config("pass", 10, CheckStatus::Passing),
                config("fail", 10, CheckStatus::Passing),
            ],
            Vec::new(),
        ],
        plugins: None,
        admin: None,
        shutdown_timeout: crate::config::DEFAULT_SHUTDOWN_TIMEOUT,
        publish: Default::default(),
        local: Default::default(),
    };
    let checks = from_config(&agent, |instance| format!("key-{}", instance.name));
    let ids: Vec<&CheckId> = checks.keys().collect();
    assert_eq!(
        ids,
        [
            &id("key-example-registry-server", 0),
            &id("key-example-registry-server", 1)
        ]
    );
    assert_eq!(
        checks[&id("key-example-registry-server", 1)],
        config("fail", 10, CheckStatus::Passing)
    );
}

#[tokio::test(start_paused = true)]
async fn first_runs_spread_over_the_interval_then_one_run_every_interval() {
    let tracker = TaskTracker::new();
    let (mut host, mut reports) = Fake::default().host(&tracker);
    let start = Instant::now();
    let checks: BTreeMap<_, _> = (0..200)
        .map(|i| {
            (
                id(&format!("i{i}"), 0),
                config("pass", 10, CheckStatus::Critical),
            )
        })
        .collect();
    host.set(checks);

    let mut times: BTreeMap<CheckId, Vec<Duration>> = BTreeMap::new();
    while let Ok(Some(report)) = tokio::time::timeout_at(start + secs(35), reports.recv()).await {
        times
            .entry(report.id.clone())
            .or_default()
            .push(start.elapsed());
        assert!(host.record(report));
    }
    assert_eq!(times.len(), 200);
    let firsts: Vec<Duration> = times.values().map(|t| t[0]).collect();
    // (At most 10 s: timers round up to the millisecond.)
    assert!(firsts.iter().all(|first| *first <= secs(10)), "{firsts:?}");
    // Uniform over 10 s: 200 first runs fill both ends of it.
    assert!(firsts.iter().any(|first| *first < secs(2)), "{firsts:?}");
    assert!(firsts.iter().any(|first| *first > secs(8)), "{firsts:?}");
    for runs in times.values() {
        assert!(runs.len() >= 3, "{runs:?}");
        for pair in runs.windows(2) {
            assert_eq!(pair[1] - pair[0], secs(10), "{runs:?}");
        }
    }
}

/// The next report of `id` (recording every report on the way).
async fn next_of(
    host: &mut CheckHost,
    reports: &mut mpsc::Receiver<CheckReport>,
    id: &CheckId,
) -> CheckReport {
    loop {
        let report = reports.recv().await.expect("the host holds a sender");
        if &report.id == id {
            return report;
        }
        host.record(report);
    }
}

#[tokio::test(start_paused = true)]
async fn set_keeps_an_unchanged_check_running_and_restarts_a_changed_one() {
    let tracker = TaskTracker::new();
    let (mut host, mut reports) = Fake::default().host(&tracker);
    let (a, b) = (id("a", 0), id("b", 0));
    let mut checks = BTreeMap::from([
        (a.clone(), config("fail", 10, CheckStatus::Passing)),
        (b.clone(), config("fail", 10, CheckStatus::Passing)),
    ]);
    host.set(checks.clone());
    assert!(host.withheld().is_empty());

    let first_a = next_of(&mut host, &mut reports, &a).await;
    assert_eq!(
        (first_a.consecutive, first_a.status),
        (1, CheckStatus::Passing)
    );
    assert!(host.record(first_a));
    let second_a = next_of(&mut host, &mut reports, &a).await;
    let second_a_at = Instant::now();
    assert_eq!(second_a.consecutive, 2);
    assert!(host.record(second_a));
    let stale_b = next_of(&mut host, &mut reports, &b).await;

    // The same a, a changed b (10 s → 20 s).
    checks.insert(b.clone(), config("fail", 20, CheckStatus::Passing));
    let set_at = Instant::now();
    host.set(checks.clone());
    assert!(
        !host.record(stale_b),
        "a report of b's old version counts no more"
    );
    assert_eq!(
        host.last(&a).map(|r| r.consecutive),
        Some(2),
        "a keeps its state"
    );

    // Each check's next report, in whichever order they come.
    let (mut third_a, mut fresh_b) = (None, None);
    while third_a.is_none() || fresh_b.is_none() {
        let report = reports.recv().await.unwrap();
        let slot = if report.id == a {
            &mut third_a
        } else {
            &mut fresh_b
        };
        if slot.is_none() {
            *slot = Some((Instant::now(), report));
        }
    }
    let ((third_a_at, third_a), (fresh_b_at, fresh_b)) = (third_a.unwrap(), fresh_b.unwrap());

    // a: on its old schedule, its count going on: the third failure.
    assert_eq!(third_a_at - second_a_at, secs(10));
    assert_eq!(
        (third_a.consecutive, third_a.status, third_a.changed),
        (3, CheckStatus::Critical, true)
    );
    assert!(host.record(third_a));
    assert_eq!(host.withheld(), BTreeSet::from(["a".to_string()]));

    // b: from the start, its first run within its new interval.
    assert!(fresh_b_at - set_at < secs(20));
    assert_eq!(
        (fresh_b.consecutive, fresh_b.status),
        (1, CheckStatus::Passing)
    );
    assert!(host.record(fresh_b));
    assert_eq!(tracker.len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_removed_check_stops_and_a_dropped_host_stops_them_all() {
    let tracker = TaskTracker::new();
    let (mut host, mut reports) = Fake::default().host(&tracker);
    let (a, b) = (id("a", 0), id("b", 0));
    host.set(BTreeMap::from([
        (a.clone(), config("pass", 1, CheckStatus::Critical)),
        (b.clone(), config("pass", 1, CheckStatus::Critical)),
    ]));
    assert_eq!(
        host.withheld(),
        BTreeSet::from(["a".to_string(), "b".to_string()])
    );
    next_of(&mut host, &mut reports, &a).await;

    host.set(BTreeMap::from([(
        b.clone(),
        config("pass", 1, CheckStatus::Critical),
    )]));
    assert_eq!(host.withheld(), BTreeSet::from(["b".to_string()]));
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(tracker.len(), 1, "a's task has ended");
    while let Ok(report) = reports.try_recv() {
        host.record(report);
    }
    let until = Instant::now() + secs(5);
    while let Ok(Some(report)) = tokio::time::timeout_at(until, reports.recv()).await {
        assert_eq!(report.id, b, "no report from a removed check");
        host.record(report);
    }
    assert!(host.withheld().is_empty(), "b passed twice");
    assert!(host.last(&a).is_none());

    drop(host);
    tracker.close();
    tokio::time::timeout(secs(1), tracker.wait())
        .await
        .expect("every check task ends with the host");
}

#[tokio::test(start_paused = true)]
async fn the_agent_hears_only_changes_and_every_run_updates_the_series() {
    let tracker = TaskTracker::new();
    let fake = Fake::default();
    let (mut host, mut reports) = fake.host(&tracker);
    host.reporting = Reporting::Changes;
    let a = id("a", 0);
    let series = CheckSeries {
        status: Default::default(),
        seconds: prometheus_client::metrics::histogram::Histogram::new([1.0]),
    };
    let given = series.clone();
    host.set_with_series(
        BTreeMap::from([(a.clone(), config("switch", 1, CheckStatus::Critical))]),
        move |_, _| Some(given.clone()),
    );
    assert_eq!(series.status.get(), 0);
    // Passing from the first run: one report (the change), then none
    // for the steady runs that follow.
    fake.switch.store(true, Ordering::SeqCst);
    let changed = reports.recv().await.unwrap();
    assert!(changed.changed && changed.status == CheckStatus::Passing);
    let at_change = changed.consecutive;
    assert!(host.record(changed));
    assert_eq!(series.status.get(), 1);
    let quiet = tokio::time::timeout(secs(5), reports.recv()).await;
    assert!(quiet.is_err(), "a steady check reported: {quiet:?}");
    let latest = host.latest(&a).expect("the newest run");
    assert!(latest.consecutive >= at_change + 4, "{latest:?}");
    assert_eq!(host.last(&a).map(|r| r.consecutive), Some(at_change));
    // Critical again: reported.
    fake.switch.store(false, Ordering::SeqCst);
    let changed = reports.recv().await.unwrap();
    assert!(changed.changed && changed.status == CheckStatus::Critical);
    assert_eq!(series.status.get(), 0);
}

#[tokio::test(start_paused = true)]
async fn probes_in_flight_are_bounded() {
    let tracker = TaskTracker::new();
    let fake = Fake {
        delay: Duration::from_millis(900),
        ..Fake::default()
    };
    let (mut host, mut reports) = fake.host(&tracker);
    // 300 checks each busy 0.9 s of every 1 s: ~270 would run at once.
    host.set(
        (0..300)
            .map(|i| {
                (
                    id(&format!("i{i}"), 0),
                    config("pass", 1, CheckStatus::Critical),
                )
            })
            .collect(),
    );
    let until = Instant::now() + secs(5);
    let mut count = 0;
    while let Ok(Some(report)) = tokio::time::timeout_at(until, reports.recv()).await {
        assert!(report.duration >= Duration::from_millis(900));
        host.record(report);
        count += 1;
    }
    assert_eq!(
        fake.most_in_flight.load(Ordering::SeqCst),
        MAX_PROBES_IN_FLIGHT
    );
    assert!(count > 4 * MAX_PROBES_IN_FLIGHT, "{count} runs in 5 s");
}

#[tokio::test(start_paused = true)]
async fn a_flapping_check_changes_status_only_at_its_thresholds() {
    let tracker = TaskTracker::new();
    let fake = Fake::default();
    let (mut host, mut reports) = fake.host(&tracker);
    let a = id("a", 0);
    host.set(BTreeMap::from([(
        a.clone(),
        config("switch", 1, CheckStatus::Critical),
    )]));
    let mut seen = Vec::new();
    for passing in [
        true, false, true, true, false, false, true, false, false, false,
    ] {
        fake.switch.store(passing, Ordering::SeqCst);
        let report = next_of(&mut host, &mut reports, &a).await;
        seen.push((report.status, report.changed));
        host.record(report);
    }
    use CheckStatus::{Critical, Passing};
    assert_eq!(
        seen,
        [
            (Critical, false),
            (Critical, false),
            (Critical, false),
            (Passing, true),
            (Passing, false),
            (Passing, false),
            (Passing, false),
            (Passing, false),
            (Passing, false),
            (Critical, true),
        ]
    );
}

/// Probes against real servers on loopback, in real time.
mod probes {
    use std::future::Future;
    use std::net::SocketAddr;

    use axum::Router;
    use axum::http::{HeaderMap, StatusCode, header::LOCATION};
    use axum::routing::{get, post};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::super::*;

    const TIMEOUT: Duration = Duration::from_millis(500);
    /// How late past its timeout a probe may return.
    const MARGIN: Duration = Duration::from_secs(1);

    fn http(url: String) -> Probe {
        Probe::Http {
            url,
            method: "GET".to_string(),
            headers: BTreeMap::new(),
            tls_skip_verify: false,
        }
    }

    fn grpc(address: SocketAddr, service: &str) -> Probe {
        Probe::Grpc {
            address: address.to_string(),
            service: service.to_string(),
            tls: false,
        }
    }

    /// Runs `probe` with a fresh prober: its outcome, and how long it took.
    async fn run(probe: &Probe, timeout: Duration) -> (Result<String, String>, Duration) {
        let prober = Prober::new(TaskTracker::new(), no_plugins());
        let began = Instant::now();
        let outcome = prober.probe(probe, timeout).await;
        (outcome, began.elapsed())
    }

    async fn closed_port() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    }

    /// A server that hands each connection to `serve`.
    async fn raw_server<F, Fut>(serve: F) -> SocketAddr
    where
        F: Fn(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream));
            }
        });
        address
    }

    /// Reads the request's head, then writes `head` and `chunk` until
    /// the client goes away.
    async fn endless(mut stream: TcpStream, head: &'static [u8], chunk: u8) {
        let mut request = [0u8; 4096];
        let _ = stream.read(&mut request).await;
        if stream.write_all(head).await.is_err() {
            return;
        }
        let chunk = vec![chunk; 64 * 1024];
        while stream.write_all(&chunk).await.is_ok() {}
    }

    /// Accepts, reads, and never answers.
    async fn silent(mut stream: TcpStream) {
        let mut buffer = [0u8; 4096];
        while let Ok(n) = stream.read(&mut buffer).await {
            if n == 0 {
                break;
            }
        }
    }

    #[tokio::test]
    async fn tcp_passes_when_a_connection_opens_and_fails_on_a_closed_port() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let open = listener.local_addr().unwrap();
        let (outcome, _) = run(
            &Probe::Tcp {
                address: open.to_string(),
            },
            TIMEOUT,
        )
        .await;
        assert_eq!(outcome, Ok(format!("connected to {open}")));

        let closed = closed_port().await;
        let (outcome, _) = run(
            &Probe::Tcp {
                address: closed.to_string(),
            },
            TIMEOUT,
        )
        .await;
        assert_eq!(outcome, Err("connection refused".to_string()));
    }

    #[tokio::test]
    async fn http_passes_on_2xx_only_and_follows_no_redirect() {
        let app = Router::new()
            .route("/ok", get(|| async { "ok" }))
            .route(
                "/down",
                get(|| async { (StatusCode::SERVICE_UNAVAILABLE, "maintenance") }),
            )
            .route(
                "/moved",
                get(|| async { (StatusCode::FOUND, [(LOCATION, "/moved")]) }),
            )
            .route(
                "/echo",
                post(|headers: HeaderMap| async move {
                    let value = headers.get("x-probe").and_then(|v| v.to_str().ok());
                    value.unwrap_or("no header").to_string()
                }),
            )
            .route("/long", get(|| async { "x".repeat(10_000) }));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let url = |path: &str| format!("http://{address}{path}");

        assert_eq!(
            run(&http(url("/ok")), TIMEOUT).await.0,
            Ok("HTTP 200: ok".to_string())
        );
        assert_eq!(
            run(&http(url("/down")), TIMEOUT).await.0,
            Err("HTTP 503: maintenance".to_string())
        );
        assert_eq!(
            run(&http(url("/moved")), TIMEOUT).await.0,
            Err("redirect (302) not followed".to_string())
        );
        assert_eq!(
            run(&http(url("/nowhere")), TIMEOUT).await.0,
            Err("HTTP 404".to_string())
        );
        let post_with_header = Probe::Http {
            url: url("/echo"),
            method: "POST".to_string(),
            headers: BTreeMap::from([("X-Probe".to_string(), "yes".to_string())]),
            tls_skip_verify: false,
        };
        assert_eq!(
            run(&post_with_header, TIMEOUT).await.0,
            Ok("HTTP 200: yes".to_string())
        );
        // Only the first BODY_KEPT bytes of a body become the output.
        let long = run(&http(url("/long")), TIMEOUT).await.0.unwrap();
        assert_eq!(long, format!("HTTP 200: {}…", "x".repeat(http::BODY_KEPT)));

        let closed = closed_port().await;
        let (outcome, _) = run(&http(format!("http://{closed}/")), TIMEOUT).await;
        assert_eq!(outcome, Err("connection refused".to_string()));
    }

    #[tokio::test]
    async fn http_against_hostile_servers_is_bounded_by_its_limits_and_deadline() {
        let body = raw_server(|s| {
            endless(
                s,
                b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\n",
                b'x',
            )
        })
        .await;
        let (outcome, took) = run(&http(format!("http://{body}/")), Duration::from_secs(5)).await;
        assert_eq!(
            outcome,
            Err("HTTP 200: body longer than 1024 KiB".to_string())
        );
        assert!(took < Duration::from_secs(5), "{took:?}");

        let header = raw_server(|s| endless(s, b"HTTP/1.1 200 OK\r\nx-big: ", b'a')).await;
        let (outcome, took) = run(&http(format!("http://{header}/")), Duration::from_secs(5)).await;
        assert_eq!(outcome, Err("answer head larger than 16 KiB".to_string()));
        assert!(took < Duration::from_secs(5), "{took:?}");

        let trickle = raw_server(|mut stream: TcpStream| async move {
            let mut request = [0u8; 4096];
            let _ = stream.read(&mut request).await;
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n")
                .await;
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if stream.write_all(b"x").await.is_err() {
                    break;
                }
            }
        })
        .await;
        let (outcome, took) = run(&http(format!("http://{trickle}/")), TIMEOUT).await;
        assert_eq!(
            outcome,
            Err("timed out after 500ms reading the body (HTTP 200)".to_string())
        );
        assert!(took >= TIMEOUT && took < TIMEOUT + MARGIN, "{took:?}");

        let mute = raw_server(silent).await;
        let (outcome, took) = run(&http(format!("http://{mute}/")), TIMEOUT).await;
        assert_eq!(
            outcome,
            Err("timed out after 500ms waiting for the answer".to_string())
        );
        assert!(took >= TIMEOUT && took < TIMEOUT + MARGIN, "{took:?}");

        // The same server as an https endpoint: a handshake that never ends.
        let tls = Probe::Http {
            url: format!("https://{mute}/"),
            method: "GET".to_string(),
            headers: BTreeMap::new(),
            tls_skip_verify: true,
        };
        let (outcome, took) = run(&tls, TIMEOUT).await;
        assert_eq!(
            outcome,
            Err("timed out after 500ms in the TLS handshake".to_string())
        );
        assert!(took >= TIMEOUT && took < TIMEOUT + MARGIN, "{took:?}");
    }

    #[tokio::test]
    async fn grpc_passes_on_serving_only() {
        use tonic_health::ServingStatus;
        let (reporter, service) = tonic_health::server::health_reporter();
        reporter
            .set_service_status("up", ServingStatus::Serving)
            .await;
        reporter
            .set_service_status("down", ServingStatus::NotServing)
            .await;
        let incoming =
            tonic::transport::server::TcpIncoming::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let address = incoming.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming),
        );

        assert_eq!(
            run(&grpc(address, ""), TIMEOUT).await.0,
            Ok("SERVING".to_string())
        );
        assert_eq!(
            run(&grpc(address, "up"), TIMEOUT).await.0,
            Ok("SERVING".to_string())
        );
        assert_eq!(
            run(&grpc(address, "down"), TIMEOUT).await.0,
            Err("NOT_SERVING".to_string())
        );
        let unknown = run(&grpc(address, "nope"), TIMEOUT).await.0.unwrap_err();
        assert!(
            unknown.starts_with("SERVICE_UNKNOWN: the server does not know service \"nope\""),
            "{unknown}"
        );

        let closed = closed_port().await;
        let refused = run(&grpc(closed, ""), TIMEOUT).await.0.unwrap_err();
        assert!(refused.contains("connection refused"), "{refused}");
        drop(reporter);
    }

    #[tokio::test]
    async fn grpc_against_a_silent_server_times_out_and_leaves_no_task_behind() {
        let mute = raw_server(silent).await;
        let tracker = TaskTracker::new();
        let prober = Prober::new(tracker.clone(), no_plugins());
        let began = Instant::now();
        let outcome = prober.probe(&grpc(mute, ""), TIMEOUT).await;
        let took = began.elapsed();
        assert_eq!(
            outcome,
            Err("timed out after 500ms waiting for the answer".to_string())
        );
        assert!(took >= TIMEOUT && took < TIMEOUT + MARGIN, "{took:?}");
        // tonic's connection tasks ran on the tracker; they end with their socket.
        tracker.close();
        tokio::time::timeout(MARGIN, tracker.wait())
            .await
            .expect("no connection task outlives its probe by more than the grace");
    }
}

/// https and gRPC over TLS against a self-signed certificate for
/// `localhost` and 127.0.0.1.
mod tls {
    use std::net::SocketAddr;
    use std::sync::Arc;

    use rustls::RootCertStore;
    use rustls::pki_types::PrivateKeyDer;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::super::*;

    const TIMEOUT: Duration = Duration::from_secs(2);

    struct TestCert {
        cert: rcgen::Certificate,
        key: rcgen::KeyPair,
    }

    fn cert() -> TestCert {
        let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let certified = rcgen::generate_simple_self_signed(names).unwrap();
        TestCert {
            cert: certified.cert,
            key: certified.signing_key,
        }
    }

    fn trusting(cert: &TestCert) -> Prober {
        let mut roots = RootCertStore::empty();
        roots.add(cert.cert.der().clone()).unwrap();
        Prober::with_roots(TaskTracker::new(), roots)
    }

    /// An https server answering every request with 200 `secure`.
    async fn https_server(cert: &TestCert) -> SocketAddr {
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.cert.der().clone()],
            PrivateKeyDer::Pkcs8(cert.key.serialize_der().into()),
        )
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut stream) = acceptor.accept(stream).await else {
                        return;
                    };
                    let mut request = [0u8; 4096];
                    let _ = stream.read(&mut request).await;
                    let answer =
                        b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\nconnection: close\r\n\r\nsecure";
                    let _ = stream.write_all(answer).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        address
    }

    fn https(url: String, tls_skip_verify: bool) -> Probe {
        Probe::Http {
            url,
            method: "GET".to_string(),
            headers: BTreeMap::new(),
            tls_skip_verify,
        }
    }

    #[tokio::test]
    async fn https_verifies_the_certificate_unless_told_not_to() {
        let cert = cert();
        let address = https_server(&cert).await;
        let by_name = format!("https://localhost:{}/", address.port());
        let by_ip = format!("https://{address}/");
        let trusting = trusting(&cert);
        assert_eq!(
            trusting
                .probe(&https(by_name.clone(), false), TIMEOUT)
                .await,
            Ok("HTTP 200: secure".to_string())
        );
        assert_eq!(
            trusting.probe(&https(by_ip.clone(), false), TIMEOUT).await,
            Ok("HTTP 200: secure".to_string())
        );

        // The system's roots do not hold the test's certificate.
        let system = Prober::new(TaskTracker::new(), no_plugins());
        let refused = system
            .probe(&https(by_ip.clone(), false), TIMEOUT)
            .await
            .unwrap_err();
        assert!(
            refused.starts_with("TLS handshake: invalid peer certificate"),
            "{refused}"
        );
        assert_eq!(
            system.probe(&https(by_ip, true), TIMEOUT).await,
            Ok("HTTP 200: secure".to_string())
        );
    }

    #[tokio::test]
    async fn grpc_over_tls_verifies_the_certificate() {
        use tonic::transport::{Identity, ServerTlsConfig};
        let cert = cert();
        let (_reporter, service) = tonic_health::server::health_reporter();
        let identity = Identity::from_pem(cert.cert.pem(), cert.key.serialize_pem());
        let incoming =
            tonic::transport::server::TcpIncoming::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let address = incoming.local_addr().unwrap();
        let server = tonic::transport::Server::builder()
            .tls_config(ServerTlsConfig::new().identity(identity))
            .unwrap()
            .add_service(service)
            .serve_with_incoming(incoming);
        tokio::spawn(server);
        let probe = |address: String, tls| Probe::Grpc {
            address,
            service: String::new(),
            tls,
        };
        let by_name = format!("localhost:{}", address.port());

        assert_eq!(
            trusting(&cert)
                .probe(&probe(by_name.clone(), true), TIMEOUT)
                .await,
            Ok("SERVING".to_string())
        );
        let system = Prober::new(TaskTracker::new(), no_plugins());
        let refused = system
            .probe(&probe(by_name.clone(), true), TIMEOUT)
            .await
            .unwrap_err();
        assert!(refused.contains("invalid peer certificate"), "{refused}");
        let plain = system
            .probe(&probe(by_name, false), TIMEOUT)
            .await
            .unwrap_err();
        assert!(!plain.is_empty());
    }
}
