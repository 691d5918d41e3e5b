//! TSIG (RFC 8945) with the HMAC-SHA algorithms of its §6 (hmac-sha1, hmac-sha224,
//! hmac-sha256, hmac-sha384, hmac-sha512), at the wire level, for both ends: a client signs a
//! request and verifies the response (the RFC 2136 step, NOTIFY), a server verifies a request
//! (BADKEY, BADSIG, BADTIME, BADTRUNC) and signs its answer, one message or many (a zone
//! transfer, each message's MAC covering the previous one); and reading BIND's `tsig-keygen`
//! key files. Pure: the time is an argument; nothing here panics on network bytes.
//!
//! Invariants: a key has one algorithm, and a message signed with another algorithm under the
//! key's name is not the key's (BADKEY, RFC 8945 §5.2.1); a MAC is accepted only between the
//! RFC's bounds (§5.2.2.1: at most the hash's length, at least the larger of 10 bytes and half
//! of it; outside: FORMERR) and no shorter than the key's own MAC length (the full hash unless
//! the key is declared truncated, BIND's `hmac-sha256-128`; shorter: BADTRUNC, §5.2.4).
//! hmac-md5 is refused: MD5 is broken, and RFC 8945 §6 keeps it only for old peers.
//!
//! hickory-proto has TSIG only behind its DNSSEC features (which pull in a crypto provider of
//! their own); the workspace's hmac + sha1 + sha2 do it in a page.

use base64::Engine as _;
use hmac::{Hmac, Mac};

/// What `tsig-keygen` generates by default, RFC 8945's mandatory algorithm, and what a bare
/// secret is taken to be when no algorithm is named.
pub const DEFAULT_ALGORITHM: Algorithm = Algorithm::HmacSha256;

/// A TSIG algorithm (RFC 8945 §6; IANA "TSIG Algorithm Names").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Algorithm {
    HmacSha1,
    HmacSha224,
    HmacSha256,
    HmacSha384,
    HmacSha512,
}

impl Algorithm {
    /// Every algorithm supported, in the RFC's order.
    pub const ALL: [Algorithm; 5] = [
        Algorithm::HmacSha1,
        Algorithm::HmacSha224,
        Algorithm::HmacSha256,
        Algorithm::HmacSha384,
        Algorithm::HmacSha512,
    ];

    /// The name as `tsig-keygen`, `dig -y` and the configuration write it.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::HmacSha1 => "hmac-sha1",
            Algorithm::HmacSha224 => "hmac-sha224",
            Algorithm::HmacSha256 => "hmac-sha256",
            Algorithm::HmacSha384 => "hmac-sha384",
            Algorithm::HmacSha512 => "hmac-sha512",
        }
    }

    /// The name in wire form (lower case, uncompressed), as the TSIG record carries it.
    fn wire(self) -> &'static [u8] {
        match self {
            Algorithm::HmacSha1 => b"\x09hmac-sha1\x00",
            Algorithm::HmacSha224 => b"\x0bhmac-sha224\x00",
            Algorithm::HmacSha256 => b"\x0bhmac-sha256\x00",
            Algorithm::HmacSha384 => b"\x0bhmac-sha384\x00",
            Algorithm::HmacSha512 => b"\x0bhmac-sha512\x00",
        }
    }

    /// The hash's output: a full MAC's length in bytes.
    pub fn mac_bytes(self) -> usize {
        match self {
            Algorithm::HmacSha1 => 20,
            Algorithm::HmacSha224 => 28,
            Algorithm::HmacSha256 => 32,
            Algorithm::HmacSha384 => 48,
            Algorithm::HmacSha512 => 64,
        }
    }

    /// The shortest MAC RFC 8945 §5.2.2.1 lets a message carry: the larger of 10 bytes and half
    /// the hash's output. Shorter (but for an unsigned error's empty MAC) is FORMERR.
    pub fn mac_bytes_min(self) -> usize {
        (self.mac_bytes() / 2).max(MAC_BYTES_FLOOR)
    }

    /// The algorithm of a name (any case, with or without the trailing dot).
    pub fn from_name(name: &str) -> Option<Algorithm> {
        let name = name.trim().trim_end_matches('.');
        Algorithm::ALL
            .into_iter()
            .find(|algorithm| algorithm.name().eq_ignore_ascii_case(name))
    }

    fn from_wire(wire: &[u8]) -> Option<Algorithm> {
        Algorithm::ALL.into_iter().find(|algorithm| algorithm.wire() == wire)
    }

    /// Every name supported, for messages: "hmac-sha1, hmac-sha224, ...".
    pub fn names() -> String {
        Algorithm::ALL.map(Algorithm::name).join(", ")
    }
}

impl std::fmt::Display for Algorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// RFC 8945 §5.2.2.1's absolute floor on a truncated MAC (80 bits).
const MAC_BYTES_FLOOR: usize = 10;

/// A running HMAC of the key's algorithm.
enum Hasher {
    Sha1(Hmac<sha1::Sha1>),
    Sha224(Hmac<sha2::Sha224>),
    Sha256(Hmac<sha2::Sha256>),
    Sha384(Hmac<sha2::Sha384>),
    Sha512(Hmac<sha2::Sha512>),
}

impl Hasher {
    fn new(algorithm: Algorithm, secret: &[u8]) -> Hasher {
        // HMAC takes keys of any length (longer ones are hashed first, RFC 2104 §2).
        const ANY_LENGTH: &str = "HMAC accepts keys of any length";
        match algorithm {
            Algorithm::HmacSha1 => Hasher::Sha1(Hmac::new_from_slice(secret).expect(ANY_LENGTH)),
            Algorithm::HmacSha224 => Hasher::Sha224(Hmac::new_from_slice(secret).expect(ANY_LENGTH)),
            Algorithm::HmacSha256 => Hasher::Sha256(Hmac::new_from_slice(secret).expect(ANY_LENGTH)),
            Algorithm::HmacSha384 => Hasher::Sha384(Hmac::new_from_slice(secret).expect(ANY_LENGTH)),
            Algorithm::HmacSha512 => Hasher::Sha512(Hmac::new_from_slice(secret).expect(ANY_LENGTH)),
        }
    }

    fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::Sha1(mac) => mac.update(bytes),
            Hasher::Sha224(mac) => mac.update(bytes),
            Hasher::Sha256(mac) => mac.update(bytes),
            Hasher::Sha384(mac) => mac.update(bytes),
            Hasher::Sha512(mac) => mac.update(bytes),
        }
    }

    /// The full MAC.
    fn finalize(self) -> Vec<u8> {
        match self {
            Hasher::Sha1(mac) => mac.finalize().into_bytes().to_vec(),
            Hasher::Sha224(mac) => mac.finalize().into_bytes().to_vec(),
            Hasher::Sha256(mac) => mac.finalize().into_bytes().to_vec(),
            Hasher::Sha384(mac) => mac.finalize().into_bytes().to_vec(),
            Hasher::Sha512(mac) => mac.finalize().into_bytes().to_vec(),
        }
    }

    /// Whether `mac` is the MAC's first `mac.len()` bytes (constant time; RFC 8945 §5.2.2.1:
    /// a truncated MAC is compared with the computed one truncated alike).
    fn verify_truncated_left(self, mac: &[u8]) -> bool {
        match self {
            Hasher::Sha1(hmac) => hmac.verify_truncated_left(mac).is_ok(),
            Hasher::Sha224(hmac) => hmac.verify_truncated_left(mac).is_ok(),
            Hasher::Sha256(hmac) => hmac.verify_truncated_left(mac).is_ok(),
            Hasher::Sha384(hmac) => hmac.verify_truncated_left(mac).is_ok(),
            Hasher::Sha512(hmac) => hmac.verify_truncated_left(mac).is_ok(),
        }
    }
}
/// Seconds of clock difference the server and this controller accept (RFC 8945 §10
/// recommends 300).
pub const FUDGE_S: u16 = 300;
/// The widest clock difference a server accepts, whatever fudge a request names (a request
/// may name up to 65535 s): a captured request is good for at most this long, which also
/// bounds what [`Replays`] must remember. Local policy; `tsig-keygen` clients send 300.
pub const FUDGE_ACCEPTED_MAX_S: u16 = FUDGE_S;
/// Keys whose latest request a [`Replays`] remembers at most: one entry per key that signed a
/// request in the last [`FUDGE_ACCEPTED_MAX_S`] seconds (only keys held here get one).
pub const REPLAY_KEYS_MAX: usize = 1_024;
/// Distinct requests one key may sign within one second (the newest second it signed in):
/// their MACs are remembered so that a copy is refused; a request beyond is refused (BADTIME)
/// rather than let a copy through, and the client's next second is a fresh one. BIND's
/// secondaries send two or three per zone refresh.
pub const REPLAY_MACS_PER_SECOND_MAX: usize = 256;
/// A copy of a request that came over UDP, from the address that sent it first and within this
/// many seconds of it, is the client's retransmission (BIND resends the very same bytes when
/// an answer is lost) and is answered again: the answer goes to that address, which had the
/// first one. Any other copy is a replay.
pub const REPLAY_RETRANSMIT_WINDOW_S: u64 = 15;
/// Shortest secret accepted, whatever the algorithm: half of HMAC-SHA256's output (RFC 2104 §3
/// discourages keys shorter than the hash's output; `tsig-keygen` makes them that long).
pub const SECRET_BYTES_MIN: usize = 16;
/// Largest DNS message (the TCP length prefix's bound): a signature never makes one longer.
pub const MESSAGE_BYTES_MAX: usize = 65_535;
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

/// A TSIG key: its name (lower-case wire form, as the MAC covers it), algorithm and secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Key {
    /// The key's name as written (for messages), without the trailing dot.
    pub name: String,
    wire_name: Vec<u8>,
    algorithm: Algorithm,
    /// The MAC length this key signs with and accepts at least: the hash's output, or less for
    /// a key declared truncated (`hmac-sha256-128`: 16 bytes).
    mac_bytes: usize,
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
        "key '{name}' uses algorithm {algorithm}, which is refused: MD5 is broken (RFC 8945 §6 keeps it only for old peers); make a new key with `tsig-keygen -a hmac-sha256 {name}` and give the server the same key statement"
    )]
    Md5 { name: String, algorithm: String },
    #[error(
        "key '{name}' uses algorithm {algorithm}, which is not supported; use one of {names} (BIND's `hmac-sha256-128` form truncates the MAC to 128 bits), e.g. `tsig-keygen -a hmac-sha256 {name}`",
        names = Algorithm::names()
    )]
    Algorithm { name: String, algorithm: String },
    #[error(
        "the file says key '{name}' uses {in_file} but the configuration's algorithm is {configured}: remove `algorithm` (the file's is used) or make them the same"
    )]
    AlgorithmMismatch {
        name: String,
        in_file: String,
        configured: String,
    },
    /// The file's text, the key's name or its secret is malformed: what is wrong.
    #[error("{0}")]
    Malformed(String),
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Key({}, {}, ..)", self.name, self.algorithm)
    }
}

