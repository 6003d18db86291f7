//! Every DNS rule of the crate, without sockets.

use std::net::IpAddr;

use anyhow::{Context, Result, bail, ensure};
use atoll_api::mcs::ServiceImportType::{ClusterSetIP, Headless};

use super::*;

fn name(s: &str) -> Result<Name> {
    Ok(Name::from_ascii(s)?)
}

fn ip(s: &str) -> Result<IpAddr> {
    Ok(s.parse()?)
}

fn port(name: Option<&str>, protocol: &str, port: u16) -> Port {
    Port {
        name: name.map(str::to_owned),
        protocol: protocol.to_owned(),
        port,
    }
}

fn endpoint(
    addresses: &[&str],
    hostname: Option<&str>,
    ready: bool,
    ports: &[Port],
) -> Result<Endpoint> {
    Ok(Endpoint {
        addresses: addresses.iter().map(|a| ip(a)).collect::<Result<_>>()?,
        hostname: hostname.map(str::to_owned),
        ready,
        ports: ports.to_vec(),
    })
}

/// demo/web: ClusterSetIP, dual-stack, ports http/TCP 80, dns/UDP 53 and an unnamed 8080.
fn web() -> Result<Service> {
    Ok(Service {
        kind: ClusterSetIP,
        ips: vec![ip("10.42.0.1")?, ip("fd00::42:1")?],
        ports: vec![
            port(Some("http"), "TCP", 80),
            port(Some("dns"), "UDP", 53),
            port(None, "TCP", 8080),
        ],
        clusters: BTreeMap::new(),
    })
}

/// demo/db: headless, in c1 (db-0 ready, db-1 not) and c2 (one endpoint without hostname,
/// one IPv6 `db-0`). Every slice has port pg/TCP 5432.
fn db() -> Result<Service> {
    let pg = [port(Some("pg"), "TCP", 5432)];
    Ok(Service {
        kind: Headless,
        ips: Vec::new(),
        ports: vec![port(Some("pg"), "TCP", 5432)],
        clusters: BTreeMap::from([
            (
                "c1".to_owned(),
                vec![
                    endpoint(&["10.0.1.1"], Some("db-0"), true, &pg)?,
                    endpoint(&["10.0.1.2"], Some("db-1"), false, &pg)?,
                ],
            ),
            (
                "c2".to_owned(),
                vec![
                    endpoint(&["10.0.2.1"], None, true, &pg)?,
                    endpoint(&["fd00::2:1"], Some("db-0"), true, &pg)?,
                ],
            ),
        ]),
    })
}

fn zone() -> Result<ZoneConfig> {
    Ok(ZoneConfig::new(DEFAULT_ZONE)?)
}

/// A synced model with demo/web, demo/db, demo/idle (headless, no ready endpoint) and
/// lonely/idle (the only service of its namespace, headless, no endpoint).
fn model_with(config: ZoneConfig) -> Result<Model> {
    let model = Model::new(config);
    model.upsert(ServiceKey::new("demo", "web"), web()?);
    model.upsert(ServiceKey::new("demo", "db"), db()?);
    let idle = Service {
        kind: Headless,
        ports: vec![port(Some("pg"), "TCP", 5432)],
        clusters: BTreeMap::from([(
            "c1".to_owned(),
            vec![endpoint(
                &["10.0.9.9"],
                Some("idle-0"),
                false,
                &[port(Some("pg"), "TCP", 5432)],
            )?],
        )]),
        ..Service::default()
    };
    model.upsert(ServiceKey::new("demo", "idle"), idle.clone());
    model.upsert(ServiceKey::new("lonely", "idle"), idle);
    model.set_synced(true);
    Ok(model)
}

fn model() -> Result<Model> {
    model_with(zone()?)
}

fn ask(model: &Model, qname: &str, rtype: RecordType) -> Result<Answer> {
    Ok(model.answer(&name(qname)?, rtype))
}

fn records(answer: &Answer) -> Result<(&[Record], &[Record])> {
    match answer {
        Answer::Records {
            answers,
            additionals,
        } => Ok((answers, additionals)),
        other => bail!("expected records, got {other:?}"),
    }
}

fn addresses(records: &[Record]) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = records
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect();
    out.sort();
    out
}

