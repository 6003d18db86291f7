use super::*;
use k8s_openapi::api::core::v1::ClientIPConfig;
use k8s_openapi::jiff::Timestamp;

fn port(name: &str, number: i32) -> ServicePort {
    ServicePort {
        name: (!name.is_empty()).then(|| name.to_owned()),
        protocol: Some("TCP".into()),
        app_protocol: None,
        port: number,
    }
}

fn export(cluster: &str, age_seconds: i64, ports: Vec<ServicePort>) -> Export {
    Export {
        cluster: cluster.into(),
        service: ExportedService {
            export_created: Some(Time(
                Timestamp::from_second(1_000_000 + age_seconds).unwrap_or_default(),
            )),
            ports,
            ..Default::default()
        },
    }
}

fn reason(aggregate: &Aggregate) -> Option<&'static str> {
    aggregate.conflict.as_ref().map(|c| c.reason)
}

#[test]
fn no_exports_no_import() {
    assert_eq!(aggregate(&[]), None);
}

#[test]
fn one_export_is_the_import() {
    let mut only = export("a", 0, vec![port("http", 80), port("grpc", 9000)]);
    only.service.ip_families = vec!["IPv4".into()];
    let result = aggregate(&[only]).unwrap_or_else(|| unreachable!());
    assert_eq!(result.spec.type_, ServiceImportType::ClusterSetIP);
    assert_eq!(
        result.spec.ports,
        vec![port("grpc", 9000), port("http", 80)]
    );
    assert_eq!(result.spec.ip_families, ["IPv4"]);
    assert_eq!(result.spec.session_affinity.as_deref(), Some("None"));
    assert!(result.spec.ips.is_empty());
    assert_eq!(result.conflict, None);
}

#[test]
fn equal_exports_agree_whatever_their_order() {
    let exports = [
        export("b", 5, vec![port("http", 80)]),
        export("a", 1, vec![port("http", 80)]),
        export("c", 3, vec![port("http", 80)]),
    ];
    let forward = aggregate(&exports);
    let mut reversed = exports.to_vec();
    reversed.reverse();
    assert_eq!(forward, aggregate(&reversed));
    assert_eq!(forward.and_then(|a| a.conflict), None);
}

#[test]
fn disjoint_ports_are_the_union_and_a_port_conflict() {
    let result = aggregate(&[
        export("a", 0, vec![port("http", 80)]),
        export("b", 1, vec![port("https", 443)]),
    ])
    .unwrap_or_else(|| unreachable!());
    assert_eq!(
        result.spec.ports,
        vec![port("http", 80), port("https", 443)]
    );
    assert_eq!(reason(&result), Some(conflict::PORT_CONFLICT));
}

#[test]
fn the_oldest_definition_of_a_port_name_wins() {
    for (older, newer) in [("a", "b"), ("b", "a")] {
        let result = aggregate(&[
            export(newer, 10, vec![port("http", 8080)]),
            export(older, 0, vec![port("http", 80)]),
        ])
        .unwrap_or_else(|| unreachable!());
        assert_eq!(
            result.spec.ports,
            vec![port("http", 80)],
            "{older} is older"
        );
        assert_eq!(reason(&result), Some(conflict::PORT_CONFLICT));
    }
}

#[test]
fn a_port_with_another_protocol_is_a_conflict_and_defaults_count_as_tcp() {
    let mut udp = port("dns", 53);
    udp.protocol = Some("UDP".into());
    let result = aggregate(&[
        export("a", 0, vec![port("dns", 53)]),
        export("b", 1, vec![udp]),
    ])
    .unwrap_or_else(|| unreachable!());
    assert_eq!(result.spec.ports, vec![port("dns", 53)]);
    assert_eq!(reason(&result), Some(conflict::PORT_CONFLICT));

    let mut implicit = port("dns", 53);
    implicit.protocol = None;
    let result = aggregate(&[
        export("a", 0, vec![port("dns", 53)]),
        export("b", 1, vec![implicit]),
    ])
    .unwrap_or_else(|| unreachable!());
    assert_eq!(result.conflict, None, "an unset protocol is TCP");
}

#[test]
fn unknown_age_counts_as_newest() {
    let mut unknown = export("a", 0, vec![port("http", 81)]);
    unknown.service.export_created = None;
    let result = aggregate(&[unknown, export("z", 50, vec![port("http", 80)])])
        .unwrap_or_else(|| unreachable!());
    assert_eq!(result.spec.ports, vec![port("http", 80)]);
}

