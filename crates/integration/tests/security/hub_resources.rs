//! Attacks on `atoll hub`'s resources by a client that means to exhaust them: objects grown
//! past what etcd stores, a watch that stops reading while large objects are written,
//! connections that never finish a request or sit idle, more connections than the server
//! should hold, and a handler that panics.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use atoll_apiserver::{ConnectionLimits, ExtraRoutes, Hub, HubConfig, ServerOptions};
use atoll_integration::eventually;
use atoll_store::WatchOptions;
use atoll_store::memory::{MemoryOptions, MemoryStore};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// A bearer token of a user in `system:masters`: the attacks need write access, not
/// privileges (any tenant allowed to write a ConfigMap or watch one can run them).
const TOKEN: &str = "hub-resources-attack-token";
/// etcd's default request limit, which the hub now applies to every stored object.
const STORED_LIMIT: usize = 1_572_864;
const WAIT: Duration = Duration::from_secs(30);

struct TestHub {
    hub: Hub,
    dir: tempfile::TempDir,
}

impl TestHub {
    async fn start(limits: ConnectionLimits, watch: WatchOptions) -> Result<TestHub> {
        let dir = tempfile::tempdir()?;
        let tokens = dir.path().join("tokens.csv");
        std::fs::write(
            &tokens,
            format!("{TOKEN},resource-attacker,uid-attacker,\"system:masters\"\n"),
        )?;
        let store = Arc::new(MemoryStore::with_options(MemoryOptions {
            watch,
            retain_revisions: None,
        }));
        let hub = Hub::start_with_limits(
            store,
            HubConfig {
                data_dir: dir.path().to_path_buf(),
                listen: "127.0.0.1:0".parse()?,
                token_file: Some(tokens),
                extra_sans: vec![],
                compaction_interval: None,
                max_token_expiration: atoll_apiserver::tokens::DEFAULT_MAX_EXPIRATION,
            },
            limits,
        )
        .await?;
        Ok(TestHub { hub, dir })
    }

    async fn client(&self) -> Result<Client> {
        let kubeconfig = Kubeconfig::read_from(&self.hub.admin_kubeconfig)?;
        let config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
        Ok(Client::try_from(config)?)
    }

    fn ca(&self) -> Result<Vec<u8>> {
        Ok(std::fs::read(self.dir.path().join("pki").join("ca.crt"))?)
    }

    async fn tls(&self) -> Result<TlsStream<TcpStream>> {
        tls_connect(self.hub.addr, &self.ca()?).await
    }
}

/// A TLS connection (HTTP/1.1 by ALPN) to `addr`, trusting the CA in `ca_pem`.
async fn tls_connect(addr: std::net::SocketAddr, ca_pem: &[u8]) -> Result<TlsStream<TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(ca_pem)?)?;
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(addr.ip().to_string())?;
    Ok(connector.connect(name, tcp).await?)
}

/// Reads until the server closes the connection (EOF or an error), or fails after `within`.
async fn closed_by_server(
    stream: &mut (impl AsyncReadExt + Unpin),
    within: Duration,
) -> Result<Vec<u8>> {
    let mut read = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => bail!("the server kept the connection open for {within:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(read),
            Ok(Ok(n)) => read.extend_from_slice(buf.get(..n).unwrap_or_default()),
        }
    }
}

/// The status code of a raw HTTP/1.1 response.
fn status_of(response: &[u8]) -> Result<u16> {
    let text = String::from_utf8_lossy(response);
    let line = text.lines().next().context("no status line")?;
    line.split_whitespace()
        .nth(1)
        .context("no status code")?
        .parse()
        .with_context(|| format!("status line {line:?}"))
}

/// The JSON body of a raw HTTP/1.1 response with a Content-Length.
fn json_body(response: &[u8]) -> Result<Value> {
    let text = String::from_utf8_lossy(response);
    let (_, body) = text.split_once("\r\n\r\n").context("no body")?;
    Ok(serde_json::from_str(body)?)
}

