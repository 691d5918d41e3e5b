//! Compare-and-set for providers whose API has no conditional write (Cloudflare and
//! DigitalOcean DNS records, DigitalOcean reserved IPs): the step re-reads the value just
//! before writing and writes only over a value this controller put there.
//!
//! The rule: the value found may be overwritten only if it is
//! - the value this actuator last wrote (remembered in memory while the controller runs), or
//! - the value of the region the order moves away from (`Order::from`: what the controller
//!   wrote when that region became active, also after a restart), or
//! - with neither known (the first decision of a controller that has no previous active
//!   region), the value of one of the configured regions.
//!
//! Anything else means someone or something else changed it (an operator by hand, a second
//! controller, another tool): the step stops as `Fenced` instead of overwriting it, and an
//! operator decides. The value already being the new one is success without a write. The
//! window between the re-read and the write stays open (these APIs cannot close it); the
//! read-back after the write shows what won.

/// What a step does with the value it found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The value is the new one already: nothing to write.
    Done,
    /// The value is one this controller put there: write the new one.
    Write,
    /// Someone else changed it: the message says what was found and what was expected.
    Fenced(String),
}

/// Applies the rule of the module documentation. `what` names the thing in the message.
pub fn judge(
    what: &str,
    current: &str,
    target: &str,
    last_written: Option<&str>,
    from_value: Option<&str>,
    configured: &[&str],
) -> Verdict {
    if current == target {
        return Verdict::Done;
    }
    let expected: Vec<&str> = match (last_written, from_value) {
        (None, None) => configured.to_vec(),
        (last, from) => last.into_iter().chain(from).collect(),
    };
    if expected.contains(&current) {
        return Verdict::Write;
    }
    Verdict::Fenced(format!(
        "{what} is '{current}', which is neither the value this controller last wrote ({}) nor the new one ('{target}'): someone else changed it; check it, set it by hand if needed, then `switchyard resume`",
        expected
            .iter()
            .map(|v| format!("'{v}'"))
            .collect::<Vec<_>>()
            .join(" or ")
    ))
}

/// A checker that counts the errors reported through it, so a `check` can return `None`
/// after any.
pub struct Counted<'a> {
    inner: &'a mut dyn crate::Checker,
    pub errors: usize,
}

impl<'a> Counted<'a> {
    pub fn new(inner: &'a mut dyn crate::Checker) -> Counted<'a> {
        Counted { inner, errors: 0 }
    }
}

impl crate::Checker for Counted<'_> {
    fn error(&mut self, span: std::ops::Range<usize>, message: String, fix: String) {
        self.errors += 1;
        self.inner.error(span, message, fix);
    }
    fn warn(&mut self, span: std::ops::Range<usize>, message: String, fix: String) {
        self.inner.warn(span, message, fix);
    }
    fn folder(&self) -> &std::path::Path {
        self.inner.folder()
    }
    fn regions(&self) -> &std::collections::BTreeSet<String> {
        self.inner.regions()
    }
}

