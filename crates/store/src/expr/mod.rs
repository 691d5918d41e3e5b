//! Expressions (condition, update, projection, key condition) — being implemented.
