//! Integration tests of the providers crate against real servers started by the tests:
//! MariaDB primary + replica with GTIDs (`mysql`), three Redis servers (`redis`).
//!
//! A test whose server binary is absent prints `SKIP` and passes; `scripts/install-test-deps.sh`
//! installs them all, so CI runs every one.

mod mysql;
mod redis;
mod support;
