//! Integration tests of the providers against real servers (BIND9, HAProxy), started by the
//! tests themselves on loopback. A test whose server is not installed says so and passes
//! (CI installs them through scripts/install-test-deps.sh).

mod common;
mod haproxy;
mod rfc2136;
