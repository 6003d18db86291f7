//! Shared helpers of the network tests: a server on a free loopback port, and `dig`.

#![allow(dead_code)] // each test binary uses its own subset

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use atoll_dns::model::{Endpoint, Port, Service, ServiceKey};
use atoll_dns::{CancellationToken, DnsServer, Model, ZoneConfig};
use tokio::task::JoinHandle;

/// A running server and the model it answers from.
pub struct Running {
    pub addr: SocketAddr,
    pub model: Arc<Model>,
    pub cancel: CancellationToken,
    pub task: JoinHandle<Result<(), atoll_dns::Error>>,
}

impl Running {
    /// Starts a server for `model` on 127.0.0.1, on a port free for both UDP and TCP.
    pub async fn start(model: Model) -> Result<Self> {
        Self::start_shared(Arc::new(model)).await
    }

    /// [`start`](Self::start) for a model shared with something else (a feed).
    pub async fn start_shared(model: Arc<Model>) -> Result<Self> {
        let server = DnsServer::bind("127.0.0.1:0".parse()?, model.clone()).await?;
        Self::run(server, model)
    }

    /// [`start`](Self::start) with exactly `udp_sockets` UDP sockets on the port.
    pub async fn start_with_udp_sockets(model: Model, udp_sockets: usize) -> Result<Self> {
        let model = Arc::new(model);
        let server =
            DnsServer::bind_with_udp_sockets("127.0.0.1:0".parse()?, model.clone(), udp_sockets)
                .await?;
        anyhow::ensure!(server.udp_sockets() == udp_sockets);
        Self::run(server, model)
    }

    fn run(server: DnsServer, model: Arc<Model>) -> Result<Self> {
        let addr = server.local_addr();
        let cancel = CancellationToken::new();
        let task = tokio::spawn(server.run(cancel.clone()));
        Ok(Self {
            addr,
            model,
            cancel,
            task,
        })
    }

    /// `dig @127.0.0.1 -p PORT +norecurse <args>`.
    pub async fn dig(&self, args: &[&str]) -> Result<Dig> {
        dig(self.addr, args).await
    }