/// An algorithm as BIND's configuration writes it: `hmac-sha256`, or `hmac-sha256-128` for
/// one whose MAC is truncated to 128 bits (a multiple of 8, from the larger of 80 and half
/// the hash's output up to all of it). `Ok((algorithm, MAC bytes))`.
pub fn parse_algorithm(key_name: &str, text: &str) -> Result<(Algorithm, usize), KeyError> {
    let trimmed = text.trim().trim_end_matches('.');
    let refused = || {
        let lower = trimmed.to_ascii_lowercase();
        if lower.starts_with("hmac-md5") {
            KeyError::Md5 {
                name: key_name.to_string(),
                algorithm: trimmed.to_string(),
            }
        } else {
            KeyError::Algorithm {
                name: key_name.to_string(),
                algorithm: trimmed.to_string(),
            }
        }
    };
    if let Some(algorithm) = Algorithm::from_name(trimmed) {
        return Ok((algorithm, algorithm.mac_bytes()));
    }
    let (base, bits) = trimmed.rsplit_once('-').ok_or_else(refused)?;
    let algorithm = Algorithm::from_name(base).ok_or_else(refused)?;
    let bits: usize = bits.parse().map_err(|_| refused())?;
    let (least, most) = (algorithm.mac_bytes_min() * 8, algorithm.mac_bytes() * 8);
    if !bits.is_multiple_of(8) || bits < least || bits > most {
        return Err(KeyError::Malformed(format!(
            "key '{key_name}': {trimmed} truncates the MAC to {bits} bits; {algorithm} takes a multiple of 8 from {least} to {most} (RFC 8945 §5.2.2.1)"
        )));
    }
    Ok((algorithm, bits / 8))
}

impl Key {
    /// A key from its name and base64 secret, with the default algorithm (hmac-sha256).
    pub fn new(name: &str, secret_base64: &str) -> Result<Key, KeyError> {
        Key::with_algorithm(name, secret_base64, DEFAULT_ALGORITHM)
    }

    /// A key from its name, base64 secret and algorithm (full-length MACs).
    pub fn with_algorithm(name: &str, secret_base64: &str, algorithm: Algorithm) -> Result<Key, KeyError> {
        Key::build(name, secret_base64, algorithm, algorithm.mac_bytes())
    }

    fn build(name: &str, secret_base64: &str, algorithm: Algorithm, mac_bytes: usize) -> Result<Key, KeyError> {
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
            algorithm,
            mac_bytes,
            secret,
        })
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The algorithm as the configuration wrote it: `hmac-sha512`, or `hmac-sha256-128` for a
    /// truncated key (what `dig -y` takes).
    pub fn algorithm_name(&self) -> String {
        if self.mac_bytes == self.algorithm.mac_bytes() {
            self.algorithm.name().to_string()
        } else {
            format!("{}-{}", self.algorithm.name(), self.mac_bytes * 8)
        }
    }

    /// Reads a key file: BIND's `tsig-keygen` output (`key "NAME" { algorithm hmac-sha512;
    /// secret "..."; };`, whose algorithm is the key's), or just the base64 secret (then `name`
    /// is needed, and the algorithm is `algorithm`, else hmac-sha256). `name`, when given,
    /// picks the key of that name and must match the file's; `algorithm`, when given with a
    /// key file, must match the file's.
    pub fn parse(text: &str, name: Option<&str>, algorithm: Option<&str>) -> Result<Key, KeyError> {
        if !text.contains('{') {
            let secret: String = text.split_whitespace().collect();
            let Some(name) = name else {
                return Err(KeyError::NameNeeded);
            };
            let (algorithm, mac_bytes) = match algorithm {
                Some(text) => parse_algorithm(name, text)?,
                None => (DEFAULT_ALGORITHM, DEFAULT_ALGORITHM.mac_bytes()),
            };
            return Key::build(name, &secret, algorithm, mac_bytes);
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
        let (key_name, in_file, secret) = key;
        let (parsed, mac_bytes) = parse_algorithm(&key_name, &in_file)?;
        if let Some(configured) = algorithm {
            let same = parse_algorithm(&key_name, configured).is_ok_and(|configured| configured == (parsed, mac_bytes));
            if !same {
                return Err(KeyError::AlgorithmMismatch {
                    name: key_name,
                    in_file,
                    configured: configured.to_string(),
                });
            }
        }
        Key::build(&key_name, &secret, parsed, mac_bytes)
    }

    fn mac(&self) -> Hasher {
        Hasher::new(self.algorithm, &self.secret)
    }

    /// The MAC this key sends: the full one, or its first bytes for a truncated key.
    fn finish(&self, hasher: Hasher) -> Vec<u8> {
        self.finish_to(hasher, self.mac_bytes)
    }

    /// The MAC's first `bytes` bytes.
    fn finish_to(&self, hasher: Hasher, bytes: usize) -> Vec<u8> {
        let mut mac = hasher.finalize();
        mac.truncate(bytes);
        mac
    }

    /// The MAC length of an answer to a request whose MAC had `request_bytes`: the request's
    /// (RFC 8945 §5.3.1; BIND answers so), so that a client holding this key untruncated
    /// verifies the answer to its full MAC, and one truncating as this key does gets its length
    /// back — never shorter than this key takes, never longer than the hash.
    fn answer_mac_bytes(&self, request_bytes: usize) -> usize {
        request_bytes.max(self.mac_bytes).min(self.algorithm.mac_bytes())
    }

    /// Why a MAC of `length` bytes is not acceptable for this key (`None`: it is): outside the
    /// RFC's bounds (FORMERR), or shorter than the key's own length (BADTRUNC).
    fn mac_length_fault(&self, length: usize) -> Option<MacLength> {
        let (least, most) = (self.algorithm.mac_bytes_min(), self.algorithm.mac_bytes());
        if length > most || length < least {
            return Some(MacLength::OutOfBounds(format!(
                "the TSIG MAC has {length} bytes; {least} to {most} are valid for {} (RFC 8945 §5.2.2.1)",
                self.algorithm
            )));
        }
        (length < self.mac_bytes).then_some(MacLength::TooShortForKey)
    }
}

/// A MAC length not accepted for a key.
enum MacLength {
    /// Outside RFC 8945 §5.2.2.1's bounds: FORMERR.
    OutOfBounds(String),
    /// Within them, but truncated more than the key allows: BADTRUNC (§5.2.4).
    TooShortForKey,
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
    let shape = "expected key \"NAME\" { algorithm hmac-sha512; secret \"BASE64\"; };";
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
    fn digest_into(&self, key_wire_name: &[u8], mac: &mut Hasher) {
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

    /// Only the timers: what a message after the first of a multi-message answer covers
    /// (RFC 8945 §5.3.1).
    fn timers_into(&self, mac: &mut Hasher) {
        mac.update(&self.time_signed.to_be_bytes()[2..]);
        mac.update(&self.fudge.to_be_bytes());
    }

    /// The record's data, with `mac` and the message's original `id`.
    fn rdata(&self, mac: &[u8], id: [u8; 2]) -> Vec<u8> {
        let mut rdata = Vec::with_capacity(self.algorithm.len() + 16 + mac.len() + self.other.len());
        rdata.extend_from_slice(self.algorithm);
        rdata.extend_from_slice(&self.time_signed.to_be_bytes()[2..]);
        rdata.extend_from_slice(&self.fudge.to_be_bytes());
        rdata.extend_from_slice(&(mac.len() as u16).to_be_bytes());
        rdata.extend_from_slice(mac);
        rdata.extend_from_slice(&id);
        rdata.extend_from_slice(&self.error.to_be_bytes());
        rdata.extend_from_slice(&(self.other.len() as u16).to_be_bytes());
        rdata.extend_from_slice(self.other);
        rdata
    }
}

/// `message` with a TSIG record owned by `key_wire_name` appended (ARCOUNT raised).
fn append_record(message: &[u8], key_wire_name: &[u8], rdata: &[u8]) -> Result<Vec<u8>, String> {
    if message.len() < 12 {
        return Err("the message is shorter than a DNS header".into());
    }
    let rdlength = u16::try_from(rdata.len()).map_err(|_| "the TSIG record is too long")?;
    let mut wire = Vec::with_capacity(message.len() + key_wire_name.len() + 10 + rdata.len());
    wire.extend_from_slice(message);
    let arcount = u16::from_be_bytes([wire[10], wire[11]])
        .checked_add(1)
        .ok_or("the message has too many additional records")?;
    wire[10..12].copy_from_slice(&arcount.to_be_bytes());
    wire.extend_from_slice(key_wire_name);
    wire.extend_from_slice(&TYPE_TSIG.to_be_bytes());
    wire.extend_from_slice(&CLASS_ANY.to_be_bytes());
    wire.extend_from_slice(&0u32.to_be_bytes());
    wire.extend_from_slice(&rdlength.to_be_bytes());
    wire.extend_from_slice(rdata);
    if wire.len() > MESSAGE_BYTES_MAX {
        return Err(format!(
            "the signed message would have {} bytes; a DNS message has at most {MESSAGE_BYTES_MAX}",
            wire.len()
        ));
    }
    Ok(wire)
}

/// The length a TSIG record signed with `key` adds to a message (with no other data).
pub fn record_bytes(key: &Key) -> usize {
    record_bytes_with_mac(key, key.mac_bytes)
}

/// The length the TSIG record of an answer to a request whose MAC was `request_mac` adds (its
/// MAC has the request's length, [`ResponseSigner`]): what a server keeps free in a UDP answer
/// to a signed query.
pub fn answer_record_bytes(key: &Key, request_mac: &[u8]) -> usize {
    record_bytes_with_mac(key, key.answer_mac_bytes(request_mac.len()))
}

fn record_bytes_with_mac(key: &Key, mac_bytes: usize) -> usize {
    // Owner, type, class, TTL, RDLENGTH; algorithm, time (6), fudge, MAC size, MAC, original
    // id, error, other length.
    key.wire_name.len() + 10 + key.algorithm.wire().len() + 6 + 2 + 2 + mac_bytes + 2 + 2 + 2
}

/// A signed request and its MAC (which the response's MAC covers).
pub struct Signed {
    pub wire: Vec<u8>,
    pub mac: Vec<u8>,
}

/// Signs `message` (a complete DNS message without TSIG) at `time_signed` (Unix seconds).
pub fn sign(message: &[u8], key: &Key, time_signed: u64) -> Result<Signed, String> {
    let id = header_id(message)?;
    let variables = Variables {
        algorithm: key.algorithm.wire(),
        time_signed,
        fudge: FUDGE_S,
        error: 0,
        other: &[],
    };
    let mut mac = key.mac();
    mac.update(message);
    variables.digest_into(&key.wire_name, &mut mac);
    let mac = key.finish(mac);
    let wire = append_record(message, &key.wire_name, &variables.rdata(&mac, id))?;
    Ok(Signed { wire, mac })
}

fn header_id(message: &[u8]) -> Result<[u8; 2], String> {
    match message {
        [a, b, ..] if message.len() >= 12 => Ok([*a, *b]),
        _ => Err("the message is shorter than a DNS header".into()),
    }
}

/// A message's TSIG record, read (RFC 8945 §4.2), and where it starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Where the record starts: the message without it is `wire[..start]`.
    pub start: usize,
    /// The key's name, lower-case uncompressed wire form.
    pub key_wire_name: Vec<u8>,
    /// The algorithm's name, lower-case uncompressed wire form.
    pub algorithm: Vec<u8>,
    pub time_signed: u64,
    pub fudge: u16,
    pub mac: Vec<u8>,
    pub original_id: u16,
    pub error: u16,
    pub other: Vec<u8>,
}

