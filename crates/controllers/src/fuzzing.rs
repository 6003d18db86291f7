//! The entry point of the kubeconfig fuzz target in `fuzz/` (cargo-fuzz) and of the test that
//! replays its committed corpus (`tests/fuzz_corpus.rs`). This module exists for them only:
//! it is not an API and changes with the target.

use kube::Config;
use kube::client::ConfigExt;
use kube::config::{KubeConfigOptions, Kubeconfig};

/// What loading did with an input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Loaded into a client configuration and TLS settings.
    Accepted,
    /// Refused with an error.
    Refused,
    /// Not loaded: it names a local file or a credential plugin, which loading would read or
    /// run on the machine doing the fuzzing.
    Skipped,
}

/// Whether loading `kubeconfig` would read local files or run commands: file paths
/// (`certificate-authority`, `client-certificate`, `client-key`, `tokenFile`), `exec` plugins
/// and `auth-provider`s (kube's `Auth::try_from` runs them while the TLS settings are built).
fn reaches_outside(kubeconfig: &Kubeconfig) -> bool {
    let clusters = kubeconfig
        .clusters
        .iter()
        .filter_map(|c| c.cluster.as_ref())
        .any(|c| c.certificate_authority.is_some());
    let users = kubeconfig
        .auth_infos
        .iter()
        .filter_map(|u| u.auth_info.as_ref())
        .any(|u| {
            u.client_certificate.is_some()
                || u.client_key.is_some()
                || u.token_file.is_some()
                || u.exec.is_some()
                || u.auth_provider.is_some()
        });
    clusters || users
}

/// A member kubeconfig as the hub loads the one a join stored in the member's Secret: UTF-8,
/// kube's `Kubeconfig::from_yaml`, `Config::from_custom_kubeconfig` at the current context,
/// then what the member transport builds from it (the rustls configuration with the CA and
/// the client certificate and key, the authentication and impersonation layers).
///
/// Inputs that name local files or credential plugins are [`Verdict::Skipped`]: loading them
/// today reads those files and runs those plugins (a fuzzer must not), which is also why a
/// member kubeconfig should never be allowed to hold them.
pub fn member_kubeconfig(data: &[u8]) -> Verdict {
    let Ok(text) = std::str::from_utf8(data) else {
        return Verdict::Refused;
    };
    let Ok(kubeconfig) = Kubeconfig::from_yaml(text) else {
        return Verdict::Refused;
    };
    if reaches_outside(&kubeconfig) {
        return Verdict::Skipped;
    }
    let loaded = futures::executor::block_on(Config::from_custom_kubeconfig(
        kubeconfig,
        &KubeConfigOptions::default(),
    ));
    let Ok(config) = loaded else {
        return Verdict::Refused;
    };
    let built = config
        .rustls_client_config()
        .and_then(|_| config.auth_layer())
        .and_then(|_| config.extra_headers_layer());
    match built {
        Ok(_) => Verdict::Accepted,
        Err(_) => Verdict::Refused,
    }
}
