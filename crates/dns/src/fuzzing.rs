//! The entry point of the fuzz target in `fuzz/` (cargo-fuzz) and of the test that replays
//! its committed corpus (`tests/fuzz_corpus.rs`). This module exists for them only: it is not
//! an API and changes with the target.
//!
//! [`udp_query`] puts one datagram through the UDP path (bytes in, answer out) over loopback
//! sockets, against a synced model with ClusterSetIP and headless services, and checks the
//! answer: `Err(Broken)` reports a broken invariant, and the fuzz target panics on it.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use atoll_api::mcs::ServiceImportType;
use hickory_server::proto::op::{Message, MessageType};
use hickory_server::proto::rr::Name;
use hickory_server::proto::serialize::binary::BinDecodable;

use crate::model::{Endpoint, Port, Service, ServiceKey};
use crate::server::MAX_UDP_PAYLOAD;
use crate::{Model, ZoneConfig};

/// An invariant the datagram broke: a bug, whatever the datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broken(pub String);

impl std::fmt::Display for Broken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A runtime, the model, the server's socket and a client socket, made once per thread.
struct Bench {
    runtime: tokio::runtime::Runtime,
    model: Arc<Model>,
    server: Arc<tokio::net::UdpSocket>,
    client: std::net::UdpSocket,
    client_addr: SocketAddr,
}

thread_local! {
    static BENCH: RefCell<Option<Bench>> = const { RefCell::new(None) };
}

fn port(name: &str, protocol: &str, number: u16) -> Port {
    Port {
        name: Some(name.to_owned()),
        protocol: protocol.to_owned(),
        port: number,
    }
}

fn endpoint(address: IpAddr, hostname: Option<&str>, ready: bool) -> Endpoint {
    Endpoint {
        addresses: vec![address],
        hostname: hostname.map(str::to_owned),
        ready,
        ports: vec![port("pg", "TCP", 5432), port("metrics", "UDP", 9187)],
    }
}

/// The zone the datagrams are asked of: `demo/web` (ClusterSetIP, IPv4 and IPv6, two named
/// ports), `demo/db` (headless, two clusters, named, unnamed and not-ready endpoints) and
/// `demo/big` (headless, 120 endpoints: its answers must be truncated over UDP).
fn model() -> Result<Model, Broken> {
    let broken = |e: crate::Error| Broken(format!("the zone: {e}"));
    let model = Model::new(
        ZoneConfig::new("clusterset.local")
            .map_err(broken)?
            .with_ns_addresses([IpAddr::V4(Ipv4Addr::new(10, 96, 0, 53))]),
    );
    model.upsert(
        ServiceKey::new("demo", "web"),
        Service {
            kind: ServiceImportType::ClusterSetIP,
            ips: vec![
                IpAddr::V4(Ipv4Addr::new(10, 42, 0, 1)),
                IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0x42, 1)),
            ],
            ports: vec![port("http", "TCP", 80), port("dns", "UDP", 53)],
            clusters: BTreeMap::new(),
        },
    );
    model.upsert(
        ServiceKey::new("demo", "db"),
        Service {
            kind: ServiceImportType::Headless,
            clusters: BTreeMap::from([
                (
                    "east".to_owned(),
                    vec![
                        endpoint(IpAddr::V4(Ipv4Addr::new(10, 0, 1, 1)), Some("db-0"), true),
                        endpoint(IpAddr::V4(Ipv4Addr::new(10, 0, 1, 9)), Some("db-9"), false),
                    ],
                ),
                (
                    "west".to_owned(),
                    vec![
                        endpoint(IpAddr::V4(Ipv4Addr::new(10, 0, 2, 1)), Some("db-0"), true),
                        endpoint(
                            IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 2, 2)),
                            None,
                            true,
                        ),
                    ],
                ),
            ]),
            ..Service::default()
        },
    );
    let big = (0..120u8)
        .map(|i| {
            let name = format!("pod-{i}");
            endpoint(
                IpAddr::V4(Ipv4Addr::new(10, 1, 0, i)),
                Some(name.as_str()),
                true,
            )
        })
        .collect();
    model.upsert(
        ServiceKey::new("demo", "big"),
        Service {
            kind: ServiceImportType::Headless,
            clusters: BTreeMap::from([("c1".to_owned(), big)]),
            ..Service::default()
        },
    );
    model.set_synced(true);
    Ok(model)
}

