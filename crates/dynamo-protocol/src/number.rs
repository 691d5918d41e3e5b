//! DynamoDB numbers: exact decimals with up to 38 significant digits and a magnitude between
//! 1E-130 and 9.9999999999999999999999999999999999999E+125, never floats.
//!
//! PLACEHOLDER API — being implemented; signatures are the contract.

use std::cmp::Ordering;
use std::fmt;

/// Most significant digits a DynamoDB number may carry.
pub const SIGNIFICANT_DIGITS_MAX: u32 = 38;

/// An exact decimal number: `(-1)^negative × mantissa × 10^exponent`, normalised so that the
/// mantissa has no trailing zeros (zero is `mantissa == 0, exponent == 0, negative == false`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Number {
    negative: bool,
    mantissa: u128,
    exponent: i32,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NumberError {
    #[error("A value provided cannot be converted into a number")]
    NotANumber,
    #[error("Attempting to store more than 38 significant digits in a Number")]
    TooManyDigits,
    #[error(
        "Number overflow. Attempting to store a number with magnitude larger than supported range"
    )]
    Overflow,
    #[error(
        "Number underflow. Attempting to store a number with magnitude smaller than supported range"
    )]
    Underflow,
}

impl Number {
    pub const ZERO: Number = Number {
        negative: false,
        mantissa: 0,
        exponent: 0,
    };

    /// Parses DynamoDB's textual form: optional sign, digits, optional fraction, optional exponent.
    pub fn parse(_text: &str) -> Result<Number, NumberError> {
        todo!()
    }

    pub fn from_i64(_value: i64) -> Number {
        todo!()
    }

    /// Integral value if the number is an integer that fits, for TTL timestamps and list indexes.
    pub fn to_i64(&self) -> Option<i64> {
        todo!()
    }

    pub fn checked_add(&self, _other: &Number) -> Result<Number, NumberError> {
        todo!()
    }

    pub fn checked_sub(&self, _other: &Number) -> Result<Number, NumberError> {
        todo!()
    }

    pub fn is_zero(&self) -> bool {
        self.mantissa == 0
    }

    pub fn is_negative(&self) -> bool {
        self.negative
    }

    /// Bytes DynamoDB charges for this number: about one byte per two significant digits, plus one.
    pub fn size_bytes(&self) -> usize {
        todo!()
    }

    /// Appends an encoding whose bytewise order equals numeric order and which is
    /// self-delimiting (no encoding is a prefix of another), for keys in ordered storage.
    pub fn encode_ordered(&self, _out: &mut Vec<u8>) {
        todo!()
    }
}

impl Ord for Number {
    fn cmp(&self, _other: &Self) -> Ordering {
        todo!()
    }
}

impl PartialOrd for Number {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Plain decimal notation without exponent, as DynamoDB returns numbers (`1E+2` reads back as `100`).
impl fmt::Display for Number {
    fn fmt(&self, _f: &mut fmt::Formatter<'_>) -> fmt::Result {
        todo!()
    }
}
