//! Fault injection against real etcd processes: see FAILURES.md.

mod support;
