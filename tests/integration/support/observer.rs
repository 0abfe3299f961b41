//! The gap observer: a client of its own, on a thread of its own, that
//! watches the registry prefix the way a service consumer would and records,
//! with local timestamps, every interval in which an expected key was missing
//! or held something other than the expected value (on a lease).
//!
//! How it stays honest:
//! - It keeps a sentinel key of its own outside the prefix. After losing
//!   sight of etcd it reads the prefix again (a linearizable read, so only a
//!   healthy cluster answers) and checks the sentinel: if it is still there
//!   with the revision it had, etcd's history is intact and the watch resumes
//!   from the last revision seen, so every change made meanwhile is replayed;
//!   otherwise (a wiped data dir) history is lost.
//! - Changes it did not see happen have no timestamp. A replayed change to a
//!   bad state is dated at the moment the observer lost sight, a replayed
//!   change back to good at the moment it regained it; with history lost,
//!   every key is assumed to have been missing for the whole blind interval.
//!   Both err on the long side. Tests that measure from "etcd healthy again"
//!   use the observer's first successful read after the outage as that
//!   moment, so the time etcd was down is not counted, as no client could
//!   have seen anything then.
//! - It finds out it is blind by a linearizable read of the sentinel every
//!   200 ms with a 1 s deadline (a paused etcd keeps its sockets open and
//!   would otherwise just look quiet), and by the watch stream failing.
//!   When blind it tries every endpoint at once every 50 ms.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions, EventType, GetOptions, WatchOptions};
use tokio::sync::oneshot;

/// Wall-clock time of day in UTC (`23:33:06.123`), to line notes up with
/// the agent's log.
pub fn utc_now() -> String {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = since.as_secs() % 86_400;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        since.subsec_millis()
    )
}

const PROBE_EVERY: Duration = Duration::from_millis(200);
const REQUEST_LIMIT: Duration = Duration::from_secs(1);
const RECONNECT_EVERY: Duration = Duration::from_millis(50);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Present with the expected value, on a lease.
    Good,
    Missing,
    /// Present with another value, or without a lease.
    Stale,
}

/// A change of one expected key's status.
#[derive(Clone, Debug)]
pub struct Transition {
    pub at: Instant,
    pub key: String,
    pub status: Status,
    /// false when the change happened while the observer could not see
    /// etcd and `at` is a conservative guess.
    pub exact: bool,
}

/// A moment the observer regained sight of a healthy etcd.
#[derive(Clone, Copy, Debug)]
pub struct Resync {
    pub at: Instant,
    pub endpoint: usize,
    /// Changes made while blind were replayed from etcd's history.
    pub history: bool,
    pub blind_for: Duration,
}

/// What the observer measured from a reference instant on.
#[derive(Clone, Debug)]
pub struct Window {
    /// From the reference instant to the end of the last interval in which
    /// any expected key was missing or stale (zero when there was none).
    pub window: Duration,
    /// The union of those intervals after the reference instant.
    pub bad_total: Duration,
    pub intervals: usize,
    /// Some interval boundary is a conservative guess (blind time).
    pub inexact: bool,
    /// Expected keys that are not good right now.
    pub still_bad: Vec<String>,
    /// Time the observer could not see etcd after the reference instant.
    pub blind: Duration,
}

impl Window {
    pub fn is_clean(&self) -> bool {
        self.intervals == 0 && self.still_bad.is_empty()
    }
}

struct Replay {
    until: i64,
    blind_start: Instant,
    resync_at: Instant,
}

struct State {
    expected: BTreeMap<String, String>,
    current: BTreeMap<String, Status>,
    transitions: Vec<Transition>,
    /// Writes seen per expected key (live and replayed).
    puts: BTreeMap<String, u64>,
    /// Keys under the prefix that are not expected, present now.
    unexpected: BTreeSet<String>,
    /// Every unexpected key ever seen under the prefix.
    unexpected_seen: BTreeSet<String>,
    last_rev: i64,
    sentinel_rev: i64,
    observing: bool,
    last_contact: Instant,
    blind_since: Option<Instant>,
    blind: Vec<(Instant, Option<Instant>)>,
    resyncs: Vec<Resync>,
    replay: Option<Replay>,
    notes: Vec<String>,
    started: Instant,
}