/// Declares a REST step's settings table (`deny_unknown_fields`): the keys every REST step has
/// (`token`, `api_url`, `request_timeout_ms`), then its own fields; with `rest_keys()`. A macro
/// for the reason `promote_settings!` is one: serde cannot combine `deny_unknown_fields` with
/// a flattened shared struct.
macro_rules! rest_settings {
    // A DNS record step (Cloudflare, DigitalOcean): the keys of its record mode follow the
    // provider's own scope key (a zone, a domain), and `record_keys_given()` says whether any
    // of them is set.
    (records { $($scope:tt)* } $(#[$meta:meta])* pub struct $name:ident { $($own:tt)* }) => {
        $crate::cas::rest_settings! {
            $(#[$meta])*
            pub struct $name {
                $($scope)*
                /// The record's full name, like `shop.example.com`.
                #[serde(default)]
                pub record: Option<::toml::Spanned<String>>,
                #[serde(default, rename = "type")]
                pub record_type: Option<::toml::Spanned<String>>,
                /// Per region, the record's content (data) while that region is active.
                #[serde(default)]
                pub values: Option<$crate::cas::SpannedValues>,
                $($own)*
            }
        }

        impl $name {
            /// Whether the table has `record`, `type` or `values`.
            fn record_keys_given(&self) -> bool {
                self.record.is_some() || self.record_type.is_some() || self.values.is_some()
            }

            /// [`$crate::cas::check_record_mode`] on this table's `type` and `values`.
            fn check_record_mode(
                &self,
                what: &str,
                wording: $crate::cas::RecordWording,
                missing: Vec<&'static str>,
                checker: &mut dyn $crate::Checker,
            ) -> (Option<String>, Option<std::collections::BTreeMap<String, String>>) {
                let keys = (&self.record_type, &self.values);
                $crate::cas::check_record_mode(what, keys, wording, missing, self.token.span(), checker)
            }
        }
    };
    ($(#[$meta:meta])* pub struct $name:ident { $($own:tt)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            /// The API token (sent as `Authorization: Bearer`), from a file or an environment
            /// variable.
            pub token: ::toml::Spanned<$crate::secret::SecretSource>,
            /// Another API base URL than the provider's (tests).
            #[serde(default)]
            pub api_url: Option<::toml::Spanned<String>>,
            #[serde(default)]
            pub request_timeout_ms: Option<::toml::Spanned<u64>>,
            $($own)*
        }

        impl $name {
            /// This table's REST keys; `default_url` is the provider's API.
            pub(crate) fn rest_keys<'a>(&'a self, default_url: &'a str) -> $crate::cas::RestKeys<'a> {
                $crate::cas::RestKeys {
                    token: &self.token,
                    api_url: &self.api_url,
                    default_url,
                    request_timeout_ms: &self.request_timeout_ms,
                }
            }
        }
    };
}
pub(crate) use rest_settings;

/// The keys every REST step's table has.
pub(crate) struct RestKeys<'a> {
    pub token: &'a toml::Spanned<crate::secret::SecretSource>,
    pub api_url: &'a Option<toml::Spanned<String>>,
    /// The provider's API when `api_url` is left out.
    pub default_url: &'a str,
    pub request_timeout_ms: &'a Option<toml::Spanned<u64>>,
}

/// A REST step's two modes: what each takes (like `a record (zone_id, record, type, values)`)
/// and whether the table has any of its keys; exactly one must be chosen (`fix` says how to
/// have both).
pub(crate) struct Modes<'a> {
    pub first: (&'a str, bool),
    pub second: (&'a str, bool),
    pub fix: &'a str,
}

/// What a REST step (Cloudflare, DigitalOcean) checks first: its `token`, `api_url` (else
/// `default_url`) and `request_timeout_ms`; then which of its `modes` its keys choose, and
/// that mode's target (`target(true)` for the first, through the same counting checker). The
/// client and the target, or `None` after any error.
pub(crate) fn check_rest_step<T>(
    what: &str,
    keys: RestKeys<'_>,
    modes: Modes<'_>,
    checker: &mut dyn crate::Checker,
    target: impl FnOnce(bool, &mut Counted<'_>) -> Option<T>,
) -> Option<(crate::rest::Rest, T)> {
    let token = keys.token;
    let checker = &mut Counted::new(checker);
    let secret = token.get_ref().resolve(token.span(), &format!("{what} token"), checker);
    let (url, timeout_ms) = crate::rest::check_api(what, &keys, checker);
    let target = if modes.first.1 != modes.second.1 {
        target(modes.first.1, checker)
    } else {
        crate::Checker::error(
            &mut *checker,
            token.span(),
            format!(
                "{what} needs either {} or {}, not both or neither",
                modes.first.0, modes.second.0
            ),
            modes.fix.into(),
        );
        None
    };
    if checker.errors > 0 {
        return None;
    }
    let api = crate::rest::Rest::for_step(&url?, secret, timeout_ms, what, token.span(), checker)?;
    Some((api, target?))
}

/// Checks a `{ region = value }` table of a step's settings: every key a configured region,
/// every configured region present. Returns the entries as plain strings.
pub fn region_map<T: Clone>(
    what: &str,
    table: &std::collections::BTreeMap<toml::Spanned<String>, toml::Spanned<T>>,
    span: std::ops::Range<usize>,
    every_region: bool,
    checker: &mut dyn crate::Checker,
) -> std::collections::BTreeMap<String, T> {
    let regions = checker.regions().clone();
    let mut out = std::collections::BTreeMap::new();
    for (region, value) in table {
        if !regions.contains(region.get_ref()) {
            checker.error(
                region.span(),
                format!("{what} names unknown region '{}'", region.get_ref()),
                format!(
                    "use the configured regions: {}",
                    regions.iter().cloned().collect::<Vec<_>>().join(", ")
                ),
            );
        }
        out.insert(region.get_ref().clone(), value.get_ref().clone());
    }
    let missing: Vec<&String> = regions.iter().filter(|r| !out.contains_key(*r)).collect();
    if every_region && !missing.is_empty() {
        checker.error(
            span.clone(),
            format!(
                "{what} has no value for region(s) {}",
                missing.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(", ")
            ),
            "give every configured region its value, like { us-east-1 = \"192.0.2.10\", eu-west-1 = \"198.51.100.20\" }".into(),
        );
    }
    if table.is_empty() && !every_region {
        checker.error(span, format!("{what} is empty"), "name at least one region".into());
    }
    out
}

/// Reports a key of a step's mode missing while the mode's other key (`partner`) is set; `fix`
/// says how to add it.
pub(crate) fn missing_key(
    what: &str,
    (key, partner, fix): (&str, &str, &str),
    span: std::ops::Range<usize>,
    checker: &mut dyn crate::Checker,
) {
    checker.error(span, format!("{what} has {partner} but no {key}"), fix.into());
}

/// A `{ region = value }` table of a step's mode (`names`: the key, its partner key and how to
/// add it, as for [`missing_key`]): checked by `each` (its limits, its values), then as a
/// [`region_map`] of some regions; missing, an error.
pub(crate) fn mode_table<T: Clone>(
    what: &str,
    names: (&str, &str, &str),
    table: &Option<toml::Spanned<std::collections::BTreeMap<toml::Spanned<String>, toml::Spanned<T>>>>,
    span: std::ops::Range<usize>,
    checker: &mut dyn crate::Checker,
    each: impl FnOnce(
        &toml::Spanned<std::collections::BTreeMap<toml::Spanned<String>, toml::Spanned<T>>>,
        &mut dyn crate::Checker,
    ),
) -> Option<std::collections::BTreeMap<String, T>> {
    let Some(table) = table else {
        missing_key(what, names, span, checker);
        return None;
    };
    each(table, checker);
    let what = format!("{what} {}", names.0);
    Some(region_map(&what, table.get_ref(), table.span(), false, checker))
}

/// A record step's `values = { region = "content" }` as the settings hold it.
pub(crate) type SpannedValues = toml::Spanned<std::collections::BTreeMap<toml::Spanned<String>, toml::Spanned<String>>>;

/// Checks a DNS record step's `type` (one of `types`); a missing one is added to `missing`.
pub(crate) fn check_record_type(
    what: &str,
    record_type: &Option<toml::Spanned<String>>,
    types: &[&str],
    missing: &mut Vec<&'static str>,
    checker: &mut dyn crate::Checker,
) -> Option<String> {
    match record_type {
        Some(t) if types.contains(&t.get_ref().as_str()) => Some(t.get_ref().clone()),
        Some(t) => {
            checker.error(
                t.span(),
                format!("{what} type '{}' is not supported", t.get_ref()),
                format!("use one of {}", types.join(", ")),
            );
            None
        }
        None => {
            missing.push("type");
            None
        }
    }
}

/// Checks a DNS record step's `values` (every configured region, each a valid content of
/// `record_type`; `content` names a value in the fix, like `record content`); a missing table
/// is added to `missing`.
pub(crate) fn check_record_values(
    what: &str,
    values: &Option<SpannedValues>,
    record_type: Option<&String>,
    content: &str,
    missing: &mut Vec<&'static str>,
    checker: &mut dyn crate::Checker,
) -> Option<std::collections::BTreeMap<String, String>> {
    let Some(table) = values else {
        missing.push("values");
        return None;
    };
    let values = region_map(&format!("{what} values"), table.get_ref(), table.span(), true, checker);
    if let Some(record_type) = record_type {
        for (region, value) in table.get_ref() {
            if let Err(message) = crate::cloudflare::check_content(record_type, value.get_ref()) {
                checker.error(
                    value.span(),
                    format!("{what} value of {}: {message}", region.get_ref()),
                    format!("give {content}"),
                );
            }
        }
    }
    Some(values)
}

/// How a record step names its values in errors.
#[derive(Clone, Copy)]
pub(crate) struct RecordWording {
    /// The record types the step may point at a region.
    pub types: &'static [&'static str],
    /// A valid value of a type, like `a valid A record content` (the fix of a bad value).
    pub content: fn(&str) -> String,
    /// The fix when keys of the mode are missing: what a record step needs.
    pub needs: &'static str,
}

/// Checks a record step's `type` ([`check_record_type`]) and `values`
/// ([`check_record_values`]), then reports in one error every key of the mode that is missing:
/// those in `missing` (the step's own keys, checked before) and these two.
pub(crate) fn check_record_mode(
    what: &str,
    (record_type, values): (&Option<toml::Spanned<String>>, &Option<SpannedValues>),
    wording: RecordWording,
    mut missing: Vec<&'static str>,
    span: std::ops::Range<usize>,
    checker: &mut dyn crate::Checker,
) -> (Option<String>, Option<std::collections::BTreeMap<String, String>>) {
    let record_type = check_record_type(what, record_type, wording.types, &mut missing, checker);
    let content = (wording.content)(record_type.as_deref().unwrap_or_default());
    let values = check_record_values(what, values, record_type.as_ref(), &content, &mut missing, checker);
    if !missing.is_empty() {
        checker.error(
            span,
            format!("{what} has no {}", missing.join(", ")),
            wording.needs.into(),
        );
    }
    (record_type, values)
}

/// Reads a paginated listing: `page(n)` gives page `n`'s items (from 1) and whether another
/// page follows; at most `pages_max` pages are read, a longer listing is refused, naming
/// `listing` (like `A records named shop.example in zone Z`).
pub(crate) async fn read_pages<T, F, Fut>(pages_max: u32, listing: &str, mut page: F) -> Result<Vec<T>, crate::Failure>
where
    F: FnMut(u32) -> Fut,
    Fut: std::future::Future<Output = Result<(Vec<T>, bool), crate::Failure>>,
{
    let mut found = Vec::new();
    let mut number = 1;
    loop {
        let (items, more) = page(number).await?;
        found.extend(items);
        if !more {
            return Ok(found);
        }
        if number >= pages_max {
            return Err(crate::Failure::Refused(format!(
                "more than {pages_max} pages of {listing}"
            )));
        }
        number += 1;
    }
}

/// The one record a lookup must find: refused when `found` holds none (create it in `place`
/// first: `where_to` like `in Cloudflare `, may be empty) or several (delete the others).
pub(crate) fn exactly_one<T>(
    mut found: Vec<T>,
    place: &str,
    record_type: &str,
    name: &str,
    where_to: &str,
) -> Result<T, crate::Failure> {
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(crate::Failure::Refused(format!(
            "{place} has no {record_type} record named {name}: create it (with the active region's value) {where_to}first"
        ))),
        n => Err(crate::Failure::Refused(format!(
            "{place} has {n} {record_type} records named {name}; the step drives exactly one: delete the others"
        ))),
    }
}

/// The order's value from a step's `values`.
pub(crate) fn target_of<'v>(
    values: &'v std::collections::BTreeMap<String, String>,
    order: &crate::Order,
) -> Result<&'v String, crate::Failure> {
    values
        .get(&order.to)
        .ok_or_else(|| crate::Failure::Refused(format!("no value for region {} in the step's values", order.to)))
}

