//! The server on a loopback port, asked by the real `dig` over UDP and TCP. The model is
//! filled directly; no cluster is involved.

mod common;

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use atoll_dns::model::ServiceKey;
use atoll_dns::{Model, ZoneConfig};

use common::{Running, big_headless, demo_model};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clusterset_ip_and_headless_addresses_over_udp_and_tcp() -> Result<()> {
    let server = Running::start(demo_model()?).await?;
    for transport in ["+notcp", "+tcp"] {
        let web = "web.demo.svc.clusterset.local";
        ensure!(server.short(&[transport, web, "A"]).await? == ["10.42.0.1"]);
        ensure!(server.short(&[transport, web, "AAAA"]).await? == ["fd00::42:1"]);
        // Headless: every ready endpoint of every cluster, not 10.0.1.9.
        ensure!(
            server
                .short(&[transport, "db.demo.svc.clusterset.local", "A"])
                .await?
                == ["10.0.1.1", "10.0.2.1", "10.0.2.2"]
        );
    }
    let answer = server.dig(&["web.demo.svc.clusterset.local", "A"]).await?;
    ensure!(
        answer.status == "NOERROR" && answer.has_flag("aa"),
        "{}",
        answer.raw
    );
    ensure!(answer.answer[0][1] == "5", "TTL: {}", answer.raw);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srv_records_and_endpoint_names() -> Result<()> {
    let server = Running::start(demo_model()?).await?;
    ensure!(
        server
            .short(&["_http._tcp.web.demo.svc.clusterset.local", "SRV"])
            .await?
            == ["10 100 80 web.demo.svc.clusterset.local."]
    );
    ensure!(
        server
            .short(&["_dns._udp.web.demo.svc.clusterset.local", "SRV"])
            .await?
            == ["10 100 53 web.demo.svc.clusterset.local."]
    );
    // SRV at the service name: one per port.
    ensure!(
        server
            .short(&["web.demo.svc.clusterset.local", "SRV"])
            .await?
            .len()
            == 2
    );

    let answer = server
        .dig(&["_pg._tcp.db.demo.svc.clusterset.local", "SRV"])
        .await?;
    ensure!(
        answer.answer_data("SRV")
            == [
                "10 100 5432 10-0-2-2.c2.db.demo.svc.clusterset.local.",
                "10 100 5432 db-0.c1.db.demo.svc.clusterset.local.",
                "10 100 5432 db-0.c2.db.demo.svc.clusterset.local.",
            ],
        "{}",
        answer.raw
    );
    ensure!(
        answer.additional_data("A") == ["10.0.1.1", "10.0.2.1", "10.0.2.2"],
        "{}",
        answer.raw
    );

    // Every SRV target resolves.
    for (name, address) in [
        ("db-0.c1.db.demo.svc.clusterset.local", "10.0.1.1"),
        ("db-0.c2.db.demo.svc.clusterset.local", "10.0.2.1"),
        ("10-0-2-2.c2.db.demo.svc.clusterset.local", "10.0.2.2"),
    ] {
        ensure!(server.short(&[name, "A"]).await? == [address], "{name}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nxdomain_and_nodata_are_authoritative_with_the_soa() -> Result<()> {
    let server = Running::start(demo_model()?).await?;
    for (name, rtype, status) in [
        ("nope.demo.svc.clusterset.local", "A", "NXDOMAIN"),
        ("db-9.c1.db.demo.svc.clusterset.local", "A", "NXDOMAIN"),
        ("c1.web.demo.svc.clusterset.local", "A", "NXDOMAIN"),
        ("demo.svc.clusterset.local", "A", "NOERROR"),
        ("svc.clusterset.local", "A", "NOERROR"),
        ("clusterset.local", "A", "NOERROR"),
        ("web.demo.svc.clusterset.local", "TXT", "NOERROR"),
        ("c1.db.demo.svc.clusterset.local", "A", "NOERROR"),
    ] {
        let answer = server.dig(&[name, rtype]).await?;
        ensure!(answer.status == status, "{name} {rtype}:\n{}", answer.raw);
        ensure!(
            answer.has_flag("aa"),
            "{name} {rtype}: no aa:\n{}",
            answer.raw
        );
        ensure!(answer.answer.is_empty(), "{name} {rtype}:\n{}", answer.raw);
        let [soa] = answer.authority.as_slice() else {
            anyhow::bail!("{name} {rtype}: no SOA:\n{}", answer.raw);
        };
        // clusterset.local. 5 IN SOA ns.dns.clusterset.local. hostmaster.clusterset.local. serial 7200 1800 86400 5
        ensure!(soa[0] == "clusterset.local." && soa[1] == "5" && soa[3] == "SOA");
        ensure!(soa[4] == "ns.dns.clusterset.local." && soa.last().is_some_and(|m| m == "5"));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_outside_the_zone_are_refused() -> Result<()> {
    let server = Running::start(demo_model()?).await?;
    for name in ["kubernetes.default.svc.cluster.local", "example.org", "."] {
        let answer = server.dig(&[name, "A"]).await?;
        ensure!(answer.status == "REFUSED", "{name}:\n{}", answer.raw);
        ensure!(!answer.has_flag("aa") && answer.answer.is_empty());
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servfail_until_synced() -> Result<()> {
    let model = Model::new(ZoneConfig::new("clusterset.local")?);
    model.upsert(ServiceKey::new("demo", "db"), big_headless(1)?);
    let server = Running::start(model).await?;
    let answer = server.dig(&["db.demo.svc.clusterset.local", "A"]).await?;
    ensure!(answer.status == "SERVFAIL", "{}", answer.raw);
    server.model.set_synced(true);
    ensure!(server.short(&["db.demo.svc.clusterset.local", "A"]).await? == ["10.1.0.1"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_version_soa_and_ns_at_the_apex() -> Result<()> {
    let model = Model::new(
        ZoneConfig::new("clusterset.local")?.with_ns_addresses([common::ip("10.96.0.53")?]),
    );
    model.set_synced(true);
    let server = Running::start(model).await?;
    let answer = server.dig(&["dns-version.clusterset.local", "TXT"]).await?;
    ensure!(answer.answer_data("TXT") == ["\"1.1.0\""], "{}", answer.raw);
    ensure!(answer.answer[0][1] == "28800");
    let soa = server.short(&["clusterset.local", "SOA"]).await?;
    let fields: Vec<&str> = soa.first().context("no SOA")?.split_whitespace().collect();
    ensure!(fields[..2] == ["ns.dns.clusterset.local.", "hostmaster.clusterset.local."]);
    ensure!(fields[3..] == ["7200", "1800", "86400", "5"], "{soa:?}");
    let answer = server.dig(&["clusterset.local", "NS"]).await?;
    ensure!(
        answer.answer_data("NS") == ["ns.dns.clusterset.local."],
        "{}",
        answer.raw
    );
    ensure!(
        answer.additional_data("A") == ["10.96.0.53"],
        "glue: {}",
        answer.raw
    );
    ensure!(server.short(&["ns.dns.clusterset.local", "A"]).await? == ["10.96.0.53"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_are_case_insensitive() -> Result<()> {
    let server = Running::start(demo_model()?).await?;
    let answer = server.dig(&["WEB.Demo.Svc.ClusterSet.LOCAL", "A"]).await?;
    ensure!(answer.answer_data("A") == ["10.42.0.1"], "{}", answer.raw);
    ensure!(
        answer.answer[0][0] == "WEB.Demo.Svc.ClusterSet.LOCAL.",
        "owner echoes the question"
    );
    ensure!(
        server
            .short(&["DB-0.C1.DB.demo.svc.clusterset.local", "A"])
            .await?
            == ["10.0.1.1"]
    );
    ensure!(
        server
            .short(&["_HTTP._TCP.web.demo.svc.clusterset.local", "SRV"])
            .await?
            == ["10 100 80 web.demo.svc.clusterset.local."]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_answers_truncate_over_udp_and_complete_over_tcp() -> Result<()> {
    let model = Model::new(ZoneConfig::new("clusterset.local")?);
    model.upsert(ServiceKey::new("demo", "big"), big_headless(100)?);
    model.upsert(ServiceKey::new("demo", "mid"), big_headless(40)?);
    model.set_synced(true);
    let server = Running::start(model).await?;
    let big = "big.demo.svc.clusterset.local";
    let mid = "mid.demo.svc.clusterset.local";

    // No EDNS: 512 bytes. 40 A records (~700 bytes) do not fit; TC tells the client to retry.
    let udp = server.dig(&["+noedns", "+ignore", mid, "A"]).await?;
    ensure!(udp.has_flag("tc"), "{}", udp.raw);
    ensure!(udp.answer.len() < 40, "{}", udp.raw);
    // The truncated message is well-formed: whole records, nothing after them.
    ensure!(
        !udp.raw.contains("extra bytes") && udp.message_size()? <= 512,
        "{}",
        udp.raw
    );
    // With EDNS (dig offers 1232 bytes) they fit.
    let edns = server.dig(&["+ignore", mid, "A"]).await?;
    ensure!(
        !edns.has_flag("tc") && edns.answer.len() == 40,
        "{}",
        edns.raw
    );

    // 100 A records (~1.7 kB) exceed even a 4096-byte offer: UDP answers are capped at 1232.
    let udp = server.dig(&["+bufsize=4096", "+ignore", big, "A"]).await?;
    ensure!(udp.has_flag("tc") && udp.answer.len() < 100, "{}", udp.raw);
    ensure!(
        !udp.raw.contains("extra bytes") && udp.message_size()? <= 1232,
        "{}",
        udp.raw
    );
    // Over TCP everything comes.
    let tcp = server.dig(&["+tcp", big, "A"]).await?;
    ensure!(
        !tcp.has_flag("tc") && tcp.answer.len() == 100,
        "{}",
        tcp.raw
    );
    // And dig, left alone, retries over TCP by itself.
    ensure!(server.short(&["+noedns", big, "A"]).await?.len() == 100);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srv_additionals_are_dropped_rather_than_truncate() -> Result<()> {
    let model = Model::new(ZoneConfig::new("clusterset.local")?);
    // 7 SRV records (57 bytes each: SRV targets are never compressed) fit in 512 bytes;
    // with 7 address records as well they would not.
    model.upsert(ServiceKey::new("demo", "db"), big_headless(7)?);
    model.set_synced(true);
    let server = Running::start(model).await?;
    let name = "_pg._tcp.db.demo.svc.clusterset.local";
    let udp = server.dig(&["+noedns", "+ignore", name, "SRV"]).await?;
    ensure!(!udp.has_flag("tc"), "{}", udp.raw);
    ensure!(
        udp.answer.len() == 7 && udp.additional.is_empty(),
        "{}",
        udp.raw
    );
    let tcp = server.dig(&["+tcp", name, "SRV"]).await?;
    ensure!(
        tcp.answer.len() == 7 && tcp.additional_data("A").len() == 7,
        "{}",
        tcp.raw
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_stops_on_cancel() -> Result<()> {
    let mut server = Running::start(demo_model()?).await?;
    ensure!(
        !server
            .short(&["web.demo.svc.clusterset.local", "A"])
            .await?
            .is_empty()
    );
    server.cancel.cancel();
    tokio::time::timeout(Duration::from_secs(10), &mut server.task)
        .await
        .context("server did not stop")???;
    Ok(())
}

/// Queries from many source ports land on every one of the sockets sharing the port (the
/// kernel picks one by a hash of the addresses; with 64 ports and 4 sockets the chance that
/// one socket gets none is about 4 in 10^8), so a socket that did not answer would lose some.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_udp_socket_answers() -> Result<()> {
    let server = Running::start_with_udp_sockets(demo_model()?, 4).await?;
    let queries = (0..64).map(|_| server.short(&["+notcp", "web.demo.svc.clusterset.local", "A"]));
    for answer in futures::future::join_all(queries).await {
        ensure!(answer? == ["10.42.0.1"]);
    }
    // TCP is served beside them.
    ensure!(
        server
            .short(&["+tcp", "web.demo.svc.clusterset.local", "A"])
            .await?
            == ["10.42.0.1"]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binds_at_least_two_udp_sockets_by_default() -> Result<()> {
    let model = std::sync::Arc::new(demo_model()?);
    let server = atoll_dns::DnsServer::bind("127.0.0.1:0".parse()?, model).await?;
    ensure!(server.udp_sockets() == atoll_dns::server::default_udp_sockets());
    ensure!(server.udp_sockets() >= 2);
    Ok(())
}
