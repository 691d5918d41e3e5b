//! TSIG (RFC 8945) with HMAC-SHA256, at the wire level: signing a request, verifying the
//! response, and reading BIND's `tsig-keygen` key files. Pure: the time is an argument.
//!
//! hickory-proto has TSIG only behind its DNSSEC features (which pull in a crypto provider of
//! their own); the workspace's hmac + sha2 do it in a page.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The only algorithm offered: what `tsig-keygen` generates by default.
pub const ALGORITHM: &str = "hmac-sha256";
/// Seconds of clock difference the server and this controller accept (RFC 8945 §10
/// recommends 300).
pub const FUDGE_S: u16 = 300;
/// A HMAC-SHA256 MAC's length; shorter (truncated) MACs are not accepted.
pub const MAC_BYTES: usize = 32;
/// Shortest secret accepted: half the hash output (RFC 8945 §6.1 recommends at least that).
pub const SECRET_BYTES_MIN: usize = 16;
/// The TSIG record type.
const TYPE_TSIG: u16 = 250;
/// Class ANY, which TSIG records carry.
const CLASS_ANY: u16 = 255;
/// Pointer hops followed while reading one compressed name.
const NAME_POINTERS_MAX: usize = 32;
/// Longest domain name in wire form.
const NAME_BYTES_MAX: usize = 255;

/// TSIG error codes (RFC 8945 §3, IANA DNS RCODEs).
pub const BADSIG: u16 = 16;
pub const BADKEY: u16 = 17;
pub const BADTIME: u16 = 18;
pub const BADTRUNC: u16 = 22;

/// A TSIG key: its name (lower-case wire form, as the MAC covers it) and secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Key {
    /// The key's name as written (for messages), without the trailing dot.
    pub name: String,
    wire_name: Vec<u8>,
    secret: Vec<u8>,
}

/// Why a key file (or a bare secret) was refused; the step's check points at `key_name` for
/// [`KeyError::NoKeyNamed`], at the key file otherwise.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("the file holds only a secret, so the key's name is needed: set key_name")]
    NameNeeded,
    #[error("the file has no key named '{0}'")]
    NoKeyNamed(String),
    #[error("the file has {0} keys: set key_name to pick one")]
    SeveralKeys(usize),
    #[error(
        "key '{name}' uses algorithm {algorithm}; only {ALGORITHM} is supported (tsig-keygen -a {ALGORITHM} {name})"
    )]
    Algorithm { name: String, algorithm: String },
    /// The file's text, the key's name or its secret is malformed: what is wrong.
    #[error("{0}")]
    Malformed(String),
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Key({}, ..)", self.name)
    }
}

impl Key {
    /// A key from its name and base64 secret.
    pub fn new(name: &str, secret_base64: &str) -> Result<Key, KeyError> {
        let wire_name = wire_name(name).map_err(KeyError::Malformed)?;
        let secret = base64::engine::general_purpose::STANDARD
            .decode(secret_base64.trim())
            .map_err(|e| KeyError::Malformed(format!("the secret is not base64 ({e})")))?;
        if secret.len() < SECRET_BYTES_MIN {
            return Err(KeyError::Malformed(format!(
                "the secret has {} bytes; at least {SECRET_BYTES_MIN} are needed",
                secret.len()
            )));
        }
        Ok(Key {
            name: name.trim_end_matches('.').to_string(),
            wire_name,
            secret,
        })
    }

