//! What a member kubeconfig may hold.
//!
//! The hub builds clients for members from kubeconfigs: the one given to `atoll join`, and the
//! ones it stored (read by the status, Work and MCS controllers). kube's loader would follow
//! everything a kubeconfig can say: run an `exec` credential plugin or an `auth-provider`'s
//! command, read files (`certificate-authority`, `client-certificate`, `client-key`,
//! `tokenFile`), go through a proxy. Any of those in a stored kubeconfig would run commands or
//! read files as the hub's user, so a member kubeconfig may hold only inline data: the server
//! URL, CA data, TLS server name, a token, a client certificate and key, and the impersonated
//! user Atoll itself sets. [`inline_only`] checks that and keeps only the entries used.

use kube::config::{Kubeconfig, NamedAuthInfo, NamedCluster, NamedContext};

/// A kubeconfig that asks for more than inline credentials. It names the entry and the field,
/// never a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnsafeKubeconfig {
    /// The context to use does not exist, or names a cluster or user that does not.
    #[error("{0}")]
    Incomplete(String),
    /// An entry sets a field Atoll refuses.
    #[error(
        "the member kubeconfig's {entry} sets `{field}`, which Atoll does not accept: {reason}"
    )]
    Refused {
        /// The entry, e.g. `user "admin"`.
        entry: String,
        /// The refused field, as the kubeconfig spells it.
        field: &'static str,
        /// Why, and what to give instead.
        reason: &'static str,
    },
}

const RUNS_COMMANDS: &str = "a member kubeconfig may not run commands or credential plugins; give one with a token or a client certificate and key inline";
const READS_FILES: &str = "a member kubeconfig may not name files; embed their content (`kubectl config view --minify --flatten --raw` does)";
const NOT_INLINE: &str =
    "a member kubeconfig holds only a server, CA data, a token or a client certificate and key";

/// The kubeconfig reduced to the context used (`context`, else the current one) and its
/// cluster and user, all inline; an error naming the first field that is not.
pub fn inline_only(
    kubeconfig: &Kubeconfig,
    context: Option<&str>,
) -> Result<Kubeconfig, UnsafeKubeconfig> {
    let Some(context_name) = context.or(kubeconfig.current_context.as_deref()) else {
        return Err(UnsafeKubeconfig::Incomplete(
            "the member kubeconfig has no current context; name one".into(),
        ));
    };
    let named_context = kubeconfig
        .contexts
        .iter()
        .find(|c| c.name == context_name)
        .ok_or_else(|| {
            UnsafeKubeconfig::Incomplete(format!(
                "the member kubeconfig has no context {context_name:?}"
            ))
        })?;
    let Some(ctx) = named_context.context.as_ref() else {
        return Err(UnsafeKubeconfig::Incomplete(format!(
            "the member kubeconfig's context {context_name:?} is empty"
        )));
    };
    let cluster = kubeconfig
        .clusters
        .iter()
        .find(|c| c.name == ctx.cluster)
        .ok_or_else(|| {
            UnsafeKubeconfig::Incomplete(format!(
                "the member kubeconfig has no cluster {:?}",
                ctx.cluster
            ))
        })?;
    check_cluster(cluster)?;
    let user = match &ctx.user {
        Some(name) => {
            let user = kubeconfig
                .auth_infos
                .iter()
                .find(|u| &u.name == name)
                .ok_or_else(|| {
                    UnsafeKubeconfig::Incomplete(format!(
                        "the member kubeconfig has no user {name:?}"
                    ))
                })?;
            check_user(user)?;
            vec![user.clone()]
        }
        None => Vec::new(),
    };
    Ok(Kubeconfig {
        clusters: vec![cluster.clone()],
        auth_infos: user,
        contexts: vec![NamedContext {
            name: named_context.name.clone(),
            context: Some(kube::config::Context {
                cluster: ctx.cluster.clone(),
                user: ctx.user.clone(),
                namespace: ctx.namespace.clone(),
                extensions: None,
                other: Default::default(),
            }),
            other: Default::default(),
        }],
        current_context: Some(named_context.name.clone()),
        ..Default::default()
    })
}

fn refused(entry: String, field: &'static str, reason: &'static str) -> UnsafeKubeconfig {
    UnsafeKubeconfig::Refused {
        entry,
        field,
        reason,
    }
}

fn check_cluster(named: &NamedCluster) -> Result<(), UnsafeKubeconfig> {
    let entry = || format!("cluster {:?}", named.name);
    let Some(cluster) = named.cluster.as_ref() else {
        return Err(UnsafeKubeconfig::Incomplete(format!(
            "the member kubeconfig's {} is empty",
            entry()
        )));
    };
    if cluster.certificate_authority.is_some() {
        return Err(refused(entry(), "certificate-authority", READS_FILES));
    }
    if cluster.proxy_url.is_some() {
        return Err(refused(entry(), "proxy-url", NOT_INLINE));
    }
    if cluster.insecure_skip_tls_verify == Some(true) {
        return Err(refused(
            entry(),
            "insecure-skip-tls-verify",
            "the member's API server must be verified with certificate-authority-data",
        ));
    }
    Ok(())
}