fn answered_addresses(model: &Model, qname: &str, rtype: RecordType) -> Result<Vec<IpAddr>> {
    let answer = ask(model, qname, rtype)?;
    let (answers, _) = records(&answer).with_context(|| format!("{qname} {rtype}"))?;
    ensure!(
        answers.iter().all(|r| r.record_type() == rtype),
        "{qname} {rtype}: other types in {answers:?}"
    );
    Ok(addresses(answers))
}

fn ips(list: &[&str]) -> Result<Vec<IpAddr>> {
    let mut out = list.iter().map(|a| ip(a)).collect::<Result<Vec<_>>>()?;
    out.sort();
    Ok(out)
}

/// (port, target) of every SRV answer, sorted.
fn srv(answer: &Answer) -> Result<Vec<(u16, String)>> {
    let (answers, _) = records(answer)?;
    let mut out = Vec::new();
    for record in answers {
        let RData::SRV(srv) = &record.data else {
            bail!("not SRV: {record:?}");
        };
        ensure!(srv.priority == SRV_PRIORITY && srv.weight == SRV_WEIGHT);
        out.push((srv.port, srv.target.to_string()));
    }
    out.sort();
    Ok(out)
}

fn soa_of(answer: &Answer) -> Result<&Record> {
    match answer {
        Answer::NoData { soa } | Answer::NxDomain { soa } => Ok(soa),
        other => bail!("expected a negative answer, got {other:?}"),
    }
}

fn assert_nodata(model: &Model, qname: &str, rtype: RecordType) -> Result<()> {
    let answer = ask(model, qname, rtype)?;
    ensure!(
        matches!(answer, Answer::NoData { .. }),
        "{qname} {rtype}: expected NODATA, got {answer:?}"
    );
    Ok(())
}

fn assert_nxdomain(model: &Model, qname: &str, rtype: RecordType) -> Result<()> {
    let answer = ask(model, qname, rtype)?;
    ensure!(
        matches!(answer, Answer::NxDomain { .. }),
        "{qname} {rtype}: expected NXDOMAIN, got {answer:?}"
    );
    Ok(())
}

#[test]
fn clusterset_ip_service_answers_a_with_its_ipv4_clusterset_ip() -> Result<()> {
    let model = model()?;
    let answer = ask(&model, "web.demo.svc.clusterset.local.", RecordType::A)?;
    let (answers, _) = records(&answer)?;
    ensure!(answers.len() == 1);
    ensure!(answers[0].ttl == DEFAULT_TTL);
    ensure!(answers[0].name == name("web.demo.svc.clusterset.local.")?);
    ensure!(addresses(answers) == ips(&["10.42.0.1"])?);
    ensure!(answer.response_code() == ResponseCode::NoError && answer.is_authoritative());
    Ok(())
}

#[test]
fn clusterset_ip_service_answers_aaaa_with_its_ipv6_clusterset_ip() -> Result<()> {
    let model = model()?;
    ensure!(
        answered_addresses(&model, "web.demo.svc.clusterset.local.", RecordType::AAAA)?
            == ips(&["fd00::42:1"])?
    );
    Ok(())
}

#[test]
fn single_stack_clusterset_ip_service_has_no_data_for_the_other_family() -> Result<()> {
    let model = model()?;
    model.upsert(
        ServiceKey::new("demo", "v4"),
        Service {
            ips: vec![ip("10.42.0.2")?],
            ..Service::default()
        },
    );
    ensure!(
        answered_addresses(&model, "v4.demo.svc.clusterset.local.", RecordType::A)?
            == ips(&["10.42.0.2"])?
    );
    assert_nodata(&model, "v4.demo.svc.clusterset.local.", RecordType::AAAA)?;
    // Not allocated yet: the name exists, without addresses.
    model.upsert(ServiceKey::new("demo", "pending"), Service::default());
    assert_nodata(&model, "pending.demo.svc.clusterset.local.", RecordType::A)
}

#[test]
fn headless_service_answers_every_ready_endpoint_of_every_cluster() -> Result<()> {
    let model = model()?;
    ensure!(
        answered_addresses(&model, "db.demo.svc.clusterset.local.", RecordType::A)?
            == ips(&["10.0.1.1", "10.0.2.1"])?,
        "db-1 is not ready and must not be answered"
    );
    ensure!(
        answered_addresses(&model, "db.demo.svc.clusterset.local.", RecordType::AAAA)?
            == ips(&["fd00::2:1"])?
    );
    Ok(())
}