    /// Reads a key file: BIND's `tsig-keygen` output (`key "NAME" { algorithm hmac-sha256;
    /// secret "..."; };`), or just the base64 secret (then `name` is needed). `name`, when
    /// given, picks the key of that name and must match the file's.
    pub fn parse(text: &str, name: Option<&str>) -> Result<Key, KeyError> {
        if !text.contains('{') {
            let secret: String = text.split_whitespace().collect();
            return match name {
                Some(name) => Key::new(name, &secret),
                None => Err(KeyError::NameNeeded),
            };
        }
        let tokens = tokenize(text).map_err(KeyError::Malformed)?;
        let mut keys = Vec::new();
        let mut rest = tokens.as_slice();
        while let Some(position) = rest.iter().position(|t| t == "key") {
            let (key, after) = key_clause(&rest[position + 1..]).map_err(KeyError::Malformed)?;
            keys.push(key);
            rest = after;
        }
        let wanted = name.map(|n| n.trim_end_matches('.').to_ascii_lowercase());
        let key = match &wanted {
            Some(wanted) => keys
                .into_iter()
                .find(|(n, _, _)| n.trim_end_matches('.').eq_ignore_ascii_case(wanted))
                .ok_or_else(|| KeyError::NoKeyNamed(wanted.clone()))?,
            None if keys.len() == 1 => keys.remove(0),
            None => return Err(KeyError::SeveralKeys(keys.len())),
        };
        let (key_name, algorithm, secret) = key;
        if !algorithm.eq_ignore_ascii_case(ALGORITHM) {
            return Err(KeyError::Algorithm {
                name: key_name,
                algorithm,
            });
        }
        Key::new(&key_name, &secret)
    }

    fn mac(&self) -> Hmac<Sha256> {
        // HMAC takes keys of any length.
        Hmac::<Sha256>::new_from_slice(&self.secret).expect("HMAC accepts keys of any length")
    }
}

/// Words, quoted strings and the punctuation `{ } ;` of a named.conf-style file; comments
/// (`#`, `//`, `/* */`) dropped.
fn tokenize(text: &str) -> Result<Vec<String>, String> {
    let mut tokens = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {}
            '#' => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
            }
            '/' if chars.peek() == Some(&'/') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
            }
            '/' if chars.peek() == Some(&'*') => {
                chars.next();
                let mut last = ' ';
                let mut closed = false;
                for c in chars.by_ref() {
                    if last == '*' && c == '/' {
                        closed = true;
                        break;
                    }
                    last = c;
                }
                if !closed {
                    return Err("a /* comment is not closed".into());
                }
            }
            '{' | '}' | ';' => tokens.push(c.to_string()),
            '"' => {
                let mut word = String::new();
                let mut closed = false;
                for c in chars.by_ref() {
                    if c == '"' {
                        closed = true;
                        break;
                    }
                    word.push(c);
                }
                if !closed {
                    return Err("a quoted string is not closed".into());
                }
                tokens.push(word);
            }
            c => {
                let mut word = c.to_string();
                while let Some(&next) = chars.peek() {
                    if next.is_whitespace() || matches!(next, '{' | '}' | ';' | '"') {
                        break;
                    }
                    word.push(next);
                    chars.next();
                }
                tokens.push(word);
            }
        }
    }
    Ok(tokens)
}

/// `NAME { algorithm A; secret "S"; };` after the `key` keyword: (name, algorithm, secret).
fn key_clause(tokens: &[String]) -> Result<((String, String, String), &[String]), String> {
    let shape = "expected key \"NAME\" { algorithm hmac-sha256; secret \"BASE64\"; };";
    let [name, open, rest @ ..] = tokens else {
        return Err(shape.into());
    };
    if open != "{" {
        return Err(shape.into());
    }
    let mut algorithm = None;
    let mut secret = None;
    let mut rest = rest;
    loop {
        match rest {
            [close, tail @ ..] if close == "}" => {
                rest = tail.strip_prefix(&[";".to_string()][..]).unwrap_or(tail);
                break;
            }
            [word, value, semicolon, tail @ ..] if semicolon == ";" => {
                match word.to_ascii_lowercase().as_str() {
                    "algorithm" => algorithm = Some(value.clone()),
                    "secret" => secret = Some(value.clone()),
                    other => return Err(format!("unknown statement '{other}' in key {name}; {shape}")),
                }
                rest = tail;
            }
            _ => return Err(shape.into()),
        }
    }
    match (algorithm, secret) {
        (Some(algorithm), Some(secret)) => Ok(((name.clone(), algorithm, secret), rest)),
        _ => Err(format!("key {name} needs both algorithm and secret; {shape}")),
    }
}

