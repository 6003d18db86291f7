//! Attacks: see the suite's module list in main.rs.
//!
//! An anonymous client that uses `atoll dns` as an amplifier: ANY queries that were answered
//! with every record at a name, and floods of queries (with a spoofed source, the victim's)
//! that were all answered.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use atoll_api::mcs::ServiceImportType;
use atoll_dns::model::{Port, Service, ServiceKey};
use atoll_dns::{CancellationToken, DnsServer, Model, RateLimit, ZoneConfig};
use tokio::net::UdpSocket;

const NAME: &str = "web.demo.svc.clusterset.local";
const TYPE_A: u16 = 1;
const TYPE_HINFO: u16 = 13;
const TYPE_ANY: u16 = 255;

/// A synced zone with one ClusterSetIP service of many ports and addresses: ANY at its name
/// used to answer A, AAAA and one SRV per port.
fn model() -> Result<Arc<Model>> {
    let model = Model::new(ZoneConfig::new("clusterset.local")?);
    let ports = (0..20)
        .map(|i| Port {
            name: Some(format!("port-{i}")),
            protocol: "TCP".to_owned(),
            port: 8000 + i,
        })
        .collect();
    let ips = vec!["10.42.0.1".parse()?, "fd00::42:1".parse()?];
    model.upsert(
        ServiceKey::new("demo", "web"),
        Service {
            kind: ServiceImportType::ClusterSetIP,
            ips,
            ports,
            clusters: BTreeMap::new(),
        },
    );
    model.set_synced(true);
    Ok(Arc::new(model))
}

async fn serve(rate_limit: RateLimit) -> Result<(SocketAddr, CancellationToken)> {
    let server = DnsServer::bind("127.0.0.1:0".parse()?, model()?)
        .await?
        .with_rate_limit(rate_limit);
    let addr = server.local_addr();
    let cancel = CancellationToken::new();
    tokio::spawn(server.run(cancel.clone()));
    Ok((addr, cancel))
}

/// A query for `name` and `qtype` with EDNS advertising a 4096-byte buffer (as amplification
/// attacks do).
fn query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&[0x00, 0x00]); // standard query, no recursion
    out.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 1]); // 1 question, 1 additional (OPT)
    for label in name.split('.') {
        out.push(u8::try_from(label.len()).unwrap_or(63));
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    out.extend_from_slice(&qtype.to_be_bytes());
    out.extend_from_slice(&1u16.to_be_bytes()); // IN
    // OPT: root name, type 41, class = UDP payload size, TTL 0, no options.
    out.extend_from_slice(&[0, 0, 41, 0x10, 0x00, 0, 0, 0, 0, 0, 0]);
    out
}

/// What a response says in its header: ID, TC, RCODE and section counts.
#[derive(Debug)]
struct Header {
    id: u16,
    truncated: bool,
    rcode: u8,
    answers: u16,
}

fn header(response: &[u8]) -> Result<Header> {
    ensure!(response.len() >= 12, "short response");
    let word = |i: usize| u16::from_be_bytes([response[i], response[i + 1]]);
    Ok(Header {
        id: word(0),
        truncated: response[2] & 0x02 != 0,
        rcode: response[3] & 0x0f,
        answers: word(6),
    })
}

/// The end of the (possibly compressed) domain name at `at`.
fn skip_name(message: &[u8], mut at: usize) -> Result<usize> {
    loop {
        let len = *message.get(at).context("name runs past the message")?;
        match len {
            0 => return Ok(at + 1),
            l if l & 0xc0 == 0xc0 => return Ok(at + 2),
            l => at += 1 + usize::from(l),
        }
    }
}

/// The type of the first answer record (after the one question).
fn first_answer_type(response: &[u8]) -> Result<u16> {
    let question_end = skip_name(response, 12)? + 4;
    let at = skip_name(response, question_end)?;
    let bytes = response.get(at..at + 2).context("no answer record")?;
    Ok(u16::from_be_bytes([bytes[0], bytes[1]]))
}

