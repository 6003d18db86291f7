//! Each directive and each refusal of the engine, on the built-in Pod and Deployment types
//! (expected results follow upstream's `strategicpatch` semantics; the differential suite in
//! `crates/apiserver/tests/strategic_merge.rs` checks the same sequences against
//! kube-apiserver 1.20).

use atoll_merge::{Error, ErrorClass, Limits, Schema, apply, apply_with_limits};
use serde_json::{Value, json};

fn pod() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "p", "finalizers": ["a", "b"], "labels": {"app": "x"}},
        "spec": {
            "containers": [
                {"name": "app", "image": "app:1",
                 "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
                 "ports": [{"containerPort": 80, "protocol": "TCP"}]},
                {"name": "sidecar", "image": "side:1"}
            ],
            "volumes": [{"name": "data", "emptyDir": {}}],
            "tolerations": [{"key": "k", "operator": "Exists"}]
        }
    })
}

fn patch(original: &Value, patch: Value) -> Result<Value, Error> {
    let schema = Schema::builtin().map_err(|_| Error::NoElements)?;
    let root = schema.root("v1", "Pod").ok_or(Error::NoElements)?;
    apply(original, &patch, root)
}

#[test]
fn a_finalizer_is_added_to_the_set_not_replacing_it() -> Result<(), Error> {
    let out = patch(&pod(), json!({"metadata": {"finalizers": ["c"]}}))?;
    // Upstream's order: the patch's elements first where the server's order says nothing.
    assert_eq!(out["metadata"]["finalizers"], json!(["c", "a", "b"]));
    let out = patch(&pod(), json!({"metadata": {"finalizers": ["b", "c"]}}))?;
    assert_eq!(out["metadata"]["finalizers"], json!(["a", "b", "c"]));
    Ok(())
}

#[test]
fn lists_merge_by_key() -> Result<(), Error> {
    let out = patch(
        &pod(),
        json!({"spec": {"containers": [{"name": "app", "env": [{"name": "B", "value": "3"}]}]}}),
    )?;
    let app = &out["spec"]["containers"][0];
    assert_eq!(app["image"], "app:1");
    assert_eq!(
        app["env"],
        json!([{"name": "A", "value": "1"}, {"name": "B", "value": "3"}])
    );
    assert_eq!(out["spec"]["containers"][1]["name"], "sidecar");
    // A new element is added; a list without a merge strategy (args) is replaced.
    let out = patch(
        &pod(),
        json!({"spec": {"containers": [{"name": "extra", "image": "x", "args": ["1"]}]}}),
    )?;
    let names: Vec<&Value> = out["spec"]["containers"]
        .as_array()
        .map(|c| c.iter().map(|c| &c["name"]).collect())
        .unwrap_or_default();
    assert_eq!(names, [&json!("extra"), &json!("app"), &json!("sidecar")]);
    Ok(())
}

#[test]
fn patch_delete_replace_and_null_remove() -> Result<(), Error> {
    let out = patch(
        &pod(),
        json!({"spec": {"containers": [{"name": "sidecar", "$patch": "delete"}]}}),
    )?;
    assert_eq!(out["spec"]["containers"].as_array().map(Vec::len), Some(1));
    let out = patch(
        &pod(),
        json!({"spec": {"volumes": [{"name": "new", "emptyDir": {}}, {"$patch": "replace"}]}}),
    )?;
    assert_eq!(
        out["spec"]["volumes"],
        json!([{"name": "new", "emptyDir": {}}])
    );
    let out = patch(
        &pod(),
        json!({"metadata": {"labels": {"$patch": "replace", "b": "c"}}}),
    )?;
    assert_eq!(out["metadata"]["labels"], json!({"b": "c"}));
    let out = patch(
        &pod(),
        json!({"metadata": {"labels": {"$patch": "delete"}}}),
    )?;
    // The map is emptied, and the typed round trip drops an empty optional map.
    assert!(out["metadata"].get("labels").is_none(), "{out}");
    let out = patch(
        &pod(),
        json!({"metadata": {"labels": {"app": null}}, "spec": {"volumes": null}}),
    )?;
    assert!(out["metadata"].get("labels").is_none(), "{out}");
    assert!(out["spec"].get("volumes").is_none());
    // An empty struct behind a pointer is kept, as Go keeps it.
    assert_eq!(out["spec"]["containers"][0]["name"], "app");
    let out = patch(
        &pod(),
        json!({"spec": {"volumes": [{"name": "data", "emptyDir": {}}]}}),
    )?;
    assert_eq!(
        out["spec"]["volumes"],
        json!([{"name": "data", "emptyDir": {}}])
    );
    Ok(())
}

#[test]
fn set_element_order_reorders_and_delete_from_primitive_list_removes() -> Result<(), Error> {
    let out = patch(
        &pod(),
        json!({"spec": {"$setElementOrder/containers": [{"name": "sidecar"}, {"name": "app"}]}}),
    )?;
    assert_eq!(out["spec"]["containers"][0]["name"], "sidecar");
    assert_eq!(out["spec"]["containers"][1]["name"], "app");
    let out = patch(
        &pod(),
        json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"], "$setElementOrder/finalizers": ["b"]}}),
    )?;
    assert_eq!(out["metadata"]["finalizers"], json!(["b"]));
    Ok(())
}