/// A name in canonical wire form (lower case, uncompressed).
pub fn wire_name(name: &str) -> Result<Vec<u8>, String> {
    let trimmed = name.trim().trim_end_matches('.');
    if trimmed.is_empty() {
        return Err("the key name is empty".into());
    }
    let mut wire = Vec::new();
    for label in trimmed.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(format!("'{name}' is not a valid domain name (labels of 1 to 63 bytes)"));
        }
        wire.push(label.len() as u8);
        wire.extend(label.bytes().map(|b| b.to_ascii_lowercase()));
    }
    wire.push(0);
    if wire.len() > NAME_BYTES_MAX {
        return Err(format!("'{name}' is longer than {NAME_BYTES_MAX} bytes"));
    }
    Ok(wire)
}

/// The TSIG variables after the key name and class (RFC 8945 §4.3.3), shared by the record
/// and the digest.
struct Variables<'a> {
    algorithm: &'a [u8],
    time_signed: u64,
    fudge: u16,
    error: u16,
    other: &'a [u8],
}

impl Variables<'_> {
    fn digest_into(&self, key_wire_name: &[u8], mac: &mut Hmac<Sha256>) {
        mac.update(key_wire_name);
        mac.update(&CLASS_ANY.to_be_bytes());
        mac.update(&0u32.to_be_bytes());
        mac.update(self.algorithm);
        mac.update(&self.time_signed.to_be_bytes()[2..]);
        mac.update(&self.fudge.to_be_bytes());
        mac.update(&self.error.to_be_bytes());
        mac.update(&(self.other.len() as u16).to_be_bytes());
        mac.update(self.other);
    }
}

/// A signed request and its MAC (which the response's MAC covers).
pub struct Signed {
    pub wire: Vec<u8>,
    pub mac: Vec<u8>,
}

/// Signs `message` (a complete DNS message without TSIG) at `time_signed` (Unix seconds).
pub fn sign(message: &[u8], key: &Key, time_signed: u64) -> Result<Signed, String> {
    if message.len() < 12 {
        return Err("the message is shorter than a DNS header".into());
    }
    let algorithm = wire_name(ALGORITHM)?;
    let variables = Variables {
        algorithm: &algorithm,
        time_signed,
        fudge: FUDGE_S,
        error: 0,
        other: &[],
    };
    let mut mac = key.mac();
    mac.update(message);
    variables.digest_into(&key.wire_name, &mut mac);
    let mac = mac.finalize().into_bytes().to_vec();
    let mut wire = message.to_vec();
    let arcount = u16::from_be_bytes([wire[10], wire[11]])
        .checked_add(1)
        .ok_or("the message has too many additional records")?;
    wire[10..12].copy_from_slice(&arcount.to_be_bytes());
    let mut rdata = algorithm.clone();
    rdata.extend_from_slice(&time_signed.to_be_bytes()[2..]);
    rdata.extend_from_slice(&FUDGE_S.to_be_bytes());
    rdata.extend_from_slice(&(mac.len() as u16).to_be_bytes());
    rdata.extend_from_slice(&mac);
    rdata.extend_from_slice(&message[0..2]);
    rdata.extend_from_slice(&0u16.to_be_bytes());
    rdata.extend_from_slice(&0u16.to_be_bytes());
    wire.extend_from_slice(&key.wire_name);
    wire.extend_from_slice(&TYPE_TSIG.to_be_bytes());
    wire.extend_from_slice(&CLASS_ANY.to_be_bytes());
    wire.extend_from_slice(&0u32.to_be_bytes());
    wire.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
    wire.extend_from_slice(&rdata);
    Ok(Signed { wire, mac })
}

/// Why a response did not verify.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VerifyError {
    /// Not a readable DNS message, or a broken TSIG record.
    Malformed(String),
    /// No TSIG record: not from a server holding the key (or a forgery).
    Unsigned,
    /// Signed with another key or algorithm.
    OtherKey(String),
    /// The MAC does not match: altered, or signed with another secret.
    BadMac,
    /// Signed too far from our clock (the server's time, ours).
    BadTime { server: u64, local: u64 },
    /// The server reports a TSIG error (BADSIG, BADKEY, BADTIME, ...) about our request.
    /// BADSIG and BADKEY answers are unsigned by design (RFC 8945 §5.3.2): `signed` is false,
    /// and anyone who saw the request could have sent one.
    Server { error: u16, rcode: u8, signed: bool },
}