impl State {
    fn status_of(&self, key: &str, value: Option<(&[u8], i64)>) -> Status {
        match value {
            None => Status::Missing,
            Some((v, lease)) if v == self.expected[key].as_bytes() && lease != 0 => Status::Good,
            Some(_) => Status::Stale,
        }
    }

    fn set(&mut self, key: &str, status: Status, at: Instant, exact: bool) {
        if self.current.get(key) != Some(&status) {
            self.current.insert(key.to_string(), status);
            self.transitions.push(Transition {
                at,
                key: key.to_string(),
                status,
                exact,
            });
        }
    }

    fn note(&mut self, text: String) {
        let t = self.started.elapsed();
        self.notes
            .push(format!("{} {:>8.3}s {text}", utc_now(), t.as_secs_f64()));
    }

    fn go_blind(&mut self, why: &str) {
        if self.blind_since.is_none() {
            let since = self.last_contact;
            self.blind_since = Some(since);
            self.blind.push((since, None));
            self.observing = false;
            self.note(format!("blind: {why}"));
        }
    }

    /// Applies a fresh read of the prefix; returns the revision to watch from.
    fn resync(
        &mut self,
        endpoint: usize,
        revision: i64,
        kvs: BTreeMap<String, (Vec<u8>, i64)>,
        history: bool,
        at: Instant,
    ) -> i64 {
        let first = self.resyncs.is_empty();
        let blind_start = self.blind_since.take().unwrap_or(at);
        if let Some(open) = self.blind.last_mut()
            && open.1.is_none()
        {
            open.1 = Some(at);
        }
        self.resyncs.push(Resync {
            at,
            endpoint,
            history,
            blind_for: at.duration_since(blind_start),
        });
        self.observing = true;
        self.last_contact = at;
        self.note(format!(
            "sees etcd via member {endpoint} at revision {revision} (history {}, blind {:?})",
            if history { "intact" } else { "lost" },
            at.duration_since(blind_start)
        ));
        if history && !first {
            self.replay = Some(Replay {
                until: revision,
                blind_start,
                resync_at: at,
            });
            return self.last_rev + 1;
        }
        // First sight, or history lost: the read is all we know.
        self.replay = None;
        let keys: Vec<String> = self.expected.keys().cloned().collect();
        for key in keys {
            let now = self.status_of(&key, kvs.get(&key).map(|(v, l)| (v.as_slice(), *l)));
            if first {
                self.set(&key, now, at, true);
            } else {
                // Unknown meanwhile: assume the worst for the blind interval.
                if now == Status::Good && self.current.get(&key) == Some(&Status::Good) {
                    self.set(&key, Status::Missing, blind_start, false);
                }
                let at_or_start = if now == Status::Good { at } else { blind_start };
                self.set(&key, now, at_or_start, false);
            }
        }
        self.unexpected = kvs
            .keys()
            .filter(|k| !self.expected.contains_key(*k))
            .cloned()
            .collect();
        self.unexpected_seen.extend(self.unexpected.iter().cloned());
        self.last_rev = revision;
        revision + 1
    }

    fn apply(&mut self, kind: EventType, key: &str, value: &[u8], lease: i64, rev: i64) {
        let now = Instant::now();
        self.last_contact = now;
        self.last_rev = self.last_rev.max(rev);
        let replayed = self.replay.as_ref().filter(|r| rev <= r.until);
        if !self.expected.contains_key(key) {
            match kind {
                EventType::Put => {
                    self.unexpected.insert(key.to_string());
                    self.unexpected_seen.insert(key.to_string());
                }
                EventType::Delete => {
                    self.unexpected.remove(key);
                }
            }
            return;
        }
        let status = match kind {
            EventType::Put => {
                *self.puts.entry(key.to_string()).or_default() += 1;
                self.status_of(key, Some((value, lease)))
            }
            EventType::Delete => Status::Missing,
        };
        match replayed {
            Some(r) => {
                let at = if status == Status::Good {
                    r.resync_at
                } else {
                    r.blind_start
                };
                self.set(key, status, at, false);
            }
            None => self.set(key, status, now, true),
        }
    }