#[test]
fn headless_addresses_shared_by_clusters_are_answered_once() -> Result<()> {
    let model = model()?;
    let mut service = db()?;
    service.clusters.insert(
        "c3".into(),
        vec![endpoint(&["10.0.1.1"], Some("db-0"), true, &[])?],
    );
    model.upsert(ServiceKey::new("demo", "db"), service);
    ensure!(
        answered_addresses(&model, "db.demo.svc.clusterset.local.", RecordType::A)?
            == ips(&["10.0.1.1", "10.0.2.1"])?
    );
    Ok(())
}

#[test]
fn headless_service_without_ready_endpoints_does_not_exist() -> Result<()> {
    let model = model()?;
    // KEP-1645 §2.4.1: "If there are no ready endpoints for the headless Service, the answer
    // should be NXDOMAIN." Nothing below it exists either.
    for qname in [
        "idle.demo.svc.clusterset.local.",
        "_pg._tcp.idle.demo.svc.clusterset.local.",
        "idle-0.c1.idle.demo.svc.clusterset.local.",
        "c1.idle.demo.svc.clusterset.local.",
    ] {
        assert_nxdomain(&model, qname, RecordType::A)?;
        assert_nxdomain(&model, qname, RecordType::SRV)?;
    }
    Ok(())
}

#[test]
fn srv_for_a_named_port_targets_the_service_name() -> Result<()> {
    let model = model()?;
    let answer = ask(
        &model,
        "_http._tcp.web.demo.svc.clusterset.local.",
        RecordType::SRV,
    )?;
    ensure!(srv(&answer)? == [(80, "web.demo.svc.clusterset.local.".to_owned())]);
    // The additional section carries the target's addresses.
    let (_, additionals) = records(&answer)?;
    ensure!(addresses(additionals) == ips(&["10.42.0.1", "fd00::42:1"])?);
    ensure!(
        additionals
            .iter()
            .all(|r| r.name == name("web.demo.svc.clusterset.local.").unwrap_or_default())
    );

    let answer = ask(
        &model,
        "_dns._udp.web.demo.svc.clusterset.local.",
        RecordType::SRV,
    )?;
    ensure!(srv(&answer)? == [(53, "web.demo.svc.clusterset.local.".to_owned())]);
    Ok(())
}

#[test]
fn srv_names_need_the_right_protocol_and_a_named_port() -> Result<()> {
    let model = model()?;
    assert_nxdomain(
        &model,
        "_http._udp.web.demo.svc.clusterset.local.",
        RecordType::SRV,
    )?;
    assert_nxdomain(
        &model,
        "_https._tcp.web.demo.svc.clusterset.local.",
        RecordType::SRV,
    )?;
    // Unnamed ports have no SRV name (KEP-1645 §2.3.2).
    assert_nxdomain(
        &model,
        "_._tcp.web.demo.svc.clusterset.local.",
        RecordType::SRV,
    )?;
    // Both labels need their underscore.
    assert_nxdomain(
        &model,
        "http._tcp.web.demo.svc.clusterset.local.",
        RecordType::SRV,
    )?;
    // An SRV name exists for other types too, without data.
    assert_nodata(
        &model,
        "_http._tcp.web.demo.svc.clusterset.local.",
        RecordType::A,
    )
}

#[test]
fn srv_at_the_service_name_lists_every_port() -> Result<()> {
    let model = model()?;
    let answer = ask(&model, "web.demo.svc.clusterset.local.", RecordType::SRV)?;
    let target = "web.demo.svc.clusterset.local.".to_owned();
    ensure!(srv(&answer)? == [(53, target.clone()), (80, target.clone()), (8080, target)]);
    Ok(())
}

#[test]
fn headless_srv_has_one_record_per_ready_endpoint() -> Result<()> {
    let model = model()?;
    let expected = vec![
        (5432, "10-0-2-1.c2.db.demo.svc.clusterset.local.".to_owned()),
        (5432, "db-0.c1.db.demo.svc.clusterset.local.".to_owned()),
        (5432, "db-0.c2.db.demo.svc.clusterset.local.".to_owned()),
    ];
    let answer = ask(
        &model,
        "_pg._tcp.db.demo.svc.clusterset.local.",
        RecordType::SRV,
    )?;
    ensure!(srv(&answer)? == expected, "{:?}", srv(&answer));
    let (_, additionals) = records(&answer)?;
    ensure!(addresses(additionals) == ips(&["10.0.1.1", "10.0.2.1", "fd00::2:1"])?);
    // At the service name too, one per endpoint and port.
    let answer = ask(&model, "db.demo.svc.clusterset.local.", RecordType::SRV)?;
    ensure!(srv(&answer)? == expected);
    Ok(())
}