impl VerifyError {
    /// The error as a sentence for the audit log; names the key so the fix is clear.
    pub fn describe(&self, key: &Key) -> String {
        match self {
            VerifyError::Malformed(why) => format!("the response is malformed: {why}"),
            VerifyError::Unsigned => format!(
                "the response carries no TSIG although the request was signed with key '{}'",
                key.name
            ),
            VerifyError::OtherKey(what) => format!("the response is signed with {what}, not key '{}'", key.name),
            VerifyError::BadMac => format!(
                "the response's TSIG does not verify with key '{}' (altered, or another secret)",
                key.name
            ),
            VerifyError::BadTime { server, local } => format!(
                "the response was signed at {server} but this host's clock reads {local} (more than {FUDGE_S} s apart): synchronise the clocks (NTP)"
            ),
            VerifyError::Server { error, .. } => match *error {
                BADKEY => format!(
                    "the server does not know key '{}' with {ALGORITHM} (TSIG BADKEY): add the key file's key statement to the server's configuration, or fix key_name",
                    key.name
                ),
                BADSIG => format!(
                    "the server rejected the signature of key '{}' (TSIG BADSIG): the secret differs from the server's; copy the key file from the server",
                    key.name
                ),
                BADTIME => format!(
                    "the server says this host's clock is more than {FUDGE_S} s off (TSIG BADTIME): synchronise the clocks (NTP)"
                ),
                BADTRUNC => "the server rejected the MAC's length (TSIG BADTRUNC)".to_string(),
                other => format!("the server reports TSIG error {other} for key '{}'", key.name),
            },
        }
    }
}