fn check_user(named: &NamedAuthInfo) -> Result<(), UnsafeKubeconfig> {
    let entry = || format!("user {:?}", named.name);
    let Some(user) = named.auth_info.as_ref() else {
        return Ok(());
    };
    let refusals: [(bool, &'static str, &'static str); 10] = [
        (user.exec.is_some(), "exec", RUNS_COMMANDS),
        (user.auth_provider.is_some(), "auth-provider", RUNS_COMMANDS),
        (user.token_file.is_some(), "tokenFile", READS_FILES),
        (
            user.client_certificate.is_some(),
            "client-certificate",
            READS_FILES,
        ),
        (user.client_key.is_some(), "client-key", READS_FILES),
        (user.username.is_some(), "username", NOT_INLINE),
        (user.password.is_some(), "password", NOT_INLINE),
        (user.impersonate_groups.is_some(), "as-groups", NOT_INLINE),
        (user.impersonate_uid.is_some(), "as-uid", NOT_INLINE),
        (
            user.impersonate_user_extra.is_some(),
            "as-user-extra",
            NOT_INLINE,
        ),
    ];
    match refusals.into_iter().find(|(set, _, _)| *set) {
        Some((_, field, reason)) => Err(refused(entry(), field, reason)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kubeconfig(cluster: &str, user: &str) -> Result<Kubeconfig, kube::config::KubeconfigError> {
        Kubeconfig::from_yaml(&format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: c\n\
             contexts:\n- name: c\n  context: {{cluster: m, user: u}}\n\
             - name: other\n  context: {{cluster: m, user: plugin}}\n\
             clusters:\n- name: m\n  cluster:\n    server: https://127.0.0.1:6443\n{cluster}\n\
             users:\n- name: u\n  user:\n{user}\n\
             - name: plugin\n  user:\n    exec: {{apiVersion: client.authentication.k8s.io/v1, command: /bin/sh}}\n"
        ))
    }

    #[test]
    fn inline_credentials_pass_and_only_the_used_entries_are_kept()
    -> Result<(), Box<dyn std::error::Error>> {
        let config = kubeconfig(
            "    certificate-authority-data: Q0E=\n    tls-server-name: member",
            "    token: secret-token\n    as: system:serviceaccount:atoll-system:atoll-work",
        )?;
        let kept = inline_only(&config, None)?;
        assert_eq!(kept.auth_infos.len(), 1, "the unused exec user is dropped");
        assert_eq!(kept.auth_infos[0].name, "u");
        assert_eq!(kept.contexts.len(), 1);
        let certs = kubeconfig(
            "    certificate-authority-data: Q0E=",
            "    client-certificate-data: Q0VSVA==\n    client-key-data: S0VZ",
        )?;
        assert!(inline_only(&certs, None).is_ok());
        Ok(())
    }

    #[test]
    fn plugins_files_and_passwords_are_refused_by_field_without_values()
    -> Result<(), Box<dyn std::error::Error>> {
        let ca = "    certificate-authority-data: Q0E=";
        let cases = [
            (
                ca,
                "    exec: {apiVersion: client.authentication.k8s.io/v1, command: /bin/touch, args: [/tmp/pwned]}",
                "exec",
            ),
            (
                ca,
                "    auth-provider: {name: gcp, config: {cmd-path: /bin/touch}}",
                "auth-provider",
            ),
            (ca, "    tokenFile: /var/run/secrets/token", "tokenFile"),
            (
                ca,
                "    client-certificate: /etc/cert\n    client-key-data: S0VZ",
                "client-certificate",
            ),
            (
                ca,
                "    client-certificate-data: Q0VSVA==\n    client-key: /etc/key",
                "client-key",
            ),
            (ca, "    username: admin\n    password: hunter2", "username"),
            (
                ca,
                "    token: t\n    as-groups: [system:masters]",
                "as-groups",
            ),
            (
                "    certificate-authority: /etc/ca.crt",
                "    token: t",
                "certificate-authority",
            ),
            (
                "    proxy-url: http://10.0.0.1:3128",
                "    token: t",
                "proxy-url",
            ),
            (
                "    insecure-skip-tls-verify: true",
                "    token: t",
                "insecure-skip-tls-verify",
            ),
        ];
        for (cluster, user, field) in cases {
            let error = inline_only(&kubeconfig(cluster, user)?, None)
                .err()
                .ok_or(format!("{field} was accepted"))?;
            let text = error.to_string();
            assert!(text.contains(&format!("`{field}`")), "{field}: {text}");
            for secret in ["hunter2", "/tmp/pwned", "/etc/", "10.0.0.1"] {
                assert!(!text.contains(secret), "{text}");
            }
        }
        // The exec user, chosen by context.
        let error = inline_only(&kubeconfig(ca, "    token: t")?, Some("other"))
            .err()
            .ok_or("exec accepted")?;
        assert!(error.to_string().contains("user \"plugin\" sets `exec`"));
        Ok(())
    }
}
