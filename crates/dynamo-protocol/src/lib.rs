//! DynamoDB's wire vocabulary, shared by the store, replication and the tools that talk to it.
//!
//! This crate holds the data model as DynamoDB defines it on the wire — attribute values,
//! exact 38-digit decimal numbers, the error shapes clients match on — and the SigV4
//! verifier. It does no I/O and must not depend on the storage engine, tokio or HTTP
//! servers: everything here is a pure function over bytes and values.

pub mod error;
pub mod number;
pub mod sigv4;
pub mod value;

pub use error::{ApiError, ErrorKind};
pub use number::{Number, NumberError};
pub use value::{AttributeValue, Item};
