//! Integration tests of the providers crate: each provider's step against a server that
//! speaks its API (real servers where one installs locally, documented-shape fakes where none
//! exists), driven through `Settings::check` and `run` as the controller drives them.

mod cloudflare;
mod digitalocean;
mod fake;
