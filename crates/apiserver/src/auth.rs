//! Authentication: who sent a request. A verified client certificate names the user (CN) and
//! groups (O); otherwise a bearer token from the token table; otherwise the request is
//! anonymous. An unknown bearer token is 401, and so is a client certificate whose subject is
//! refused ([`identity_from_cert`]) unless a valid bearer token comes with it.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use rustls::pki_types::CertificateDer;

/// An authenticated (or anonymous) user.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UserInfo {
    /// The user name.
    pub name: String,
    /// The groups, without the implicit `system:authenticated`.
    pub groups: Vec<String>,
    /// The user's uid, if its authenticator or an `Impersonate-Uid` header names one.
    pub uid: String,
    /// Extra attributes, from `Impersonate-Extra-<key>` headers.
    pub extra: BTreeMap<String, Vec<String>>,
}

/// The superuser group: RBAC allows it everything, as kube-apiserver does.
pub const SYSTEM_MASTERS: &str = "system:masters";
/// Every authenticated user's group.
pub const SYSTEM_AUTHENTICATED: &str = "system:authenticated";
/// The anonymous user's group.
pub const SYSTEM_UNAUTHENTICATED: &str = "system:unauthenticated";
/// The anonymous user.
pub const ANONYMOUS: &str = "system:anonymous";

impl UserInfo {
    /// A user in groups.
    pub fn new(name: impl Into<String>, groups: &[&str]) -> UserInfo {
        UserInfo {
            name: name.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            uid: String::new(),
            extra: BTreeMap::new(),
        }
    }

    /// The anonymous user.
    pub fn anonymous() -> UserInfo {
        UserInfo::new(ANONYMOUS, &[SYSTEM_UNAUTHENTICATED])
    }

    /// A superuser (in `system:masters`).
    pub fn admin(name: impl Into<String>) -> UserInfo {
        UserInfo::new(name, &[SYSTEM_MASTERS])
    }

    /// Whether the user is anonymous.
    pub fn is_anonymous(&self) -> bool {
        self.name == ANONYMOUS
    }

    /// Every group the user is in, with the implicit ones.
    pub fn all_groups(&self) -> Vec<&str> {
        let mut groups: Vec<&str> = self.groups.iter().map(String::as_str).collect();
        if !self.is_anonymous() && !groups.contains(&SYSTEM_AUTHENTICATED) {
            groups.push(SYSTEM_AUTHENTICATED);
        }
        groups
    }
}

/// A verified client certificate that names nobody it may be read as.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertIdentityError {
    /// The certificate does not parse as X.509.
    #[error("the client certificate does not parse")]
    Unparsed,
    /// Its subject could be read two ways ([`crate::subject::read`]).
    #[error(transparent)]
    Subject(#[from] crate::subject::SubjectError),
}

/// The identity in a verified client certificate, read by [`crate::subject::read`] (as the CSR
/// admission reads a request): the one CN is the user, every O (in any ASN.1 string type) a
/// group. `None` for no CN or an empty one (upstream's authenticator then names nobody, and
/// the request's other credentials decide); an error for a subject with two CNs, a CN or O in
/// a multi-valued RDN, or a CN or O that is no string: the certificate authenticates nobody.
pub fn identity_from_cert(der: &CertificateDer<'_>) -> Result<Option<UserInfo>, CertIdentityError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|_| CertIdentityError::Unparsed)?;
    let subject = crate::subject::read(cert.subject())?;
    if subject.common_name.is_empty() {
        return Ok(None);
    }
    Ok(Some(UserInfo {
        name: subject.common_name,
        groups: subject.organizations,
        uid: String::new(),
        extra: BTreeMap::new(),
    }))
}

/// Identity attached to a request by the connection it came on (a verified client
/// certificate), or by the in-process client.
#[derive(Debug, Clone)]
pub enum ConnectionIdentity {
    /// No client certificate, or one naming no user (no CN): other credentials decide.
    Nobody,
    /// The user a client certificate (or the in-process client) names.
    User(UserInfo),
    /// A verified client certificate whose subject is refused ([`identity_from_cert`]): an
    /// invalid credential, 401 unless a valid bearer token authenticates the request (as
    /// upstream's union of authenticators).
    Refused,
}

impl ConnectionIdentity {
    /// The identity of a connection whose peer presented `cert` (verified), if any.
    pub fn from_certificate(cert: Option<&CertificateDer<'_>>) -> ConnectionIdentity {
        match cert.map(identity_from_cert) {
            None | Some(Ok(None)) => ConnectionIdentity::Nobody,
            Some(Ok(Some(user))) => ConnectionIdentity::User(user),
            Some(Err(error)) => {
                tracing::debug!(%error, "a client certificate authenticates nobody");
                ConnectionIdentity::Refused
            }
        }
    }
}

/// Static bearer tokens.
#[derive(Clone, Default)]
pub struct TokenTable {
    tokens: HashMap<String, UserInfo>,
}

impl std::fmt::Debug for TokenTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Tokens are secrets: only their count is shown.
        f.debug_struct("TokenTable")
            .field("tokens", &self.tokens.len())
            .finish()
    }
}

/// Reading a token file failed.
#[derive(Debug, thiserror::Error)]
#[error("token file {path}: {message}")]
pub struct TokenFileError {
    path: String,
    message: String,
}

impl TokenTable {
    /// Adds a token.
    pub fn insert(&mut self, token: impl Into<String>, user: UserInfo) {
        self.tokens.insert(token.into(), user);
    }

    /// Looks a token up.
    pub fn get(&self, token: &str) -> Option<&UserInfo> {
        self.tokens.get(token)
    }