impl Record {
    /// The key's name as text, for messages.
    pub fn key_name(&self) -> String {
        display_wire(&self.key_wire_name)
    }

    /// The message this record signed: without it, ARCOUNT lowered, the original ID restored
    /// (what the MAC covers, RFC 8945 §4.3.1).
    fn signed_message(&self, wire: &[u8]) -> Vec<u8> {
        let mut stripped = wire[..self.start].to_vec();
        let arcount = u16::from_be_bytes([stripped[10], stripped[11]]).saturating_sub(1);
        stripped[10..12].copy_from_slice(&arcount.to_be_bytes());
        stripped[0..2].copy_from_slice(&self.original_id.to_be_bytes());
        stripped
    }

    fn variables(&self) -> Variables<'_> {
        Variables {
            algorithm: &self.algorithm,
            time_signed: self.time_signed,
            fudge: self.fudge,
            error: self.error,
            other: &self.other,
        }
    }
}

/// Reads the message's TSIG record: `Ok(None)` when its last record is not a TSIG (unsigned),
/// `Err` when the message or the record is malformed. Never panics, whatever the bytes.
pub fn read_record(wire: &[u8]) -> Result<Option<Record>, String> {
    let Some(start) = last_record(wire)? else {
        return Ok(None);
    };
    let (owner, mut position) = read_name(wire, start)?;
    let fixed = wire
        .get(position..position + 10)
        .ok_or("the last record is cut short")?;
    if u16::from_be_bytes([fixed[0], fixed[1]]) != TYPE_TSIG {
        return Ok(None);
    }
    if u16::from_be_bytes([fixed[2], fixed[3]]) != CLASS_ANY {
        return Err("the TSIG record's class is not ANY".into());
    }
    let rdlength = usize::from(u16::from_be_bytes([fixed[8], fixed[9]]));
    position += 10;
    let rdata_end = position + rdlength;
    if rdata_end != wire.len() {
        return Err("the TSIG record's length does not reach the message's end".into());
    }
    let (algorithm, after_algorithm) = read_name(wire, position)?;
    position = after_algorithm;
    let field = |at: usize, len: usize| wire.get(at..at + len).filter(|_| at + len <= rdata_end);
    let cut = "the TSIG record is cut short";
    let time = field(position, 6).ok_or(cut)?;
    let time_signed = time.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
    let fudge = field(position + 6, 2).ok_or(cut)?;
    let fudge = u16::from_be_bytes([fudge[0], fudge[1]]);
    let mac_size = field(position + 8, 2).ok_or(cut)?;
    let mac_size = usize::from(u16::from_be_bytes([mac_size[0], mac_size[1]]));
    let mac = field(position + 10, mac_size)
        .ok_or("the TSIG MAC is cut short")?
        .to_vec();
    position += 10 + mac_size;
    let tail = field(position, 6).ok_or(cut)?;
    let original_id = u16::from_be_bytes([tail[0], tail[1]]);
    let error = u16::from_be_bytes([tail[2], tail[3]]);
    let other_len = usize::from(u16::from_be_bytes([tail[4], tail[5]]));
    let other = field(position + 6, other_len)
        .ok_or("the TSIG other data is cut short")?
        .to_vec();
    if position + 6 + other_len != rdata_end {
        return Err("the TSIG record has bytes after its other data".into());
    }
    Ok(Some(Record {
        start,
        key_wire_name: owner,
        algorithm,
        time_signed,
        fudge,
        mac,
        original_id,
        error,
        other,
    }))
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
    /// The MAC is truncated more than the key allows (RFC 8945 §5.2.4's BADTRUNC, at our end).
    Truncated { bytes: usize },
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
            VerifyError::Truncated { bytes } => format!(
                "the response's MAC is truncated to {bytes} bytes but key '{}' ({}) takes {} at least: give the key the same algorithm on both sides",
                key.name,
                key.algorithm_name(),
                key.mac_bytes
            ),
            VerifyError::Server { error, .. } => match *error {
                BADKEY => format!(
                    "the server does not know key '{}' with {} (TSIG BADKEY): add the key file's key statement to the server's configuration (the same algorithm), or fix key_name",
                    key.name,
                    key.algorithm_name()
                ),
                BADSIG => format!(
                    "the server rejected the signature of key '{}' (TSIG BADSIG): the secret differs from the server's; copy the key file from the server",
                    key.name
                ),
                BADTIME => format!(
                    "the server says this host's clock is more than {FUDGE_S} s off (TSIG BADTIME): synchronise the clocks (NTP)"
                ),
                BADTRUNC => format!(
                    "the server rejected the MAC's length (TSIG BADTRUNC): it holds key '{}' with a longer MAC than {}; give both sides the same algorithm",
                    key.name,
                    key.algorithm_name()
                ),
                other => format!("the server reports TSIG error {other} for key '{}'", key.name),
            },
        }
    }
}

/// Verifies a response to a request signed with MAC `request_mac`; returns the response
/// without its TSIG record (ARCOUNT lowered, the original ID restored), ready to parse.
pub fn verify(response: &[u8], request_mac: &[u8], key: &Key, now: u64) -> Result<Vec<u8>, VerifyError> {
    ResponseVerifier::new(key, request_mac).verify_next(response, now)
}

/// Verifies the messages of one answer in order — a zone transfer's many over TCP, or a single
/// one: the first covers the request's MAC and all the TSIG variables, each following one the
/// previous message's MAC and the timers only (RFC 8945 §5.3.1). Every message must be signed
/// (RFC 8945 lets a server leave up to 99 in a row unsigned; Switchyard signs each, and so
/// does this check).
pub struct ResponseVerifier<'k> {
    key: &'k Key,
    prior_mac: Vec<u8>,
    first: bool,
}

impl<'k> ResponseVerifier<'k> {
    pub fn new(key: &'k Key, request_mac: &[u8]) -> ResponseVerifier<'k> {
        ResponseVerifier {
            key,
            prior_mac: request_mac.to_vec(),
            first: true,
        }
    }

    /// The next message, without its TSIG record, or why it does not verify (after an error
    /// the rest of the answer cannot be trusted either).
    pub fn verify_next(&mut self, response: &[u8], now: u64) -> Result<Vec<u8>, VerifyError> {
        let record = read_record(response)
            .map_err(VerifyError::Malformed)?
            .ok_or(VerifyError::Unsigned)?;
        if record.key_wire_name != self.key.wire_name {
            return Err(VerifyError::OtherKey(format!("key '{}'", record.key_name())));
        }
        if record.algorithm != self.key.algorithm.wire() {
            return Err(VerifyError::OtherKey(format!(
                "algorithm {}",
                display_wire(&record.algorithm)
            )));
        }
        let rcode = response.get(3).map(|b| b & 0x0f).unwrap_or(0);
        if record.error != 0 && record.mac.is_empty() {
            return Err(VerifyError::Server {
                error: record.error,
                rcode,
                signed: false,
            });
        }
        match self.key.mac_length_fault(record.mac.len()) {
            Some(MacLength::OutOfBounds(why)) => return Err(VerifyError::Malformed(why)),
            Some(MacLength::TooShortForKey) => {
                return Err(VerifyError::Truncated {
                    bytes: record.mac.len(),
                });
            }
            None => {}
        }
        let stripped = record.signed_message(response);
        let mut digest = self.key.mac();
        digest.update(&(self.prior_mac.len() as u16).to_be_bytes());
        digest.update(&self.prior_mac);
        digest.update(&stripped);
        if self.first {
            record.variables().digest_into(&record.key_wire_name, &mut digest);
        } else {
            record.variables().timers_into(&mut digest);
        }
        if !digest.verify_truncated_left(&record.mac) {
            return Err(VerifyError::BadMac);
        }
        self.first = false;
        self.prior_mac = record.mac.clone();
        if record.error != 0 {
            return Err(VerifyError::Server {
                error: record.error,
                rcode,
                signed: true,
            });
        }
        if now.abs_diff(record.time_signed) > u64::from(record.fudge) {
            return Err(VerifyError::BadTime {
                server: record.time_signed,
                local: now,
            });
        }
        Ok(stripped)
    }
}

/// What a server makes of a request's TSIG (RFC 8945 §5.2), in the RFC's order: the key, the
/// MAC, the time, the MAC's length.
#[derive(Debug)]
pub enum RequestCheck<'k> {
    /// No TSIG record.
    Unsigned,
    /// Signed with `key`, verified and in time: sign the answer with [`ResponseSigner`].
    Verified(Verified<'k>),
    /// A TSIG error: answer NOTAUTH with [`Refusal::respond`].
    Refused(Refusal<'k>),
    /// The TSIG record cannot be interpreted: FORMERR (RFC 8945 §5.2).
    Malformed(String),
}

/// A request signed with a key held here, whose MAC verified.
#[derive(Debug)]
pub struct Verified<'k> {
    pub key: &'k Key,
    /// The request's MAC, which the answer's first MAC covers.
    pub mac: Vec<u8>,
    pub time_signed: u64,
    record: Record,
}

impl<'k> Verified<'k> {
    /// The refusal of a request that verified but is a replay ([`Replays::admit`] said so):
    /// BADTIME, signed with the key, as RFC 8945 §5.2.3 asks for a request signed earlier than
    /// the key's latest.
    pub fn refuse_replay(self) -> Refusal<'k> {
        Refusal {
            error: BADTIME,
            record: self.record,
            verified: Some(self.key),
        }
    }
}