async fn ask(socket: &UdpSocket, server: SocketAddr, query: &[u8]) -> Result<Vec<u8>> {
    socket.send_to(query, server).await?;
    let mut buf = vec![0u8; 65535];
    let (n, _) = tokio::time::timeout(Duration::from_secs(5), socket.recv_from(&mut buf))
        .await
        .context("no response")??;
    buf.truncate(n);
    Ok(buf)
}

/// ANY was answered with every record at the name: about 21 times the query's size over UDP.
/// Now it gets one HINFO (RFC 8482 §4.2), so the response is barely larger than the query.
#[tokio::test]
async fn any_is_answered_minimally_not_with_every_record() -> Result<()> {
    let (server, cancel) = serve(RateLimit::OFF).await?;
    let _stop = cancel.drop_guard();
    let socket = UdpSocket::bind("127.0.0.1:0").await?;

    let any = query(1, NAME, TYPE_ANY);
    let response = ask(&socket, server, &any).await?;
    let head = header(&response)?;
    ensure!(
        head.id == 1 && head.rcode == 0 && !head.truncated,
        "{head:?}"
    );
    ensure!(head.answers == 1, "ANY got {} answers", head.answers);
    ensure!(
        first_answer_type(&response)? == TYPE_HINFO,
        "ANY was not answered with an HINFO: {response:?}"
    );
    ensure!(
        response.len() <= any.len() * 2,
        "a {}-byte ANY query got a {}-byte response",
        any.len(),
        response.len()
    );
    // Ordinary questions are answered as before.
    let a = query(2, NAME, TYPE_A);
    let head = header(&ask(&socket, server, &a).await?)?;
    ensure!(head.answers == 1 && head.rcode == 0, "{head:?}");
    Ok(())
}

/// A flood from one source (a victim's spoofed address) was answered in full. Now each client
/// prefix gets at most its rate over UDP; the rest are dropped or, every `slip`-th, answered
/// with an empty TC response no larger than the query. Another client is still answered.
#[tokio::test]
async fn a_flood_from_one_source_is_rate_limited_while_others_are_answered() -> Result<()> {
    const FLOOD: u16 = 300;
    let (server, cancel) = serve(RateLimit::per_second(10)).await?;
    let _stop = cancel.drop_guard();
    let flooder = UdpSocket::bind("127.0.0.1:0").await?;
    for id in 0..FLOOD {
        flooder.send_to(&query(id, NAME, TYPE_ANY), server).await?;
    }
    // Another client prefix (127.0.1.0/24 is loopback too) is answered while the flood is limited.
    let other_ip: IpAddr = "127.0.1.1".parse()?;
    let other = UdpSocket::bind(SocketAddr::new(other_ip, 0)).await?;
    let head = header(&ask(&other, server, &query(7, NAME, TYPE_A)).await?)?;
    ensure!(
        head.id == 7 && head.answers == 1 && !head.truncated,
        "{head:?}"
    );

    let query_len = query(0, NAME, TYPE_ANY).len();
    let (mut full, mut truncated) = (0, 0);
    let mut buf = vec![0u8; 65535];
    // Every response the flood got, until the server has been quiet for a second.
    while let Ok(received) =
        tokio::time::timeout(Duration::from_secs(1), flooder.recv_from(&mut buf)).await
    {
        let (n, _) = received?;
        let response = buf.get(..n).context("response length")?;
        let head = header(response)?;
        if head.truncated {
            ensure!(head.answers == 0, "a TC response carries answers: {head:?}");
            ensure!(
                n <= query_len,
                "a {n}-byte TC response to a {query_len}-byte query"
            );
            truncated += 1;
        } else {
            full += 1;
        }
    }
    // The bucket holds one second's worth (10); the flood takes well under a second more.
    ensure!(
        full <= 20,
        "{full} of {FLOOD} flooded queries were answered in full"
    );
    ensure!(full >= 1, "nothing was answered");
    ensure!(
        truncated >= 1,
        "no TC response tells a real client to retry over TCP"
    );
    ensure!(
        full + truncated < usize::from(FLOOD) / 2 + 20,
        "{full} answers and {truncated} TC responses to {FLOOD} queries"
    );

    Ok(())
}
