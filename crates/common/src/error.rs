//! Error text for people.

/// An error with its causes, so a failed TLS handshake says why ("invalid peer certificate:
/// UnknownIssuer"), not only that the connection failed. A cause whose text is already part of
/// the message is not repeated; at most [`CHAIN_DEPTH_MAX`] causes.
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    for _ in 0..CHAIN_DEPTH_MAX {
        let Some(cause) = source else { break };
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Causes followed at most by [`chain`].
pub const CHAIN_DEPTH_MAX: usize = 8;

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Layer(&'static str, Option<Box<Layer>>);

    impl std::fmt::Display for Layer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Layer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|l| l as _)
        }
    }

    #[test]
    fn causes_are_appended_once() {
        let error = Layer(
            "connect failed",
            Some(Box::new(Layer(
                "tls: bad cert",
                Some(Box::new(Layer("bad cert", None))),
            ))),
        );
        assert_eq!(chain(&error), "connect failed: tls: bad cert");
        assert_eq!(chain(&Layer("alone", None)), "alone");
    }
}