/// A record's content in the one form this module compares: providers store some contents
/// otherwise than they were written (Cloudflare compresses an IPv6 address, drops a CNAME
/// target's final dot and keeps TXT content as quoted character strings; DigitalOcean keeps a
/// CNAME's final dot). Compared as written, a value the provider normalised never read back
/// as written (the step failed on every attempt) and then looked like someone else's (fenced).
pub fn canonical_content(record_type: &str, content: &str) -> String {
    let content = content.trim();
    match record_type {
        "A" => content
            .parse::<std::net::Ipv4Addr>()
            .map_or_else(|_| content.to_string(), |ip| ip.to_string()),
        "AAAA" => content
            .parse::<std::net::Ipv6Addr>()
            .map_or_else(|_| content.to_string(), |ip| ip.to_string()),
        "CNAME" => content.trim_end_matches('.').to_ascii_lowercase(),
        "TXT" => unquoted(content).unwrap_or_else(|| content.to_string()),
        _ => content.to_string(),
    }
}

/// The text of one quoted character string (`"v=1 \"x\""` → `v=1 "x"`), or `None` when
/// `content` is not exactly one.
fn unquoted(content: &str) -> Option<String> {
    let inner = content.strip_prefix('"')?.strip_suffix('"')?;
    let mut text = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => text.push(chars.next()?),
            '"' => return None,
            c => text.push(c),
        }
    }
    Some(text)
}

