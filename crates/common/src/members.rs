//! The controllers a client may ask: one `--controller` value naming every member of a group of
//! controllers (`[controller.ha]`), `URL[,URL...]`. Every member answers reads (the pointer as
//! etcd records it) and passes operator commands and agent reports on to the leader, so a
//! client that knows them all keeps working while any one is up; a client that knows one stops
//! with it.

/// Members one `--controller` value may name (an etcd-backed group is 3 or 5; 9 leaves room).
pub const CONTROLLER_URLS_MAX: usize = 9;
/// Longest member URL, in bytes.
pub const CONTROLLER_URL_BYTES_MAX: usize = 2048;

/// Every member a client knows, in the order given (the first is asked first).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControllerUrls {
    urls: Vec<String>,
}

impl ControllerUrls {
    /// Parses `URL[,URL...]`: each `http://` or `https://` with a host, a trailing `/` dropped;
    /// a URL given twice counts once.
    pub fn parse(text: &str) -> Result<ControllerUrls, String> {
        let mut urls: Vec<String> = Vec::new();
        for part in text.split(',') {
            let url = part.trim().trim_end_matches('/');
            if url.is_empty() {
                return Err(format!(
                    "'{text}' has an empty controller URL: give URL[,URL...], e.g. http://10.0.0.2:7000,http://10.0.1.2:7000"
                ));
            }
            if url.len() > CONTROLLER_URL_BYTES_MAX {
                return Err(format!(
                    "a controller URL is {} bytes long: at most {CONTROLLER_URL_BYTES_MAX}",
                    url.len()
                ));
            }
            let rest = url
                .strip_prefix("http://")
                .or_else(|| url.strip_prefix("https://"))
                .ok_or_else(|| format!("controller URL '{url}' is not http://host:port or https://host:port"))?;
            let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
            if host.is_empty() || host.starts_with(':') || host.contains('@') || host.chars().any(char::is_whitespace) {
                return Err(format!(
                    "controller URL '{url}' names no host: give http://host:port or https://host:port"
                ));
            }
            if !urls.iter().any(|known| known == url) {
                urls.push(url.to_string());
            }
        }
        if urls.len() > CONTROLLER_URLS_MAX {
            return Err(format!(
                "{} controller URLs given: at most {CONTROLLER_URLS_MAX}",
                urls.len()
            ));
        }
        Ok(ControllerUrls { urls })
    }

    /// The members, first to ask first. Never empty.
    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    /// The member at `index`, counting round: the one to ask after `index - 1` failed.
    pub fn at(&self, index: usize) -> &str {
        &self.urls[index % self.urls.len()]
    }

    pub fn len(&self) -> usize {
        self.urls.len()
    }

    /// Always false: a parsed list names at least one member.
    pub fn is_empty(&self) -> bool {
        self.urls.is_empty()
    }
}

impl std::fmt::Display for ControllerUrls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.urls.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_or_several_members_in_order_without_repeats() {
        let one = ControllerUrls::parse("http://10.0.0.2:7000/").expect("one");
        assert_eq!(one.urls(), ["http://10.0.0.2:7000"]);
        let several = ControllerUrls::parse(" https://a:7000 ,http://b:7000,https://a:7000/").expect("several");
        assert_eq!(several.urls(), ["https://a:7000", "http://b:7000"]);
        assert_eq!(several.at(0), "https://a:7000");
        assert_eq!(several.at(3), "http://b:7000");
        assert_eq!(several.to_string(), "https://a:7000,http://b:7000");
    }

    #[test]
    fn bad_lists_name_the_problem() {
        for (text, says) in [
            ("", "empty controller URL"),
            ("http://a:1,,http://b:1", "empty controller URL"),
            ("a:7000", "is not http://host:port"),
            ("ftp://a:7000", "is not http://host:port"),
            ("http://:7000", "names no host"),
            ("http://user@a:7000", "names no host"),
            ("http://", "is not http://host:port"),
        ] {
            let error = ControllerUrls::parse(text).expect_err(text);
            assert!(error.contains(says), "{text}: {error}");
        }
        let many: Vec<String> = (0..=CONTROLLER_URLS_MAX).map(|i| format!("http://h{i}:1")).collect();
        let error = ControllerUrls::parse(&many.join(",")).expect_err("too many");
        assert!(error.contains("at most 9"), "{error}");
        let long = format!("http://{}:1", "a".repeat(CONTROLLER_URL_BYTES_MAX));
        assert!(ControllerUrls::parse(&long).expect_err("long").contains("bytes long"));
    }
}
