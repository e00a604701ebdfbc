//! Who may do what: the cluster secret that peers present on every internal
//! request, and the bearer tokens of clients and operators.
//!
//! - Peers: every `/internal/...` request carries the cluster secret in the
//!   [`PEER_SECRET_HEADER`] header; a request without one that matches is
//!   answered 401 before its body is read. A secret file may list several
//!   secrets, one a line: the first is sent, all are accepted (rotation).
//! - Clients and operators: `Authorization: Bearer TOKEN`, from a token file
//!   with one `ROLE TOKEN` a line. `client` may create, read, list and call
//!   sessions and read the cluster status; `admin` may also change
//!   membership, drain, rebalance, delete sessions and read metrics. No
//!   token: 401; a token of the wrong role: 403. Health probes need none.
//!
//! Comparisons are constant-time (`subtle`). Nothing here does I/O except
//! the file loaders and [`generate_secret`].

use std::path::Path;

use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

/// Header that carries the cluster secret on internal requests.
pub const PEER_SECRET_HEADER: &str = "x-minos-cluster-secret";

/// Shortest secret or token accepted (characters).
pub const MIN_SECRET_LEN: usize = 16;

/// Why credentials could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The file's content is not valid.
    #[error("{path}: {message}")]
    Invalid {
        /// The file (or `<inline>`).
        path: String,
        /// What is wrong.
        message: String,
    },
}

fn invalid(path: &str, message: impl Into<String>) -> CredentialError {
    CredentialError::Invalid {
        path: path.into(),
        message: message.into(),
    }
}

fn check_secret(path: &str, what: &str, text: &str) -> Result<(), CredentialError> {
    if text.len() < MIN_SECRET_LEN {
        return Err(invalid(
            path,
            format!(
                "{what} is {} characters; at least {MIN_SECRET_LEN} are required",
                text.len()
            ),
        ));
    }
    if !text.chars().all(|c| c.is_ascii_graphic()) {
        return Err(invalid(
            path,
            format!("{what} must be printable ASCII without spaces"),
        ));
    }
    Ok(())
}

fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

fn read_file(path: &Path) -> Result<String, CredentialError> {
    std::fs::read_to_string(path).map_err(|source| CredentialError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// The shared secret of a cluster's peers.
#[derive(Clone)]
pub struct ClusterSecret {
    accepted: Vec<String>,
}

impl std::fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ClusterSecret({} accepted, redacted)",
            self.accepted.len()
        )
    }
}

impl ClusterSecret {
    /// A secret from its text: one secret a line, the first one sent; blank
    /// lines and `#` comments ignored.
    pub fn parse(text: &str) -> Result<Self, CredentialError> {
        Self::parse_named("<inline>", text)
    }

    fn parse_named(path: &str, text: &str) -> Result<Self, CredentialError> {
        let accepted: Vec<String> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(String::from)
            .collect();
        if accepted.is_empty() {
            return Err(invalid(path, "no secret in the file"));
        }
        for secret in &accepted {
            check_secret(path, "a cluster secret", secret)?;
        }
        Ok(Self { accepted })
    }

    /// Reads a secret file (see [`ClusterSecret::parse`]).
    pub fn from_file(path: &Path) -> Result<Self, CredentialError> {
        Self::parse_named(&path.display().to_string(), &read_file(path)?)
    }

    /// The secret this node sends.
    pub fn current(&self) -> &str {
        &self.accepted[0]
    }

    /// True when `presented` is one of the accepted secrets.
    pub fn accepts(&self, presented: &str) -> bool {
        // Every candidate is compared, so the time does not tell which matched.
        self.accepted
            .iter()
            .fold(false, |ok, s| constant_time_eq(s, presented) | ok)
    }
}

/// What a bearer token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Sessions: create, get, list, call; cluster status.
    Client,
    /// Everything a client may do, plus membership, drain, rebalance,
    /// delete and metrics.
    Admin,
}

impl Role {
    /// True when a holder of `self` may do what `needed` allows.
    pub fn allows(self, needed: Role) -> bool {
        self >= needed
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "client" => Ok(Role::Client),
            "admin" => Ok(Role::Admin),
            other => Err(format!("unknown role {other:?} (roles: admin, client)")),
        }
    }
}

/// The bearer tokens a node accepts.
#[derive(Clone, Default)]
pub struct Tokens {
    tokens: Vec<(Role, String)>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokens({} tokens, redacted)", self.tokens.len())
    }
}

impl Tokens {
    /// Tokens from text: `ROLE TOKEN` a line; blank lines and `#` comments
    /// ignored.
    pub fn parse(text: &str) -> Result<Self, CredentialError> {
        Self::parse_named("<inline>", text)
    }

