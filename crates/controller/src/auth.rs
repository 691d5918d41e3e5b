//! Who may call what on the controller: bearer tokens with roles.
//!
//! Every credential is kept as the SHA-256 of its token (`[[tokens]]` gives the hash itself or
//! a file holding the token), and a presented token is hashed and compared with every
//! credential in constant time, so neither its bytes nor its length leak through timings.
//!
//! Roles: `agent` (report and fetch the plan, only under the credential's own vantage name),
//! `operator` (the manual commands, and everything `read` may), `read` (status, events, the
//! active-region pointer), `member` (a controller of a `[controller.ha]` group: a follower
//! passes its own probes' reports on to the leader with it, only under the member's own
//! vantage name, like an agent). The DNS admin token (role `dns`) is not accepted here: the
//! controller only sends it. The deprecated single control token (`--token-file`) holds
//! `agent`, `operator` and `read`; it may report for any vantage point that has no credential
//! of its own, as every token could before per-agent credentials existed.
//!
//! A role no credential holds is open to anyone who can connect, which is why the server only
//! listens beyond loopback when every role has one (`open_roles`).
//!
//! Pure apart from `new_token`, which reads the operating system's random source.

use std::fmt;
use std::io::Read;

use sha2::{Digest as _, Sha256};

/// Bytes of randomness in a token made by `switchyard token new`.
pub const TOKEN_RANDOM_BYTES: usize = 32;
/// Shortest token accepted from a token file (a guessable secret is no secret).
pub const TOKEN_BYTES_MIN: usize = 16;
/// Longest token accepted from a token file or a request.
pub const TOKEN_BYTES_MAX: usize = 4096;

/// What a credential may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    Agent,
    Operator,
    Read,
    /// A controller member (`[controller.ha] token_file`): reports as its own vantage name.
    Member,
}

impl Role {
    pub const NAMES: [&'static str; 4] = ["agent", "operator", "read", "member"];

    pub fn parse(name: &str) -> Option<Role> {
        match name {
            "agent" => Some(Role::Agent),
            "operator" => Some(Role::Operator),
            "read" => Some(Role::Read),
            "member" => Some(Role::Member),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Role::Agent => "agent",
            Role::Operator => "operator",
            Role::Read => "read",
            Role::Member => "member",
        }
    }

    /// Whether a holder of `self` may do what `needed` allows (an operator may read; a
    /// member may report, as an agent does).
    pub fn grants(self, needed: Role) -> bool {
        self == needed
            || (self == Role::Operator && needed == Role::Read)
            || (self == Role::Member && needed == Role::Agent)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The SHA-256 of a token.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TokenDigest(pub [u8; 32]);

impl fmt::Debug for TokenDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The hash is not secret, but there is no reason to print it.
        f.write_str("TokenDigest(..)")
    }
}

impl TokenDigest {
    pub fn of(token: &str) -> TokenDigest {
        TokenDigest(Sha256::digest(token.as_bytes()).into())
    }

    /// 64 hexadecimal digits (either case).
    pub fn parse_hex(text: &str) -> Option<TokenDigest> {
        let bytes = text.as_bytes();
        if bytes.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (index, pair) in bytes.chunks_exact(2).enumerate() {
            let high = char::from(pair[0]).to_digit(16)?;
            let low = char::from(pair[1]).to_digit(16)?;
            out[index] = u8::try_from(high * 16 + low).ok()?;
        }
        Some(TokenDigest(out))
    }

    pub fn to_hex(self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Constant-time equality: every byte is compared whatever the first difference.
    pub fn same(&self, other: &TokenDigest) -> bool {
        common::secret::same_secret(&self.0, &other.0)
    }
}

/// One `[[tokens]]` entry, resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credential {
    /// For `agent`, the vantage name it reports as; otherwise who holds it (for logs).
    pub name: String,
    pub role: Role,
    pub digest: TokenDigest,
}

/// Who made a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// No credential holds the role needed, so it is open (loopback only).
    Anyone,
    Credential {
        name: String,
        role: Role,
    },
    /// The deprecated single control token.
    ControlToken,
}

