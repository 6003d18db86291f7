//! Atoll's Kubernetes-compatible API server: discovery, CRDs, RBAC and the verbs kubectl and
//! client-go use, over [`atoll_store`]. It is the hub's API server, and nothing in it assumes
//! so: the same server doubles as a lightweight simulated member cluster.
//!
//! Layers, bottom up:
//! - [`registry`]: what is served (built-in kinds, and CRDs' kinds as they come and go);
//! - [`storage`]: the generic resource layer, every verb with kube-apiserver's semantics over
//!   a [`atoll_store::Store`]; [`strategy`], [`schema`] and [`validation`] are its per-kind
//!   rules;
//! - [`server`]: the HTTP surface (authentication by [`auth`], authorization by [`rbac`],
//!   [`discovery`], [`openapi`], [`table`]);
//! - [`serve`]: TLS (HTTP/1.1 and HTTP/2) with certificates from [`pki`];
//! - [`controllers`]: the server's own loops (CRDs, namespace deletion, garbage collection);
//! - [`client`]: a `kube::Client` into the router, for controllers in the same process.

pub mod auth;
pub mod builtin_openapi;
pub mod certificates;
pub mod client;
pub mod controllers;
pub mod discovery;
pub mod error;
/// Entry points for the fuzz targets in `fuzz/` and their corpus-replay tests; not an API.
#[doc(hidden)]
pub mod fuzzing;
pub mod http_util;
pub mod openapi;
pub mod pki;
pub mod protobuf;
pub mod rbac;
pub mod registry;
pub mod request;
pub mod reviews;
pub mod rules;
pub mod schema;
pub mod selector;
pub mod serve;
pub mod server;
pub mod storage;
pub mod strategy;
pub mod subject;
pub mod table;
pub mod token_secrets;
pub mod tokens;
pub mod validation;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use atoll_store::Store;
use axum::Router;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use auth::{TokenTable, UserInfo};
pub use error::ApiError;
pub use serve::ConnectionLimits;

use crate::registry::Registry;
use crate::server::AppState;
use crate::storage::{ListOptions, Storage};

/// Errors starting or running the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Certificates.
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
    /// The token file.
    #[error(transparent)]
    Tokens(#[from] auth::TokenFileError),
    /// The cap on TokenRequest lifetimes.
    #[error(transparent)]
    MaxTokenExpiration(#[from] tokens::MaxExpirationError),
    /// Binding or serving.
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    /// Writing the bootstrap objects.
    #[error("bootstrap: {0}")]
    Bootstrap(ApiError),
}

/// How often history is compacted, as kube-apiserver's default `--etcd-compaction-interval`.
pub const COMPACTION_INTERVAL: Duration = Duration::from_secs(300);

/// How a server runs.
#[derive(Debug, Clone, Default)]
pub struct ServerOptions {
    /// Static bearer tokens.
    pub tokens: TokenTable,
    /// Compact the store's history this often (to the revision one interval earlier), as
    /// kube-apiserver compacts etcd; `None` when the store compacts itself.
    pub compaction_interval: Option<Duration>,
    /// The key that signs and verifies ServiceAccount tokens; `None` makes one that lives as
    /// long as the process.
    pub service_account_key: Option<Arc<tokens::ServiceAccountKey>>,
    /// The CA that signs approved `kubernetes.io/kube-apiserver-client` CSRs; `None` runs no
    /// signer (CSRs are then approved but never issued, as on a cluster without one).
    pub client_signer: Option<Arc<certificates::ClientSigner>>,
    /// The CA certificate (PEM) written into ServiceAccount token Secrets as `ca.crt`.
    pub service_account_ca: Option<String>,
    /// Routes matched before every other path, unauthenticated; for tests only (for example a
    /// route that panics, to show the catch-panic layer). `None` in production.
    pub extra_routes: Option<ExtraRoutes>,
    /// The longest lifetime a TokenRequest gets, as kube-apiserver's
    /// `--service-account-max-token-expiration`; `None` caps nothing (upstream's default).
    pub max_token_expiration: Option<Duration>,
}

/// Extra routes for [`ServerOptions::extra_routes`].
#[derive(Clone, Default)]
pub struct ExtraRoutes(pub Router);

impl std::fmt::Debug for ExtraRoutes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExtraRoutes").finish_non_exhaustive()
    }
}

/// The server's core: state, router and its own control loops; serve it over TLS with
/// [`ApiServer::serve_tls`] or use it in process through [`ApiServer::client`].
pub struct ApiServer {
    state: Arc<AppState>,
    router: Router,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for ApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiServer").finish_non_exhaustive()
    }
}