#[test]
fn headless_srv_ports_come_from_the_endpoint_slices() -> Result<()> {
    let model = model()?;
    let mut service = db()?;
    service.clusters.insert(
        "c3".into(),
        vec![endpoint(
            &["10.0.3.1"],
            Some("db-0"),
            true,
            &[port(Some("pg"), "TCP", 15432)],
        )?],
    );
    model.upsert(ServiceKey::new("demo", "db"), service);
    let answer = ask(
        &model,
        "_pg._tcp.db.demo.svc.clusterset.local.",
        RecordType::SRV,
    )?;
    ensure!(srv(&answer)?.contains(&(15432, "db-0.c3.db.demo.svc.clusterset.local.".to_owned())));
    Ok(())
}

#[test]
fn headless_endpoints_have_hostname_clusterid_names() -> Result<()> {
    let model = model()?;
    let db0 = "db-0.c1.db.demo.svc.clusterset.local.";
    ensure!(answered_addresses(&model, db0, RecordType::A)? == ips(&["10.0.1.1"])?);
    assert_nodata(&model, db0, RecordType::AAAA)?;
    // The same hostname in another cluster is another name.
    let db0_c2 = "db-0.c2.db.demo.svc.clusterset.local.";
    ensure!(answered_addresses(&model, db0_c2, RecordType::AAAA)? == ips(&["fd00::2:1"])?);
    assert_nodata(&model, db0_c2, RecordType::A)?;
    // Without a hostname, the address is the name, so headless SRV targets resolve.
    let dashed = "10-0-2-1.c2.db.demo.svc.clusterset.local.";
    ensure!(answered_addresses(&model, dashed, RecordType::A)? == ips(&["10.0.2.1"])?);
    // Not ready, unknown cluster, unknown host: no such name.
    assert_nxdomain(
        &model,
        "db-1.c1.db.demo.svc.clusterset.local.",
        RecordType::A,
    )?;
    assert_nxdomain(
        &model,
        "db-0.c3.db.demo.svc.clusterset.local.",
        RecordType::A,
    )?;
    assert_nxdomain(
        &model,
        "db-9.c1.db.demo.svc.clusterset.local.",
        RecordType::A,
    )?;
    // The cluster label alone is an empty non-terminal.
    assert_nodata(&model, "c1.db.demo.svc.clusterset.local.", RecordType::A)?;
    // ClusterSetIP services have no per-cluster names (KEP-1645 §2.3.4).
    assert_nxdomain(&model, "c1.web.demo.svc.clusterset.local.", RecordType::A)?;
    assert_nxdomain(
        &model,
        "db-0.c1.web.demo.svc.clusterset.local.",
        RecordType::A,
    )
}

#[test]
fn endpoint_without_hostname_is_named_by_its_dashed_address() -> Result<()> {
    ensure!(dashed(&ip("10.1.2.3")?) == "10-1-2-3");
    ensure!(dashed(&ip("fd00::2:1")?) == "fd00--2-1");
    let model = model()?;
    model.upsert(
        ServiceKey::new("demo", "v6"),
        Service {
            kind: Headless,
            clusters: BTreeMap::from([(
                "c1".into(),
                vec![endpoint(&["fd00::7"], None, true, &[])?],
            )]),
            ..Service::default()
        },
    );
    ensure!(
        answered_addresses(
            &model,
            "fd00--7.c1.v6.demo.svc.clusterset.local.",
            RecordType::AAAA
        )? == ips(&["fd00::7"])?
    );
    Ok(())
}