    /// Intervals (start, end) in which `key` was not good; an open one ends now.
    fn bad_intervals(&self, key: &str, now: Instant) -> Vec<(Instant, Instant, bool)> {
        let mut out = Vec::new();
        let mut open: Option<(Instant, bool)> = None;
        for t in self.transitions.iter().filter(|t| t.key == key) {
            match (t.status, open) {
                (Status::Good, Some((start, exact))) => {
                    out.push((start, t.at.max(start), exact && t.exact));
                    open = None;
                }
                (Status::Good, None) => {}
                (_, None) => open = Some((t.at, t.exact)),
                (_, Some(_)) => {}
            }
        }
        if let Some((start, exact)) = open {
            out.push((start, now.max(start), exact));
        }
        out
    }

    fn window_from(&self, from: Instant) -> Window {
        let now = Instant::now();
        let mut clipped: Vec<(Instant, Instant)> = Vec::new();
        let mut inexact = false;
        for key in self.expected.keys() {
            for (start, end, exact) in self.bad_intervals(key, now) {
                if end <= from {
                    continue;
                }
                clipped.push((start.max(from), end));
                inexact |= !exact;
            }
        }
        let window = clipped
            .iter()
            .map(|(_, end)| end.duration_since(from))
            .max()
            .unwrap_or_default();
        clipped.sort();
        let mut bad_total = Duration::ZERO;
        let mut cursor = from;
        for (start, end) in &clipped {
            let start = (*start).max(cursor);
            if *end > start {
                bad_total += end.duration_since(start);
                cursor = *end;
            }
        }
        let blind = self
            .blind
            .iter()
            .map(|(s, e)| {
                let e = e.unwrap_or(now);
                let s = (*s).max(from);
                e.saturating_duration_since(s)
            })
            .sum();
        Window {
            window,
            bad_total,
            intervals: clipped.len(),
            inexact,
            still_bad: self
                .current
                .iter()
                .filter(|(_, s)| **s != Status::Good)
                .map(|(k, _)| k.clone())
                .collect(),
            blind,
        }
    }
}

/// Watches `prefix` on its own thread until dropped.
pub struct Observer {
    state: Arc<Mutex<State>>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

static SENTINELS: AtomicU64 = AtomicU64::new(0);

impl Observer {
    /// Starts watching; `expected` maps each key we expect under `prefix`
    /// to its value. Returns once the first read has been applied.
    pub async fn start(
        endpoints: Vec<String>,
        prefix: &str,
        expected: BTreeMap<String, String>,
    ) -> Observer {
        Self::start_as(endpoints, prefix, expected, None).await
    }

