//! The shared storage suite on the etcd backend, against a real etcd (Debian's 3.4 at
//! /usr/bin/etcd, or `ATOLL_ETCD`) started on free loopback ports in a temporary directory.
//! Each test gets its own etcd (etcd revisions and compaction are global) and its own prefix.
//!
//! `cargo test -p atoll-store --features etcd --test etcd` (building etcd-client needs protoc).

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use atoll_store::Store;
use atoll_store::etcd::EtcdStore;
use atoll_store::testsuite::Fixture;

struct Etcd {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

async fn fresh() -> anyhow::Result<Fixture> {
    let binary = std::env::var("ATOLL_ETCD").unwrap_or_else(|_| "/usr/bin/etcd".into());
    let dir = tempfile::tempdir()?;
    let (client, peer) = (free_port()?, free_port()?);
    let client_url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let child = Command::new(&binary)
        .args([
            "--name=default",
            &format!("--data-dir={}", dir.path().join("data").display()),
            &format!("--listen-client-urls={client_url}"),
            &format!("--advertise-client-urls={client_url}"),
            &format!("--listen-peer-urls={peer_url}"),
            &format!("--initial-advertise-peer-urls={peer_url}"),
            &format!("--initial-cluster=default={peer_url}"),
            "--experimental-watch-progress-notify-interval=200ms",
            "--log-level=error",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {binary}"))?;
    let etcd = Etcd { child, _dir: dir };
    let prefix = format!("/atoll-test-{}", std::process::id());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let attempt = async {
            let store = EtcdStore::connect(std::slice::from_ref(&client_url), &prefix).await?;
            store.current_revision().await?;
            anyhow::Ok(store)
        };
        match tokio::time::timeout(Duration::from_secs(5), attempt).await {
            Ok(Ok(store)) => return Ok(Fixture::new(Arc::new(store), etcd)),
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
            Ok(Err(error)) => bail!("etcd at {client_url} did not come up: {error:#}"),
            Err(_) => bail!("etcd at {client_url} did not come up in time"),
        }
    }
}

atoll_store::store_testsuite!(fresh());