#[test]
fn dns_version_is_a_txt_record_at_the_apex() -> Result<()> {
    let model = model()?;
    let answer = ask(&model, "dns-version.clusterset.local.", RecordType::TXT)?;
    let (answers, _) = records(&answer)?;
    let [record] = answers else {
        bail!("{answers:?}")
    };
    let RData::TXT(txt) = &record.data else {
        bail!("{record:?}")
    };
    ensure!(
        txt.txt_data
            .iter()
            .map(|d| d.as_ref())
            .eq([DNS_SCHEMA_VERSION.as_bytes()])
    );
    ensure!(DNS_SCHEMA_VERSION == "1.1.0" && record.ttl == DNS_VERSION_TTL);
    assert_nodata(&model, "dns-version.clusterset.local.", RecordType::A)
}

#[test]
fn the_apex_has_soa_and_ns() -> Result<()> {
    let model = model()?;
    let answer = ask(&model, "clusterset.local.", RecordType::SOA)?;
    let (answers, _) = records(&answer)?;
    let [record] = answers else {
        bail!("{answers:?}")
    };
    let RData::SOA(soa) = &record.data else {
        bail!("{record:?}")
    };
    ensure!(soa.mname == name("ns.dns.clusterset.local.")?);
    ensure!(soa.rname == name("hostmaster.clusterset.local.")?);
    ensure!(soa.minimum == DEFAULT_TTL && record.ttl == DEFAULT_TTL);

    let answer = ask(&model, "clusterset.local.", RecordType::NS)?;
    let (answers, additionals) = records(&answer)?;
    let [record] = answers else {
        bail!("{answers:?}")
    };
    let RData::NS(ns) = &record.data else {
        bail!("{record:?}")
    };
    ensure!(ns.0 == name("ns.dns.clusterset.local.")?);
    ensure!(additionals.is_empty(), "no address configured, no glue");
    // Without addresses, the NS name owns nothing.
    assert_nxdomain(&model, "ns.dns.clusterset.local.", RecordType::A)?;
    assert_nxdomain(&model, "dns.clusterset.local.", RecordType::A)
}

#[test]
fn a_name_server_address_gives_glue_and_an_address_record() -> Result<()> {
    let model = model_with(zone()?.with_ns_addresses([ip("10.96.0.53")?]))?;
    let answer = ask(&model, "clusterset.local.", RecordType::NS)?;
    let (_, additionals) = records(&answer)?;
    ensure!(addresses(additionals) == ips(&["10.96.0.53"])?);
    ensure!(
        answered_addresses(&model, "ns.dns.clusterset.local.", RecordType::A)?
            == ips(&["10.96.0.53"])?
    );
    assert_nodata(&model, "ns.dns.clusterset.local.", RecordType::AAAA)?;
    assert_nodata(&model, "dns.clusterset.local.", RecordType::A)?;
    // A name server outside the zone is only named.
    let model = model_with(
        zone()?
            .with_ns_name("dns.example.org")?
            .with_ns_addresses([ip("10.96.0.53")?]),
    )?;
    let answer = ask(&model, "clusterset.local.", RecordType::NS)?;
    let (_, additionals) = records(&answer)?;
    ensure!(additionals.is_empty());
    assert_nxdomain(&model, "dns.clusterset.local.", RecordType::A)
}

#[test]
fn existing_names_without_the_type_are_nodata_and_others_nxdomain() -> Result<()> {
    let model = model()?;
    for qname in [
        "clusterset.local.",                         // the apex
        "svc.clusterset.local.",                     // always there
        "demo.svc.clusterset.local.",                // a namespace with services
        "lonely.svc.clusterset.local.",              // even if none has records
        "_tcp.web.demo.svc.clusterset.local.",       // parent of _http._tcp
        "_udp.web.demo.svc.clusterset.local.",       // parent of _dns._udp
        "c2.db.demo.svc.clusterset.local.",          // parent of db-0.c2
        "_http._tcp.web.demo.svc.clusterset.local.", // SRV only
    ] {
        assert_nodata(&model, qname, RecordType::A)?;
    }
    assert_nodata(&model, "web.demo.svc.clusterset.local.", RecordType::TXT)?;
    assert_nodata(&model, "web.demo.svc.clusterset.local.", RecordType::MX)?;
    for qname in [
        "nope.clusterset.local.",
        "pod.clusterset.local.",
        "nope.svc.clusterset.local.",
        "nope.demo.svc.clusterset.local.",
        "web.nope.svc.clusterset.local.",
        "web.demo.nope.clusterset.local.",
        "_sctp.web.demo.svc.clusterset.local.",
        "a.b.c.web.demo.svc.clusterset.local.",
        "x.db-0.c1.db.demo.svc.clusterset.local.",
    ] {
        assert_nxdomain(&model, qname, RecordType::A)?;
    }
    // Negative answers carry the SOA for RFC 2308 negative caching: 5 s.
    for answer in [
        ask(&model, "demo.svc.clusterset.local.", RecordType::A)?,
        ask(&model, "nope.svc.clusterset.local.", RecordType::A)?,
    ] {
        let soa = soa_of(&answer)?;
        ensure!(soa.name == name("clusterset.local.")?);
        let RData::SOA(data) = &soa.data else {
            bail!("{soa:?}")
        };
        ensure!(soa.ttl == DEFAULT_TTL && data.minimum == DEFAULT_TTL);
        ensure!(answer.is_authoritative());
    }
    ensure!(
        ask(&model, "nope.svc.clusterset.local.", RecordType::A)?.response_code()
            == ResponseCode::NXDomain
    );
    ensure!(
        ask(&model, "demo.svc.clusterset.local.", RecordType::A)?.response_code()
            == ResponseCode::NoError
    );
    Ok(())
}