/// Verifies a response to a request signed with MAC `request_mac`; returns the response
/// without its TSIG record (ARCOUNT lowered, the original ID restored), ready to parse.
pub fn verify(response: &[u8], request_mac: &[u8], key: &Key, now: u64) -> Result<Vec<u8>, VerifyError> {
    let malformed = |why: &str| VerifyError::Malformed(why.to_string());
    let Some(start) = last_record(response).map_err(|e| VerifyError::Malformed(e.to_string()))? else {
        return Err(VerifyError::Unsigned);
    };
    let mut position = start;
    let (owner, after_owner) = read_name(response, position).map_err(|e| VerifyError::Malformed(e.to_string()))?;
    position = after_owner;
    let fixed = response
        .get(position..position + 10)
        .ok_or_else(|| malformed("the last record is cut short"))?;
    let record_type = u16::from_be_bytes([fixed[0], fixed[1]]);
    if record_type != TYPE_TSIG {
        return Err(VerifyError::Unsigned);
    }
    let rdlength = usize::from(u16::from_be_bytes([fixed[8], fixed[9]]));
    position += 10;
    let rdata_end = position + rdlength;
    if rdata_end != response.len() {
        return Err(malformed("the TSIG record's length does not reach the message's end"));
    }
    let (algorithm, after_algorithm) =
        read_name(response, position).map_err(|e| VerifyError::Malformed(e.to_string()))?;
    position = after_algorithm;
    let field = |at: usize, len: usize| response.get(at..at + len).filter(|_| at + len <= rdata_end);
    let time = field(position, 6).ok_or_else(|| malformed("the TSIG record is cut short"))?;
    let time_signed = time.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
    let fudge_bytes = field(position + 6, 2).ok_or_else(|| malformed("the TSIG record is cut short"))?;
    let fudge = u16::from_be_bytes([fudge_bytes[0], fudge_bytes[1]]);
    let mac_size_bytes = field(position + 8, 2).ok_or_else(|| malformed("the TSIG record is cut short"))?;
    let mac_size = usize::from(u16::from_be_bytes([mac_size_bytes[0], mac_size_bytes[1]]));
    let mac = field(position + 10, mac_size).ok_or_else(|| malformed("the TSIG MAC is cut short"))?;
    position += 10 + mac_size;
    let tail = field(position, 6).ok_or_else(|| malformed("the TSIG record is cut short"))?;
    let original_id = [tail[0], tail[1]];
    let error = u16::from_be_bytes([tail[2], tail[3]]);
    let other_len = usize::from(u16::from_be_bytes([tail[4], tail[5]]));
    let other = field(position + 6, other_len).ok_or_else(|| malformed("the TSIG other data is cut short"))?;
    if position + 6 + other_len != rdata_end {
        return Err(malformed("the TSIG record has bytes after its other data"));
    }
    if owner != key.wire_name {
        return Err(VerifyError::OtherKey(format!("key '{}'", display_wire(&owner))));
    }
    if algorithm != wire_name(ALGORITHM).map_err(VerifyError::Malformed)? {
        return Err(VerifyError::OtherKey(format!("algorithm {}", display_wire(&algorithm))));
    }
    let rcode = response.get(3).map(|b| b & 0x0f).unwrap_or(0);
    if error != 0 && mac.is_empty() {
        return Err(VerifyError::Server {
            error,
            rcode,
            signed: false,
        });
    }
    if mac.len() != MAC_BYTES {
        return Err(malformed(
            "the TSIG MAC is truncated; only full-length HMAC-SHA256 MACs are accepted",
        ));
    }
    let mut stripped = response[..start].to_vec();
    let arcount = u16::from_be_bytes([stripped[10], stripped[11]]).saturating_sub(1);
    stripped[10..12].copy_from_slice(&arcount.to_be_bytes());
    stripped[0..2].copy_from_slice(&original_id);
    let mut digest = key.mac();
    digest.update(&(request_mac.len() as u16).to_be_bytes());
    digest.update(request_mac);
    digest.update(&stripped);
    Variables {
        algorithm: &algorithm,
        time_signed,
        fudge,
        error,
        other,
    }
    .digest_into(&owner, &mut digest);
    digest.verify_slice(mac).map_err(|_| VerifyError::BadMac)?;
    if error != 0 {
        return Err(VerifyError::Server {
            error,
            rcode,
            signed: true,
        });
    }
    if now.abs_diff(time_signed) > u64::from(fudge) {
        return Err(VerifyError::BadTime {
            server: time_signed,
            local: now,
        });
    }
    Ok(stripped)
}

/// Where the message's last record starts (`None` without records), walking the sections.
fn last_record(message: &[u8]) -> Result<Option<usize>, &'static str> {
    let header = message.get(..12).ok_or("shorter than a DNS header")?;
    let count = |i: usize| usize::from(u16::from_be_bytes([header[i], header[i + 1]]));
    let (questions, records) = (count(4), count(6) + count(8) + count(10));
    let mut position = 12;
    for _ in 0..questions {
        position = skip_name(message, position)? + 4;
    }
    let mut last = None;
    for _ in 0..records {
        last = Some(position);
        position = skip_name(message, position)?;
        let fixed = message.get(position..position + 10).ok_or("a record is cut short")?;
        position += 10 + usize::from(u16::from_be_bytes([fixed[8], fixed[9]]));
        if position > message.len() {
            return Err("a record's data is cut short");
        }
    }
    Ok(last)
}

fn skip_name(message: &[u8], mut position: usize) -> Result<usize, &'static str> {
    loop {
        let length = *message.get(position).ok_or("a name is cut short")?;
        match length & 0xc0 {
            0xc0 => return Ok(position + 2),
            0x00 if length == 0 => return Ok(position + 1),
            0x00 => position += 1 + usize::from(length),
            _ => return Err("a name has an unknown label type"),
        }
    }
}