#[test]
fn retain_keys_clears_the_keys_not_listed() -> Result<(), Error> {
    let schema = Schema::builtin().map_err(|_| Error::NoElements)?;
    let root = schema
        .root("apps/v1", "Deployment")
        .ok_or(Error::NoElements)?;
    let deployment =
        json!({"spec": {"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}}}});
    let out = apply(
        &deployment,
        &json!({"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate"}}}),
        root,
    )?;
    assert_eq!(out["spec"]["strategy"], json!({"type": "Recreate"}));
    // A key the patch sets must be retained.
    let err = apply(
        &deployment,
        &json!({"spec": {"strategy": {"$retainKeys": ["type"], "rollingUpdate": {}}}}),
        root,
    );
    assert_eq!(err, Err(Error::BadPatchFormatForRetainKeys));
    Ok(())
}

#[test]
fn bad_directives_are_refused_with_upstreams_wording() {
    let cases = [
        (
            json!({"spec": {"containers": [{"name": "app", "$patch": "merge"}]}}),
            "merging lists cannot yet be specified in the patch",
            ErrorClass::Internal,
        ),
        (
            json!({"metadata": {"labels": {"$patch": "bogus"}}}),
            "unknown patch type: bogus in map: map[$patch:bogus]",
            ErrorClass::Internal,
        ),
        (
            json!({"spec": {"containers": [{"image": "x"}]}}),
            "map: map[image:x] does not contain declared merge key: name",
            ErrorClass::Internal,
        ),
        (
            json!({"metadata": {"$deleteFromPrimitiveListfinalizers": ["a"]}}),
            "invalid patch format of primitive list",
            ErrorClass::BadRequest,
        ),
        (
            json!({"spec": {"$setElementOrder/containers": "app"}}),
            "expected a []interface {}, but received a string",
            ErrorClass::Internal,
        ),
        (
            json!({"spec": {"$setElementOrder/containers": [{"name": "app"}], "containers": [{"name": "x"}]}}),
            "The order in patch list:\n[map[name:x]]\n doesn't match $setElementOrder list:\n[map[name:app]]\n",
            ErrorClass::Internal,
        ),
        (
            json!({"spec": {"volumes": [{"name": "data", "$retainKeys": "x"}]}}),
            "invalid patch format of retainKeys",
            ErrorClass::BadRequest,
        ),
        (
            json!({"metadata": {"finalizers": [["a"]]}}),
            "list element types are not identical: [[a b] [[a]]]",
            ErrorClass::Internal,
        ),
        (
            json!({"metadata": {"finalizers": [1]}}),
            "list element types are not identical: [[a b] [1]]",
            ErrorClass::Internal,
        ),
    ];
    for (p, message, class) in cases {
        match patch(&pod(), p.clone()) {
            Err(e) => {
                assert_eq!(e.to_string(), message, "{p}");
                assert_eq!(e.class(), class, "{p}");
            }
            Ok(out) => panic!("{p} was applied: {out}"),
        }
    }
    let mut empty = pod();
    empty["metadata"]["finalizers"] = json!([]);
    let err = patch(&empty, json!({"metadata": {"finalizers": [["a"]]}}));
    assert_eq!(err, Err(Error::NoListOfLists));
    assert_eq!(Error::NoListOfLists.class(), ErrorClass::Unprocessable);
    assert_eq!(
        patch(&pod(), json!(["a"])).map_err(|e| e.to_string()),
        Err("json: cannot unmarshal array into Go value of type map[string]interface {}".into())
    );
}

#[test]
fn hostile_depth_and_work_are_refused_not_overflowed() -> Result<(), Error> {
    let schema = Schema::builtin().map_err(|_| Error::NoElements)?;
    let root = schema.root("v1", "ConfigMap").ok_or(Error::NoElements)?;
    // Deep nesting under a field both sides hold, past the limit (a value built in memory,
    // not parsed: serde_json's parser stops at 128 levels itself).
    let mut deep = json!({});
    let mut original = json!({});
    for _ in 0..500 {
        deep = json!({ "x": deep });
        original = json!({ "x": original });
    }
    let out = apply(
        &json!({"metadata": original}),
        &json!({"metadata": deep}),
        root,
    );
    assert_eq!(
        out,
        Err(Error::TooDeep {
            limit: Limits::default().max_depth
        })
    );
    // A list merge whose quadratic work exceeds the budget.
    let big: Vec<Value> = (0..3000).map(|i| json!(format!("f{i}"))).collect();
    let pod_root = schema.root("v1", "Pod").ok_or(Error::NoElements)?;
    let out = apply_with_limits(
        &json!({"metadata": {"finalizers": big}}),
        &json!({"metadata": {"finalizers": (0..3000).map(|i| format!("g{i}")).collect::<Vec<_>>()}}),
        pod_root,
        Limits {
            max_depth: 128,
            max_steps: 1_000_000,
        },
    );
    assert_eq!(out, Err(Error::TooExpensive { limit: 1_000_000 }));
    Ok(())
}
