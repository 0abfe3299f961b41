//! Operations: admin HTTP, list, etcd TLS and auth, logs.

mod support;