/// Reads a (possibly compressed) name at `position`: its lower-case uncompressed wire form and
/// where the name ends in the message.
fn read_name(message: &[u8], position: usize) -> Result<(Vec<u8>, usize), &'static str> {
    let mut wire = Vec::new();
    let mut at = position;
    let mut end = None;
    let mut hops = 0;
    loop {
        let length = *message.get(at).ok_or("a name is cut short")?;
        match length & 0xc0 {
            0xc0 => {
                let low = *message.get(at + 1).ok_or("a name is cut short")?;
                end.get_or_insert(at + 2);
                hops += 1;
                if hops > NAME_POINTERS_MAX {
                    return Err("a name has too many compression pointers");
                }
                at = usize::from(u16::from_be_bytes([length & 0x3f, low]));
            }
            0x00 if length == 0 => {
                wire.push(0);
                return Ok((wire, end.unwrap_or(at + 1)));
            }
            0x00 => {
                let label = message
                    .get(at + 1..at + 1 + usize::from(length))
                    .ok_or("a name is cut short")?;
                wire.push(length);
                wire.extend(label.iter().map(u8::to_ascii_lowercase));
                if wire.len() > NAME_BYTES_MAX {
                    return Err("a name is longer than 255 bytes");
                }
                at += 1 + usize::from(length);
            }
            _ => return Err("a name has an unknown label type"),
        }
    }
}

/// A wire name as text, for messages.
fn display_wire(wire: &[u8]) -> String {
    let mut labels = Vec::new();
    let mut at = 0;
    while let Some(&length) = wire.get(at) {
        if length == 0 {
            break;
        }
        let label = wire.get(at + 1..at + 1 + usize::from(length)).unwrap_or_default();
        labels.push(String::from_utf8_lossy(label).into_owned());
        at += 1 + usize::from(length);
    }
    labels.join(".")
}

/// What a server does, for fakes in tests: the request's MAC, and a response signed over it.
#[cfg(test)]
pub(crate) mod server {
    use super::*;

    /// The request without its TSIG (ARCOUNT lowered) and the request's MAC.
    pub fn unsigned_request(wire: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let start = last_record(wire).expect("walk").expect("a TSIG record");
        let mut position = skip_name(wire, start).expect("owner") + 10;
        position = skip_name(wire, position).expect("algorithm") + 8;
        let size = usize::from(u16::from_be_bytes([wire[position], wire[position + 1]]));
        let mac = wire[position + 2..position + 2 + size].to_vec();
        let mut message = wire[..start].to_vec();
        let arcount = u16::from_be_bytes([message[10], message[11]]) - 1;
        message[10..12].copy_from_slice(&arcount.to_be_bytes());
        (message, mac)
    }

    /// `response` (without TSIG) with an unsigned TSIG carrying `error` (no MAC), as a server
    /// answers BADSIG or BADKEY — or as anyone who saw the request can forge one.
    pub fn unsigned_error(response: &[u8], key: &Key, time_signed: u64, error: u16) -> Vec<u8> {
        let mut response = response.to_vec();
        let mut rdata = wire_name(ALGORITHM).expect("algorithm");
        rdata.extend_from_slice(&time_signed.to_be_bytes()[2..]);
        rdata.extend_from_slice(&FUDGE_S.to_be_bytes());
        rdata.extend_from_slice(&0u16.to_be_bytes());
        rdata.extend_from_slice(&response[0..2]);
        rdata.extend_from_slice(&error.to_be_bytes());
        rdata.extend_from_slice(&0u16.to_be_bytes());
        let arcount = u16::from_be_bytes([response[10], response[11]]) + 1;
        response[10..12].copy_from_slice(&arcount.to_be_bytes());
        response.extend_from_slice(&key.wire_name);
        response.extend_from_slice(&[0, 250, 0, 255, 0, 0, 0, 0]);
        response.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        response.extend_from_slice(&rdata);
        response
    }