fn bench() -> Result<Bench, Broken> {
    let io = |what: &str, e: std::io::Error| Broken(format!("{what}: {e}"));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| io("the runtime", e))?;
    let loopback = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let server = runtime
        .block_on(tokio::net::UdpSocket::bind(loopback))
        .map_err(|e| io("the server socket", e))?;
    let client = std::net::UdpSocket::bind(loopback).map_err(|e| io("the client socket", e))?;
    client
        .set_nonblocking(true)
        .map_err(|e| io("the client socket", e))?;
    let client_addr = client
        .local_addr()
        .map_err(|e| io("the client socket", e))?;
    Ok(Bench {
        runtime,
        model: Arc::new(model()?),
        server: Arc::new(server),
        client,
        client_addr,
    })
}

/// Sends `datagram` to the UDP path and returns what it answered (`None`: no answer), after
/// checking the answer: at most 1232 bytes (512 for a query without EDNS), a well-formed
/// response with the query's ID, only names inside the zone; and an answer to every datagram
/// that claims to be a query, none to a response or to a runt.
pub fn udp_query(datagram: &[u8]) -> Result<Option<Vec<u8>>, Broken> {
    BENCH.with_borrow_mut(|slot| {
        if slot.is_none() {
            *slot = Some(bench()?);
        }
        let Some(bench) = slot.as_ref() else {
            return Err(Broken("no bench".into()));
        };
        bench
            .runtime
            .block_on(crate::server::fuzzing::answer_datagram(
                bench.model.clone(),
                bench.server.clone(),
                bench.client_addr,
                datagram,
            ));
        // Loopback delivers before send_to returns: whatever was answered is queued.
        let mut answers = Vec::new();
        let mut buffer = vec![0_u8; 65536];
        loop {
            match bench.client.recv_from(&mut buffer) {
                Ok((len, _)) => answers.push(buffer.get(..len).unwrap_or_default().to_vec()),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(Broken(format!("receiving: {e}"))),
            }
        }
        check(datagram, answers)
    })
}

fn check(datagram: &[u8], mut answers: Vec<Vec<u8>>) -> Result<Option<Vec<u8>>, Broken> {
    if answers.len() > 1 {
        return Err(Broken(format!("{} answers to one datagram", answers.len())));
    }
    let answer = answers.pop();
    let claims_query = datagram.len() >= 12 && datagram.get(2).is_some_and(|b| b & 0x80 == 0);
    let Some(answer) = answer else {
        if claims_query {
            return Err(Broken("a query got no answer".into()));
        }
        return Ok(None);
    };
    if !claims_query {
        return Err(Broken("a runt or a response was answered".into()));
    }
    if answer.len() > usize::from(MAX_UDP_PAYLOAD) {
        return Err(Broken(format!("a {}-byte UDP answer", answer.len())));
    }
    let query = Message::from_bytes(datagram).ok();
    if let Some(query) = &query
        && query.edns.is_none()
        && answer.len() > 512
    {
        return Err(Broken(format!(
            "a {}-byte answer to a query without EDNS",
            answer.len()
        )));
    }
    let parsed = Message::from_bytes(&answer)
        .map_err(|e| Broken(format!("the answer does not parse: {e}")))?;
    if parsed.metadata.message_type != MessageType::Response {
        return Err(Broken("the answer is not a response".into()));
    }
    if Some(parsed.metadata.id.to_be_bytes().as_slice()) != datagram.get(..2) {
        return Err(Broken("the answer's ID is not the query's".into()));
    }
    let zone = Name::from_ascii("clusterset.local.")
        .map_err(|e| Broken(format!("the zone's name: {e}")))?;
    let records = parsed
        .answers
        .iter()
        .chain(&parsed.authorities)
        .chain(&parsed.additionals);
    for record in records {
        if !zone.zone_of(&record.name) {
            return Err(Broken(format!(
                "a record outside the zone: {}",
                record.name
            )));
        }
    }
    Ok(Some(answer))
}