    /// `dig ... +short`, one line per record, sorted.
    pub async fn short(&self, args: &[&str]) -> Result<Vec<String>> {
        let mut args = args.to_vec();
        args.push("+short");
        let output = run_dig(self.addr, &args).await?;
        let mut lines: Vec<String> = output.lines().map(str::to_owned).collect();
        lines.sort();
        Ok(lines)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// One record line of dig's output, split on whitespace: name, TTL, class, type, data...
pub type Line = Vec<String>;

/// dig's full output, parsed.
#[derive(Debug)]
pub struct Dig {
    pub status: String,
    pub flags: Vec<String>,
    pub answer: Vec<Line>,
    pub authority: Vec<Line>,
    pub additional: Vec<Line>,
    pub raw: String,
}

impl Dig {
    pub fn has_flag(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }

    /// The data of the answer records of type `rtype`, joined by spaces, sorted.
    pub fn answer_data(&self, rtype: &str) -> Vec<String> {
        data(&self.answer, rtype)
    }

    pub fn additional_data(&self, rtype: &str) -> Vec<String> {
        data(&self.additional, rtype)
    }

    /// The size of the response as dig reports it (`MSG SIZE  rcvd: N`).
    pub fn message_size(&self) -> Result<usize> {
        Ok(self
            .raw
            .split("MSG SIZE  rcvd: ")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .context("no MSG SIZE")?
            .parse()?)
    }
}

fn data(lines: &[Line], rtype: &str) -> Vec<String> {
    let mut out: Vec<String> = lines
        .iter()
        .filter(|l| l.get(3).is_some_and(|t| t == rtype))
        .map(|l| l[4..].join(" "))
        .collect();
    out.sort();
    out
}

pub async fn dig(addr: SocketAddr, args: &[&str]) -> Result<Dig> {
    let raw = run_dig(addr, args).await?;
    parse(&raw).with_context(|| format!("parsing dig output:\n{raw}"))
}

async fn run_dig(addr: SocketAddr, args: &[&str]) -> Result<String> {
    let output = tokio::time::timeout(
        Duration::from_secs(20),
        tokio::process::Command::new("dig")
            .arg(format!("@{}", addr.ip()))
            .args([
                "-p",
                &addr.port().to_string(),
                "+norecurse",
                "+tries=1",
                "+time=5",
            ])
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .context("dig timed out")?
    .context("running dig")?;
    let stdout = String::from_utf8(output.stdout)?;
    if !output.status.success() {
        bail!(
            "dig {args:?} failed ({}): {stdout}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(stdout)
}

fn parse(raw: &str) -> Result<Dig> {
    let status = raw
        .split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .context("no status")?
        .to_owned();
    let flags = raw
        .split(";; flags: ")
        .nth(1)
        .and_then(|s| s.split(';').next())
        .context("no flags")?
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    let mut sections: BTreeMap<&str, Vec<Line>> = BTreeMap::new();
    let mut current = None;
    for line in raw.lines() {
        if let Some(title) = line
            .strip_prefix(";; ")
            .and_then(|l| l.strip_suffix(" SECTION:"))
        {
            current = Some(title);
            continue;
        }
        if line.trim().is_empty() || line.starts_with(';') {
            current = None;
            continue;
        }
        if let Some(section) = current {
            sections
                .entry(section)
                .or_default()
                .push(line.split_whitespace().map(str::to_owned).collect());
        }
    }
    Ok(Dig {
        status,
        flags,
        answer: sections.remove("ANSWER").unwrap_or_default(),
        authority: sections.remove("AUTHORITY").unwrap_or_default(),
        additional: sections.remove("ADDITIONAL").unwrap_or_default(),
        raw: raw.to_owned(),
    })
}

pub fn ip(s: &str) -> Result<IpAddr> {
    Ok(s.parse()?)
}

pub fn port(name: &str, protocol: &str, number: u16) -> Port {
    Port {
        name: Some(name.to_owned()),
        protocol: protocol.to_owned(),
        port: number,
    }
}

/// A ready endpoint.
pub fn endpoint(address: &str, hostname: Option<&str>, ports: &[Port]) -> Result<Endpoint> {
    Ok(Endpoint {
        addresses: vec![ip(address)?],
        hostname: hostname.map(str::to_owned),
        ready: true,
        ports: ports.to_vec(),
    })
}

/// A headless service with `count` ready endpoints `pod-<i>` (10.1.<i/250>.<i%250+1>) in
/// cluster `c1`, port `pg`/TCP 5432.
pub fn big_headless(count: usize) -> Result<Service> {
    let endpoints = (0..count)
        .map(|i| {
            endpoint(
                &format!("10.1.{}.{}", i / 250, i % 250 + 1),
                Some(&format!("pod-{i}")),
                &[port("pg", "TCP", 5432)],
            )
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Service {
        kind: atoll_api::mcs::ServiceImportType::Headless,
        clusters: BTreeMap::from([("c1".to_owned(), endpoints)]),
        ..Service::default()
    })
}

/// The model of the network tests, synced: demo/web (ClusterSetIP 10.42.0.1 and fd00::42:1,
/// ports http/TCP 80 and dns/UDP 53) and demo/db (headless: db-0 10.0.1.1 in c1, and in c2
/// db-0 10.0.2.1 plus an unnamed 10.0.2.2; one not-ready 10.0.1.9 in c1; port pg/TCP 5432).
pub fn demo_model() -> Result<Model> {
    let model = Model::new(ZoneConfig::new("clusterset.local")?);
    model.upsert(
        ServiceKey::new("demo", "web"),
        Service {
            kind: atoll_api::mcs::ServiceImportType::ClusterSetIP,
            ips: vec![ip("10.42.0.1")?, ip("fd00::42:1")?],
            ports: vec![port("http", "TCP", 80), port("dns", "UDP", 53)],
            clusters: BTreeMap::new(),
        },
    );
    let pg = [port("pg", "TCP", 5432)];
    let mut not_ready = endpoint("10.0.1.9", Some("db-9"), &pg)?;
    not_ready.ready = false;
    model.upsert(
        ServiceKey::new("demo", "db"),
        Service {
            kind: atoll_api::mcs::ServiceImportType::Headless,
            clusters: BTreeMap::from([
                (
                    "c1".to_owned(),
                    vec![endpoint("10.0.1.1", Some("db-0"), &pg)?, not_ready],
                ),
                (
                    "c2".to_owned(),
                    vec![
                        endpoint("10.0.2.1", Some("db-0"), &pg)?,
                        endpoint("10.0.2.2", None, &pg)?,
                    ],
                ),
            ]),
            ..Service::default()
        },
    );
    model.set_synced(true);
    Ok(model)
}