/// `GET path` with the token on a fresh connection, read to the end.
async fn get(addr: std::net::SocketAddr, ca: &[u8], path: &str) -> Result<Vec<u8>> {
    let mut tls = tls_connect(addr, ca).await?;
    tls.write_all(
        format!(
            "GET {path} HTTP/1.1\r\nHost: hub\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await?;
    closed_by_server(&mut tls, WAIT).await
}

fn api_error(result: Result<impl std::fmt::Debug, kube::Error>) -> Result<(u16, String, String)> {
    match result {
        Err(kube::Error::Api(status)) => Ok((status.code, status.reason, status.message)),
        other => bail!("expected an API error, got {other:?}"),
    }
}

fn ensure_too_large(what: &str, result: Result<impl std::fmt::Debug, kube::Error>) -> Result<()> {
    let (code, reason, message) = api_error(result).with_context(|| what.to_string())?;
    ensure!(
        (code, reason.as_str(), message.as_str())
            == (
                413,
                "RequestEntityTooLarge",
                "etcdserver: request is too large"
            ),
        "{what}: {code} {reason} {message}"
    );
    Ok(())
}

fn config_map(name: &str, data: Value) -> Result<ConfigMap> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name},
        "data": data,
    }))?)
}

/// The attack as found: merge patches, each well under the 3 MiB body limit, grew one
/// ConfigMap to 9.8 MiB. Every write path now refuses an object whose stored form is over
/// etcd's 1.5 MiB request limit with 413, and stores nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_over_the_etcd_request_limit_are_refused_on_every_write_path() -> Result<()> {
    let hub = TestHub::start(ConnectionLimits::default(), WatchOptions::default()).await?;
    let client = hub.client().await?;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let chunk = "x".repeat(512 * 1024);

    // Growth by patches: the patch that takes the object past the limit is refused.
    cms.create(&PostParams::default(), &config_map("grow", json!({}))?)
        .await?;
    let mut refused = None;
    for i in 0..20 {
        let patch = json!({"data": {format!("k{i}"): chunk}});
        match cms
            .patch("grow", &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {}
            Err(e) => {
                refused = Some(i);
                ensure_too_large("merge patch", Err::<(), _>(e))?;
                break;
            }
        }
    }
    ensure!(
        refused == Some(2),
        "the object grew until patch {refused:?}"
    );
    let stored = serde_json::to_vec(&cms.get("grow").await?)?;
    ensure!(stored.len() < STORED_LIMIT, "{} bytes stored", stored.len());

    // Create in one request (1.6 MiB, under the 3 MiB body limit).
    let big = json!({"a": "y".repeat(1_600_000)});
    ensure_too_large(
        "create",
        cms.create(&PostParams::default(), &config_map("big", big.clone())?)
            .await,
    )?;
    // Update (PUT) of an existing object.
    let mut current = cms.get("grow").await?;
    current.data = serde_json::from_value(big.clone())?;
    ensure_too_large(
        "update",
        cms.replace("grow", &PostParams::default(), &current).await,
    )?;
    // Server-side apply, creating and changing.
    let apply = PatchParams::apply("attacker").force();
    ensure_too_large(
        "apply (create)",
        cms.patch(
            "applied",
            &apply,
            &Patch::Apply(config_map("applied", big.clone())?),
        )
        .await,
    )?;
    ensure_too_large(
        "apply (update)",
        cms.patch("grow", &apply, &Patch::Apply(config_map("grow", big)?))
            .await,
    )?;
    // A subresource: a Namespace's status.
    let namespaces: Api<Namespace> = Api::all(client);
    let status = json!({"status": {"conditions": [{
        "type": "Huge", "status": "True", "reason": "Attack", "message": "m".repeat(1_600_000)
    }]}});
    ensure_too_large(
        "namespace status",
        namespaces
            .patch_status("default", &PatchParams::default(), &Patch::Merge(&status))
            .await,
    )?;

    // Nothing was stored by any refused write.
    for name in ["big", "applied"] {
        let (code, _, _) = api_error(cms.get(name).await)?;
        ensure!(code == 404, "{name} exists");
    }
    let stored = serde_json::to_vec(&cms.get("grow").await?)?;
    ensure!(stored.len() < STORED_LIMIT, "{} bytes stored", stored.len());
    hub.hub.shutdown().await;
    Ok(())
}

