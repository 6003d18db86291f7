//! The one etcd a test bed's clusters share (each under its own prefix).

use std::ffi::OsString;
use std::path::Path;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::Error;
use crate::ports::{free_port, lost_port_race};
use crate::process::Process;

#[derive(Debug)]
pub(crate) struct Etcd {
    process: Process,
    port: u16,
}

impl Etcd {
    /// Starts etcd with its data in `dir/etcd` and waits for `/health`.
    pub(crate) async fn start(binary: &Path, dir: &Path, deadline: Instant) -> Result<Etcd, Error> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let data = dir.join(format!("etcd-data-{attempt}"));
            let log = dir.join("etcd.log");
            let (client, peer) = (free_port()?, free_port()?);
            let client_url = format!("http://127.0.0.1:{client}");
            let peer_url = format!("http://127.0.0.1:{peer}");
            let args: Vec<OsString> = [
                "--name=testbed".to_owned(),
                format!("--data-dir={}", data.display()),
                format!("--listen-client-urls={client_url}"),
                format!("--advertise-client-urls={client_url}"),
                format!("--listen-peer-urls={peer_url}"),
                format!("--initial-advertise-peer-urls={peer_url}"),
                format!("--initial-cluster=testbed={peer_url}"),
                "--initial-cluster-state=new".to_owned(),
                "--logger=zap".to_owned(),
                "--log-outputs=stderr".to_owned(),
                "--log-level=warn".to_owned(),
            ]
            .into_iter()
            .map(OsString::from)
            .collect();
            let mut process = Process::spawn("etcd", binary, &args, &log)?;
            match wait_healthy(&mut process, client, deadline).await {
                Ok(()) => {
                    tracing::debug!(%client_url, "etcd ready");
                    return Ok(Etcd {
                        process,
                        port: client,
                    });
                }
                Err(_) if attempt < 4 && lost_port_race(&process.log_tail(20)) => {
                    tracing::debug!("etcd lost a port race; retrying with new ports");
                }
                Err(reason) => return Err(process.startup_error(reason)),
            }
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub(crate) fn pid(&self) -> u32 {
        self.process.pid()
    }
}

async fn wait_healthy(process: &mut Process, port: u16, deadline: Instant) -> Result<(), String> {
    loop {
        if let Some(status) = process.exited() {
            return Err(format!("exited with {status}"));
        }
        let last = match health(port).await {
            Ok(true) => return Ok(()),
            Ok(false) => "/health reports unhealthy".to_owned(),
            Err(e) => e.to_string(),
        };
        if Instant::now() >= deadline {
            return Err(format!("not healthy in time (last: {last})"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `GET /health` over plain HTTP/1.0.
async fn health(port: u16) -> std::io::Result<bool> {
    let request = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        stream
            .write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&response).into_owned())
    };
    let response = tokio::time::timeout(Duration::from_secs(2), request)
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    Ok(response.contains("\"health\":\"true\""))
}
