//! `dns`: the authoritative DNS server of Switchyard, answering with Route 53-style routing
//! policies (failover, weighted, multivalue) driven by the controller's pushed health view.
//!
//! Layers: `config` (the `[dns]` TOML section) builds `zone::Zones`; `answer::answer` is a pure
//! function from (zones, health view, query) to response messages; `server` is the thin socket
//! layer (UDP, TCP, reloads) and `admin` the HTTP API the controller pushes health to.
//!
//! Must not depend on other Switchyard crates: the controller talks to it over HTTP only.

pub mod admin;
pub mod answer;
pub mod cache;
pub mod config;
pub mod metrics;
pub mod notify;
pub mod policy;
pub mod rrl;
pub mod server;
pub mod view;
pub mod zone;

pub use answer::{Request, Response, Transport, answer, handle_packet};
pub use config::{DnsConfig, Limits, load, parse};
pub use server::{Options, Sockets, State, bind_udp, run};
pub use view::{Generation, Health, HealthView};
pub use zone::Zones;