#[test]
fn a_namespace_exists_while_it_has_a_service() -> Result<()> {
    let model = model()?;
    model.upsert(ServiceKey::new("fresh", "web"), web()?);
    assert_nodata(&model, "fresh.svc.clusterset.local.", RecordType::A)?;
    model.remove(&ServiceKey::new("fresh", "web"));
    assert_nxdomain(&model, "fresh.svc.clusterset.local.", RecordType::A)?;
    // A namespace whose name is a prefix of another's is its own namespace.
    assert_nxdomain(&model, "dem.svc.clusterset.local.", RecordType::A)
}

#[test]
fn names_outside_the_zone_are_refused() -> Result<()> {
    let model = model()?;
    for qname in [
        "web.demo.svc.cluster.local.",
        "local.",
        ".",
        "clusterset.local.example.org.",
        "example.org.",
    ] {
        let answer = ask(&model, qname, RecordType::A)?;
        ensure!(answer == Answer::Refused, "{qname}: {answer:?}");
        ensure!(answer.response_code() == ResponseCode::Refused && !answer.is_authoritative());
    }
    Ok(())
}

#[test]
fn every_name_in_the_zone_is_servfail_until_synced() -> Result<()> {
    let model = Model::new(zone()?);
    model.upsert(ServiceKey::new("demo", "web"), web()?);
    for (qname, rtype) in [
        ("web.demo.svc.clusterset.local.", RecordType::A),
        ("nope.demo.svc.clusterset.local.", RecordType::A),
        ("clusterset.local.", RecordType::SOA),
        ("dns-version.clusterset.local.", RecordType::TXT),
    ] {
        ensure!(ask(&model, qname, rtype)? == Answer::ServFail, "{qname}");
    }
    // Outside the zone stays REFUSED.
    ensure!(ask(&model, "example.org.", RecordType::A)? == Answer::Refused);
    model.set_synced(true);
    ensure!(model.is_synced());
    ensure!(
        answered_addresses(&model, "web.demo.svc.clusterset.local.", RecordType::A)?
            == ips(&["10.42.0.1"])?
    );
    Ok(())
}

#[test]
fn names_match_case_insensitively_and_answers_echo_the_question() -> Result<()> {
    let model = model()?;
    let asked = "WEB.Demo.SVC.ClusterSet.LOCAL.";
    let answer = ask(&model, asked, RecordType::A)?;
    let (answers, _) = records(&answer)?;
    ensure!(addresses(answers) == ips(&["10.42.0.1"])?);
    ensure!(
        answers[0].name.eq_case(&name(asked)?),
        "owner {}",
        answers[0].name
    );
    ensure!(
        !srv(&ask(
            &model,
            "_HTTP._Tcp.web.DEMO.svc.clusterset.local.",
            RecordType::SRV
        )?)?
        .is_empty()
    );
    ensure!(
        answered_addresses(
            &model,
            "DB-0.C1.db.demo.svc.clusterset.local.",
            RecordType::A
        )? == ips(&["10.0.1.1"])?
    );
    // Stored names are lowercased too.
    model.upsert(ServiceKey::new("Demo", "Mixed"), web()?);
    ensure!(
        !answered_addresses(&model, "mixed.demo.svc.clusterset.local.", RecordType::A)?.is_empty()
    );
    // Hostnames and cluster IDs with capitals answer in lowercase.
    let mut service = db()?;
    service.clusters.insert(
        "Cluster-X".into(),
        vec![endpoint(
            &["10.0.5.5"],
            Some("Pod-A"),
            true,
            &[port(Some("pg"), "TCP", 5432)],
        )?],
    );
    model.upsert(ServiceKey::new("demo", "db"), service);
    ensure!(
        answered_addresses(
            &model,
            "pod-a.cluster-x.db.demo.svc.clusterset.local.",
            RecordType::A
        )? == ips(&["10.0.5.5"])?
    );
    let targets = srv(&ask(
        &model,
        "_pg._tcp.db.demo.svc.clusterset.local.",
        RecordType::SRV,
    )?)?;
    ensure!(targets.contains(&(
        5432,
        "pod-a.cluster-x.db.demo.svc.clusterset.local.".to_owned()
    )));
    Ok(())
}

