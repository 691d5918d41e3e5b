//! AWS Signature Version 4 verification. PLACEHOLDER — being implemented.
