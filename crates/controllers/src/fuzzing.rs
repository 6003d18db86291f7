//! The entry point of the kubeconfig fuzz target in `fuzz/` (cargo-fuzz) and of the test that
//! replays its committed corpus (`tests/fuzz_corpus.rs`). This module exists for them only:
//! it is not an API and changes with the target.

use kube::client::ConfigExt;

/// What loading did with an input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Loaded into a client configuration and TLS settings.
    Accepted,
    /// Refused with an error.
    Refused,
}

/// A member kubeconfig as the hub loads the one a join stored in the member's Secret: the
/// controllers' one loader (`inventory::member_config_from_secret_data`: UTF-8, kube's
/// `Kubeconfig::from_yaml`, inline credentials only, the context's entries into
/// `Config::from_custom_kubeconfig`), then what the member transport builds from it (the
/// rustls configuration with the CA and the client certificate and key, the authentication
/// and impersonation layers). Kubeconfigs naming local files or credential plugins are
/// refused by that loader before anything reads or runs them, so no input is skipped.
pub fn member_kubeconfig(data: &[u8]) -> Verdict {
    let loaded = futures::executor::block_on(crate::inventory::member_config_from_secret_data(
        data.to_vec(),
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
