//! Support shared by Switchyard's components: the HTTP accept loop every listener uses, with its
//! limits applied before any handler (and so before any authentication) runs, the client
//! connector for `http://` and verified `https://` URLs (`tls_client`), the one seeded
//! generator and seed variable (`rng`), HAProxy's rise/fall health counter (`rise_fall`), address prefixes (`net`), the controllers a client may ask (`members`), bearer tokens, their
//! constant-time comparison and the exposure rule of listeners (`secret`), `line:column` positions and
//! HTML escaping (`text`), how often a retrying loop logs its failures (`repeated`), TSIG (RFC 8945) signing and verification for DNS clients and servers
//! (`tsig`), and (feature `db`) the shop's MariaDB and Redis connections (`db`).
//!
//! Depends on no other Switchyard crate, and stays lean: the HTTP stack the listeners already
//! use (hyper, hyper-util, axum), tokio and tracing, hmac + sha2 + base64 for TSIG; the database clients only with `db`.

#[cfg(feature = "db")]
pub mod db;
pub mod deadline;
pub mod devca;
pub mod dns_admin;
pub mod error;
pub mod http;
pub mod members;
pub mod metrics;
pub mod net;
pub mod repeated;
pub mod rise_fall;
pub mod rng;
pub mod secret;
pub mod text;
pub mod tls_client;
pub mod tsig;
pub mod watchdog;
