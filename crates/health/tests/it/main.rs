//! Integration tests of the health crate: probes against real servers started by the tests
//! (hyper, TCP listeners, redis-server, MariaDB, PostgreSQL, Switchyard's own store, a DNS
//! responder), the runner, and the agent against a controller stand-in.
//!
//! A test whose server binary is absent prints `SKIP` and passes; `scripts/install-test-deps.sh`
//! installs them all, so CI runs every one.

mod agent;
mod dns;
mod dynamodb;
mod http;
mod https;
mod redis;
mod runner;
mod sql;
mod support;