/// A watch whose client stops reading while large objects are written pinned 566 MiB. Now each
/// watcher's buffer is bounded in bytes, a watcher that makes no room is dropped, and the
/// client sees its watch end (it then watches again or re-lists, as client-go does).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_that_stops_reading_pins_bounded_memory_and_is_ended() -> Result<()> {
    const BUDGET: usize = 4 * 1024 * 1024;
    const OBJECTS: usize = 40;
    let hub = TestHub::start(
        ConnectionLimits::default(),
        WatchOptions {
            watcher_buffer_bytes: BUDGET,
            lag_timeout: Duration::from_secs(1),
            ..WatchOptions::default()
        },
    )
    .await?;
    let client = hub.client().await?;
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    let start = cms
        .create(&PostParams::default(), &config_map("start", json!({}))?)
        .await?
        .metadata
        .resource_version
        .context("no resourceVersion")?;

    // The attacker's watch: sent, then never read.
    let mut watch = hub.tls().await?;
    watch
        .write_all(
            format!(
                "GET /api/v1/namespaces/default/configmaps?watch=1&resourceVersion={start} HTTP/1.1\r\n\
                 Host: hub\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
            )
            .as_bytes(),
        )
        .await?;

    // 40 objects of 1 MiB each: 40 MiB of events, 80 MiB with their previous states.
    let value = "v".repeat(1024 * 1024);
    let mut peak = 0;
    for i in 0..OBJECTS {
        cms.create(
            &PostParams::default(),
            &config_map(&format!("large-{i}"), json!({ "v": value }))?,
        )
        .await?;
        peak = peak.max(atoll_store::watch_buffered_bytes());
    }
    // What the store buffers for watchers stays within a few watchers' budgets (the
    // attacker's, and the hub's own controllers', which read theirs promptly), not the 40 MiB
    // written.
    ensure!(peak <= 3 * BUDGET, "{peak} bytes buffered for watchers");
    // The stalled watcher is dropped, and its buffer with it.
    eventually(
        WAIT,
        "the stalled watcher's buffer to be freed",
        async || Ok((atoll_store::watch_buffered_bytes() < 1024 * 1024).then_some(())),
    )
    .await?;

    // When the client reads again, its watch ends (the chunked body is terminated) before it
    // got every event.
    let mut received = Vec::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = tokio::time::timeout(WAIT, watch.read(&mut buf))
            .await
            .context("the watch neither ended nor sent anything")??;
        if n == 0 {
            break;
        }
        received.extend_from_slice(buf.get(..n).unwrap_or_default());
        if received.ends_with(b"\r\n0\r\n\r\n") {
            break;
        }
    }
    let text = String::from_utf8_lossy(&received);
    ensure!(
        status_of(&received)? == 200,
        "{}",
        text.lines().next().unwrap_or_default()
    );
    let events = text.matches("\"type\":\"ADDED\"").count();
    ensure!(
        events < OBJECTS,
        "the stalled watch got all {events} events: nothing was dropped"
    );
    hub.hub.shutdown().await;
    Ok(())
}

/// 100 TLS connections with a half-sent request line stayed open indefinitely. Now the header
/// read, the TLS handshake and idleness are timed out, while a watch outlives them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_connections_are_closed_but_watches_are_not() -> Result<()> {
    let limits = ConnectionLimits {
        tls_handshake_timeout: Duration::from_secs(1),
        header_read_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(2),
        ..ConnectionLimits::default()
    };
    let hub = TestHub::start(limits, WatchOptions::default()).await?;
    let client = hub.client().await?;
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    let start = cms
        .create(&PostParams::default(), &config_map("start", json!({}))?)
        .await?
        .metadata
        .resource_version
        .context("no resourceVersion")?;

    // A legitimate watch, open before the attack and longer than every timeout.
    let mut watch = hub.tls().await?;
    watch
        .write_all(
            format!(
                "GET /api/v1/namespaces/default/configmaps?watch=1&resourceVersion={start} HTTP/1.1\r\n\
                 Host: hub\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
            )
            .as_bytes(),
        )
        .await?;

    // Half-sent request lines.
    let mut half_sent = Vec::new();
    for _ in 0..100 {
        let mut tls = hub.tls().await?;
        tls.write_all(b"GET /api/v1/namespaces HTT").await?;
        half_sent.push(tls);
    }
    // A TCP connection that never starts TLS.
    let mut no_handshake = TcpStream::connect(hub.hub.addr).await?;
    // A TLS connection that never sends a byte.
    let mut silent = hub.tls().await?;
    // A kept-alive connection after one complete request.
    let mut kept_alive = hub.tls().await?;
    kept_alive
        .write_all(
            format!("GET /version HTTP/1.1\r\nHost: hub\r\nAuthorization: Bearer {TOKEN}\r\n\r\n")
                .as_bytes(),
        )
        .await?;

    for (i, tls) in half_sent.iter_mut().enumerate() {
        let answer = closed_by_server(tls, WAIT)
            .await
            .with_context(|| format!("half-sent request {i}"))?;
        ensure!(
            answer.is_empty() || status_of(&answer)? == 408,
            "half-sent request {i} was answered {}",
            String::from_utf8_lossy(&answer)
        );
    }
    closed_by_server(&mut no_handshake, WAIT)
        .await
        .context("a connection without a TLS handshake")?;
    closed_by_server(&mut silent, WAIT)
        .await
        .context("a silent TLS connection")?;
    let answer = closed_by_server(&mut kept_alive, WAIT)
        .await
        .context("an idle kept-alive connection")?;
    ensure!(status_of(&answer)? == 200);

    // The silent connection was opened after the watch and closed only after the idle
    // timeout: the watch is older than that, and still delivers.
    cms.create(&PostParams::default(), &config_map("after", json!({}))?)
        .await?;
    let mut received = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    while !String::from_utf8_lossy(&received).contains("\"name\":\"after\"") {
        let n = tokio::time::timeout(WAIT, watch.read(&mut buf))
            .await
            .context("the watch delivered nothing")??;
        ensure!(
            n > 0,
            "the watch was closed: {}",
            String::from_utf8_lossy(&received)
        );
        received.extend_from_slice(buf.get(..n).unwrap_or_default());
    }
    hub.hub.shutdown().await;
    Ok(())
}