    fn parse_named(path: &str, text: &str) -> Result<Self, CredentialError> {
        let mut tokens = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut words = line.split_whitespace();
            let (Some(role), Some(token), None) = (words.next(), words.next(), words.next()) else {
                return Err(invalid(
                    path,
                    format!("line {}: expected `ROLE TOKEN`", n + 1),
                ));
            };
            let role: Role = role
                .parse()
                .map_err(|e| invalid(path, format!("line {}: {e}", n + 1)))?;
            check_secret(path, &format!("the token on line {}", n + 1), token)?;
            tokens.push((role, token.to_string()));
        }
        if tokens.is_empty() {
            return Err(invalid(path, "no token in the file"));
        }
        Ok(Self { tokens })
    }

    /// Reads a token file (see [`Tokens::parse`]).
    pub fn from_file(path: &Path) -> Result<Self, CredentialError> {
        Self::parse_named(&path.display().to_string(), &read_file(path)?)
    }

    /// Adds one token.
    pub fn with(mut self, role: Role, token: impl Into<String>) -> Self {
        self.tokens.push((role, token.into()));
        self
    }

    /// The role of `presented`, if it is one of these tokens (the highest
    /// when listed twice).
    pub fn role_of(&self, presented: &str) -> Option<Role> {
        self.tokens
            .iter()
            .filter(|(_, t)| constant_time_eq(t, presented))
            .map(|(r, _)| *r)
            .max()
    }

    /// True when no token is configured.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The first token of `role`, if any.
    pub fn first(&self, role: Role) -> Option<&str> {
        self.tokens
            .iter()
            .find(|(r, _)| *r == role)
            .map(|(_, t)| t.as_str())
    }
}

/// How a node authenticates: the cluster secret and tokens, or nothing at
/// all (`insecure`, for experiments; the node says so loudly at start).
#[derive(Clone, Debug)]
pub enum Security {
    /// Peers must present the secret; clients a token.
    Enforced {
        /// The cluster secret.
        secret: ClusterSecret,
        /// Client and operator tokens (empty: only health probes answer).
        tokens: Tokens,
    },
    /// No authentication.
    Insecure,
}

impl Security {
    /// The secret to send to peers, if any.
    pub fn peer_secret(&self) -> Option<&str> {
        match self {
            Security::Enforced { secret, .. } => Some(secret.current()),
            Security::Insecure => None,
        }
    }

    /// True when `presented` may make peer requests.
    pub fn peer_allowed(&self, presented: Option<&str>) -> bool {
        match self {
            Security::Enforced { secret, .. } => presented.is_some_and(|p| secret.accepts(p)),
            Security::Insecure => true,
        }
    }

    /// What an `Authorization` header value earns: `Ok(role)`, or `Err(401
    /// reason)` when it names no known token. Insecure nodes give everyone
    /// the admin role.
    pub fn role_of(&self, authorization: Option<&str>) -> Result<Role, &'static str> {
        let Security::Enforced { tokens, .. } = self else {
            return Ok(Role::Admin);
        };
        let Some(value) = authorization else {
            return Err("this route needs `Authorization: Bearer TOKEN`");
        };
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .ok_or("the Authorization header must be `Bearer TOKEN`")?;
        tokens.role_of(token.trim()).ok_or("unknown token")
    }
}

/// A fresh random secret: 32 bytes from the OS, hex-encoded.
pub fn generate_secret() -> Result<String, std::io::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_file_accepts_every_listed_secret_and_sends_the_first() {
        let secret =
            ClusterSecret::parse("# rotation\nnew-secret-0123456789\nold-secret-0123456789\n")
                .expect("valid");
        assert_eq!(secret.current(), "new-secret-0123456789");
        assert!(secret.accepts("old-secret-0123456789"));
        assert!(!secret.accepts("old-secret-012345678"));
        assert!(!secret.accepts(""));
    }

    #[test]
    fn short_or_spaced_secrets_are_refused() {
        assert!(ClusterSecret::parse("short").is_err());
        assert!(ClusterSecret::parse("\n# only a comment\n").is_err());
        assert!(Tokens::parse("admin has a space in it1234").is_err());
        assert!(Tokens::parse("root 0123456789abcdef").is_err());
    }

    #[test]
    fn tokens_map_to_roles_and_admin_allows_client_routes() {
        let tokens =
            Tokens::parse("admin aaaaaaaaaaaaaaaa\nclient cccccccccccccccc\n").expect("valid");
        let security = Security::Enforced {
            secret: ClusterSecret::parse("ssssssssssssssss").expect("valid"),
            tokens,
        };
        assert_eq!(
            security.role_of(Some("Bearer aaaaaaaaaaaaaaaa")),
            Ok(Role::Admin)
        );
        assert_eq!(
            security.role_of(Some("Bearer cccccccccccccccc")),
            Ok(Role::Client)
        );
        assert!(security.role_of(Some("Bearer dddddddddddddddd")).is_err());
        assert!(security.role_of(Some("aaaaaaaaaaaaaaaa")).is_err());
        assert!(security.role_of(None).is_err());
        assert!(Role::Admin.allows(Role::Client));
        assert!(!Role::Client.allows(Role::Admin));
        assert!(security.peer_allowed(Some("ssssssssssssssss")));
        assert!(!security.peer_allowed(Some("aaaaaaaaaaaaaaaa")));
        assert!(!security.peer_allowed(None));
    }

    #[test]
    fn generated_secrets_are_long_and_differ() {
        let a = generate_secret().expect("random");
        let b = generate_secret().expect("random");
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
        assert!(ClusterSecret::parse(&a).is_ok());
    }
}