    /// Reads kube-apiserver's `--token-auth-file` format: `token,user,uid[,"group1,group2"]`, as
    /// upstream's tokenfile loader: a record with fewer than three columns is an error, a record
    /// with an empty token is skipped (with a warning that names the record, never a token), a
    /// later record for the same token wins. Blank lines and `#` comments are skipped.
    pub fn from_csv_file(path: &Path) -> Result<TokenTable, TokenFileError> {
        let err = |message: String| TokenFileError {
            path: path.display().to_string(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let mut table = TokenTable::default();
        let mut record = 0usize;
        for line in text.lines() {
            if line.trim().is_empty() || line.trim_start().starts_with('#') {
                continue;
            }
            let fields = split_csv(line);
            let [token, name, uid, rest @ ..] = fields.as_slice() else {
                return Err(err(format!(
                    "must have at least 3 columns (token, user name, user uid), found {}",
                    fields.len()
                )));
            };
            record = record.saturating_add(1);
            if token.is_empty() {
                tracing::warn!(
                    path = %path.display(),
                    record,
                    "empty token has been found in token file"
                );
                continue;
            }
            if table.tokens.contains_key(token) {
                tracing::warn!(
                    path = %path.display(),
                    record,
                    "duplicate token has been found in token file"
                );
            }
            let groups: Vec<String> = rest
                .first()
                .map(|g| g.split(',').map(str::to_string).collect())
                .unwrap_or_default();
            table.tokens.insert(
                token.clone(),
                UserInfo {
                    name: name.clone(),
                    groups,
                    uid: uid.clone(),
                    extra: BTreeMap::new(),
                },
            );
        }
        Ok(table)
    }
}

fn split_csv(line: &str) -> Vec<String> {
    let mut fields = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => fields.push(std::mem::take(&mut current)),
            c => current.push(c),
        }
    }
    fields.push(current);
    fields
}

/// The outcome of authenticating a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authn {
    /// A known user (or anonymous).
    User(UserInfo),
    /// Credentials were presented and are not valid: 401.
    Invalid,
}

/// The token of an `Authorization: Bearer <token>` header, as upstream's bearer token
/// authenticator reads it (scheme case-insensitive, surrounding space trimmed); `None` for
/// another scheme or an empty token.
pub fn bearer_token(authorization: &str) -> Option<&str> {
    let mut parts = authorization.trim().splitn(3, ' ');
    let scheme = parts.next()?;
    let token = parts.next()?;
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The `Authorization` header of a request: absent, or its text; a value that is not visible
/// ASCII (not UTF-8, say) is no credential this server issued: 401, never anonymous.
pub fn authorization_header(
    headers: &http::HeaderMap,
) -> Result<Option<&str>, crate::error::ApiError> {
    match headers.get(http::header::AUTHORIZATION) {
        None => Ok(None),
        Some(value) => value
            .to_str()
            .map(Some)
            .map_err(|_| crate::error::ApiError::unauthorized()),
    }
}

/// Authenticates a request from its connection identity and `Authorization` header.
pub fn authenticate(
    connection: Option<&ConnectionIdentity>,
    authorization: Option<&str>,
    tokens: &TokenTable,
) -> Authn {
    let refused = match connection {
        Some(ConnectionIdentity::User(user)) => return Authn::User(user.clone()),
        Some(ConnectionIdentity::Refused) => true,
        Some(ConnectionIdentity::Nobody) | None => false,
    };
    if let Some(value) = authorization {
        // An empty token never matches, whatever a token file held.
        return match bearer_token(value).and_then(|t| tokens.get(t)) {
            Some(user) => Authn::User(user.clone()),
            None => Authn::Invalid,
        };
    }
    if refused {
        return Authn::Invalid;
    }
    Authn::User(UserInfo::anonymous())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_files_read_as_kube_apiserver_reads_them() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("tokens.csv");
        std::fs::write(&path, "# comment\nabc,alice,1,\"dev,ops\"\nxyz,bob,2\n")?;
        let table = TokenTable::from_csv_file(&path)?;
        assert_eq!(
            authenticate(None, Some("Bearer abc"), &table),
            Authn::User(UserInfo {
                uid: "1".into(),
                ..UserInfo::new("alice", &["dev", "ops"])
            })
        );
        assert_eq!(
            authenticate(None, Some("Bearer xyz"), &table),
            Authn::User(UserInfo {
                uid: "2".into(),
                ..UserInfo::new("bob", &[])
            })
        );
        assert_eq!(
            authenticate(None, Some("Bearer nope"), &table),
            Authn::Invalid
        );
        assert_eq!(
            authenticate(None, None, &table),
            Authn::User(UserInfo::anonymous())
        );
        assert!(!format!("{table:?}").contains("abc"));
        Ok(())
    }

    #[test]
    fn empty_tokens_are_skipped_and_never_match() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("tokens.csv");
        std::fs::write(
            &path,
            ",root,0,system:masters\n\"\",root,0,system:masters\nok,u,7\n",
        )?;
        let table = TokenTable::from_csv_file(&path)?;
        assert!(table.get("").is_none());
        for header in ["Bearer ", "Bearer", "bearer   ", ""] {
            assert_eq!(authenticate(None, Some(header), &table), Authn::Invalid);
        }
        let Authn::User(user) = authenticate(None, Some("BEARER ok"), &table) else {
            panic!("the token authenticates");
        };
        assert_eq!((user.name.as_str(), user.uid.as_str()), ("u", "7"));
        std::fs::write(&path, "abc,alice\n")?;
        let error = TokenTable::from_csv_file(&path)
            .err()
            .ok_or("two columns are refused")?;
        assert!(error.to_string().contains("must have at least 3 columns"));
        Ok(())
    }
}