impl Caller {
    /// For logs and the audit trail.
    pub fn describe(&self) -> String {
        match self {
            Caller::Anyone => "an unauthenticated caller (the role has no credential)".into(),
            Caller::Credential { name, role } => format!("'{name}' (role {role})"),
            Caller::ControlToken => "the control token".into(),
        }
    }
}

/// Why a request is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Denied {
    /// No token, or one no credential matches: 401.
    Unauthenticated,
    /// A known token without the role: 403.
    WrongRole { caller: String, needed: Role },
    /// An agent token reporting (or asking for the plan) as another vantage point: 403.
    OtherVantage { caller: String, claimed: String },
}

impl Denied {
    pub fn message(&self) -> String {
        match self {
            Denied::Unauthenticated => "missing or unknown bearer token: send `Authorization: Bearer <token>` with a token listed in the controller's [[tokens]] (or its --token-file)".into(),
            Denied::WrongRole { caller, needed } => format!(
                "the token of {caller} may not call this endpoint; it needs role {needed} (make one with `switchyard token new --role {needed} --name NAME`)"
            ),
            Denied::OtherVantage { caller, claimed } => format!(
                "the token of {caller} may only report as its own vantage point, not as '{claimed}'; give each agent its own token and --name"
            ),
        }
    }
}

/// The credentials the controller accepts.
#[derive(Clone, Debug, Default)]
pub struct Access {
    credentials: Vec<Credential>,
    control: Option<TokenDigest>,
}

impl Access {
    pub fn new(credentials: Vec<Credential>, control_token: Option<&str>) -> Access {
        Access {
            credentials,
            control: control_token.filter(|t| !t.is_empty()).map(TokenDigest::of),
        }
    }

    /// Roles no credential holds: anyone who can connect may use them.
    pub fn open_roles(&self) -> Vec<Role> {
        [Role::Agent, Role::Operator, Role::Read]
            .into_iter()
            .filter(|role| !self.held(*role))
            .collect()
    }

    /// Whether some credential (or the control token) holds `role`: if none does, anyone may act
    /// in it.
    pub fn held(&self, role: Role) -> bool {
        self.control.is_some() || self.credentials.iter().any(|c| c.role.grants(role))
    }

    /// Whether any credential exists at all.
    pub fn is_configured(&self) -> bool {
        self.control.is_some() || !self.credentials.is_empty()
    }

    /// The caller behind `Authorization: Bearer TOKEN` (`header` is the header's value), if it
    /// may use endpoints of role `needed`.
    pub fn authorize(&self, header: Option<&str>, needed: Role) -> Result<Caller, Denied> {
        if !self.held(needed) {
            return Ok(Caller::Anyone);
        }
        let token = header
            .and_then(common::secret::bearer_token)
            .filter(|token| !token.is_empty() && token.len() <= TOKEN_BYTES_MAX)
            .ok_or(Denied::Unauthenticated)?;
        let digest = TokenDigest::of(token);
        // Compare with every credential, so the time taken does not say which one matched.
        let mut found: Option<&Credential> = None;
        for credential in &self.credentials {
            if credential.digest.same(&digest) && found.is_none() {
                found = Some(credential);
            }
        }
        let control = self.control.as_ref().is_some_and(|c| c.same(&digest));
        match (found, control) {
            (Some(credential), _) if credential.role.grants(needed) => Ok(Caller::Credential {
                name: credential.name.clone(),
                role: credential.role,
            }),
            (Some(credential), _) => Err(Denied::WrongRole {
                caller: format!("'{}' (role {})", credential.name, credential.role),
                needed,
            }),
            (None, true) => Ok(Caller::ControlToken),
            (None, false) => Err(Denied::Unauthenticated),
        }
    }

    /// Whether `caller` may report (or fetch the plan) as vantage point `vantage`.
    pub fn may_act_as(&self, caller: &Caller, vantage: &str) -> Result<(), Denied> {
        match caller {
            Caller::Anyone => Ok(()),
            Caller::Credential { name, role } if matches!(role, Role::Agent | Role::Member) && name == vantage => {
                Ok(())
            }
            Caller::Credential { name, role } => Err(Denied::OtherVantage {
                caller: format!("'{name}' (role {role})"),
                claimed: vantage.to_string(),
            }),
            // A vantage point with a token of its own can no longer be claimed with the shared
            // one: that is what makes migrating one agent at a time safe.
            Caller::ControlToken
                if self
                    .credentials
                    .iter()
                    .any(|c| matches!(c.role, Role::Agent | Role::Member) && c.name == vantage) =>
            {
                Err(Denied::OtherVantage {
                    caller: "the control token (it may not report for a vantage point that has its own token)".into(),
                    claimed: vantage.to_string(),
                })
            }
            Caller::ControlToken => Ok(()),
        }
    }
}

