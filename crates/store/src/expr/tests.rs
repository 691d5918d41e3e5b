//! Tests of parsing and evaluating whole expressions.
