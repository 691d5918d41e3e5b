//! Secrets (API tokens, passwords, TSIG keys) come from a file or an environment variable,
//! never from the TOML itself: `token = { file = "cf.token" }` or `token = { env = "CF_TOKEN" }`.

use std::io::Read as _;
use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use crate::Checker;

/// Longest secret file read, in bytes.
pub const SECRET_FILE_BYTES_MAX: u64 = 64 * 1024;

/// Where a secret is read from: exactly one of `file` and `env`. A string written in its place
/// (the secret itself, inline) is kept apart so that `resolve` refuses it without ever
/// repeating it in a message.
#[derive(Clone, Debug, Default)]
pub struct SecretSource {
    /// A file holding only the secret (relative to the config file's folder); surrounding
    /// whitespace is trimmed.
    pub file: Option<Spanned<PathBuf>>,
    /// An environment variable of the controller's process.
    pub env: Option<Spanned<String>>,
    /// The TOML held a string here: a secret written into the file (never kept).
    pub inline: bool,
}

/// The table form, `{ file = "..." }` or `{ env = "..." }`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SourceTable {
    #[serde(default)]
    file: Option<Spanned<PathBuf>>,
    #[serde(default)]
    env: Option<Spanned<String>>,
}

impl<'de> Deserialize<'de> for SecretSource {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<SecretSource, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = SecretSource;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("{ file = \"PATH\" } or { env = \"VARIABLE\" }")
            }

            // The value is dropped here, unread, so no message can show it.
            fn visit_str<E: serde::de::Error>(self, _secret: &str) -> Result<SecretSource, E> {
                Ok(SecretSource {
                    inline: true,
                    ..SecretSource::default()
                })
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<SecretSource, A::Error> {
                let table = SourceTable::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(SecretSource {
                    file: table.file,
                    env: table.env,
                    inline: false,
                })
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// A secret's value; `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl SecretSource {
    /// Reads the secret; problems point at the `file` or `env` key. `what` names the setting
    /// in messages, like "cloudflare step 'dns' token".
    pub fn resolve(&self, span: std::ops::Range<usize>, what: &str, checker: &mut dyn Checker) -> Option<Secret> {
        if self.inline {
            checker.error(
                span,
                format!("{what} is written into the config file; secrets never go in the TOML (the file is copied, checked in and printed)"),
                "put the secret in a file readable only by the controller and write { file = \"secret.txt\" }, or export it and write { env = \"VARIABLE\" }".into(),
            );
            return None;
        }
        match (&self.file, &self.env) {
            (Some(file), None) => {
                let mut path = file.get_ref().clone();
                if path.is_relative() {
                    path = checker.folder().join(path);
                }
                let shown = path.display().to_string();
                let mut text = String::new();
                let read = std::fs::File::open(&path)
                    .and_then(|f| f.take(SECRET_FILE_BYTES_MAX + 1).read_to_string(&mut text));
                match read {
                    Err(error) => {
                        checker.error(
                            file.span(),
                            format!("{what}: cannot read {shown}: {error}"),
                            "check the path (relative paths start at the config file's folder) and its permissions"
                                .into(),
                        );
                        None
                    }
                    Ok(bytes) if bytes as u64 > SECRET_FILE_BYTES_MAX => {
                        checker.error(
                            file.span(),
                            format!("{what}: {shown} has more than {SECRET_FILE_BYTES_MAX} bytes"),
                            "put only the secret in the file".into(),
                        );
                        None
                    }
                    Ok(_) if text.trim().is_empty() => {
                        checker.error(
                            file.span(),
                            format!("{what}: {shown} is empty"),
                            "write the secret into the file".into(),
                        );
                        None
                    }
                    Ok(_) => Some(Secret(text.trim().to_string())),
                }
            }
            (None, Some(env)) => match std::env::var(env.get_ref()) {
                Ok(value) if !value.trim().is_empty() => Some(Secret(value.trim().to_string())),
                Ok(_) | Err(std::env::VarError::NotPresent) => {
                    checker.error(
                        env.span(),
                        format!("{what}: the environment variable {} is not set or empty", env.get_ref()),
                        format!(
                            "export {}=... before starting the controller, or use file = \"...\"",
                            env.get_ref()
                        ),
                    );
                    None
                }
                Err(std::env::VarError::NotUnicode(_)) => {
                    checker.error(
                        env.span(),
                        format!("{what}: the environment variable {} is not UTF-8", env.get_ref()),
                        "store the secret as text".into(),
                    );
                    None
                }
            },
            _ => {
                checker.error(
                    span,
                    format!("{what} needs exactly one of file and env"),
                    "write { file = \"secret.txt\" } or { env = \"VARIABLE\" }; never the secret itself".into(),
                );
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::test_support::Collect;
    use std::collections::BTreeSet;
    use std::path::Path;

    #[derive(Deserialize)]
    struct Holder {
        token: Spanned<SecretSource>,
    }

    fn resolve(toml_text: &str, folder: &Path) -> (Option<Secret>, Vec<String>) {
        let holder: Holder = toml::from_str(toml_text).expect("test TOML parses");
        let mut checker = Collect {
            folder: folder.to_path_buf(),
            regions: BTreeSet::new(),
            errors: Vec::new(),
        };
        let span = holder.token.span();
        let secret = holder.token.get_ref().resolve(span, "token", &mut checker);
        (secret, checker.errors)
    }

    #[test]
    fn a_relative_file_is_read_from_the_config_folder_and_trimmed() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("t.txt"), "  s3cret\n").expect("write");
        let (secret, errors) = resolve("token = { file = \"t.txt\" }", dir.path());
        assert_eq!(secret.as_ref().map(Secret::expose), Some("s3cret"));
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(format!("{:?}", secret.expect("secret")), "Secret(..)");
    }

    #[test]
    fn a_secret_written_inline_is_refused_without_being_repeated() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (secret, errors) = resolve("token = \"hunter2-very-secret\"", dir.path());
        assert!(secret.is_none());
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].contains("written into the config file"), "{errors:?}");
        assert!(!errors[0].contains("hunter2"), "{errors:?}");
        let unknown = toml::from_str::<Holder>("token = { path = \"x\" }")
            .err()
            .expect("unknown key");
        assert!(unknown.to_string().contains("path"), "{unknown}");
    }

    #[test]
    fn a_missing_file_an_unset_variable_and_both_or_neither_are_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (secret, errors) = resolve("token = { file = \"absent\" }", dir.path());
        assert!(secret.is_none() && errors[0].contains("cannot read"), "{errors:?}");
        let (secret, errors) = resolve("token = { env = \"SWITCHYARD_TEST_UNSET_VARIABLE\" }", dir.path());
        assert!(secret.is_none() && errors[0].contains("not set"), "{errors:?}");
        let (secret, errors) = resolve("token = { file = \"a\", env = \"B\" }", dir.path());
        assert!(secret.is_none() && errors[0].contains("exactly one"), "{errors:?}");
        let (secret, errors) = resolve("token = {}", dir.path());
        assert!(secret.is_none() && errors[0].contains("exactly one"), "{errors:?}");
    }
}