#[test]
fn any_is_answered_with_one_hinfo_as_rfc_8482_says() -> Result<()> {
    let model = model()?;
    for name in ["web.demo.svc.clusterset.local.", "clusterset.local."] {
        let answer = ask(&model, name, RecordType::ANY)?;
        let (answers, additionals) = records(&answer)?;
        ensure!(answers.len() == 1, "{name}: {answers:?}");
        ensure!(additionals.is_empty(), "{name}: {additionals:?}");
        match &answers[0].data {
            RData::HINFO(hinfo) => {
                ensure!(
                    &*hinfo.cpu == b"RFC8482" && hinfo.os.is_empty(),
                    "{hinfo:?}"
                );
            }
            other => anyhow::bail!("{name}: {other:?}"),
        }
    }
    // A name that does not exist is still NXDOMAIN.
    let answer = ask(
        &model,
        "nothing.demo.svc.clusterset.local.",
        RecordType::ANY,
    )?;
    ensure!(matches!(answer, Answer::NxDomain { .. }), "{answer:?}");
    Ok(())
}

#[test]
fn updates_change_answers_and_the_soa_serial() -> Result<()> {
    let model = model()?;
    let key = ServiceKey::new("demo", "web");
    let serial = |model: &Model| match &model.soa().data {
        RData::SOA(soa) => soa.serial,
        _ => 0,
    };
    let before = serial(&model);
    let mut moved = web()?;
    moved.ips = vec![ip("10.42.9.9")?];
    model.upsert(key.clone(), moved.clone());
    ensure!(
        answered_addresses(&model, "web.demo.svc.clusterset.local.", RecordType::A)?
            == ips(&["10.42.9.9"])?
    );
    ensure!(serial(&model) != before);
    ensure!(model.service(&key) == Some(moved.clone()));
    // Writing the same thing again is no change.
    let same = serial(&model);
    model.upsert(key.clone(), moved);
    ensure!(serial(&model) == same);
    model.remove(&key);
    assert_nxdomain(&model, "web.demo.svc.clusterset.local.", RecordType::A)?;
    model.replace_all([(key, web()?)]);
    ensure!(model.len() == 1);
    assert_nxdomain(&model, "db.demo.svc.clusterset.local.", RecordType::A)?;
    ensure!(
        !answered_addresses(&model, "web.demo.svc.clusterset.local.", RecordType::A)?.is_empty()
    );
    Ok(())
}

#[test]
fn the_zone_is_configurable() -> Result<()> {
    let model = model_with(ZoneConfig::new("Example.ORG")?)?;
    ensure!(model.config().zone() == &name("example.org.")?);
    ensure!(
        answered_addresses(&model, "web.demo.svc.example.org.", RecordType::A)?
            == ips(&["10.42.0.1"])?
    );
    ensure!(ask(&model, "web.demo.svc.clusterset.local.", RecordType::A)? == Answer::Refused);
    let answer = ask(
        &model,
        "_http._tcp.web.demo.svc.example.org.",
        RecordType::SRV,
    )?;
    ensure!(srv(&answer)? == [(80, "web.demo.svc.example.org.".to_owned())]);
    Ok(())
}

#[test]
fn invalid_zones_are_rejected() {
    assert!(ZoneConfig::new("").is_err());
    assert!(ZoneConfig::new(".").is_err());
    assert!(ZoneConfig::new("a..b").is_err());
}
