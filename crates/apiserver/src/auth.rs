//! Authentication: who sent a request. A verified client certificate names the user (CN) and
//! groups (O); otherwise a bearer token from the token table; otherwise the request is
//! anonymous. An unknown bearer token is 401.

use std::collections::HashMap;
use std::path::Path;

use rustls::pki_types::CertificateDer;

/// An authenticated (or anonymous) user.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UserInfo {
    /// The user name.
    pub name: String,
    /// The groups, without the implicit `system:authenticated`.
    pub groups: Vec<String>,
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

/// The identity in a verified client certificate: CN is the user, every O a group.
pub fn identity_from_cert(der: &CertificateDer<'_>) -> Option<UserInfo> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    let subject = cert.subject();
    let name = subject
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    if name.is_empty() {
        return None;
    }
    let groups = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(str::to_string))
        .collect();
    Some(UserInfo { name, groups })
}

/// Identity attached to a request by the connection it came on (a verified client
/// certificate), or by the in-process client.
#[derive(Debug, Clone)]
pub struct ConnectionIdentity(pub Option<UserInfo>);

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

    /// Reads kube-apiserver's `--token-auth-file` format: `token,user,uid,"group1,group2"`.
    pub fn from_csv_file(path: &Path) -> Result<TokenTable, TokenFileError> {
        let err = |message: String| TokenFileError {
            path: path.display().to_string(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let mut table = TokenTable::default();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let fields = split_csv(line);
            if fields.len() < 3 {
                return Err(err(format!(
                    "line {}: want token,user,uid[,\"groups\"]",
                    i + 1
                )));
            }
            let groups: Vec<String> = fields
                .get(3)
                .map(|g| {
                    g.split(',')
                        .map(str::trim)
                        .filter(|g| !g.is_empty())
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default();
            table.tokens.insert(
                fields[0].clone(),
                UserInfo {
                    name: fields[1].clone(),
                    groups,
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

/// Authenticates a request from its connection identity and `Authorization` header.
pub fn authenticate(
    connection: Option<&ConnectionIdentity>,
    authorization: Option<&str>,
    tokens: &TokenTable,
) -> Authn {
    if let Some(ConnectionIdentity(Some(user))) = connection {
        return Authn::User(user.clone());
    }
    if let Some(value) = authorization {
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .map(str::trim);
        return match token.and_then(|t| tokens.get(t)) {
            Some(user) => Authn::User(user.clone()),
            None => Authn::Invalid,
        };
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
            Authn::User(UserInfo::new("alice", &["dev", "ops"]))
        );
        assert_eq!(
            authenticate(None, Some("Bearer xyz"), &table),
            Authn::User(UserInfo::new("bob", &[]))
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
}