#[test]
fn headless_only_when_every_export_is() {
    let headless = |cluster: &str, age| {
        let mut e = export(cluster, age, vec![port("http", 80)]);
        e.service.headless = true;
        e
    };
    let all = aggregate(&[headless("a", 0), headless("b", 1)]).unwrap_or_else(|| unreachable!());
    assert_eq!(all.spec.type_, ServiceImportType::Headless);
    assert_eq!(all.conflict, None);
    // Mixed, whichever is older: ClusterSetIP and a TypeConflict.
    for exports in [
        [headless("a", 0), export("b", 1, vec![port("http", 80)])],
        [export("a", 0, vec![port("http", 80)]), headless("b", 1)],
    ] {
        let mixed = aggregate(&exports).unwrap_or_else(|| unreachable!());
        assert_eq!(mixed.spec.type_, ServiceImportType::ClusterSetIP);
        assert_eq!(reason(&mixed), Some(conflict::TYPE_CONFLICT));
    }
}

#[test]
fn session_affinity_follows_the_oldest_and_conflicts() {
    let mut client_ip = export("a", 0, vec![port("http", 80)]);
    client_ip.service.session_affinity = Some("ClientIP".into());
    client_ip.service.session_affinity_config = Some(SessionAffinityConfig {
        client_ip: Some(ClientIPConfig {
            timeout_seconds: Some(300),
        }),
    });
    let alone = aggregate(std::slice::from_ref(&client_ip)).unwrap_or_else(|| unreachable!());
    assert_eq!(alone.spec.session_affinity.as_deref(), Some("ClientIP"));
    assert_eq!(
        alone.spec.session_affinity_config,
        client_ip.service.session_affinity_config
    );

    let none = export("b", 1, vec![port("http", 80)]);
    let both = aggregate(&[none, client_ip.clone()]).unwrap_or_else(|| unreachable!());
    assert_eq!(both.spec.session_affinity.as_deref(), Some("ClientIP"));
    assert_eq!(reason(&both), Some(conflict::SESSION_AFFINITY_CONFLICT));
    let message = both.conflict.map(|c| c.message).unwrap_or_default();
    assert!(message.contains("sessionAffinity differs"), "{message}");
    assert!(
        message.contains("sessionAffinityConfig differs"),
        "{message}"
    );

    // Unset and "None" are the same affinity; only the config differs.
    let mut other_timeout = client_ip.clone();
    other_timeout.cluster = "c".into();
    other_timeout.service.export_created = None;
    other_timeout.service.session_affinity_config = Some(SessionAffinityConfig {
        client_ip: Some(ClientIPConfig {
            timeout_seconds: Some(60),
        }),
    });
    let config_only = aggregate(&[client_ip, other_timeout]).unwrap_or_else(|| unreachable!());
    assert_eq!(
        reason(&config_only),
        Some(conflict::SESSION_AFFINITY_CONFIG_CONFLICT)
    );
}

#[test]
fn port_conflicts_are_reported_before_other_fields() {
    let mut a = export("a", 0, vec![port("http", 80)]);
    a.service.session_affinity = Some("ClientIP".into());
    let mut b = export("b", 1, vec![port("http", 81)]);
    b.service.headless = true;
    let result = aggregate(&[a, b]).unwrap_or_else(|| unreachable!());
    assert_eq!(reason(&result), Some(conflict::PORT_CONFLICT));
    let message = result.conflict.map(|c| c.message).unwrap_or_default();
    assert!(message.contains("headless"), "{message}");
    assert!(message.contains("sessionAffinity"), "{message}");
}

#[test]
fn exported_labels_ip_families_and_policies_follow_the_oldest() {
    let mut a = export("a", 0, vec![port("http", 80)]);
    a.service.exported_labels = [("tier".to_owned(), "web".to_owned())].into();
    a.service.ip_families = vec!["IPv4".into()];
    a.service.internal_traffic_policy = Some("Cluster".into());
    let mut b = export("b", 1, vec![port("http", 80)]);
    b.service.exported_labels = [("tier".to_owned(), "db".to_owned())].into();
    b.service.ip_families = vec!["IPv6".into()];
    b.service.internal_traffic_policy = Some("Local".into());
    let result = aggregate(&[b, a]).unwrap_or_else(|| unreachable!());
    assert_eq!(result.labels.get("tier").map(String::as_str), Some("web"));
    assert_eq!(result.spec.ip_families, ["IPv4"]);
    assert_eq!(
        result.spec.internal_traffic_policy.as_deref(),
        Some("Cluster")
    );
    assert_eq!(reason(&result), Some(conflict::LABELS_CONFLICT));
    let message = result.conflict.map(|c| c.message).unwrap_or_default();
    assert!(message.contains("ipFamilies"), "{message}");
    assert!(message.contains("internalTrafficPolicy"), "{message}");
}

#[test]
fn exported_service_reads_and_writes_camel_case() -> Result<(), serde_json::Error> {
    let service = ExportedService {
        headless: true,
        ports: vec![port("http", 80)],
        session_affinity: Some("ClientIP".into()),
        ..Default::default()
    };
    let json = serde_json::to_value(&service)?;
    assert_eq!(json["sessionAffinity"], "ClientIP");
    assert_eq!(json["headless"], true);
    let back: ExportedService = serde_json::from_value(json)?;
    assert_eq!(back, service);
    Ok(())
}