/// [`judge`] on the `current` content of a `record_type` record, read just before writing
/// `target` ([`target_of`]), every value compared in its [`canonical_content`]:
/// `Ok(Some(note))` when it is `target` already, `Ok(None)` to write.
pub(crate) fn before_write(
    what: &str,
    record_type: &str,
    current: &str,
    target: &str,
    values: &std::collections::BTreeMap<String, String>,
    last_written: &std::sync::Mutex<Option<String>>,
    order: &crate::Order,
) -> Result<Option<String>, crate::Failure> {
    let canonical = |value: &str| canonical_content(record_type, value);
    let last = last_written
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_deref()
        .map(canonical);
    let configured: Vec<String> = values.values().map(|v| canonical(v)).collect();
    let configured: Vec<&str> = configured.iter().map(String::as_str).collect();
    let from_value = order.from.as_ref().and_then(|f| values.get(f)).map(|v| canonical(v));
    match judge(
        what,
        &canonical(current),
        &canonical(target),
        last.as_deref(),
        from_value.as_deref(),
        &configured,
    ) {
        Verdict::Done => Ok(Some(format!("{what} already {target}; read back"))),
        Verdict::Fenced(message) => Err(crate::Failure::Fenced(message)),
        Verdict::Write => Ok(None),
    }
}

