//! Positions in a configuration file, for errors that name `line:column`: one convention for
//! every component — both 1-based, the column counted in characters (what an editor shows),
//! from a byte offset such as a TOML span's start.

/// 1-based line and column (in characters) of the byte `offset` in `text`. An offset past the
/// end is the end; one inside a multi-byte character is that character.
pub fn line_column(text: &str, offset: usize) -> (usize, usize) {
    LineIndex::new(text).position(text, offset)
}

/// A byte count for people: `512 B`, `812.0 KiB`, `1.3 MiB`, `2.0 GiB` (binary units, one
/// decimal), so that a small number does not show as `0.0 MiB`.
pub fn shown_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// `n` and the noun in the number it takes: `counted(1, "zone", "zones")` is "1 zone".
pub fn counted(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// `line L, column C` of the byte `offset` in `text`.
pub fn describe(text: &str, offset: usize) -> String {
    let (line, column) = line_column(text, offset);
    format!("line {line}, column {column}")
}

/// A URL as errors, logs, status pages and alerts may show it: its scheme, host and port and the
/// first segment of its path; a longer path, a query and any `user:password@` become `…`.
/// Webhook URLs carry their credential there (Slack's `/services/T/B/SECRET`, Discord's
/// `/api/webhooks/ID/TOKEN`, `?api_key=`), and a reader of the status or of an alert channel
/// must not learn it. Text that is no `scheme://` URL is shown as `<a URL>`.
pub fn shown_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "<a URL>".to_string();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let host = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    let mut shown = format!("{scheme}://{host}");
    let path_end = tail.find(['?', '#']).unwrap_or(tail.len());
    let (path, after) = tail.split_at(path_end);
    let mut segments = path.split('/').filter(|s| !s.is_empty());
    if let Some(first) = segments.next() {
        shown.push('/');
        shown.push_str(first);
        if segments.next().is_some() {
            shown.push_str("/…");
        } else if path.ends_with('/') {
            shown.push('/');
        }
    }
    if !after.is_empty() {
        shown.push_str(if after.starts_with('?') { "?…" } else { "#…" });
    }
    shown
}

/// `text` safe in HTML element content and in a double-quoted attribute: `&`, `<`, `>` and `"`
/// as character references.
pub fn escape_html(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The start of every line of one text, for many lookups into it.
#[derive(Clone, Debug)]
pub struct LineIndex {
    starts: Vec<usize>,
}

impl LineIndex {
    pub fn new(text: &str) -> LineIndex {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        LineIndex { starts }
    }

    /// [`line_column`] of `offset` in `text` (the text this index was built from).
    pub fn position(&self, text: &str, offset: usize) -> (usize, usize) {
        let mut offset = offset.min(text.len());
        while offset > 0 && !text.is_char_boundary(offset) {
            offset -= 1;
        }
        let line = self.starts.partition_point(|&start| start <= offset).max(1);
        let start = self.starts.get(line - 1).copied().unwrap_or(0).min(offset);
        let column = text.get(start..offset).map_or(0, |before| before.chars().count()) + 1;
        (line, column)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shown_url_keeps_where_it_goes_and_drops_what_authenticates() {
        for (url, shown) in [
            (
                "https://hooks.slack.com/services/T000/B000/XXXXSECRET",
                "https://hooks.slack.com/services/…",
            ),
            (
                "https://hookuser:S3cret@127.0.0.1:23012/services/T0/B0/SECRET?api_key=K",
                "https://127.0.0.1:23012/services/…?…",
            ),
            ("http://127.0.0.1:8053", "http://127.0.0.1:8053"),
            ("http://127.0.0.1:8053/", "http://127.0.0.1:8053"),
            ("http://dns:8053/health", "http://dns:8053/health"),
            ("http://dns:8053/v1/health", "http://dns:8053/v1/…"),
            (
                "http://[::1]:7400/v1/active-region?timeout_ms=5",
                "http://[::1]:7400/v1/…?…",
            ),
            ("http://u:p@h?x=1", "http://h?…"),
            ("not a url with a password", "<a URL>"),
        ] {
            assert_eq!(shown_url(url), shown, "{url}");
        }
    }

    #[test]
    fn lines_and_columns_are_one_based_and_count_characters() {
        let text = "a = 1\nnamé = \"x\"\n\nlast";
        assert_eq!(line_column(text, 0), (1, 1));
        assert_eq!(line_column(text, 4), (1, 5));
        assert_eq!(line_column(text, 6), (2, 1));
        // After the two-byte é, the column counts it once.
        let equals = text.find(" = \"").expect("in the text") + 1;
        assert_eq!(line_column(text, equals), (2, 6));
        assert_eq!(line_column(text, text.find("last").expect("in the text")), (4, 1));
        assert_eq!(line_column(text, 10_000), (4, 5));
        // Inside the é: the é itself.
        let inside = text.find('é').expect("in the text") + 1;
        assert_eq!(line_column(text, inside), (2, 4));
        assert_eq!(describe(text, 6), "line 2, column 1");
        assert_eq!(line_column("", 3), (1, 1));
    }
}

#[cfg(test)]
mod counted_tests {
    #[test]
    fn byte_counts_take_the_unit_that_shows_them() {
        assert_eq!(super::shown_bytes(0), "0 B");
        assert_eq!(super::shown_bytes(1023), "1023 B");
        assert_eq!(super::shown_bytes(100 * 1024), "100.0 KiB");
        assert_eq!(super::shown_bytes(3 * 1024 * 1024 / 2), "1.5 MiB");
        assert_eq!(super::shown_bytes(5 << 40), "5.0 TiB");
        assert_eq!(super::shown_bytes(u64::MAX), "16777216.0 TiB");
    }

    #[test]
    fn one_takes_the_singular_and_every_other_number_the_plural() {
        assert_eq!(super::counted(1, "zone", "zones"), "1 zone");
        assert_eq!(super::counted(0, "zone", "zones"), "0 zones");
        assert_eq!(super::counted(2, "vantage point", "vantage points"), "2 vantage points");
    }
}
