//! The table committed under `table/` must be exactly what the generator makes of the spec
//! committed under `spec/`.

use std::path::Path;

#[test]
fn the_committed_table_is_what_the_generator_makes_of_the_committed_spec()
-> Result<(), Box<dyn std::error::Error>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join(atoll_merge::generate::SPEC_FILE))?)?;
    let generated = atoll_merge::generate::render(&spec)?;
    let committed = std::fs::read_to_string(dir.join(atoll_merge::generate::TABLE_FILE))?;
    assert!(
        committed == generated,
        "table/builtin.json has drifted from the spec; regenerate it with \
         `cargo run -p atoll-merge --bin merge-table` and commit"
    );
    // And the table the library embeds reads back to the same schema.
    let builtin = atoll_merge::Schema::builtin()?;
    assert_eq!(builtin, &atoll_merge::generate::generate(&spec)?);
    Ok(())
}

#[test]
fn merge_keys_come_from_the_spec_not_from_a_hand_picked_list()
-> Result<(), Box<dyn std::error::Error>> {
    let schema = atoll_merge::Schema::builtin()?;
    let Some(atoll_merge::schema::Def::Struct(pod_spec)) =
        schema.defs.get("io.k8s.api.core.v1.PodSpec")
    else {
        panic!("the table has no PodSpec struct");
    };
    let containers = &pod_spec.fields["containers"];
    assert_eq!(containers.patch_merge_key.as_deref(), Some("name"));
    assert_eq!(containers.patch_strategy.as_deref(), Some("merge"));
    let volumes = &pod_spec.fields["volumes"];
    assert_eq!(volumes.patch_strategy.as_deref(), Some("merge,retainKeys"));
    for kind in [
        ("v1", "ConfigMap"),
        ("v1", "Namespace"),
        ("apps/v1", "Deployment"),
        ("batch/v1", "CronJob"),
        ("policy/v1", "PodDisruptionBudget"),
        ("autoscaling/v2", "HorizontalPodAutoscaler"),
        ("discovery.k8s.io/v1", "EndpointSlice"),
        ("coordination.k8s.io/v1", "Lease"),
        ("rbac.authorization.k8s.io/v1", "ClusterRole"),
    ] {
        assert!(
            schema.root(kind.0, kind.1).is_some(),
            "{kind:?} has no root"
        );
    }
    Ok(())
}