/// The second half: the content read `back` after writing `target` over `was` must be
/// `target` (in its [`canonical_content`]); then it is remembered as this actuator's last write.
pub(crate) fn after_write(
    what: &str,
    record_type: &str,
    was: &str,
    target: &str,
    back: &str,
    last_written: &std::sync::Mutex<Option<String>>,
) -> crate::Outcome {
    if canonical_content(record_type, back) != canonical_content(record_type, target) {
        return Err(crate::Failure::Retryable(format!(
            "{what} reads back as '{back}' after setting '{target}'"
        )));
    }
    *last_written.lock().unwrap_or_else(|p| p.into_inner()) = Some(target.to_string());
    Ok(format!("{what} set to {target} (was {was}); read back"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIGURED: &[&str] = &["192.0.2.1", "198.51.100.2"];

    #[test]
    fn contents_compare_as_the_providers_store_them() {
        assert_eq!(canonical_content("AAAA", "2001:DB8:0:0::20"), "2001:db8::20");
        assert_eq!(canonical_content("A", " 192.0.2.1 "), "192.0.2.1");
        assert_eq!(canonical_content("CNAME", "LB-eu.Example.com."), "lb-eu.example.com");
        assert_eq!(canonical_content("TXT", "\"v=1 \\\"x\\\"\""), "v=1 \"x\"");
        assert_eq!(canonical_content("TXT", "v=1"), "v=1");
        // Two character strings stay as they are.
        assert_eq!(canonical_content("TXT", "\"a\" \"b\""), "\"a\" \"b\"");
    }

    #[test]
    fn the_new_value_already_there_is_done() {
        assert_eq!(judge("x", "b", "b", Some("a"), None, CONFIGURED), Verdict::Done);
    }

    #[test]
    fn a_value_this_controller_wrote_is_overwritten() {
        assert_eq!(judge("x", "a", "b", Some("a"), None, CONFIGURED), Verdict::Write);
        assert_eq!(judge("x", "f", "b", Some("a"), Some("f"), CONFIGURED), Verdict::Write);
        assert_eq!(judge("x", "f", "b", None, Some("f"), CONFIGURED), Verdict::Write);
        assert_eq!(
            judge("x", "192.0.2.1", "198.51.100.2", None, None, CONFIGURED),
            Verdict::Write
        );
    }

    #[test]
    fn a_value_someone_else_wrote_is_fenced_with_both_values_named() {
        let verdict = judge("the record", "203.0.113.9", "b", Some("a"), None, CONFIGURED);
        let Verdict::Fenced(message) = verdict else {
            panic!("expected fenced, got {verdict:?}");
        };
        assert!(message.contains("'203.0.113.9'") && message.contains("'a'") && message.contains("'b'"));
        // With a previous region known, the configured values of other regions do not count.
        assert!(matches!(
            judge("x", "192.0.2.1", "b", None, Some("198.51.100.2"), CONFIGURED),
            Verdict::Fenced(_)
        ));
        assert!(matches!(
            judge("x", "203.0.113.9", "b", None, None, CONFIGURED),
            Verdict::Fenced(_)
        ));
    }
}
