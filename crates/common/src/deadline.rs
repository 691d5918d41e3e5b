//! Work with a time bound, whose failure names what was attempted.

use std::future::Future;
use std::time::Duration;

/// Runs `work` for at most `ms` milliseconds: its value, or an error that starts with `what`
/// (its own error, or "no answer within `ms` ms").
pub async fn bounded<T, E: std::fmt::Display>(
    what: &str,
    ms: u64,
    work: impl Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(Duration::from_millis(ms), work).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(format!("{what}: {error}")),
        Err(_) => Err(format!("{what}: no answer within {ms} ms")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_value_the_error_or_the_timeout_each_name_the_work() {
        assert_eq!(bounded("add", 1_000, async { Ok::<_, String>(3) }).await, Ok(3));
        assert_eq!(
            bounded("read", 1_000, async { Err::<u8, _>("refused") }).await,
            Err("read: refused".to_string())
        );
        let never = std::future::pending::<Result<u8, String>>();
        assert_eq!(
            bounded("wait", 10, never).await,
            Err("wait: no answer within 10 ms".to_string())
        );
    }
}
