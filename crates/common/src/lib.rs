//! Support shared by Switchyard's components: today the HTTP accept loop every listener uses,
//! with its limits applied before any handler (and so before any authentication) runs, and the
//! client connector for `http://` and verified `https://` URLs (`tls_client`).
//!
//! Depends on no other Switchyard crate, and stays lean: the HTTP stack the listeners already
//! use (hyper, hyper-util, axum), tokio and tracing.

pub mod devca;
pub mod http;
pub mod metrics;
pub mod tls_client;
pub mod watchdog;
