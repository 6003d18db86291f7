//! MCS benchmarks.
//!
//! `mcs-propagation`: the latency from an endpoint change in one member to the updated
//! EndpointSlices in every other member, through the whole path (member watch, hub export
//! slice, aggregator, hub import slices, member syncers), with real test-bed members joined
//! in push mode and `atoll controller`'s MCS part running in this process.
//!
//! `dns-qps`: `atoll dns` (a release binary, fed by a real kube-apiserver) and NSD serving the
//! equivalent static zone, asked by `dnsperf` with the same queries, side by side in one run.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use atoll_api::mcs::{
    LABEL_SERVICE_NAME, LABEL_SOURCE_CLUSTER, ServiceExport, ServiceExportSpec, ServiceImport,
    ServiceImportSpec, ServiceImportType, ServicePort,
};
use atoll_controllers::inventory::{self, JoinOptions};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Service, ServiceSpec};
use kube::api::{Api, DynamicObject, ObjectMeta, Patch, PatchParams, PostParams};
use kube::config::Kubeconfig;
use kube::core::ApiResource;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use tokio::sync::mpsc;

const NS: &str = "bench";

async fn create_namespace(client: &kube::Client, name: &str) -> anyhow::Result<()> {
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    match Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn slice(resource: &ApiResource, name: &str, service: &str, address: &str) -> DynamicObject {
    let mut object = DynamicObject::new(name, resource).within(NS);
    object.metadata.labels = Some(BTreeMap::from([
        ("kubernetes.io/service-name".to_owned(), service.to_owned()),
        (
            "endpointslice.kubernetes.io/managed-by".to_owned(),
            "bench.atoll.io".to_owned(),
        ),
    ]));
    object.data = serde_json::json!({
        "addressType": "IPv4",
        "endpoints": [{"addresses": [address], "conditions": {"ready": true}}],
        "ports": [{"name": "http", "port": 80, "protocol": "TCP"}],
    });
    object
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    // Nearest rank.
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub async fn propagation(members: usize, changes: usize) -> anyhow::Result<()> {
    if members < 2 {
        bail!("--members must be at least 2");
    }
    eprintln!("starting {members} test-bed clusters (cluster 0 is also the hub)");
    let testbed =
        atoll_testbed::Testbed::start(atoll_testbed::TestbedConfig::with_clusters(members)).await?;
    let hub = testbed.clusters()[0].client().await?;
    atoll_testbed::install_crds(&hub, atoll_api::crds()?).await?;
    let mcs_crds: Vec<_> = atoll_api::crds()?
        .into_iter()
        .filter(|c| {
            c.spec.group == atoll_api::mcs::GROUP && c.spec.names.plural.starts_with("service")
        })
        .collect();
    let mut clients = Vec::new();
    for (i, cluster) in testbed.clusters().iter().enumerate() {
        let client = cluster.client().await?;
        atoll_testbed::install_crds(&client, mcs_crds.clone()).await?;
        inventory::join(
            &hub,
            &JoinOptions {
                name: format!("c{i}"),
                member_kubeconfig: Kubeconfig::read_from(cluster.kubeconfig_path())?,
                member_context: None,
                labels: Default::default(),
                cluster_set: "bench".into(),
                cluster_id: Some(format!("cluster-{i}")),
                manager_namespace: inventory::DEFAULT_MANAGER_NAMESPACE.into(),
                token_timeout: Duration::from_secs(60),
            },
        )
        .await?;
        create_namespace(&client, NS).await?;
        clients.push(client);
    }
    let controller = tokio::spawn(atoll_controllers::mcs::run(
        hub.clone(),
        inventory::DEFAULT_MANAGER_NAMESPACE.into(),
        std::future::pending(),
    ));

    // The exporter: a selectorless Service whose one EndpointSlice the benchmark rewrites, so
    // the figure is Atoll's propagation alone, not kube's endpoint controllers.
    let source = &clients[1];
    let resource = atoll_mcs::slices::discover(source).await;
    let service = Service {
        metadata: ObjectMeta {
            name: Some("echo".into()),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            ports: Some(vec![k8s_openapi::api::core::v1::ServicePort {
                name: Some("http".into()),
                port: 80,
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: None,
    };
    Api::<Service>::namespaced(source.clone(), NS)
        .create(&PostParams::default(), &service)
        .await?;
    let slices: Api<DynamicObject> = Api::namespaced_with(source.clone(), NS, &resource);
    slices
        .create(
            &PostParams::default(),
            &slice(&resource, "echo-manual", "echo", "10.99.0.0"),
        )
        .await?;
    let mut export = ServiceExport::new("echo", ServiceExportSpec::default());
    export.metadata.namespace = Some(NS.into());
    Api::<ServiceExport>::namespaced(source.clone(), NS)
        .create(&PostParams::default(), &export)
        .await?;

    // Observers: every other member's imported slices of `echo`.
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel::<(usize, Vec<String>, Instant)>();
    let mut observers = Vec::new();
    let observed: Vec<usize> = (0..members).filter(|i| *i != 1).collect();
    for &i in &observed {
        let client = clients[i].clone();
        let resource = atoll_mcs::slices::discover(&client).await;
        let tx = seen_tx.clone();
        observers.push(tokio::spawn(async move {
            let api: Api<DynamicObject> = Api::namespaced_with(client, NS, &resource);
            let stream = watcher::watcher(
                api,
                watcher::Config::default().labels(&format!("{LABEL_SERVICE_NAME}=echo")),
            )
            .default_backoff();
            let mut stream = std::pin::pin!(stream);
            while let Some(event) = stream.next().await {
                if let Ok(Event::Apply(object) | Event::InitApply(object)) = event {
                    let addresses = atoll_mcs::slices::SliceData::read(&object)
                        .map(|d| d.endpoints.into_iter().flat_map(|e| e.addresses).collect())
                        .unwrap_or_default();
                    let _ = tx.send((i, addresses, Instant::now()));
                }
            }
        }));
    }

    let mut wait_for = async |address: &str, within: Duration| -> Option<Instant> {
        let deadline = tokio::time::Instant::now() + within;
        let mut pending: Vec<usize> = observed.clone();
        let mut last = None;
        while !pending.is_empty() {
            let (i, addresses, at) = tokio::time::timeout_at(deadline, seen_rx.recv())
                .await
                .ok()
                .flatten()?;
            if addresses.iter().any(|a| a == address) {
                pending.retain(|p| *p != i);
                last = Some(at);
            }
        }
        last
    };
    eprintln!("waiting for the first import in every member");
    if wait_for("10.99.0.0", Duration::from_secs(120))
        .await
        .is_none()
    {
        bail!("the export never reached every member");
    }

    eprintln!("measuring {changes} endpoint changes");
    let mut latencies = Vec::new();
    let mut lost = 0;
    for n in 1..=changes {
        let address = format!("10.99.{}.{}", n / 250, n % 250 + 1);
        let start = Instant::now();
        slices
            .patch(
                "echo-manual",
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({
                    "endpoints": [{"addresses": [address], "conditions": {"ready": true}}]
                })),
            )
            .await?;
        match wait_for(&address, Duration::from_secs(10)).await {
            Some(at) => latencies.push(at.duration_since(start)),
            None => lost += 1,
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    controller.abort();
    for observer in observers {
        observer.abort();
    }
    latencies.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let mean = latencies.iter().map(|d| ms(*d)).sum::<f64>() / latencies.len().max(1) as f64;
    println!(
        "| members | changes | p50 (ms) | p90 (ms) | p99 (ms) | max (ms) | mean (ms) | not seen in 10 s |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {members} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {lost} |",
        latencies.len(),
        ms(percentile(&latencies, 50.0)),
        ms(percentile(&latencies, 90.0)),
        ms(percentile(&latencies, 99.0)),
        ms(latencies.last().copied().unwrap_or_default()),
        mean
    );
    Ok(())
}

/// The zone both servers answer, built once: ServiceImports and slices for `atoll dns`, the
/// same records as a zone file for NSD, and the queries for dnsperf.
struct Zone {
    imports: Vec<ServiceImport>,
    slices: Vec<(String, serde_json::Value)>,
    zone_file: String,
    queries: String,
    samples: Vec<(String, &'static str)>,
}

fn build_zone(services: usize, headless: usize, endpoints: usize) -> Zone {
    let mut imports = Vec::new();
    let mut slices = Vec::new();
    let mut zone_file = String::from(
        "$ORIGIN clusterset.local.\n$TTL 5\n\
         @ IN SOA ns.dns.clusterset.local. hostmaster.clusterset.local. 1 7200 1800 86400 5\n\
         @ IN NS ns.dns.clusterset.local.\n",
    );
    let mut queries = String::new();
    let mut samples = Vec::new();
    let port = ServicePort {
        name: Some("http".into()),
        protocol: Some("TCP".into()),
        app_protocol: None,
        port: 80,
    };
    for i in 0..services {
        let name = format!("svc-{i}");
        let ip = format!("10.100.{}.{}", i / 250, i % 250 + 1);
        let mut import = ServiceImport::new(
            &name,
            ServiceImportSpec {
                ports: vec![port.clone()],
                ips: vec![ip.clone()],
                type_: ServiceImportType::ClusterSetIP,
                ..Default::default()
            },
        );
        import.metadata.namespace = Some(NS.into());
        imports.push(import);
        let fqdn = format!("{name}.{NS}.svc.clusterset.local.");
        let _ = writeln!(zone_file, "{fqdn} IN A {ip}");
        let _ = writeln!(zone_file, "_http._tcp.{fqdn} IN SRV 10 100 80 {fqdn}");
        let _ = writeln!(queries, "{fqdn} A\n_http._tcp.{fqdn} SRV");
        if i == 0 {
            samples.push((fqdn.clone(), "A"));
            samples.push((format!("_http._tcp.{fqdn}"), "SRV"));
        }
    }
    for i in 0..headless {
        let name = format!("db-{i}");
        let mut import = ServiceImport::new(
            &name,
            ServiceImportSpec {
                ports: vec![port.clone()],
                type_: ServiceImportType::Headless,
                ..Default::default()
            },
        );
        import.metadata.namespace = Some(NS.into());
        imports.push(import);
        let fqdn = format!("{name}.{NS}.svc.clusterset.local.");
        let mut list = Vec::new();
        for e in 0..endpoints {
            let ip = format!("10.101.{i}.{}", e + 1);
            let host = format!("{name}-{e}");
            list.push(serde_json::json!({"addresses": [ip], "hostname": host, "conditions": {"ready": true}}));
            let pod = format!("{host}.cluster-1.{fqdn}");
            let _ = writeln!(zone_file, "{fqdn} IN A {ip}");
            let _ = writeln!(zone_file, "{pod} IN A {ip}");
            let _ = writeln!(zone_file, "_http._tcp.{fqdn} IN SRV 10 100 80 {pod}");
            let _ = writeln!(queries, "{pod} A");
            if i == 0 && e == 0 {
                samples.push((pod, "A"));
            }
        }
        let _ = writeln!(queries, "{fqdn} A");
        if i == 0 {
            samples.push((fqdn.clone(), "A"));
        }
        slices.push((
            name.clone(),
            serde_json::json!({
                "addressType": "IPv4",
                "endpoints": list,
                "ports": [{"name": "http", "port": 80, "protocol": "TCP"}],
            }),
        ));
    }
    // Negative answers are part of any real mix.
    let _ = writeln!(queries, "missing.{NS}.svc.clusterset.local. A");
    samples.push((format!("missing.{NS}.svc.clusterset.local."), "A"));
    Zone {
        imports,
        slices,
        zone_file,
        queries,
        samples,
    }
}

fn free_port() -> anyhow::Result<u16> {
    // Both UDP and TCP must be free; asking the OS for a UDP port and checking TCP is enough
    // on a machine where nothing else races for it.
    for _ in 0..50 {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0")?;
        let port = udp.local_addr()?.port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free port")
}

async fn dig(port: u16, name: &str, type_: &str) -> anyhow::Result<Vec<String>> {
    let output = tokio::process::Command::new("dig")
        .args([
            "@127.0.0.1",
            "-p",
            &port.to_string(),
            "+short",
            "+norecurse",
        ])
        .args(["+time=1", "+tries=1", name, type_])
        .output()
        .await?;
    let mut lines: Vec<String> = String::from_utf8(output.stdout)?
        .lines()
        .map(str::to_owned)
        .collect();
    lines.sort();
    Ok(lines)
}

async fn dig_status(port: u16, name: &str) -> anyhow::Result<String> {
    let output = tokio::process::Command::new("dig")
        .args(["@127.0.0.1", "-p", &port.to_string(), "+norecurse"])
        .args(["+time=1", "+tries=1", name, "A"])
        .output()
        .await?;
    let text = String::from_utf8(output.stdout)?;
    Ok(text
        .split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or("")
        .to_owned())
}

struct Perf {
    qps: f64,
    avg_ms: f64,
    stddev_ms: f64,
    lost: String,
}

async fn dnsperf(port: u16, queries: &Path, seconds: u64, clients: u32) -> anyhow::Result<Perf> {
    let output = tokio::process::Command::new("dnsperf")
        .args(["-s", "127.0.0.1", "-p", &port.to_string()])
        .args(["-l", &seconds.to_string(), "-c", &clients.to_string()])
        .arg("-d")
        .arg(queries)
        .output()
        .await
        .context("running dnsperf (apt-get install dnsperf)")?;
    let text = String::from_utf8(output.stdout)?;
    let field = |label: &str| -> String {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(label))
            .map(|v| v.trim().to_owned())
            .unwrap_or_default()
    };
    let first_number = |s: String| -> f64 {
        s.split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(f64::NAN)
    };
    Ok(Perf {
        qps: first_number(field("Queries per second:")),
        avg_ms: first_number(field("Average Latency (s):")) * 1000.0,
        stddev_ms: first_number(field("Latency StdDev (s):")) * 1000.0,
        lost: field("Queries lost:"),
    })
}

/// Kills a child process on drop.
struct Child(tokio::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.start_kill();
    }
}

#[allow(clippy::too_many_arguments)]
pub async fn dns(
    atoll: PathBuf,
    services: usize,
    headless: usize,
    endpoints: usize,
    seconds: u64,
    rounds: usize,
    clients: u32,
    nsd_servers: usize,
) -> anyhow::Result<()> {
    if !atoll.exists() {
        bail!(
            "{} not found: run `cargo build --release -p atoll` first",
            atoll.display()
        );
    }
    let zone = build_zone(services, headless, endpoints);
    let dir = tempfile_dir()?;

    eprintln!("starting a test-bed cluster with {services}+{headless} imported services");
    let testbed = atoll_testbed::Testbed::start(atoll_testbed::TestbedConfig {
        controller_manager: false,
        ..atoll_testbed::TestbedConfig::with_clusters(1)
    })
    .await?;
    let cluster = &testbed.clusters()[0];
    let client = cluster.client().await?;
    atoll_testbed::install_crds(&client, atoll_api::crds()?).await?;
    create_namespace(&client, NS).await?;
    let imports: Api<ServiceImport> = Api::namespaced(client.clone(), NS);
    futures::stream::iter(zone.imports.iter())
        .map(|i| {
            let imports = imports.clone();
            async move { imports.create(&PostParams::default(), i).await }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
    let resource = atoll_mcs::slices::discover(&client).await;
    let slice_api: Api<DynamicObject> = Api::namespaced_with(client.clone(), NS, &resource);
    for (service, data) in &zone.slices {
        let mut object = DynamicObject::new(&format!("{service}-c1"), &resource).within(NS);
        object.metadata.labels = Some(BTreeMap::from([
            (LABEL_SERVICE_NAME.to_owned(), service.clone()),
            (LABEL_SOURCE_CLUSTER.to_owned(), "cluster-1".to_owned()),
        ]));
        object.data = data.clone();
        slice_api.create(&PostParams::default(), &object).await?;
    }

    // atoll dns, fed by the cluster.
    let atoll_port = free_port()?;
    let _atoll = Child(
        tokio::process::Command::new(&atoll)
            .arg("dns")
            .arg("--kubeconfig")
            .arg(cluster.kubeconfig_path())
            .args(["--listen", &format!("127.0.0.1:{atoll_port}")])
            // dnsperf floods from one address: measure throughput, not the rate limit.
            .args(["--rate-limit", "0"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting atoll dns")?,
    );
    // NSD, with the same records as a static zone.
    let nsd_port = free_port()?;
    std::fs::write(dir.join("clusterset.local.zone"), &zone.zone_file)?;
    let conf = format!(
        "server:\n  ip-address: 127.0.0.1@{nsd_port}\n  port: {nsd_port}\n  username: \"\"\n  chroot: \"\"\n  \
         zonesdir: \"{d}\"\n  database: \"\"\n  pidfile: \"{d}/nsd.pid\"\n  xfrdfile: \"{d}/xfrd.state\"\n  \
         xfrdir: \"{d}\"\n  zonelistfile: \"{d}/zone.list\"\n  server-count: {nsd_servers}\n  verbosity: 0\n  \
         hide-version: yes\nremote-control:\n  control-enable: no\nzone:\n  name: clusterset.local\n  \
         zonefile: \"{d}/clusterset.local.zone\"\n",
        d = dir.display()
    );
    std::fs::write(dir.join("nsd.conf"), conf)?;
    let _nsd = Child(
        tokio::process::Command::new("nsd")
            .args(["-d", "-c"])
            .arg(dir.join("nsd.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting nsd (apt-get install nsd)")?,
    );
    let probe = &zone.samples[0].0;
    let deadline = Instant::now() + Duration::from_secs(60);
    for port in [atoll_port, nsd_port] {
        while dig_status(port, probe).await.unwrap_or_default() != "NOERROR" {
            if Instant::now() > deadline {
                bail!("the server on port {port} never answered {probe}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    // Same answers from both: the zones are equivalent.
    for (name, type_) in &zone.samples {
        let (a, n) = (
            dig(atoll_port, name, type_).await?,
            dig(nsd_port, name, type_).await?,
        );
        if a != n {
            bail!("answers differ for {name} {type_}: atoll {a:?}, nsd {n:?}");
        }
    }
    eprintln!("both servers give the same answers; measuring");
    let queries = dir.join("queries.txt");
    std::fs::write(&queries, &zone.queries)?;
    let mut rows = Vec::new();
    for round in 1..=rounds {
        for (server, port) in [("atoll dns", atoll_port), ("NSD 4.6", nsd_port)] {
            let perf = dnsperf(port, &queries, seconds, clients).await?;
            rows.push((round, server, perf));
        }
    }
    println!("| round | server | queries/s | avg latency (ms) | stddev (ms) | lost |");
    println!("|---:|---|---:|---:|---:|---|");
    for (round, server, p) in &rows {
        println!(
            "| {round} | {server} | {:.0} | {:.3} | {:.3} | {} |",
            p.qps, p.avg_ms, p.stddev_ms, p.lost
        );
    }
    let mean = |which: &str| {
        let v: Vec<f64> = rows
            .iter()
            .filter(|(_, s, _)| *s == which)
            .map(|(_, _, p)| p.qps)
            .collect();
        v.iter().sum::<f64>() / v.len().max(1) as f64
    };
    let (a, n) = (mean("atoll dns"), mean("NSD 4.6"));
    println!(
        "\natoll dns: {a:.0} q/s, NSD: {n:.0} q/s (means of {rounds} rounds): atoll dns reaches {:.0} % of NSD's throughput.",
        100.0 * a / n.max(f64::EPSILON)
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("atoll-bench-dns-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
