//! Example ygg-agent plugin: says the instance's agent is alive.
//!
//! Keys:
//! - `heartbeat`: the time of this collection.
//! - `started`: when the plugin was initialised (the agent started it, or
//!   rebuilt it after a failure).
//!
//! Setting `format`: `rfc3339` (default, `2024-01-26T10:00:00Z`) or `unix`
//! (seconds since 1970, `1706263200`).

use std::time::SystemTime;

use ygg_agent_sdk::{Instance, Metadata, Plugin, Settings, time};

/// How timestamps are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Rfc3339,
    Unix,
}

impl Format {
    fn parse(value: &str) -> Result<Self, String> {
        match value {
            "rfc3339" => Ok(Format::Rfc3339),
            "unix" => Ok(Format::Unix),
            other => Err(format!(
                "setting `format`: unknown value {other:?} (expected `rfc3339` or `unix`)"
            )),
        }
    }

    fn render(self, at: SystemTime) -> String {
        match self {
            Format::Rfc3339 => time::rfc3339_utc(at),
            Format::Unix => time::unix_seconds(at).to_string(),
        }
    }
}

struct Heartbeat {
    format: Format,
    started: SystemTime,
}

impl Plugin for Heartbeat {
    fn init(settings: &Settings) -> Result<Self, String> {
        Ok(Heartbeat {
            format: Format::parse(settings.get_or("format", "rfc3339"))?,
            started: SystemTime::now(),
        })
    }

    fn collect(&mut self, _instance: &Instance) -> Result<Metadata, String> {
        Ok(Metadata::from([
            (
                "heartbeat".to_owned(),
                self.format.render(SystemTime::now()),
            ),
            ("started".to_owned(), self.format.render(self.started)),
        ]))
    }
}

ygg_agent_sdk::register_plugin!(Heartbeat);

#[cfg(test)]
mod tests {
    use super::*;

    fn init(pairs: &[(&str, &str)]) -> Result<Heartbeat, String> {
        Heartbeat::init(&pairs.iter().copied().collect())
    }

    #[test]
    fn defaults_to_rfc3339() {
        let mut plugin = init(&[]).unwrap();
        let out = plugin.collect(&Instance::default()).unwrap();
        assert_eq!(out.keys().collect::<Vec<_>>(), ["heartbeat", "started"]);
        for value in out.values() {
            assert!(value.len() == 20 && value.ends_with('Z'), "{value}");
        }
        assert!(out["started"] <= out["heartbeat"]);
    }

    #[test]
    fn unix_format_is_whole_seconds() {
        let mut plugin = init(&[("format", "unix")]).unwrap();
        let out = plugin.collect(&Instance::default()).unwrap();
        for value in out.values() {
            assert!(value.parse::<i64>().unwrap() > 1_700_000_000, "{value}");
        }
    }

    #[test]
    fn unknown_format_is_an_init_error_naming_it() {
        let err = init(&[("format", "iso8601")]).err().unwrap();
        assert!(err.contains("\"iso8601\""), "{err}");
    }
}
