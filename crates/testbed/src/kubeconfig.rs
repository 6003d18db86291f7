//! Self-contained kubeconfig files (certificates embedded as data).

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::Serialize;

use crate::Error;

#[derive(Serialize)]
struct Kubeconfig<'a> {
    #[serde(rename = "apiVersion")]
    api_version: &'static str,
    kind: &'static str,
    clusters: [NamedCluster<'a>; 1],
    users: [NamedUser<'a>; 1],
    contexts: [NamedContext<'a>; 1],
    #[serde(rename = "current-context")]
    current_context: &'a str,
}

#[derive(Serialize)]
struct NamedCluster<'a> {
    name: &'a str,
    cluster: ClusterEntry<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct ClusterEntry<'a> {
    server: &'a str,
    certificate_authority_data: String,
}

#[derive(Serialize)]
struct NamedUser<'a> {
    name: &'a str,
    user: UserEntry,
}

#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct UserEntry {
    client_certificate_data: String,
    client_key_data: String,
}

#[derive(Serialize)]
struct NamedContext<'a> {
    name: &'a str,
    context: ContextEntry<'a>,
}

#[derive(Serialize)]
struct ContextEntry<'a> {
    cluster: &'a str,
    user: &'a str,
}

/// Writes a kubeconfig for `server` trusting `ca_pem`, authenticating with
/// the client certificate `cert_pem`/`key_pem`. The file is private (0600).
pub(crate) fn write(
    path: &Path,
    cluster: &str,
    user: &str,
    server: &str,
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<(), Error> {
    let context = format!("{user}@{cluster}");
    let config = Kubeconfig {
        api_version: "v1",
        kind: "Config",
        clusters: [NamedCluster {
            name: cluster,
            cluster: ClusterEntry {
                server,
                certificate_authority_data: STANDARD.encode(ca_pem),
            },
        }],
        users: [NamedUser {
            name: user,
            user: UserEntry {
                client_certificate_data: STANDARD.encode(cert_pem),
                client_key_data: STANDARD.encode(key_pem),
            },
        }],
        contexts: [NamedContext {
            name: &context,
            context: ContextEntry { cluster, user },
        }],
        current_context: &context,
    };
    // Plain scalars: the long base64 strings would otherwise be folded.
    let options = serde_saphyr::ser_options! { prefer_block_scalars: false };
    let yaml = serde_saphyr::to_string_with_options(&config, options).map_err(Error::client(
        format!("serializing kubeconfig {}", path.display()),
    ))?;
    write_private(path, yaml.as_bytes())
}

/// Writes `contents` to `path`, readable only by the owner (keys live here).
pub(crate) fn write_private(path: &Path, contents: &[u8]) -> Result<(), Error> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::File::options()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(Error::io(format!("writing {}", path.display())))?;
    file.write_all(contents)
        .map_err(Error::io(format!("writing {}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubeconfig_reads_back() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("config");
        let long = "x".repeat(200);
        write(&path, "c", "u", "https://127.0.0.1:1", &long, "cert", "key")?;
        let text = std::fs::read_to_string(&path)?;
        assert!(text.starts_with("apiVersion: v1\n"), "{text}");
        assert!(text.contains("current-context: u@c\n"), "{text}");
        assert!(!text.contains(">-"), "long data must stay plain: {text}");

        let parsed = kube::config::Kubeconfig::read_from(&path)?;
        assert_eq!(parsed.current_context.as_deref(), Some("u@c"));
        let cluster = parsed.clusters[0].cluster.as_ref().ok_or("no cluster")?;
        assert_eq!(cluster.server.as_deref(), Some("https://127.0.0.1:1"));
        assert_eq!(
            cluster.certificate_authority_data.as_deref(),
            Some(STANDARD.encode(&long).as_str())
        );
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            std::fs::metadata(&path)?.permissions().mode() & 0o777,
            0o600
        );
        Ok(())
    }
}