/// Past the connection cap the hub stops accepting: the attacker's extra connections wait
/// in the listen backlog and cost the hub nothing until a slot frees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_cap_wait_to_be_accepted() -> Result<()> {
    let limits = ConnectionLimits {
        max_connections: 3,
        ..ConnectionLimits::default()
    };
    let hub = TestHub::start(limits, WatchOptions::default()).await?;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(hub.tls().await?);
    }
    // The fourth TLS handshake gets no answer while the three are held.
    let fourth = tokio::time::timeout(Duration::from_secs(2), hub.tls()).await;
    ensure!(
        fourth.is_err(),
        "a fourth connection was served past the cap"
    );
    // Once one closes, a new connection is served.
    held.pop();
    let ca = hub.ca()?;
    let addr = hub.hub.addr;
    let answer =
        eventually(
            WAIT,
            "a connection after one was closed",
            async || match tokio::time::timeout(Duration::from_secs(2), get(addr, &ca, "/version"))
                .await
            {
                Ok(answer) => Ok(Some(answer?)),
                Err(_) => Ok(None),
            },
        )
        .await?;
    ensure!(status_of(&answer)? == 200);
    drop(held);
    hub.hub.shutdown().await;
    Ok(())
}

async fn panics() -> &'static str {
    panic!("a deliberate panic in a request handler")
}

/// A handler that panics answers 500 with kube-apiserver's wording in a Status, and the server
/// keeps serving (before, the panic tore down the connection without an answer). The route
/// exists only in this test, through `ServerOptions::extra_routes`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_answers_500_and_the_server_keeps_serving() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let pki = atoll_apiserver::pki::Pki::load_or_create(dir.path(), &["127.0.0.1".to_string()])?;
    let tokens = dir.path().join("tokens.csv");
    std::fs::write(
        &tokens,
        format!("{TOKEN},admin,uid-admin,\"system:masters\"\n"),
    )?;
    let panicking = axum::Router::new().route("/debug/panic", axum::routing::get(panics));
    let server = atoll_apiserver::ApiServer::start(
        Arc::new(MemoryStore::new()),
        ServerOptions {
            tokens: atoll_apiserver::TokenTable::from_csv_file(&tokens)?,
            extra_routes: Some(ExtraRoutes(panicking)),
            ..ServerOptions::default()
        },
    )
    .await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let tls = pki.server_config()?;
    let server = Arc::new(server);
    let serving = {
        let server = server.clone();
        tokio::spawn(async move { server.serve_tls(listener, tls).await })
    };
    let ca = pki.ca_pem().as_bytes().to_vec();
    for attempt in 0..3 {
        let answer = get(addr, &ca, "/debug/panic").await?;
        ensure!(status_of(&answer)? == 500, "attempt {attempt}");
        let status = json_body(&answer)?;
        ensure!(
            status["kind"] == "Status"
                && status["code"] == 500
                && status["message"] == atoll_apiserver::server::PANIC_MESSAGE,
            "{status}"
        );
        let answer = get(addr, &ca, "/version").await?;
        ensure!(status_of(&answer)? == 200, "after panic {attempt}");
    }
    server.shutdown_token().cancel();
    serving.await?;
    Ok(())
}