    /// `start`, authenticating as `user` (name, password) to an etcd with
    /// authentication on; the token is refreshed when etcd drops it.
    pub async fn start_as(
        endpoints: Vec<String>,
        prefix: &str,
        expected: BTreeMap<String, String>,
        user: Option<(String, String)>,
    ) -> Observer {
        let now = Instant::now();
        let state = Arc::new(Mutex::new(State {
            expected,
            current: BTreeMap::new(),
            transitions: Vec::new(),
            puts: BTreeMap::new(),
            unexpected: BTreeSet::new(),
            unexpected_seen: BTreeSet::new(),
            last_rev: 0,
            sentinel_rev: 0,
            observing: false,
            last_contact: now,
            blind_since: Some(now),
            blind: Vec::new(),
            resyncs: Vec::new(),
            replay: None,
            notes: Vec::new(),
            started: now,
        }));
        let (stop_tx, stop_rx) = oneshot::channel();
        let prefix = prefix.to_string();
        let shared = state.clone();
        let thread = std::thread::Builder::new()
            .name("gap-observer".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("observer runtime");
                runtime.block_on(async move {
                    tokio::select! {
                        _ = stop_rx => {}
                        _ = run(shared, endpoints, prefix, user) => {}
                    }
                });
            })
            .expect("observer thread");
        let observer = Observer {
            state,
            stop: Some(stop_tx),
            thread: Some(thread),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while observer.state().resyncs.is_empty() {
            assert!(Instant::now() < deadline, "the observer cannot see etcd");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        observer
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// True while the observer sees etcd and every expected key is good.
    pub fn all_good(&self) -> bool {
        let state = self.state();
        state.observing
            && state.current.len() == state.expected.len()
            && state.current.values().all(|s| *s == Status::Good)
    }

    /// Waits until every expected key is good; panics after `limit`.
    pub async fn wait_all_good(&self, limit: Duration) -> Duration {
        self.wait_until(limit, "every expected key present and correct", |o| {
            o.all_good()
        })
        .await
    }

    /// Polls `check` every 10 ms; panics after `limit` with the notes.
    pub async fn wait_until(
        &self,
        limit: Duration,
        what: &str,
        check: impl Fn(&Observer) -> bool,
    ) -> Duration {
        let start = Instant::now();
        loop {
            if check(self) {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < limit,
                "observer: timed out after {limit:?} waiting for {what}\n{}",
                self.notes()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The first moment at or after `after` the observer regained sight of
    /// a healthy etcd, waiting up to `limit` for it.
    pub async fn wait_resync_after(&self, after: Instant, limit: Duration) -> Resync {
        self.wait_until(limit, "etcd healthy again", |o| {
            o.state().resyncs.iter().any(|r| r.at >= after)
        })
        .await;
        self.state()
            .resyncs
            .iter()
            .find(|r| r.at >= after)
            .copied()
            .expect("found above")
    }

    pub fn window_from(&self, from: Instant) -> Window {
        self.state().window_from(from)
    }

    pub fn transitions_since(&self, from: Instant) -> Vec<Transition> {
        self.state()
            .transitions
            .iter()
            .filter(|t| t.at >= from)
            .cloned()
            .collect()
    }

    pub fn statuses(&self) -> BTreeMap<String, Status> {
        self.state().current.clone()
    }

    /// Writes of expected keys seen so far (rewrites included).
    pub fn puts(&self) -> u64 {
        self.state().puts.values().sum()
    }

    /// Every unexpected key ever seen under the prefix.
    pub fn unexpected_seen(&self) -> BTreeSet<String> {
        self.state().unexpected_seen.clone()
    }

    /// What the observer went through, one line per event, for failures.
    pub fn notes(&self) -> String {
        self.state().notes.join("\n")
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- observer notes ---\n{}", self.notes());
        }
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn connect(endpoint: &str, user: Option<(String, String)>) -> Option<Client> {
    let mut options = ConnectOptions::new()
        .with_connect_timeout(REQUEST_LIMIT)
        // A member that loses its leader cancels our watch instead of
        // going quiet.
        .with_require_leader(true);
    if let Some((name, password)) = user {
        options = options
            .with_user(name, password)
            .with_auto_token_refresh(true);
    }
    tokio::time::timeout(REQUEST_LIMIT, Client::connect([endpoint], Some(options)))
        .await
        .ok()?
        .ok()
}

/// One linearizable read of the prefix and the sentinel through `endpoint`.
struct Sight {
    endpoint: usize,
    client: Client,
    revision: i64,
    kvs: BTreeMap<String, (Vec<u8>, i64)>,
    sentinel_rev: Option<i64>,
}

async fn look(
    endpoint: usize,
    address: String,
    prefix: String,
    sentinel: String,
    user: Option<(String, String)>,
) -> Option<Sight> {
    let mut client = connect(&address, user).await?;
    let read = async {
        let range = client
            .get(prefix.as_str(), Some(GetOptions::new().with_prefix()))
            .await
            .ok()?;
        let mark = client.get(sentinel.as_str(), None).await.ok()?;
        Some((range, mark))
    };
    let (range, mark) = tokio::time::timeout(REQUEST_LIMIT, read).await.ok()??;
    let revision = range.header()?.revision();
    let kvs = range
        .kvs()
        .iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(kv.key()).into_owned(),
                (kv.value().to_vec(), kv.lease()),
            )
        })
        .collect();
    Some(Sight {
        endpoint,
        client,
        revision,
        kvs,
        sentinel_rev: mark.kvs().first().map(|kv| kv.mod_revision()),
    })
}

/// Tries every endpoint at once until one answers.
async fn look_anywhere(
    endpoints: &[String],
    prefix: &str,
    sentinel: &str,
    user: &Option<(String, String)>,
) -> Sight {
    loop {
        let attempts = endpoints.iter().enumerate().map(|(i, address)| {
            Box::pin(look(
                i,
                address.clone(),
                prefix.to_string(),
                sentinel.to_string(),
                user.clone(),
            ))
        });
        let mut pending: Vec<_> = attempts.collect();
        while !pending.is_empty() {
            let (result, _, rest) = futures_util::future::select_all(pending).await;
            if let Some(sight) = result {
                return sight;
            }
            pending = rest;
        }
        tokio::time::sleep(RECONNECT_EVERY).await;
    }
}

async fn run(
    state: Arc<Mutex<State>>,
    endpoints: Vec<String>,
    prefix: String,
    user: Option<(String, String)>,
) {
    let sentinel = format!(
        "/ygg-test/observer/{}-{}",
        std::process::id(),
        SENTINELS.fetch_add(1, Ordering::Relaxed)
    );
    let lock = || state.lock().unwrap_or_else(|e| e.into_inner());
    let mut force_lost = false;
    loop {
        let mut sight = look_anywhere(&endpoints, &prefix, &sentinel, &user).await;
        let at = Instant::now();
        let history = {
            let s = lock();
            !force_lost
                && s.sentinel_rev != 0
                && sight.sentinel_rev == Some(s.sentinel_rev)
                && sight.revision >= s.last_rev
        };
        force_lost = false;
        if !history {
            // (Re)plant the sentinel; its revision marks this history.
            match tokio::time::timeout(
                REQUEST_LIMIT,
                sight.client.put(sentinel.as_str(), "x", None),
            )
            .await
            {
                Ok(Ok(put)) => {
                    lock().sentinel_rev = put.header().map_or(0, |h| h.revision());
                }
                _ => {
                    lock().note("cannot plant the sentinel; looking again".into());
                    tokio::time::sleep(RECONNECT_EVERY).await;
                    continue;
                }
            }
        }
        let watch_from = lock().resync(sight.endpoint, sight.revision, sight.kvs, history, at);
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(watch_from);
        let mut stream = match tokio::time::timeout(
            REQUEST_LIMIT,
            sight.client.watch(prefix.as_str(), Some(options)),
        )
        .await
        {
            Ok(Ok(stream)) => stream,
            _ => {
                lock().go_blind("cannot open the watch");
                continue;
            }
        };
        let mut probe_client = sight.client.clone();
        let probe = async {
            loop {
                tokio::time::sleep(PROBE_EVERY).await;
                match tokio::time::timeout(REQUEST_LIMIT, probe_client.get(sentinel.as_str(), None))
                    .await
                {
                    Ok(Ok(_)) => lock().last_contact = Instant::now(),
                    Ok(Err(e)) => return format!("probe failed: {e}"),
                    Err(_) => return format!("probe unanswered within {REQUEST_LIMIT:?}"),
                }
            }
        };
        tokio::pin!(probe);
        let why = loop {
            tokio::select! {
                why = &mut probe => break why,
                message = stream.message() => match message {
                    Ok(Some(response)) => {
                        if response.canceled() {
                            if response.compact_revision() > 0 {
                                force_lost = true;
                            }
                            break format!("watch canceled: {}", response.cancel_reason());
                        }
                        let mut s = lock();
                        s.last_contact = Instant::now();
                        for event in response.events() {
                            if let Some(kv) = event.kv() {
                                let key = String::from_utf8_lossy(kv.key()).into_owned();
                                s.apply(event.event_type(), &key, kv.value(), kv.lease(), kv.mod_revision());
                            }
                        }
                    }
                    Ok(None) => break "watch stream ended".to_string(),
                    Err(e) => break format!("watch failed: {e}"),
                },
            }
        };
        lock().go_blind(&why);
    }
}