    /// `response` (without TSIG) signed over `request_mac`, as RFC 8945 §5.3 has servers do.
    pub fn sign_response(response: &[u8], request_mac: &[u8], key: &Key, time_signed: u64, error: u16) -> Vec<u8> {
        let mut response = response.to_vec();
        let algorithm = wire_name(ALGORITHM).expect("algorithm");
        let mut mac = key.mac();
        mac.update(&(request_mac.len() as u16).to_be_bytes());
        mac.update(request_mac);
        mac.update(&response);
        Variables {
            algorithm: &algorithm,
            time_signed,
            fudge: FUDGE_S,
            error,
            other: &[],
        }
        .digest_into(&key.wire_name, &mut mac);
        let mac = mac.finalize().into_bytes().to_vec();
        let mut rdata = algorithm;
        rdata.extend_from_slice(&time_signed.to_be_bytes()[2..]);
        rdata.extend_from_slice(&FUDGE_S.to_be_bytes());
        rdata.extend_from_slice(&(mac.len() as u16).to_be_bytes());
        rdata.extend_from_slice(&mac);
        rdata.extend_from_slice(&response[0..2]);
        rdata.extend_from_slice(&error.to_be_bytes());
        rdata.extend_from_slice(&0u16.to_be_bytes());
        let arcount = u16::from_be_bytes([response[10], response[11]]) + 1;
        response[10..12].copy_from_slice(&arcount.to_be_bytes());
        response.extend_from_slice(&key.wire_name);
        response.extend_from_slice(&[0, 250, 0, 255, 0, 0, 0, 0]);
        response.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        response.extend_from_slice(&rdata);
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "2HK0YGgkgF7e+w1Yk1tBF5h5qGFQf3c1l0jC2hL6R3A=";

    fn key() -> Key {
        Key::new("switchyard-test", SECRET).expect("key")
    }

    fn query(id: u16) -> Vec<u8> {
        let mut message = id.to_be_bytes().to_vec();
        message.extend_from_slice(&[0x00, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
        message.extend_from_slice(&wire_name("www.shop.example").expect("name"));
        message.extend_from_slice(&[0, 1, 0, 1]);
        message
    }

    /// A response signed the way a server signs it: request MAC, then the message, then the
    /// variables.
    fn respond(request: &Signed, key: &Key, time_signed: u64, error: u16) -> Vec<u8> {
        let (mut response, mac) = server::unsigned_request(&request.wire);
        assert_eq!(mac, request.mac);
        response[2] |= 0x80;
        server::sign_response(&response, &request.mac, key, time_signed, error)
    }

    #[test]
    fn a_signed_request_and_its_signed_response_verify() {
        let key = key();
        let request = sign(&query(0x1234), &key, 1_700_000_000).expect("sign");
        assert_eq!(u16::from_be_bytes([request.wire[10], request.wire[11]]), 1);
        assert_eq!(request.mac.len(), MAC_BYTES);
        let response = respond(&request, &key, 1_700_000_010, 0);
        let stripped = verify(&response, &request.mac, &key, 1_700_000_020).expect("verifies");
        assert_eq!(u16::from_be_bytes([stripped[10], stripped[11]]), 0);
        assert_eq!(stripped.len(), query(0).len());
    }

    #[test]
    fn a_flipped_bit_another_secret_a_missing_tsig_and_a_stale_time_fail() {
        let key = key();
        let request = sign(&query(7), &key, 1_700_000_000).expect("sign");
        let mut response = respond(&request, &key, 1_700_000_000, 0);
        response[13] ^= 1;
        assert_eq!(
            verify(&response, &request.mac, &key, 1_700_000_000),
            Err(VerifyError::BadMac)
        );
        let other = Key::new("switchyard-test", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=").expect("key");
        let response = respond(&request, &other, 1_700_000_000, 0);
        assert_eq!(
            verify(&response, &request.mac, &key, 1_700_000_000),
            Err(VerifyError::BadMac)
        );
        assert_eq!(verify(&query(7), &request.mac, &key, 0), Err(VerifyError::Unsigned));
        let response = respond(&request, &key, 1_700_000_000, 0);
        assert!(matches!(
            verify(&response, &request.mac, &key, 1_700_000_000 + 301),
            Err(VerifyError::BadTime { .. })
        ));
        let renamed = Key::new("other-key", SECRET).expect("key");
        assert!(matches!(
            verify(&response, &request.mac, &renamed, 1_700_000_000),
            Err(VerifyError::OtherKey(_))
        ));
    }

    #[test]
    fn an_unsigned_badkey_answer_is_reported_as_the_servers_error() {
        let key = key();
        let request = sign(&query(9), &key, 1_700_000_000).expect("sign");
        // What BIND sends for an unknown key: NOTAUTH, TSIG with error BADKEY and no MAC.
        let mut response = request.wire.clone();
        let start = last_record(&response).expect("walk").expect("tsig");
        response.truncate(start);
        response[2] |= 0x80;
        response[3] = (response[3] & 0xf0) | 9;
        let algorithm = wire_name(ALGORITHM).expect("algorithm");
        let mut rdata = algorithm;
        rdata.extend_from_slice(&1_700_000_000u64.to_be_bytes()[2..]);
        rdata.extend_from_slice(&FUDGE_S.to_be_bytes());
        rdata.extend_from_slice(&0u16.to_be_bytes());
        rdata.extend_from_slice(&9u16.to_be_bytes());
        rdata.extend_from_slice(&BADKEY.to_be_bytes());
        rdata.extend_from_slice(&0u16.to_be_bytes());
        response.extend_from_slice(&key.wire_name);
        response.extend_from_slice(&[0, 250, 0, 255, 0, 0, 0, 0]);
        response.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        response.extend_from_slice(&rdata);
        let error = verify(&response, &request.mac, &key, 1_700_000_000).expect_err("an error");
        assert_eq!(
            error,
            VerifyError::Server {
                error: BADKEY,
                rcode: 9,
                signed: false
            }
        );
        assert!(
            error.describe(&key).contains("switchyard-test"),
            "{}",
            error.describe(&key)
        );
    }

    #[test]
    fn verify_never_panics_on_cut_or_garbage_responses() {
        let key = key();
        let request = sign(&query(1), &key, 1_700_000_000).expect("sign");
        let response = respond(&request, &key, 1_700_000_000, 0);
        for cut in 0..response.len() {
            assert!(verify(&response[..cut], &request.mac, &key, 1_700_000_000).is_err());
        }
        let seed = common::rng::seed_from_env_or("verify_never_panics_on_cut_or_garbage_responses", 0x9e37_79b9);
        let mut rng = common::rng::Rng::new(seed);
        for _ in 0..2_000 {
            let mut bytes = response.clone();
            for _ in 0..3 {
                let at = rng.below(bytes.len() as u64) as usize;
                bytes[at] = rng.next_u64() as u8;
            }
            let _ = verify(&bytes, &request.mac, &key, 1_700_000_000);
        }
    }

    #[test]
    fn key_files_in_tsig_keygen_form_or_bare_secrets_parse() {
        let file = format!(
            "# made by tsig-keygen\nkey \"Switchyard-Test\" {{\n\talgorithm hmac-sha256;\n\tsecret \"{SECRET}\";\n}};\n"
        );
        let parsed = Key::parse(&file, None).expect("parses");
        let expected = Key::new("switchyard-test", SECRET).expect("key");
        assert_eq!(
            (&parsed.wire_name, &parsed.secret),
            (&expected.wire_name, &expected.secret)
        );
        assert_eq!(parsed.name, "Switchyard-Test");
        assert!(Key::parse(&file, Some("switchyard-test.")).is_ok());
        assert_eq!(
            Key::parse(&file, Some("other")),
            Err(KeyError::NoKeyNamed("other".into()))
        );
        assert!(Key::parse(SECRET, Some("k")).is_ok());
        let needs_name = Key::parse(SECRET, None).expect_err("needs a name");
        assert_eq!(needs_name, KeyError::NameNeeded);
        assert!(needs_name.to_string().contains("key_name"));
        let md5 = file.replace("hmac-sha256", "hmac-md5");
        let md5 = Key::parse(&md5, None).expect_err("md5");
        assert!(matches!(&md5, KeyError::Algorithm { algorithm, .. } if algorithm == "hmac-md5"));
        assert!(md5.to_string().contains("only hmac-sha256"), "{md5}");
        assert!(Key::parse("key \"k\" { algorithm hmac-sha256; };", None).is_err());
        assert!(
            Key::parse("c2hvcnQ=", Some("k"))
                .expect_err("short")
                .to_string()
                .contains("at least")
        );
        assert!(
            Key::parse("not base64!", Some("k"))
                .expect_err("base64")
                .to_string()
                .contains("base64")
        );
    }
}