impl ApiServer {
    /// Starts the server's core over a store: writes the bootstrap objects (default
    /// namespaces, RBAC roles) when missing, serves stored CRDs, starts the control loops.
    pub async fn start(
        store: Arc<dyn Store>,
        options: ServerOptions,
    ) -> Result<ApiServer, ServerError> {
        let shutdown = CancellationToken::new();
        let storage = Storage::new(store.clone(), shutdown.clone());
        let registry = Registry::new();
        bootstrap(&storage, &registry)
            .await
            .map_err(ServerError::Bootstrap)?;
        let state = Arc::new(AppState {
            storage: storage.clone(),
            registry: registry.clone(),
            tokens: options.tokens,
            service_account_key: tokens::key_or_ephemeral(options.service_account_key)?,
            max_token_expiration: options.max_token_expiration,
            ready: std::sync::atomic::AtomicBool::new(false),
        });
        let router = server::router(state.clone(), options.extra_routes.map(|r| r.0));
        let mut tasks = vec![
            tokio::spawn(controllers::run_crds(
                storage.clone(),
                registry.clone(),
                shutdown.clone(),
            )),
            tokio::spawn(controllers::run_namespaces(
                storage.clone(),
                registry.clone(),
                shutdown.clone(),
            )),
            tokio::spawn(controllers::run_gc(
                storage.clone(),
                registry.clone(),
                shutdown.clone(),
            )),
        ];
        tasks.push(tokio::spawn(rbac::follow_changes(
            storage.store().clone(),
            storage.rbac_policy_cache().clone(),
            shutdown.clone(),
        )));
        tasks.push(tokio::spawn(rbac::run_aggregation(
            storage.clone(),
            registry.clone(),
            shutdown.clone(),
        )));
        tasks.push(tokio::spawn(token_secrets::run(
            storage.clone(),
            registry.clone(),
            state.service_account_key.clone(),
            options.service_account_ca.clone(),
            shutdown.clone(),
        )));
        if let Some(signer) = options.client_signer {
            tasks.push(tokio::spawn(certificates::run_signer(
                storage.clone(),
                registry.clone(),
                signer,
                shutdown.clone(),
            )));
        }
        if let Some(interval) = options.compaction_interval {
            tasks.push(tokio::spawn(run_compactor(
                store,
                interval,
                shutdown.clone(),
            )));
        }
        state.ready.store(true, Ordering::Relaxed);
        Ok(ApiServer {
            state,
            router,
            shutdown,
            tasks,
        })
    }

    /// The HTTP router (a tower service).
    pub fn router(&self) -> Router {
        self.router.clone()
    }

    /// An in-process client acting as a superuser.
    pub fn client(&self) -> kube::Client {
        client::in_process_client(self.router(), UserInfo::admin("system:atoll-hub"))
    }

    /// An in-process client acting as `user`.
    pub fn client_as(&self, user: UserInfo) -> kube::Client {
        client::in_process_client(self.router(), user)
    }

    /// Serves over TLS on `listener` until [`ApiServer::shutdown`], with the default
    /// [`ConnectionLimits`].
    pub async fn serve_tls(
        &self,
        listener: tokio::net::TcpListener,
        tls: Arc<rustls::ServerConfig>,
    ) {
        self.serve_tls_with(listener, tls, ConnectionLimits::default())
            .await
    }

    /// Serves over TLS on `listener` until [`ApiServer::shutdown`], within `limits`.
    pub async fn serve_tls_with(
        &self,
        listener: tokio::net::TcpListener,
        tls: Arc<rustls::ServerConfig>,
        limits: ConnectionLimits,
    ) {
        serve::serve_tls(listener, tls, self.router(), limits, self.shutdown.clone()).await
    }

    /// A token that is cancelled when the server shuts down.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Stops serving: readiness fails, watches end, control loops stop.
    pub async fn shutdown(self) {
        self.state.ready.store(false, Ordering::Relaxed);
        self.shutdown.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// Objects every cluster starts with.
async fn bootstrap(storage: &Storage, registry: &Registry) -> Result<(), ApiError> {
    let ns_def = registry
        .get("", "v1", "namespaces")
        .ok_or_else(|| ApiError::internal("namespaces are not served"))?;
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        let obj =
            serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
        match storage.create(&ns_def, None, obj, false).await {
            Ok(_) => {}
            Err(e) if e.code == 409 => {}
            Err(e) => return Err(e),
        }
    }
    for (resource, obj) in rbac::bootstrap_objects() {
        let def = registry
            .get("rbac.authorization.k8s.io", "v1", resource)
            .ok_or_else(|| ApiError::internal("RBAC is not served"))?;
        match storage.create(&def, None, obj, false).await {
            Ok(_) => {}
            Err(e) if e.code == 409 => {}
            Err(e) => return Err(e),
        }
    }
    // Serve stored CRDs before the first request, not only once their controller catches up.
    if let Some(crd_def) = registry.get("apiextensions.k8s.io", "v1", "customresourcedefinitions") {
        let list = storage
            .list(&crd_def, None, &ListOptions::default())
            .await?;
        for crd in list["items"].as_array().cloned().unwrap_or_default() {
            if let Some(defs) = registry::defs_from_crd(&crd) {
                registry.set_crd(storage::name_of(&crd), defs);
            }
        }
    }
    Ok(())
}

/// Compacts history every `interval` up to the revision seen one interval earlier, as
/// kube-apiserver compacts etcd, so watches can resume across short disconnects.
async fn run_compactor(store: Arc<dyn Store>, interval: Duration, shutdown: CancellationToken) {
    let mut previous: Option<i64> = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        if let Some(rev) = previous
            && let Err(e) = store.compact(rev).await
        {
            tracing::warn!(error = %e, revision = rev, "compaction failed");
        }
        previous = store.current_revision().await.ok();
    }
}

