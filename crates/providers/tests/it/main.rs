//! Integration tests of the providers crate: each provider's step against a server that
//! speaks its API, driven through `Settings::check` and `run` as the controller drives them:
//! real servers where one installs locally (BIND9, HAProxy, moto's server for the AWS steps
//! with real AWS API shapes signed by the SDK; started by the tests on loopback; a BIND9 or
//! HAProxy test whose server is not installed says so and passes — CI installs them through
//! scripts/install-test-deps.sh), documented-shape fakes where none exists (Cloudflare,
//! DigitalOcean).

#[cfg(feature = "aws")]
mod aws;
mod cloudflare;
mod common;
mod db_tls;
mod digitalocean;
mod digitalocean_db;
mod fake;
mod haproxy;
#[cfg(feature = "aws")]
mod moto;
mod rfc2136;
// Databases: MariaDB primary + replica with GTIDs (`mysql`), a PostgreSQL primary and two
// streaming standbys (`postgres`), three Redis servers (`redis`).
mod mysql;
mod postgres;
mod redis;
mod support;
