//! ygg-agent: a node agent that keeps service instances registered in etcd
//! the way the Yggdrasil framework does, with WebAssembly metadata plugins.
//!
//! Data flows one way: [`config`] → [`desired`] (plus plugin metadata) →
//! [`registry`] → etcd. [`agent`] is the supervisor that owns the running
//! config and the shutdown sequence; [`cli`] is the command line around it.

pub mod admin;
pub mod agent;
pub mod api;
pub mod backoff;
pub mod bounded;
pub mod checks;
pub mod cli;
pub mod config;
pub mod desired;
pub mod etcd;
pub mod handover;
pub mod instances_dir;
pub mod list;
pub mod local;
pub mod metrics;
pub mod plugins;
pub mod record;
pub mod registry;
pub mod socket_dir;
pub mod state_dir;
pub mod status;
pub mod systemd;
pub mod watch;

#[cfg(test)]
mod doc_links;
#[cfg(test)]
mod import_circles;