/// A request whose TSIG failed: the error and what its answer echoes.
#[derive(Debug)]
pub struct Refusal<'k> {
    /// BADKEY, BADSIG, BADTIME or BADTRUNC.
    pub error: u16,
    record: Record,
    /// The key the request's MAC verified with: BADTIME and BADTRUNC answers are signed with it
    /// (RFC 8945 §5.3.2); BADKEY and BADSIG answers are not.
    verified: Option<&'k Key>,
}

/// Checks a request's TSIG against the keys held (`keys`) at `now` (Unix seconds). Pure; never
/// panics, whatever the bytes.
pub fn verify_request<'k>(wire: &[u8], keys: &'k [Key], now: u64) -> RequestCheck<'k> {
    let record = match read_record(wire) {
        Ok(Some(record)) => record,
        Ok(None) => return RequestCheck::Unsigned,
        Err(why) => return RequestCheck::Malformed(why),
    };
    let refuse = |error, record, verified| {
        RequestCheck::Refused(Refusal {
            error,
            record,
            verified,
        })
    };
    // The key of that name and algorithm (§5.2.1: an algorithm the key does not have is a key
    // not held).
    let algorithm = Algorithm::from_wire(&record.algorithm);
    let key = keys
        .iter()
        .find(|key| key.wire_name == record.key_wire_name && Some(key.algorithm) == algorithm);
    let Some(key) = key else {
        return refuse(BADKEY, record, None);
    };
    let truncated_too_far = match key.mac_length_fault(record.mac.len()) {
        Some(MacLength::OutOfBounds(why)) => return RequestCheck::Malformed(why),
        Some(MacLength::TooShortForKey) => true,
        None => false,
    };
    let mut digest = key.mac();
    digest.update(&record.signed_message(wire));
    record.variables().digest_into(&record.key_wire_name, &mut digest);
    if !digest.verify_truncated_left(&record.mac) {
        return refuse(BADSIG, record, None);
    }
    if now.abs_diff(record.time_signed) > u64::from(record.fudge.min(FUDGE_ACCEPTED_MAX_S)) {
        return refuse(BADTIME, record, Some(key));
    }
    if truncated_too_far {
        return refuse(BADTRUNC, record, Some(key));
    }
    RequestCheck::Verified(Verified {
        key,
        mac: record.mac.clone(),
        time_signed: record.time_signed,
        record,
    })
}

/// Why [`Replays::admit`] refused a verified request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replay {
    /// Signed before the latest request of its key (RFC 8945 §5.2.3): an old request replayed,
    /// or a client sharing the key whose clock is behind another's.
    Earlier { latest: u64 },
    /// Signed in the key's latest second with a MAC already seen: a copy of a request.
    Repeated,
    /// More than [`REPLAY_MACS_PER_SECOND_MAX`] requests signed by the key in one second.
    Crowded,
}

impl Replay {
    /// The refusal as a sentence for the log, with the fix.
    pub fn describe(&self, key: &Key) -> String {
        match self {
            Replay::Earlier { latest } => format!(
                "a request signed with key '{}' at an earlier time than the key's latest ({latest}): a replay, or several clients share the key and their clocks differ (give each secondary its own key)",
                key.name
            ),
            Replay::Repeated => format!(
                "a request signed with key '{}' was received again with the same MAC: a replay (a client signs each request anew)",
                key.name
            ),
            Replay::Crowded => format!(
                "more than {REPLAY_MACS_PER_SECOND_MAX} requests signed with key '{}' in one second",
                key.name
            ),
        }
    }
}

/// The replay record of a server (RFC 8945 §5.2.3): per key, the latest time signed of a
/// request that verified and the MACs of the requests signed at that second. A request signed
/// earlier is refused, and so is a copy of one signed at that second (but a retransmission over
/// UDP, see [`REPLAY_RETRANSMIT_WINDOW_S`]); several distinct requests in the same second (a
/// secondary's SOA query then its IXFR) pass. Bounded: at most
/// [`REPLAY_KEYS_MAX`] keys and [`REPLAY_MACS_PER_SECOND_MAX`] MACs each. A key's entry is
/// forgotten only once its latest time is outside [`FUDGE_ACCEPTED_MAX_S`] (then the time
/// check refuses every request it would have), or, past [`REPLAY_KEYS_MAX`] keys in that
/// window, the key with the oldest latest time. Pure: the caller passes the time; it lives in
/// memory, so a restart forgets it (a request captured in the last
/// [`FUDGE_ACCEPTED_MAX_S`] seconds can then be replayed once).
#[derive(Debug, Default)]
pub struct Replays {
    keys: std::collections::HashMap<Vec<u8>, Latest>,
}

#[derive(Debug)]
struct Latest {
    time_signed: u64,
    macs: Vec<Seen>,
}

/// A request admitted: its MAC, and where and when it first came over UDP (`None`: over TCP).
#[derive(Debug)]
struct Seen {
    mac: Vec<u8>,
    udp_from: Option<std::net::IpAddr>,
    first_s: u64,
}

impl Replays {
    /// Admits a verified request once, or says why it is a replay (answer it with
    /// [`Verified::refuse_replay`]). `udp_from`: the client's address when the request came
    /// over UDP (a copy from it within [`REPLAY_RETRANSMIT_WINDOW_S`] is a retransmission and
    /// passes). Only admitted requests are recorded.
    pub fn admit(
        &mut self,
        verified: &Verified<'_>,
        now: u64,
        udp_from: Option<std::net::IpAddr>,
    ) -> Result<(), Replay> {
        let seen = || Seen {
            mac: verified.mac.clone(),
            udp_from,
            first_s: now,
        };
        use std::cmp::Ordering;
        if let Some(latest) = self.keys.get_mut(&verified.key.wire_name) {
            match verified.time_signed.cmp(&latest.time_signed) {
                Ordering::Less => {
                    return Err(Replay::Earlier {
                        latest: latest.time_signed,
                    });
                }
                Ordering::Equal => {
                    if let Some(first) = latest.macs.iter().find(|seen| seen.mac == verified.mac) {
                        let retransmitted = udp_from.is_some()
                            && first.udp_from == udp_from
                            && now <= first.first_s.saturating_add(REPLAY_RETRANSMIT_WINDOW_S);
                        return if retransmitted { Ok(()) } else { Err(Replay::Repeated) };
                    }
                    if latest.macs.len() >= REPLAY_MACS_PER_SECOND_MAX {
                        return Err(Replay::Crowded);
                    }
                    latest.macs.push(seen());
                }
                Ordering::Greater => {
                    latest.time_signed = verified.time_signed;
                    latest.macs.clear();
                    latest.macs.push(seen());
                }
            }
            return Ok(());
        }
        if self.keys.len() >= REPLAY_KEYS_MAX {
            let window = u64::from(FUDGE_ACCEPTED_MAX_S);
            self.keys
                .retain(|_, latest| latest.time_signed.saturating_add(window) >= now);
        }
        if self.keys.len() >= REPLAY_KEYS_MAX
            && let Some(oldest) = self
                .keys
                .iter()
                .min_by_key(|(_, latest)| latest.time_signed)
                .map(|(name, _)| name.clone())
        {
            self.keys.remove(&oldest);
        }
        self.keys.insert(
            verified.key.wire_name.clone(),
            Latest {
                time_signed: verified.time_signed,
                macs: vec![seen()],
            },
        );
        Ok(())
    }

    /// Keys remembered.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

impl Refusal<'_> {
    /// The key's name as the request gave it, for logs.
    pub fn key_name(&self) -> String {
        self.record.key_name()
    }

    /// The answer's TSIG: `message` (the NOTAUTH answer, without TSIG) with the record RFC 8945
    /// §5.3.2 asks for. BADKEY and BADSIG: unsigned (no MAC), the request's key and algorithm
    /// names and time signed. BADTIME: signed over the request's MAC, the request's time signed, and the
    /// server's time `now` in Other Data (6 bytes) so the client can see the skew. BADTRUNC:
    /// signed at `now`.
    pub fn respond(&self, message: &[u8], now: u64) -> Result<Vec<u8>, String> {
        let id = header_id(message)?;
        let now_bytes = now.to_be_bytes();
        let (time_signed, other): (u64, &[u8]) = match self.error {
            BADTIME => (self.record.time_signed, &now_bytes[2..]),
            BADTRUNC => (now, &[]),
            // As Knot: the request's time, so the unsigned answer tells nothing of our clock.
            _ => (self.record.time_signed, &[]),
        };
        let variables = Variables {
            algorithm: &self.record.algorithm,
            time_signed,
            fudge: FUDGE_S,
            error: self.error,
            other,
        };
        let mac = match self.verified {
            None => Vec::new(),
            Some(key) => {
                let mut digest = key.mac();
                digest.update(&(self.record.mac.len() as u16).to_be_bytes());
                digest.update(&self.record.mac);
                digest.update(message);
                variables.digest_into(&key.wire_name, &mut digest);
                // BADTRUNC: the key's own length (the request's is too short for it); BADTIME:
                // the request's, as every answer.
                key.finish_to(digest, key.answer_mac_bytes(self.record.mac.len()))
            }
        };
        append_record(message, &self.record.key_wire_name, &variables.rdata(&mac, id))
    }
}

/// Signs the messages of one answer to a verified request, in order: the first over the
/// request's MAC and all the TSIG variables, each following one over the previous MAC and the
/// timers (RFC 8945 §5.3.1). Every message is signed (BIND accepts up to 99 unsigned in a row;
/// signing each costs one HMAC per 16 KiB message).
pub struct ResponseSigner<'k> {
    key: &'k Key,
    prior_mac: Vec<u8>,
    time_signed: u64,
    first: bool,
    /// Every message's MAC length: the request's ([`Key::answer_mac_bytes`]).
    mac_bytes: usize,
}

