//! Integration tests of the health crate: probes against real servers started by the tests.