/// A new random token: `TOKEN_RANDOM_BYTES` from the operating system, in hex.
pub fn new_token() -> std::io::Result<String> {
    let mut bytes = [0u8; TOKEN_RANDOM_BYTES];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Checks a token read from a file or the environment.
pub fn check_token(token: &str) -> Result<(), String> {
    if token.len() < TOKEN_BYTES_MIN {
        return Err(format!(
            "the token has {} bytes; use at least {TOKEN_BYTES_MIN} (make one with `switchyard token new`)",
            token.len()
        ));
    }
    if token.len() > TOKEN_BYTES_MAX {
        return Err(format!(
            "the token has {} bytes; use at most {TOKEN_BYTES_MAX}",
            token.len()
        ));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("the token has spaces or control characters; use printable ASCII only".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "agent-a-token-0123456789";
    const B: &str = "agent-b-token-0123456789";
    const OPERATOR: &str = "operator-token-0123456789";
    const READER: &str = "read-token-0123456789";
    const CONTROL: &str = "control-token-0123456789";

    fn credential(name: &str, role: Role, token: &str) -> Credential {
        Credential {
            name: name.into(),
            role,
            digest: TokenDigest::of(token),
        }
    }

    fn access(control: Option<&str>) -> Access {
        Access::new(
            vec![
                credential("agent-a", Role::Agent, A),
                credential("agent-b", Role::Agent, B),
                credential("alice", Role::Operator, OPERATOR),
                credential("grafana", Role::Read, READER),
            ],
            control,
        )
    }

    fn bearer(token: &str) -> String {
        format!("Bearer {token}")
    }

    #[test]
    fn each_role_reaches_only_its_endpoints() {
        let access = access(None);
        let allowed = |token: &str, role: Role| access.authorize(Some(&bearer(token)), role).is_ok();
        assert!(allowed(A, Role::Agent));
        assert!(!allowed(A, Role::Operator));
        assert!(!allowed(A, Role::Read));
        assert!(allowed(OPERATOR, Role::Operator));
        assert!(allowed(OPERATOR, Role::Read), "an operator reads status");
        assert!(!allowed(OPERATOR, Role::Agent), "an operator cannot report");
        assert!(allowed(READER, Role::Read));
        assert!(!allowed(READER, Role::Operator));
        assert!(!allowed(READER, Role::Agent));
        assert_eq!(
            access.authorize(Some(&bearer(READER)), Role::Operator),
            Err(Denied::WrongRole {
                caller: "'grafana' (role read)".into(),
                needed: Role::Operator
            })
        );
        for header in [
            None,
            Some("Bearer "),
            Some("Basic abc"),
            Some("Bearer wrong-token-0123456789"),
        ] {
            assert_eq!(
                access.authorize(header, Role::Read),
                Err(Denied::Unauthenticated),
                "{header:?}"
            );
        }
        let long = bearer(&"x".repeat(TOKEN_BYTES_MAX + 1));
        assert_eq!(access.authorize(Some(&long), Role::Read), Err(Denied::Unauthenticated));
    }

    /// RFC 7235, section 2.1: the auth-scheme is case-insensitive, as curl and some proxies
    /// send it.
    #[test]
    fn the_bearer_scheme_is_read_in_any_case() {
        let access = access(None);
        for scheme in ["Bearer", "bearer", "BEARER"] {
            assert_eq!(
                access.authorize(Some(&format!("{scheme} {READER}")), Role::Read),
                Ok(Caller::Credential {
                    name: "grafana".into(),
                    role: Role::Read
                }),
                "{scheme}"
            );
        }
    }

    #[test]
    fn an_agent_token_acts_only_as_its_own_vantage() {
        let access = access(None);
        let caller = access.authorize(Some(&bearer(A)), Role::Agent).expect("agent");
        assert_eq!(access.may_act_as(&caller, "agent-a"), Ok(()));
        let refused = access.may_act_as(&caller, "agent-b").expect_err("forged");
        assert!(refused.message().contains("not as 'agent-b'"), "{}", refused.message());
        assert!(access.may_act_as(&caller, "controller").is_err());
    }

    #[test]
    fn a_member_token_reports_only_as_its_own_member_and_does_nothing_else() {
        const MEMBER: &str = "member-eu-token-0123456789";
        let mut credentials = vec![credential("controller-eu", Role::Member, MEMBER)];
        credentials.extend(access(None).credentials);
        let access = Access::new(credentials, Some(CONTROL));
        let caller = access
            .authorize(Some(&bearer(MEMBER)), Role::Agent)
            .expect("a member reports");
        assert_eq!(access.may_act_as(&caller, "controller-eu"), Ok(()));
        assert!(access.may_act_as(&caller, "agent-a").is_err());
        assert!(access.may_act_as(&caller, "controller-us").is_err());
        assert!(access.authorize(Some(&bearer(MEMBER)), Role::Operator).is_err());
        assert!(access.authorize(Some(&bearer(MEMBER)), Role::Read).is_err());
        // Once a member has a token of its own, the shared control token cannot speak for it.
        assert!(access.may_act_as(&Caller::ControlToken, "controller-eu").is_err());
        assert_eq!(Role::parse("member"), Some(Role::Member));
    }

    #[test]
    fn the_control_token_keeps_working_but_not_for_agents_with_their_own() {
        let access = access(Some(CONTROL));
        for role in [Role::Agent, Role::Operator, Role::Read] {
            assert_eq!(access.authorize(Some(&bearer(CONTROL)), role), Ok(Caller::ControlToken));
        }
        assert_eq!(access.may_act_as(&Caller::ControlToken, "agent-c"), Ok(()));
        assert!(access.may_act_as(&Caller::ControlToken, "agent-a").is_err());
        assert!(access.open_roles().is_empty());
    }

    #[test]
    fn a_role_without_credentials_is_open_and_said_so() {
        let access = Access::new(vec![credential("agent-a", Role::Agent, A)], None);
        assert_eq!(access.open_roles(), vec![Role::Operator, Role::Read]);
        assert_eq!(access.authorize(None, Role::Read), Ok(Caller::Anyone));
        assert_eq!(access.authorize(None, Role::Agent), Err(Denied::Unauthenticated));
        let operator_only = Access::new(vec![credential("alice", Role::Operator, OPERATOR)], None);
        assert_eq!(
            operator_only.open_roles(),
            vec![Role::Agent],
            "an operator credential covers read"
        );
        assert_eq!(Access::default().open_roles().len(), 3);
        assert!(!Access::default().is_configured());
    }

    #[test]
    fn digest_comparison_looks_at_every_byte() {
        let digest = TokenDigest::of(A);
        assert!(digest.same(&TokenDigest::of(A)));
        // A difference anywhere, first byte or last, is found: the loop never stops early,
        // and lengths never differ because both sides are SHA-256 digests.
        for index in 0..32 {
            for bit in 0..8 {
                let mut other = digest;
                other.0[index] ^= 1 << bit;
                assert!(!digest.same(&other), "byte {index} bit {bit}");
            }
        }
    }

    #[test]
    fn digests_round_trip_through_hex() {
        let digest = TokenDigest::of("abc");
        // The SHA-256 test vector of "abc" (FIPS 180-2).
        assert_eq!(
            digest.to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(TokenDigest::parse_hex(&digest.to_hex().to_uppercase()), Some(digest));
        assert_eq!(TokenDigest::parse_hex("ba78"), None);
        assert_eq!(TokenDigest::parse_hex(&"g".repeat(64)), None);
        assert_eq!(TokenDigest::parse_hex(&"é".repeat(32)), None);
    }

    #[test]
    fn new_tokens_are_random_and_pass_the_checks() {
        let first = new_token().expect("random source");
        let second = new_token().expect("random source");
        assert_eq!(first.len(), TOKEN_RANDOM_BYTES * 2);
        assert_ne!(first, second);
        assert_eq!(check_token(&first), Ok(()));
        assert!(check_token("short").is_err());
        assert!(check_token("has a space in the middle").is_err());
    }
}