impl<'k> ResponseSigner<'k> {
    /// Signs with `key` the answer to a request whose MAC was `request_mac`, every message at
    /// `time_signed` (Unix seconds), with MACs of the request's length.
    pub fn new(key: &'k Key, request_mac: &[u8], time_signed: u64) -> ResponseSigner<'k> {
        ResponseSigner {
            key,
            prior_mac: request_mac.to_vec(),
            time_signed,
            first: true,
            mac_bytes: key.answer_mac_bytes(request_mac.len()),
        }
    }

    /// `message` (a complete DNS message without TSIG) with its TSIG record.
    pub fn sign(&mut self, message: &[u8]) -> Result<Vec<u8>, String> {
        let id = header_id(message)?;
        let variables = Variables {
            algorithm: self.key.algorithm.wire(),
            time_signed: self.time_signed,
            fudge: FUDGE_S,
            error: 0,
            other: &[],
        };
        let mut digest = self.key.mac();
        digest.update(&(self.prior_mac.len() as u16).to_be_bytes());
        digest.update(&self.prior_mac);
        digest.update(message);
        if self.first {
            variables.digest_into(&self.key.wire_name, &mut digest);
        } else {
            variables.timers_into(&mut digest);
        }
        let mac = self.key.finish_to(digest, self.mac_bytes);
        let wire = append_record(message, &self.key.wire_name, &variables.rdata(&mac, id))?;
        self.first = false;
        self.prior_mac = mac;
        Ok(wire)
    }
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

/// What a server sends, for fakes in tests (here and in other crates): no policy, no checks
/// beyond the message's shape.
pub mod testing {
    use super::*;

    /// The request without its TSIG (ARCOUNT lowered) and the request's MAC.
    pub fn unsigned_request(wire: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
        let record = read_record(wire).ok()??;
        Some((record.signed_message(wire), record.mac))
    }

    /// `response` (without TSIG) with an unsigned TSIG carrying `error` (no MAC), as a server
    /// answers BADSIG or BADKEY — or as anyone who saw the request can forge one.
    pub fn unsigned_error(response: &[u8], key: &Key, time_signed: u64, error: u16) -> Option<Vec<u8>> {
        let id = header_id(response).ok()?;
        let variables = Variables {
            algorithm: key.algorithm.wire(),
            time_signed,
            fudge: FUDGE_S,
            error,
            other: &[],
        };
        append_record(response, &key.wire_name, &variables.rdata(&[], id)).ok()
    }

    /// `response` (without TSIG) signed over `request_mac` with TSIG error `error`.
    pub fn sign_response(
        response: &[u8],
        request_mac: &[u8],
        key: &Key,
        time_signed: u64,
        error: u16,
    ) -> Option<Vec<u8>> {
        let id = header_id(response).ok()?;
        let variables = Variables {
            algorithm: key.algorithm.wire(),
            time_signed,
            fudge: FUDGE_S,
            error,
            other: &[],
        };
        let mut mac = key.mac();
        mac.update(&(request_mac.len() as u16).to_be_bytes());
        mac.update(request_mac);
        mac.update(response);
        variables.digest_into(&key.wire_name, &mut mac);
        let mac = key.finish(mac);
        append_record(response, &key.wire_name, &variables.rdata(&mac, id)).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// hmac-sha256 (the test key's algorithm) in wire form, its MAC's length and the shortest
    /// truncation RFC 8945 allows.
    const ALGORITHM_WIRE: &[u8] = b"\x0bhmac-sha256\x00";
    const MAC_BYTES: usize = 32;
    const MAC_BYTES_MIN: usize = 16;

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
        let (mut response, mac) = testing::unsigned_request(&request.wire).expect("signed");
        assert_eq!(mac, request.mac);
        response[2] |= 0x80;
        testing::sign_response(&response, &request.mac, key, time_signed, error).expect("signs")
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
        let algorithm = wire_name("hmac-sha256").expect("algorithm");
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
        let seed = crate::rng::seed_from_env_or("verify_never_panics_on_cut_or_garbage_responses", 0x9e37_79b9);
        let mut rng = crate::rng::Rng::new(seed);
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
        let parsed = Key::parse(&file, None, None).expect("parses");
        let expected = Key::new("switchyard-test", SECRET).expect("key");
        assert_eq!(
            (&parsed.wire_name, &parsed.secret),
            (&expected.wire_name, &expected.secret)
        );
        assert_eq!(parsed.name, "Switchyard-Test");
        assert!(Key::parse(&file, Some("switchyard-test."), None).is_ok());
        assert_eq!(
            Key::parse(&file, Some("other"), None),
            Err(KeyError::NoKeyNamed("other".into()))
        );
        assert!(Key::parse(SECRET, Some("k"), None).is_ok());
        let needs_name = Key::parse(SECRET, None, None).expect_err("needs a name");
        assert_eq!(needs_name, KeyError::NameNeeded);
        assert!(needs_name.to_string().contains("key_name"));
        let md5 = file.replace("hmac-sha256", "hmac-md5");
        let md5 = Key::parse(&md5, None, None).expect_err("md5");
        assert!(matches!(&md5, KeyError::Md5 { algorithm, .. } if algorithm == "hmac-md5"));
        assert!(md5.to_string().contains("tsig-keygen -a hmac-sha256"), "{md5}");
        assert!(Key::parse("key \"k\" { algorithm hmac-sha256; };", None, None).is_err());
        assert!(
            Key::parse("c2hvcnQ=", Some("k"), None)
                .expect_err("short")
                .to_string()
                .contains("at least")
        );
        assert!(
            Key::parse("not base64!", Some("k"), None)
                .expect_err("base64")
                .to_string()
                .contains("base64")
        );
    }

    fn keys() -> Vec<Key> {
        vec![
            Key::new("other", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=").expect("key"),
            key(),
        ]
    }

    /// The rcode-less answer a server builds: the request's header with QR set, no TSIG.
    fn answer_to(request: &[u8]) -> Vec<u8> {
        let (mut message, _) = testing::unsigned_request(request).expect("signed");
        message[2] |= 0x80;
        message
    }

    #[test]
    fn a_server_verifies_a_request_and_its_answer_verifies_at_the_client() {
        let keys = keys();
        let request = sign(&query(0x4242), &key(), 1_700_000_000).expect("sign");
        let RequestCheck::Verified(verified) = verify_request(&request.wire, &keys, 1_700_000_100) else {
            panic!("a request signed with a held key verifies");
        };
        assert_eq!(verified.key.name, "switchyard-test");
        assert_eq!(verified.mac, request.mac);
        let mut signer = ResponseSigner::new(verified.key, &verified.mac, 1_700_000_100);
        let answer = signer.sign(&answer_to(&request.wire)).expect("signs");
        assert_eq!(answer.len(), answer_to(&request.wire).len() + record_bytes(&key()));
        verify(&answer, &request.mac, &key(), 1_700_000_100).expect("the client accepts it");
        assert!(matches!(verify_request(&query(1), &keys, 0), RequestCheck::Unsigned));
    }

    #[test]
    fn unknown_keys_bad_macs_stale_times_and_short_macs_get_their_tsig_errors() {
        let keys = keys();
        let now = 1_700_000_000;
        // Unknown key: BADKEY, answered unsigned with the request's key name.
        let stranger = Key::new("stranger", SECRET).expect("key");
        let request = sign(&query(1), &stranger, now).expect("sign");
        let RequestCheck::Refused(refusal) = verify_request(&request.wire, &keys, now) else {
            panic!("an unknown key is refused");
        };
        assert_eq!((refusal.error, refusal.key_name()), (BADKEY, "stranger".to_string()));
        let answer = refusal.respond(&answer_to(&request.wire), now).expect("answers");
        let record = read_record(&answer).expect("reads").expect("has a TSIG");
        assert_eq!((record.error, record.mac.len()), (BADKEY, 0));
        assert_eq!(
            verify(&answer, &request.mac, &stranger, now),
            Err(VerifyError::Server {
                error: BADKEY,
                rcode: 0,
                signed: false
            })
        );
        // Same name, another secret: BADSIG, unsigned.
        let forger = Key::new("switchyard-test", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=").expect("key");
        let request = sign(&query(2), &forger, now).expect("sign");
        let only = [key()];
        let RequestCheck::Refused(refusal) = verify_request(&request.wire, &only, now) else {
            panic!("a bad MAC is refused");
        };
        assert_eq!(refusal.error, BADSIG);
        let answer = refusal.respond(&answer_to(&request.wire), now).expect("answers");
        assert_eq!(read_record(&answer).expect("reads").expect("tsig").mac.len(), 0);
        // A flipped bit in a good request: BADSIG too.
        let mut altered = sign(&query(3), &key(), now).expect("sign").wire;
        altered[13] ^= 0x20;
        assert!(matches!(
            verify_request(&altered, &keys, now),
            RequestCheck::Refused(Refusal { error: BADSIG, .. })
        ));
        // Signed 301 s before the server's clock: BADTIME, signed, the server's time in Other
        // Data and the request's time signed echoed.
        let request = sign(&query(4), &key(), now - 301).expect("sign");
        let RequestCheck::Refused(refusal) = verify_request(&request.wire, &keys, now) else {
            panic!("a stale request is refused");
        };
        assert_eq!(refusal.error, BADTIME);
        let answer = refusal.respond(&answer_to(&request.wire), now).expect("answers");
        let record = read_record(&answer).expect("reads").expect("tsig");
        assert_eq!(record.time_signed, now - 301);
        assert_eq!(record.other, now.to_be_bytes()[2..].to_vec());
        assert_eq!(
            verify(&answer, &request.mac, &key(), now),
            Err(VerifyError::Server {
                error: BADTIME,
                rcode: 0,
                signed: true
            })
        );
        // Within the fudge: fine.
        let request = sign(&query(5), &key(), now - 300).expect("sign");
        assert!(matches!(
            verify_request(&request.wire, &keys, now),
            RequestCheck::Verified(_)
        ));
        // A MAC truncated to 16 bytes that verifies: BADTRUNC (only full MACs taken); to 8: FORMERR.
        let request = sign(&query(6), &key(), now).expect("sign");
        let truncated = |bytes: usize| {
            let (message, mac) = testing::unsigned_request(&request.wire).expect("signed");
            let variables = Variables {
                algorithm: ALGORITHM_WIRE,
                time_signed: now,
                fudge: FUDGE_S,
                error: 0,
                other: &[],
            };
            let rdata = variables.rdata(&mac[..bytes], [0, 6]);
            append_record(&message, &key().wire_name, &rdata).expect("appends")
        };
        assert!(matches!(
            verify_request(&truncated(16), &keys, now),
            RequestCheck::Refused(Refusal { error: BADTRUNC, .. })
        ));
        assert!(matches!(
            verify_request(&truncated(8), &keys, now),
            RequestCheck::Malformed(_)
        ));
    }

    /// A request signed with any TSIG variables, as a hostile or unusual client makes one: the
    /// key's owner name and the algorithm name as given (any case), the MAC cut to `mac_bytes`.
    #[allow(clippy::too_many_arguments)]
    fn sign_raw(
        message: &[u8],
        key: &Key,
        owner: &[u8],
        algorithm: &[u8],
        time_signed: u64,
        fudge: u16,
        other: &[u8],
        mac_bytes: usize,
    ) -> Vec<u8> {
        let variables = Variables {
            algorithm,
            time_signed,
            fudge,
            error: 0,
            other,
        };
        let mut digest = key.mac();
        digest.update(message);
        // The MAC covers the names in canonical (lower-case) form, whatever the record holds.
        let lower = |wire: &[u8]| wire.iter().map(u8::to_ascii_lowercase).collect::<Vec<u8>>();
        let canonical_algorithm = lower(algorithm);
        Variables {
            algorithm: &canonical_algorithm,
            ..variables
        }
        .digest_into(&lower(owner), &mut digest);
        let mac = digest.finalize();
        let id = header_id(message).expect("header");
        append_record(message, owner, &variables.rdata(&mac[..mac_bytes], id)).expect("appends")
    }

    fn upper(wire: &[u8]) -> Vec<u8> {
        wire.iter().map(u8::to_ascii_uppercase).collect()
    }

    #[test]
    fn algorithm_and_key_names_compare_without_regard_to_case() {
        let keys = keys();
        let now = 1_700_000_000;
        let owner = upper(&key().wire_name);
        let request = sign_raw(
            &query(1),
            &key(),
            &owner,
            &upper(ALGORITHM_WIRE),
            now,
            FUDGE_S,
            &[],
            MAC_BYTES,
        );
        let RequestCheck::Verified(verified) = verify_request(&request, &keys, now) else {
            panic!("HMAC-SHA256. and an upper-case key name are the same names");
        };
        assert_eq!(verified.key.name, "switchyard-test");
        // The answer echoes the canonical names and verifies at a client holding the key.
        let (mut answer, _) = testing::unsigned_request(&request).expect("signed");
        answer[2] |= 0x80;
        let signed = ResponseSigner::new(verified.key, &verified.mac, now)
            .sign(&answer)
            .expect("signs");
        verify(&signed, &verified.mac, &key(), now).expect("verifies");
        // Another algorithm, whatever its case, is BADKEY.
        let md5 = wire_name("HMAC-MD5.SIG-ALG.REG.INT").expect("name");
        let request = sign_raw(&query(2), &key(), &key().wire_name, &md5, now, FUDGE_S, &[], MAC_BYTES);
        assert!(matches!(
            verify_request(&request, &keys, now),
            RequestCheck::Refused(Refusal { error: BADKEY, .. })
        ));
    }

    #[test]
    fn macs_of_size_zero_or_longer_than_the_hash_are_formerr_and_huge_other_data_is_covered() {
        let keys = keys();
        let now = 1_700_000_000;
        let owner = key().wire_name.clone();
        for mac_bytes in [0, 1, MAC_BYTES_MIN - 1] {
            let request = sign_raw(&query(1), &key(), &owner, ALGORITHM_WIRE, now, FUDGE_S, &[], mac_bytes);
            assert!(
                matches!(verify_request(&request, &keys, now), RequestCheck::Malformed(_)),
                "a MAC of {mac_bytes} bytes"
            );
        }
        // A MAC longer than the hash (MAC size says 40, the bytes are there).
        let mut long = sign_raw(&query(1), &key(), &owner, ALGORITHM_WIRE, now, FUDGE_S, &[], MAC_BYTES);
        let record = read_record(&long).expect("reads").expect("tsig");
        let rdata = record
            .variables()
            .rdata(&[record.mac.clone(), vec![0; 8]].concat(), [0, 1]);
        long.truncate(record.start);
        long[10..12].copy_from_slice(&0u16.to_be_bytes());
        let long = append_record(&long, &owner, &rdata).expect("appends");
        assert!(matches!(verify_request(&long, &keys, now), RequestCheck::Malformed(_)));
        // 60 000 bytes of other data, signed: verified (the MAC covers them); altered: BADSIG.
        let other = vec![0xa5; 60_000];
        let request = sign_raw(
            &query(1),
            &key(),
            &owner,
            ALGORITHM_WIRE,
            now,
            FUDGE_S,
            &other,
            MAC_BYTES,
        );
        assert!(matches!(
            verify_request(&request, &keys, now),
            RequestCheck::Verified(_)
        ));
        let mut altered = request.clone();
        let last = altered.len() - 1;
        altered[last] ^= 1;
        assert!(matches!(
            verify_request(&altered, &keys, now),
            RequestCheck::Refused(Refusal { error: BADSIG, .. })
        ));
        // Other data claiming more bytes than the message has: FORMERR, no panic.
        let mut cut = request.clone();
        cut.truncate(cut.len() - 10);
        let rdlength_at = record.start + owner.len() + 8;
        let rdlength = u16::from_be_bytes([cut[rdlength_at], cut[rdlength_at + 1]]) - 10;
        cut[rdlength_at..rdlength_at + 2].copy_from_slice(&rdlength.to_be_bytes());
        assert!(matches!(verify_request(&cut, &keys, now), RequestCheck::Malformed(_)));
    }

    #[test]
    fn times_near_two_to_the_48_and_fudges_of_0_and_65535() {
        let keys = keys();
        let owner = key().wire_name.clone();
        let now = 1_700_000_000;
        let max_time = (1u64 << 48) - 1;
        // Signed at the largest 48-bit time: BADTIME, answered with it echoed, no overflow.
        let request = sign_raw(
            &query(1),
            &key(),
            &owner,
            ALGORITHM_WIRE,
            max_time,
            FUDGE_S,
            &[],
            MAC_BYTES,
        );
        let RequestCheck::Refused(refusal) = verify_request(&request, &keys, now) else {
            panic!("a time 2^48 - 1 is far from now");
        };
        assert_eq!(refusal.error, BADTIME);
        let answer = refusal.respond(&answer_to(&request), now).expect("answers");
        assert_eq!(
            read_record(&answer).expect("reads").expect("tsig").time_signed,
            max_time
        );
        // A server whose clock reads near 2^48 (and a request at 0) does not overflow either.
        let request = sign_raw(&query(2), &key(), &owner, ALGORITHM_WIRE, 0, u16::MAX, &[], MAC_BYTES);
        assert!(matches!(
            verify_request(&request, &keys, max_time),
            RequestCheck::Refused(Refusal { error: BADTIME, .. })
        ));
        // Fudge 0: only the very second.
        let request = sign_raw(&query(3), &key(), &owner, ALGORITHM_WIRE, now, 0, &[], MAC_BYTES);
        assert!(matches!(
            verify_request(&request, &keys, now),
            RequestCheck::Verified(_)
        ));
        assert!(matches!(
            verify_request(&request, &keys, now + 1),
            RequestCheck::Refused(Refusal { error: BADTIME, .. })
        ));
        // Fudge 65535 does not stretch the window past FUDGE_ACCEPTED_MAX_S: a request captured
        // an hour ago is stale, whatever fudge it names.
        let request = sign_raw(
            &query(4),
            &key(),
            &owner,
            ALGORITHM_WIRE,
            now - 3_600,
            u16::MAX,
            &[],
            MAC_BYTES,
        );
        assert!(matches!(
            verify_request(&request, &keys, now),
            RequestCheck::Refused(Refusal { error: BADTIME, .. })
        ));
        let accepted = u64::from(FUDGE_ACCEPTED_MAX_S);
        let request = sign_raw(
            &query(5),
            &key(),
            &owner,
            ALGORITHM_WIRE,
            now - accepted,
            u16::MAX,
            &[],
            MAC_BYTES,
        );
        assert!(matches!(
            verify_request(&request, &keys, now),
            RequestCheck::Verified(_)
        ));
    }

    fn admit(replays: &mut Replays, keys: &[Key], wire: &[u8], now: u64) -> Result<(), Replay> {
        let RequestCheck::Verified(verified) = verify_request(wire, keys, now) else {
            panic!("verifies");
        };
        replays.admit(&verified, now, None)
    }

    #[test]
    fn a_replayed_request_is_refused_and_several_in_one_second_pass() {
        let keys = keys();
        let now = 1_700_000_000;
        let mut replays = Replays::default();
        // A secondary's SOA query then its IXFR, both in the same second: both pass.
        let soa = sign(&query(1), &key(), now).expect("sign").wire;
        let ixfr = sign(&query(2), &key(), now).expect("sign").wire;
        assert_eq!(admit(&mut replays, &keys, &soa, now), Ok(()));
        assert_eq!(admit(&mut replays, &keys, &ixfr, now), Ok(()));
        // The same bytes again, in the same second or later: a copy.
        assert_eq!(admit(&mut replays, &keys, &soa, now), Err(Replay::Repeated));
        assert_eq!(admit(&mut replays, &keys, &ixfr, now + 200), Err(Replay::Repeated));
        // A newer request moves the key on; the captured ones are now earlier.
        let later = sign(&query(3), &key(), now + 10).expect("sign").wire;
        assert_eq!(admit(&mut replays, &keys, &later, now + 10), Ok(()));
        assert_eq!(
            admit(&mut replays, &keys, &soa, now + 20),
            Err(Replay::Earlier { latest: now + 10 })
        );
        // Another key has its own record.
        let other = sign(&query(4), &keys[0], now).expect("sign").wire;
        assert_eq!(admit(&mut replays, &keys, &other, now + 20), Ok(()));
        assert_eq!(replays.len(), 2);
        // The refusal is BADTIME, signed, verifiable by the key's holder.
        let RequestCheck::Verified(verified) = verify_request(&soa, &keys, now + 20) else {
            panic!("verifies");
        };
        let request_mac = verified.mac.clone();
        let refusal = verified.refuse_replay();
        let answer = refusal.respond(&answer_to(&soa), now + 20).expect("answers");
        assert_eq!(
            verify(&answer, &request_mac, &key(), now + 20),
            Err(VerifyError::Server {
                error: BADTIME,
                rcode: 0,
                signed: true
            })
        );
    }

    #[test]
    fn a_copy_over_udp_from_its_first_address_soon_after_is_a_retransmission() {
        let keys = keys();
        let now = 1_700_000_000;
        let client: std::net::IpAddr = "192.0.2.53".parse().expect("address");
        let other: std::net::IpAddr = "198.51.100.9".parse().expect("address");
        let verified = |wire: &[u8], at: u64| match verify_request(wire, &keys, at) {
            RequestCheck::Verified(verified) => verified,
            _ => panic!("verifies"),
        };
        let mut replays = Replays::default();
        let soa = sign(&query(1), &key(), now).expect("sign").wire;
        assert_eq!(replays.admit(&verified(&soa, now), now, Some(client)), Ok(()));
        // BIND resending the same bytes after a lost answer: answered again, to the same address.
        assert_eq!(replays.admit(&verified(&soa, now + 3), now + 3, Some(client)), Ok(()));
        let window = REPLAY_RETRANSMIT_WINDOW_S;
        assert_eq!(
            replays.admit(&verified(&soa, now + window), now + window, Some(client)),
            Ok(())
        );
        // From another address, over TCP, or after the window: a replay.
        assert_eq!(
            replays.admit(&verified(&soa, now + 4), now + 4, Some(other)),
            Err(Replay::Repeated)
        );
        assert_eq!(
            replays.admit(&verified(&soa, now + 4), now + 4, None),
            Err(Replay::Repeated)
        );
        assert_eq!(
            replays.admit(&verified(&soa, now + window + 1), now + window + 1, Some(client)),
            Err(Replay::Repeated)
        );
        // First over TCP: a copy over UDP, from wherever, is a replay.
        let axfr = sign(&query(2), &key(), now).expect("sign").wire;
        assert_eq!(replays.admit(&verified(&axfr, now), now, None), Ok(()));
        assert_eq!(
            replays.admit(&verified(&axfr, now + 1), now + 1, Some(client)),
            Err(Replay::Repeated)
        );
    }

    #[test]
    fn the_replay_record_is_bounded_per_second_and_in_keys() {
        let keys = keys();
        let now = 1_700_000_000;
        let mut replays = Replays::default();
        for id in 0..REPLAY_MACS_PER_SECOND_MAX {
            let request = sign(&query(id as u16), &key(), now).expect("sign").wire;
            assert_eq!(admit(&mut replays, &keys, &request, now), Ok(()));
        }
        let one_more = sign(&query(u16::MAX), &key(), now).expect("sign").wire;
        assert_eq!(admit(&mut replays, &keys, &one_more, now), Err(Replay::Crowded));
        let next_second = sign(&query(u16::MAX), &key(), now + 1).expect("sign").wire;
        assert_eq!(admit(&mut replays, &keys, &next_second, now + 1), Ok(()));
        // As many keys as the bound, then one more: the stale ones are forgotten first.
        let many: Vec<Key> = (0..=REPLAY_KEYS_MAX)
            .map(|i| Key::new(&format!("k{i}"), SECRET).expect("key"))
            .collect();
        let mut replays = Replays::default();
        for (i, key) in many.iter().enumerate().take(REPLAY_KEYS_MAX) {
            let at = if i == 0 { now } else { now + 1_000 };
            let request = sign(&query(1), key, at).expect("sign").wire;
            assert_eq!(admit(&mut replays, &many, &request, at), Ok(()));
        }
        assert_eq!(replays.len(), REPLAY_KEYS_MAX);
        let last = sign(&query(1), &many[REPLAY_KEYS_MAX], now + 1_000).expect("sign").wire;
        assert_eq!(admit(&mut replays, &many, &last, now + 1_000), Ok(()));
        assert_eq!(replays.len(), REPLAY_KEYS_MAX);
        // The key still within the window is remembered: its copy is refused.
        let second = sign(&query(1), &many[1], now + 1_000).expect("sign").wire;
        assert_eq!(admit(&mut replays, &many, &second, now + 1_000), Err(Replay::Repeated));
    }

    #[test]
    fn a_multi_message_answer_chains_its_macs_and_a_tampered_or_missing_message_breaks_the_chain() {
        let now = 1_700_000_000;
        let request = sign(&query(9), &key(), now).expect("sign");
        let held = key();
        let mut signer = ResponseSigner::new(&held, &request.mac, now);
        let messages: Vec<Vec<u8>> = (0..4)
            .map(|_| signer.sign(&answer_to(&request.wire)).expect("signs"))
            .collect();
        let mut client = ResponseVerifier::new(&held, &request.mac);
        for message in &messages {
            client
                .verify_next(message, now)
                .expect("each message verifies in order");
        }
        // The second message alone does not verify as a first one (it covers the first's MAC).
        assert_eq!(
            verify(&messages[1], &request.mac, &key(), now),
            Err(VerifyError::BadMac)
        );
        // One bit changed in the middle of the transfer.
        let mut client = ResponseVerifier::new(&held, &request.mac);
        client.verify_next(&messages[0], now).expect("first");
        let mut tampered = messages[1].clone();
        tampered[14] ^= 0x01;
        assert_eq!(client.verify_next(&tampered, now), Err(VerifyError::BadMac));
        // A message dropped from the middle.
        let mut client = ResponseVerifier::new(&held, &request.mac);
        client.verify_next(&messages[0], now).expect("first");
        assert_eq!(client.verify_next(&messages[2], now), Err(VerifyError::BadMac));
        // A message cut short (the TSIG lost): unsigned.
        let mut client = ResponseVerifier::new(&held, &request.mac);
        client.verify_next(&messages[0], now).expect("first");
        let start = read_record(&messages[1]).expect("reads").expect("tsig").start;
        assert!(client.verify_next(&messages[1][..start], now).is_err());
    }

    #[test]
    fn verify_request_never_panics_on_cut_or_garbage_requests() {
        let keys = keys();
        let request = sign(&query(1), &key(), 1_700_000_000).expect("sign");
        for cut in 0..request.wire.len() {
            let _ = verify_request(&request.wire[..cut], &keys, 1_700_000_000);
        }
        let seed = crate::rng::seed_from_env_or("verify_request_never_panics_on_cut_or_garbage_requests", 0x51f1);
        let mut rng = crate::rng::Rng::new(seed);
        for _ in 0..5_000 {
            let mut bytes = request.wire.clone();
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(bytes.len() as u64) as usize;
                bytes[at] = rng.next_u64() as u8;
            }
            if let RequestCheck::Refused(refusal) = verify_request(&bytes, &keys, 1_700_000_000) {
                let _ = refusal.respond(&bytes, 1_700_000_000);
            }
            let length = rng.below(80) as usize;
            let garbage: Vec<u8> = (0..length).map(|_| rng.next_u64() as u8).collect();
            let _ = verify_request(&garbage, &keys, 0);
            let _ = read_record(&garbage);
        }
    }

    #[test]
    fn key_parse_never_panics_on_arbitrary_text() {
        let seed = crate::rng::seed_from_env_or("key_parse_never_panics_on_arbitrary_text", 0x7e57);
        let mut rng = crate::rng::Rng::new(seed);
        let pieces = [
            "key",
            "\"k\"",
            "{",
            "}",
            ";",
            "algorithm",
            "hmac-sha256",
            "secret",
            SECRET,
            "\"",
            "#",
            "//",
            "/*",
            "*/",
            "\n",
            " ",
            "é",
            "..",
            "=",
        ];
        for _ in 0..5_000 {
            let count = rng.below(24) as usize;
            let text: String = (0..count)
                .map(|_| pieces[rng.below(pieces.len() as u64) as usize])
                .collect::<Vec<_>>()
                .join(if rng.below(2) == 0 { " " } else { "" });
            let name = (rng.below(3) == 0).then_some("k");
            if let Ok(key) = Key::parse(&text, name, None) {
                assert!(!key.name.is_empty(), "{text:?}");
            }
        }
    }

    fn hex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
            .collect()
    }

    #[test]
    fn each_algorithm_computes_the_rfc_4231_and_rfc_2202_hmac_vectors() {
        // RFC 4231 §4.3 (test case 2) for SHA-224..512, RFC 2202 §3 (test case 2) for SHA-1.
        let expected = [
            (Algorithm::HmacSha1, "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79"),
            (
                Algorithm::HmacSha224,
                "a30e01098bc6dbbf45690f3a7e9e6d0f8bbea2a39e6148008fd05e44",
            ),
            (
                Algorithm::HmacSha256,
                "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
            ),
            (
                Algorithm::HmacSha384,
                "af45d2e376484031617f78d2b58a6b1b9c7ef464f5a01b47e42ec3736322445e8e2240ca5e69e2c78b3239ecfab21649",
            ),
            (
                Algorithm::HmacSha512,
                "164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea2505549758bf75c05a994a6d034f65f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737",
            ),
        ];
        for (algorithm, mac) in expected {
            let mut hasher = Hasher::new(algorithm, b"Jefe");
            hasher.update(b"what do ya ");
            hasher.update(b"want for nothing?");
            let computed = hasher.finalize();
            assert_eq!(computed, hex(mac), "{algorithm}");
            assert_eq!(computed.len(), algorithm.mac_bytes(), "{algorithm}");
            // The truncated comparison takes the first bytes only, and only those.
            let mut again = Hasher::new(algorithm, b"Jefe");
            again.update(b"what do ya want for nothing?");
            assert!(again.verify_truncated_left(&computed[..algorithm.mac_bytes_min()]));
            let mut altered = computed.clone();
            altered[0] ^= 1;
            let mut again = Hasher::new(algorithm, b"Jefe");
            again.update(b"what do ya want for nothing?");
            assert!(!again.verify_truncated_left(&altered[..algorithm.mac_bytes_min()]));
        }
    }

    /// Queries for `www.shop.example. A` that dig 9.18 signed with `-y ALGORITHM:xfr-key:SECRET`
    /// (captured off the wire) and the second each was signed at.
    const DIG_SHA512: &str = "d79201200001000000000001037777770473686f70076578616d706c650000010001077866722d6b65790000fa00ff00000000005d0b686d61632d7368613531320000006b14b9a5012c0040fec60b6dc2c93c3e6572adc7226677b8d8f1e3af27ee038ecf402c4a608bdec1098a8e9a0f961972ce06b2442953bf0e609bfb7d86ded13bbdce238f7f8c560dd79200000000";
    const DIG_SHA1: &str = "4e4c01200001000000000001037777770473686f70076578616d706c650000010001077866722d6b65790000fa00ff00000000002f09686d61632d736861310000006b14b9a6012c001460e91a9d9c9575cf37fe6c188448910d55c6cf0a4e4c00000000";
    const DIG_SHA256_128: &str = "836801200001000000000001037777770473686f70076578616d706c650000010001077866722d6b65790000fa00ff00000000002d0b686d61632d7368613235360000006b14b9a7012c00107d633260e8aa36458e298bc95897fdcc836800000000";
    const DIG_SHA384_192: &str = "867901200001000000000001037777770473686f70076578616d706c650000010001077866722d6b65790000fa00ff0000000000350b686d61632d7368613338340000006b14b9a8012c0018faaf8b4865296be99a466047d205d451ac602d9cb04bb33f867900000000";

    fn dig_key(algorithm: &str) -> Key {
        Key::parse(SECRET, Some("xfr-key"), Some(algorithm)).expect("key")
    }

    #[test]
    fn queries_dig_signed_with_each_algorithm_verify_with_a_key_of_that_algorithm_only() {
        for (wire, algorithm) in [
            (DIG_SHA512, "hmac-sha512"),
            (DIG_SHA1, "hmac-sha1"),
            (DIG_SHA256_128, "hmac-sha256-128"),
            (DIG_SHA384_192, "hmac-sha384-192"),
        ] {
            let wire = hex(wire);
            let now = read_record(&wire).expect("reads").expect("tsig").time_signed;
            let keys = [dig_key(algorithm)];
            let RequestCheck::Verified(verified) = verify_request(&wire, &keys, now) else {
                panic!("dig's {algorithm} query verifies");
            };
            // The answer is signed with the same algorithm and MAC length, and verifies.
            let answer = ResponseSigner::new(verified.key, &verified.mac, now)
                .sign(&answer_to(&wire))
                .expect("signs");
            let record = read_record(&answer).expect("reads").expect("tsig");
            assert_eq!(display_wire(&record.algorithm), keys[0].algorithm().name());
            assert_eq!(record.mac.len(), verified.mac.len());
            assert_eq!(answer.len(), answer_to(&wire).len() + record_bytes(&keys[0]));
            verify(&answer, &verified.mac, &keys[0], now).expect("the client accepts it");
            // The same name and secret under another algorithm: a key not held (BADKEY).
            let other = Key::parse(SECRET, Some("xfr-key"), Some("hmac-sha224")).expect("key");
            assert!(matches!(
                verify_request(&wire, &[other], now),
                RequestCheck::Refused(Refusal { error: BADKEY, .. })
            ));
            // Another secret: BADSIG.
            let forger = Key::parse(
                "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
                Some("xfr-key"),
                Some(algorithm),
            )
            .expect("key");
            assert!(matches!(
                verify_request(&wire, &[forger], now),
                RequestCheck::Refused(Refusal { error: BADSIG, .. })
            ));
        }
        // dig's truncated MACs, for keys that take full ones: BADTRUNC, signed at the server's
        // time with the key (RFC 8945 §5.3.2), verifiable by the client.
        for (wire, algorithm) in [(DIG_SHA256_128, "hmac-sha256"), (DIG_SHA384_192, "hmac-sha384")] {
            let wire = hex(wire);
            let now = read_record(&wire).expect("reads").expect("tsig").time_signed;
            let keys = [dig_key(algorithm)];
            let RequestCheck::Refused(refusal) = verify_request(&wire, &keys, now) else {
                panic!("a truncated {algorithm} MAC is refused");
            };
            assert_eq!(refusal.error, BADTRUNC);
            let answer = refusal.respond(&answer_to(&wire), now + 1).expect("answers");
            let record = read_record(&answer).expect("reads").expect("tsig");
            assert_eq!((record.error, record.time_signed), (BADTRUNC, now + 1));
            assert_eq!(record.mac.len(), keys[0].algorithm().mac_bytes());
        }
    }

    #[test]
    fn every_algorithm_signs_and_verifies_requests_answers_and_transfers() {
        let now = 1_700_000_000;
        for algorithm in Algorithm::ALL {
            let key = Key::with_algorithm("k", SECRET, algorithm).expect("key");
            let request = sign(&query(1), &key, now).expect("sign");
            assert_eq!(request.mac.len(), algorithm.mac_bytes(), "{algorithm}");
            let keys = [key.clone()];
            let RequestCheck::Verified(verified) = verify_request(&request.wire, &keys, now) else {
                panic!("{algorithm} verifies");
            };
            let mut signer = ResponseSigner::new(verified.key, &verified.mac, now);
            let mut client = ResponseVerifier::new(&key, &request.mac);
            for _ in 0..3 {
                let message = signer.sign(&answer_to(&request.wire)).expect("signs");
                assert_eq!(message.len(), answer_to(&request.wire).len() + record_bytes(&key));
                client.verify_next(&message, now).expect("verifies in order");
            }
            // Signed with the same secret under another algorithm: the client's key is not it.
            let other = Algorithm::ALL
                .into_iter()
                .find(|other| *other != algorithm)
                .expect("another");
            let stranger = Key::with_algorithm("k", SECRET, other).expect("key");
            let response = respond(&request, &stranger, now, 0);
            assert!(matches!(
                verify(&response, &request.mac, &key, now),
                Err(VerifyError::OtherKey(_))
            ));
        }
    }

    #[test]
    fn mac_lengths_follow_rfc_8945_bounds_per_algorithm() {
        let now = 1_700_000_000;
        for algorithm in Algorithm::ALL {
            let key = Key::with_algorithm("k", SECRET, algorithm).expect("key");
            let keys = [key.clone()];
            let full = algorithm.mac_bytes();
            let least = algorithm.mac_bytes_min();
            assert_eq!(least, (full / 2).max(10));
            let wire = |bytes: usize| {
                sign_raw(
                    &query(1),
                    &key,
                    &key.wire_name,
                    algorithm.wire(),
                    now,
                    FUDGE_S,
                    &[],
                    bytes,
                )
            };
            // Below the bound: FORMERR, whatever the key.
            assert!(matches!(
                verify_request(&wire(least - 1), &keys, now),
                RequestCheck::Malformed(_)
            ));
            // Within: BADTRUNC for a full-length key; a key truncated to that length takes it.
            assert!(matches!(
                verify_request(&wire(least), &keys, now),
                RequestCheck::Refused(Refusal { error: BADTRUNC, .. })
            ));
            let truncated_name = format!("{algorithm}-{}", least * 8);
            let truncated = Key::parse(SECRET, Some("k"), Some(&truncated_name)).expect("truncated key");
            assert_eq!(truncated.algorithm_name(), truncated_name);
            assert!(matches!(
                verify_request(&wire(least), std::slice::from_ref(&truncated), now),
                RequestCheck::Verified(_)
            ));
            assert!(matches!(
                verify_request(&wire(full), std::slice::from_ref(&truncated), now),
                RequestCheck::Verified(_)
            ));
            // A truncated key signs truncated MACs.
            assert_eq!(sign(&query(2), &truncated, now).expect("sign").mac.len(), least);
        }
    }

    #[test]
    fn an_answer_has_the_requests_mac_length_whatever_the_keys_truncation() {
        // RFC 8945 §5.3.1, as BIND answers: a server holding `hmac-sha256-128` answers a full
        // MAC with a full MAC (a client holding the key untruncated, `dig -y hmac-sha256:`,
        // refuses a shorter one), and a 128-bit one with 128 bits.
        let now = 1_700_000_000;
        let held = [Key::parse(SECRET, Some("k"), Some("hmac-sha256-128")).expect("truncated key")];
        let full = Key::parse(SECRET, Some("k"), None).expect("key");
        for (client, bytes) in [(&full, 32), (&held[0], 16)] {
            let request = sign(&query(1), client, now).expect("sign");
            assert_eq!(request.mac.len(), bytes);
            let RequestCheck::Verified(verified) = verify_request(&request.wire, &held, now) else {
                panic!("a {bytes}-byte MAC verifies with the truncated key");
            };
            let mut signer = ResponseSigner::new(verified.key, &verified.mac, now);
            let mut answers = ResponseVerifier::new(client, &request.mac);
            for _ in 0..3 {
                let message = signer.sign(&answer_to(&request.wire)).expect("signs");
                let record = read_record(&message).expect("reads").expect("tsig");
                assert_eq!(record.mac.len(), bytes, "every message of the answer");
                assert_eq!(
                    message.len(),
                    answer_to(&request.wire).len() + answer_record_bytes(&held[0], &request.mac)
                );
                answers.verify_next(&message, now).expect("the client verifies it");
            }
            // BADTIME (signed): the request's length too.
            let RequestCheck::Refused(late) = verify_request(&request.wire, &held, now + 1_000) else {
                panic!("too late");
            };
            assert_eq!(late.error, BADTIME);
            let answer = late.respond(&answer_to(&request.wire), now + 1_000).expect("answers");
            assert_eq!(read_record(&answer).expect("reads").expect("tsig").mac.len(), bytes);
            assert!(matches!(
                verify(&answer, &request.mac, client, now + 1_000),
                Err(VerifyError::Server {
                    error: BADTIME,
                    signed: true,
                    ..
                })
            ));
        }
        // BADTRUNC: the key's own length, the request's being too short for it.
        let truncated_client = Key::parse(SECRET, Some("k"), Some("hmac-sha256-128")).expect("key");
        let request = sign(&query(2), &truncated_client, now).expect("sign");
        let RequestCheck::Refused(refusal) = verify_request(&request.wire, std::slice::from_ref(&full), now) else {
            panic!("BADTRUNC");
        };
        assert_eq!(refusal.error, BADTRUNC);
        let answer = refusal.respond(&answer_to(&request.wire), now).expect("answers");
        assert_eq!(read_record(&answer).expect("reads").expect("tsig").mac.len(), 32);
    }

    #[test]
    fn algorithms_in_key_files_and_configuration() {
        let file =
            |algorithm: &str| format!("key \"xfr-key\" {{\n\talgorithm {algorithm};\n\tsecret \"{SECRET}\";\n}};\n");
        for algorithm in Algorithm::ALL {
            let parsed = Key::parse(&file(algorithm.name()), None, None).expect("parses");
            assert_eq!(parsed.algorithm(), algorithm);
            // The configuration may repeat the file's algorithm (any case), not contradict it.
            assert!(Key::parse(&file(algorithm.name()), None, Some(&algorithm.name().to_uppercase())).is_ok());
        }
        let mismatch = Key::parse(&file("hmac-sha512"), None, Some("hmac-sha256")).expect_err("mismatch");
        assert!(matches!(mismatch, KeyError::AlgorithmMismatch { .. }));
        assert!(mismatch.to_string().contains("hmac-sha512"), "{mismatch}");
        // A bare secret: hmac-sha256 unless named.
        assert_eq!(
            Key::parse(SECRET, Some("k"), None).expect("key").algorithm(),
            Algorithm::HmacSha256
        );
        assert_eq!(
            Key::parse(SECRET, Some("k"), Some("hmac-sha512."))
                .expect("key")
                .algorithm(),
            Algorithm::HmacSha512
        );
        // MD5 is refused with the fix; an unknown name lists the supported ones.
        for md5 in ["hmac-md5", "HMAC-MD5.SIG-ALG.REG.INT"] {
            let refused = Key::parse(SECRET, Some("k"), Some(md5)).expect_err("md5");
            assert!(matches!(refused, KeyError::Md5 { .. }), "{refused}");
            assert!(
                refused.to_string().contains("tsig-keygen -a hmac-sha256 k"),
                "{refused}"
            );
        }
        let unknown = Key::parse(&file("hmac-sha3-256"), None, None).expect_err("unknown");
        assert!(unknown.to_string().contains(&Algorithm::names()), "{unknown}");
        // Truncations: a multiple of 8 bits within the RFC's bounds.
        for bad in ["hmac-sha256-120", "hmac-sha256-130", "hmac-sha256-264", "hmac-sha1-72"] {
            let refused = Key::parse(SECRET, Some("k"), Some(bad)).expect_err(bad);
            assert!(refused.to_string().contains("RFC 8945"), "{refused}");
        }
        assert!(Key::parse(SECRET, Some("k"), Some("hmac-sha1-80")).is_ok());
    }
}