/// Settings of a standalone server (`atoll hub`).
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Where certificates and the admin kubeconfig live.
    pub data_dir: PathBuf,
    /// The HTTPS address.
    pub listen: SocketAddr,
    /// kube-apiserver's `--token-auth-file` format, optional.
    pub token_file: Option<PathBuf>,
    /// Extra names and addresses for the serving certificate.
    pub extra_sans: Vec<String>,
    /// See [`ServerOptions::compaction_interval`].
    pub compaction_interval: Option<Duration>,
    /// See [`ServerOptions::max_token_expiration`]; checked as upstream checks
    /// `--service-account-max-token-expiration` (zero: none; else 1 hour to 2^32 seconds).
    /// `atoll hub` defaults it to [`tokens::DEFAULT_MAX_EXPIRATION`].
    pub max_token_expiration: Duration,
}

/// A running standalone server.
#[derive(Debug)]
pub struct Hub {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// The admin kubeconfig (client certificate in `system:masters`).
    pub admin_kubeconfig: PathBuf,
    server: ApiServer,
    serving: JoinHandle<()>,
}

impl Hub {
    /// Starts serving: certificates from `data_dir/pki` (created on first start), the admin
    /// kubeconfig at `data_dir/admin.kubeconfig`, HTTPS on `listen`, with the default
    /// [`ConnectionLimits`].
    pub async fn start(store: Arc<dyn Store>, config: HubConfig) -> Result<Hub, ServerError> {
        Hub::start_with_limits(store, config, ConnectionLimits::default()).await
    }

    /// [`Hub::start`] within `limits`.
    pub async fn start_with_limits(
        store: Arc<dyn Store>,
        config: HubConfig,
        limits: ConnectionLimits,
    ) -> Result<Hub, ServerError> {
        let pki_dir = config.data_dir.join("pki");
        let mut sans = config.extra_sans.clone();
        sans.push(config.listen.ip().to_string());
        let pki = pki::Pki::load_or_create(&pki_dir, &sans)?;
        let service_account_key = Arc::new(tokens::ServiceAccountKey::load_or_create(&pki_dir)?);
        let client_signer = Arc::new(certificates::ClientSigner::load(&pki_dir)?);
        let max_token_expiration = tokens::check_max_expiration(config.max_token_expiration)?;
        let tokens = match &config.token_file {
            Some(path) => TokenTable::from_csv_file(path)?,
            None => TokenTable::default(),
        };
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| ServerError::Io {
                context: format!("listening on {}", config.listen),
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| ServerError::Io {
            context: "reading the listening address".into(),
            source,
        })?;
        let host = if addr.ip().is_unspecified() {
            "127.0.0.1".to_string()
        } else if addr.is_ipv6() {
            format!("[{}]", addr.ip())
        } else {
            addr.ip().to_string()
        };
        let admin_kubeconfig = config.data_dir.join("admin.kubeconfig");
        pki.write_kubeconfig(
            &admin_kubeconfig,
            &format!("https://{host}:{}", addr.port()),
            "atoll-admin",
            &[auth::SYSTEM_MASTERS],
        )?;
        let tls = pki.server_config()?;
        let server = ApiServer::start(
            store,
            ServerOptions {
                tokens,
                compaction_interval: config.compaction_interval,
                service_account_key: Some(service_account_key),
                client_signer: Some(client_signer),
                service_account_ca: Some(pki.ca_pem().to_string()),
                extra_routes: None,
                max_token_expiration,
            },
        )
        .await?;
        let router = server.router();
        let token = server.shutdown_token();
        let serving = tokio::spawn(serve::serve_tls(listener, tls, router, limits, token));
        Ok(Hub {
            addr,
            admin_kubeconfig,
            server,
            serving,
        })
    }

    /// The core, for in-process clients.
    pub fn server(&self) -> &ApiServer {
        &self.server
    }

    /// Shuts down: stops accepting, lets requests finish, ends watches and loops.
    pub async fn shutdown(self) {
        self.server.shutdown_token().cancel();
        let _ = self.serving.await;
        self.server.shutdown().await;
    }
}
