//! The storage test suite every backend must pass, unchanged.
//!
//! A backend's test file instantiates it with [`store_testsuite!`](crate::store_testsuite),
//! giving an async expression that yields a fresh, empty [`Fixture`] per test:
//!
//! ```ignore
//! async fn fresh() -> anyhow::Result<atoll_store::testsuite::Fixture> { ... }
//! atoll_store::store_testsuite!(fresh());
//! ```
//!
//! The calling test crate needs `anyhow` and `tokio` (with `macros` and `rt-multi-thread`).
//! The suite asserts only on revisions relative to what it observed first, so a backend may
//! share a revision counter with other users (etcd with a key prefix). Nothing in it times
//! anything: waits for events have a generous timeout and are never the assertion.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow, bail, ensure};
use bytes::Bytes;
use futures::StreamExt;

use crate::{
    Compare, KeyValue, Op, OpResult, RangeRequest, Revision, Store, StoreError, Txn, WatchEvent,
    WatchStream, prefix_end,
};

/// A fresh store and whatever keeps it alive (temporary directory, etcd process).
pub struct Fixture {
    pub store: Arc<dyn Store>,
    pub guard: Box<dyn std::any::Any + Send>,
}

impl Fixture {
    pub fn new(store: Arc<dyn Store>, guard: impl std::any::Any + Send) -> Fixture {
        Fixture {
            store,
            guard: Box::new(guard),
        }
    }
}

/// Generous: the suite waits for events, never asserts on timing.
const EVENT_TIMEOUT: Duration = Duration::from_secs(60);

/// Instantiates every suite test as a `#[tokio::test]` in the calling file.
#[macro_export]
macro_rules! store_testsuite {
    ($fixture:expr) => {
        $crate::store_testsuite!(@tests $fixture;
            revisions_advance_by_one_per_write_txn,
            create_and_mod_revisions_and_version,
            compare_and_swap,
            txn_is_atomic_and_sees_its_own_writes,
            duplicate_keys_in_a_txn_are_rejected,
            range_limit_more_and_count,
            large_ranges_come_back_whole,
            range_at_an_old_revision_is_a_consistent_snapshot,
            compacted_and_future_revisions_fail,
            compaction_keeps_the_current_state,
            watch_from_a_revision_has_no_gaps_or_duplicates_under_concurrent_writers,
            watch_from_zero_starts_after_the_current_revision,
            watch_sees_only_its_prefix,
            delete_events_carry_the_previous_state,
            progress_notifications_report_a_complete_revision,
            slow_watcher_is_caught_up_or_told_it_lagged,
            concurrent_writers_get_distinct_consecutive_revisions,
            concurrent_compare_and_swap_increments_are_serializable
        );
    };
    (@tests $fixture:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() -> anyhow::Result<()> {
                let fixture = $fixture.await?;
                let outcome = $crate::testsuite::$name(fixture.store.clone()).await;
                drop(fixture);
                outcome
            }
        )*
    };
}

fn put(key: &str, value: &str) -> Op {
    Op::Put {
        key: key.to_owned(),
        value: Bytes::from(value.to_owned()),
    }
}

fn delete(key: &str) -> Op {
    Op::Delete {
        key: key.to_owned(),
    }
}

fn get(key: &str) -> Op {
    Op::Get {
        key: key.to_owned(),
    }
}

async fn write(store: &dyn Store, ops: Vec<Op>) -> anyhow::Result<Revision> {
    let response = store
        .txn(Txn {
            success: ops,
            ..Txn::default()
        })
        .await?;
    ensure!(response.succeeded, "a txn without compares must succeed");
    Ok(response.revision)
}

async fn get_kv(store: &dyn Store, key: &str) -> anyhow::Result<Option<KeyValue>> {
    let response = store
        .range(RangeRequest {
            start: key.to_owned(),
            ..RangeRequest::default()
        })
        .await?;
    Ok(response.kvs.into_iter().next())
}

async fn range_prefix(
    store: &dyn Store,
    prefix: &str,
    revision: Revision,
    limit: usize,
) -> anyhow::Result<crate::RangeResponse> {
    Ok(store
        .range(RangeRequest {
            start: prefix.to_owned(),
            end: prefix_end(prefix),
            limit,
            revision,
            count_only: false,
            stop_at_limit: false,
        })
        .await?)
}

async fn next_event(stream: &mut WatchStream) -> anyhow::Result<WatchEvent> {
    match tokio::time::timeout(EVENT_TIMEOUT, stream.next()).await {
        Err(_) => bail!("no watch event within {EVENT_TIMEOUT:?}"),
        Ok(None) => bail!("watch stream ended"),
        Ok(Some(event)) => Ok(event?),
    }
}

/// The next event that is not a progress notification.
async fn next_change(stream: &mut WatchStream) -> anyhow::Result<WatchEvent> {
    loop {
        let event = next_event(stream).await?;
        if !matches!(event, WatchEvent::Progress { .. }) {
            return Ok(event);
        }
    }
}

fn kv_of(event: &WatchEvent) -> anyhow::Result<&KeyValue> {
    match event {
        WatchEvent::Put { kv, .. } => Ok(kv),
        other => bail!("expected a put event, got {other:?}"),
    }
}

pub async fn revisions_advance_by_one_per_write_txn(store: Arc<dyn Store>) -> anyhow::Result<()> {
    let start = store.current_revision().await?;
    ensure!(start >= 1, "revisions start at 1, got {start}");
    let first = write(&*store, vec![put("/rev/a", "1")]).await?;
    ensure!(first == start + 1, "one put: {start} -> {first}");
    let second = write(
        &*store,
        vec![put("/rev/b", "1"), put("/rev/c", "1"), delete("/rev/a")],
    )
    .await?;
    ensure!(second == first + 1, "one txn of three ops is one revision");
    let read_only = write(&*store, vec![get("/rev/b")]).await?;
    ensure!(read_only == second, "a read-only txn does not advance");
    let no_op_delete = write(&*store, vec![delete("/rev/absent")]).await?;
    ensure!(no_op_delete == second, "deleting nothing does not advance");
    let failed = store
        .txn(Txn {
            compares: vec![Compare::ModRevision {
                key: "/rev/b".into(),
                revision: 1,
            }],
            success: vec![put("/rev/b", "2")],
            failure: vec![],
        })
        .await?;
    ensure!(!failed.succeeded && failed.revision == second);
    ensure!(store.current_revision().await? == second);
    Ok(())
}

pub async fn create_and_mod_revisions_and_version(store: Arc<dyn Store>) -> anyhow::Result<()> {
    let created = store
        .txn(Txn {
            success: vec![put("/ver/k", "v1")],
            ..Txn::default()
        })
        .await?;
    let r1 = created.revision;
    let [OpResult::Put { kv, prev: None }] = created.results.as_slice() else {
        bail!("unexpected create result {:?}", created.results);
    };
    ensure!(kv.create_revision == r1 && kv.mod_revision == r1 && kv.version == 1);
    ensure!(kv.value == "v1" && kv.key == "/ver/k");

    let updated = store
        .txn(Txn {
            success: vec![put("/ver/k", "v2")],
            ..Txn::default()
        })
        .await?;
    let r2 = updated.revision;
    let [
        OpResult::Put {
            kv,
            prev: Some(prev),
        },
    ] = updated.results.as_slice()
    else {
        bail!("unexpected update result {:?}", updated.results);
    };
    ensure!(kv.create_revision == r1 && kv.mod_revision == r2 && kv.version == 2);
    ensure!(prev.mod_revision == r1 && prev.value == "v1");
    ensure!(get_kv(&*store, "/ver/k").await?.as_ref() == Some(kv));

    let deleted = store
        .txn(Txn {
            success: vec![delete("/ver/k")],
            ..Txn::default()
        })
        .await?;
    let [OpResult::Delete { prev: Some(prev) }] = deleted.results.as_slice() else {
        bail!("unexpected delete result {:?}", deleted.results);
    };
    ensure!(prev.mod_revision == r2 && prev.version == 2);
    ensure!(get_kv(&*store, "/ver/k").await?.is_none());

    let recreated = write(&*store, vec![put("/ver/k", "v3")]).await?;
    let kv = get_kv(&*store, "/ver/k").await?.context("recreated key")?;
    ensure!(
        kv.create_revision == recreated && kv.version == 1,
        "a recreated key starts over: {kv:?}"
    );
    Ok(())
}

pub async fn compare_and_swap(store: Arc<dyn Store>) -> anyhow::Result<()> {
    let create = |value: &str| Txn {
        compares: vec![Compare::ModRevision {
            key: "/cas/k".into(),
            revision: 0,
        }],
        success: vec![put("/cas/k", value)],
        failure: vec![get("/cas/k")],
    };
    let created = store.txn(create("first")).await?;
    ensure!(created.succeeded, "create-if-absent on an absent key");
    let again = store.txn(create("second")).await?;
    ensure!(!again.succeeded, "create-if-absent on a present key fails");
    let [OpResult::Get { kv: Some(current) }] = again.results.as_slice() else {
        bail!("the failure branch reads the key: {:?}", again.results);
    };
    ensure!(current.value == "first" && current.mod_revision == created.revision);
    ensure!(again.revision == created.revision);

    let update_at = |revision: Revision, value: &str| Txn {
        compares: vec![Compare::ModRevision {
            key: "/cas/k".into(),
            revision,
        }],
        success: vec![put("/cas/k", value)],
        failure: vec![],
    };
    let updated = store.txn(update_at(created.revision, "third")).await?;
    ensure!(updated.succeeded && updated.revision == created.revision + 1);
    let stale = store.txn(update_at(created.revision, "lost")).await?;
    ensure!(!stale.succeeded && stale.results.is_empty());
    ensure!(get_kv(&*store, "/cas/k").await?.context("key")?.value == "third");

    let by_value = |value: &str| Txn {
        compares: vec![Compare::Value {
            key: "/cas/k".into(),
            value: Bytes::from(value.to_owned()),
        }],
        success: vec![delete("/cas/k")],
        failure: vec![],
    };
    ensure!(!store.txn(by_value("first")).await?.succeeded);
    ensure!(store.txn(by_value("third")).await?.succeeded);
    ensure!(
        !store.txn(by_value("third")).await?.succeeded,
        "a value compare on an absent key fails"
    );
    Ok(())
}

pub async fn txn_is_atomic_and_sees_its_own_writes(store: Arc<dyn Store>) -> anyhow::Result<()> {
    write(&*store, vec![put("/atomic/c", "old")]).await?;
    let response = store
        .txn(Txn {
            compares: vec![],
            success: vec![
                get("/atomic/a"),
                put("/atomic/a", "1"),
                get("/atomic/a"),
                put("/atomic/b", "2"),
                delete("/atomic/c"),
            ],
            failure: vec![],
        })
        .await?;
    let revision = response.revision;
    let [
        OpResult::Get { kv: None },
        OpResult::Put { .. },
        OpResult::Get { kv: Some(own) },
        OpResult::Put { .. },
        OpResult::Delete { prev: Some(_) },
    ] = response.results.as_slice()
    else {
        bail!("unexpected results {:?}", response.results);
    };
    ensure!(own.value == "1" && own.mod_revision == revision);
    let listed = range_prefix(&*store, "/atomic/", 0, 0).await?;
    let keys: Vec<_> = listed.kvs.iter().map(|kv| kv.key.as_str()).collect();
    ensure!(keys == ["/atomic/a", "/atomic/b"], "{keys:?}");
    ensure!(listed.kvs.iter().all(|kv| kv.mod_revision == revision));

    // One txn is one revision: a watch sees all three changes at it, and none half-applied.
    let mut watch = store.watch("/atomic/", revision, false).await?;
    let mut seen = Vec::new();
    for _ in 0..3 {
        let event = next_change(&mut watch).await?;
        ensure!(event.revision() == revision, "{event:?}");
        seen.push(event);
    }
    ensure!(matches!(seen[2], WatchEvent::Delete { .. }), "{seen:?}");
    Ok(())
}

pub async fn duplicate_keys_in_a_txn_are_rejected(store: Arc<dyn Store>) -> anyhow::Result<()> {
    let before = store.current_revision().await?;
    let outcome = store
        .txn(Txn {
            success: vec![put("/dup/k", "1"), delete("/dup/k")],
            ..Txn::default()
        })
        .await;
    ensure!(
        matches!(outcome, Err(StoreError::InvalidTxn(_))),
        "{outcome:?}"
    );
    ensure!(store.current_revision().await? == before);
    ensure!(get_kv(&*store, "/dup/k").await?.is_none());
    Ok(())
}

pub async fn range_limit_more_and_count(store: Arc<dyn Store>) -> anyhow::Result<()> {
    let mut ops: Vec<Op> = (0..10)
        .map(|i| put(&format!("/list/k{i:02}"), "v"))
        .collect();
    ops.push(put("/list0", "outside"));
    ops.push(put("/lis", "outside"));
    write(&*store, ops).await?;

    let all = range_prefix(&*store, "/list/", 0, 0).await?;
    ensure!(all.kvs.len() == 10 && all.count == 10 && !all.more);
    let keys: Vec<_> = all.kvs.iter().map(|kv| kv.key.clone()).collect();
    let mut sorted = keys.clone();
    sorted.sort();
    ensure!(keys == sorted, "keys come in key order");

    let page = range_prefix(&*store, "/list/", 0, 3).await?;
    ensure!(page.kvs.len() == 3 && page.more && page.count == 10);
    ensure!(page.kvs[0].key == "/list/k00" && page.kvs[2].key == "/list/k02");
    let exact = range_prefix(&*store, "/list/", 0, 10).await?;
    ensure!(exact.kvs.len() == 10 && !exact.more);

    // Paging without counting the remainder: `more` stays exact.
    for (limit, more) in [(3, true), (9, true), (10, false)] {
        let page = store
            .range(RangeRequest {
                start: "/list/".into(),
                end: prefix_end("/list/"),
                limit,
                stop_at_limit: true,
                ..RangeRequest::default()
            })
            .await?;
        ensure!(
            page.kvs.len() == limit && page.more == more,
            "stop_at_limit with limit {limit}: {} keys, more {}",
            page.kvs.len(),
            page.more
        );
        ensure!(page.kvs[0].key == "/list/k00");
    }

    let counted = store
        .range(RangeRequest {
            start: "/list/".into(),
            end: prefix_end("/list/"),
            count_only: true,
            ..RangeRequest::default()
        })
        .await?;
    ensure!(counted.count == 10 && counted.kvs.is_empty());

    let single = store
        .range(RangeRequest {
            start: "/list/k03".into(),
            ..RangeRequest::default()
        })
        .await?;
    ensure!(single.count == 1 && single.kvs[0].key == "/list/k03");
    let bounded = store
        .range(RangeRequest {
            start: "/list/k03".into(),
            end: "/list/k05".into(),
            ..RangeRequest::default()
        })
        .await?;
    let keys: Vec<_> = bounded.kvs.iter().map(|kv| kv.key.as_str()).collect();
    ensure!(keys == ["/list/k03", "/list/k04"], "{keys:?}");
    ensure!(bounded.revision == store.current_revision().await?);
    Ok(())
}

pub async fn large_ranges_come_back_whole(store: Arc<dyn Store>) -> anyhow::Result<()> {
    // 5 MiB in all: more than gRPC's default 4 MiB message limit, as a big list is.
    let value = "x".repeat(128 * 1024);
    for i in 0..40 {
        write(&*store, vec![put(&format!("/large/{i:02}"), &value)]).await?;
    }
    let listed = range_prefix(&*store, "/large/", 0, 0).await?;
    ensure!(listed.kvs.len() == 40 && listed.count == 40);
    ensure!(listed.kvs.iter().all(|kv| kv.value.len() == value.len()));
    Ok(())
}

pub async fn range_at_an_old_revision_is_a_consistent_snapshot(
    store: Arc<dyn Store>,
) -> anyhow::Result<()> {
    let ops = (0..6).map(|i| put(&format!("/snap/k{i}"), "old")).collect();
    let snapshot = write(&*store, ops).await?;
    write(&*store, vec![put("/snap/k1", "new"), delete("/snap/k2")]).await?;
    write(&*store, vec![put("/snap/k7", "new")]).await?;

    // Paginate at the snapshot revision, as a continue token does.
    let mut start = "/snap/".to_owned();
    let mut pages = Vec::new();
    loop {
        let page = store
            .range(RangeRequest {
                start: start.clone(),
                end: prefix_end("/snap/"),
                limit: 2,
                revision: snapshot,
                count_only: false,
                stop_at_limit: false,
            })
            .await?;
        ensure!(page.revision == snapshot);
        let Some(last) = page.kvs.last() else { break };
        start = format!("{}\0", last.key);
        let more = page.more;
        pages.extend(page.kvs);
        if !more {
            break;
        }
    }
    let keys: Vec<_> = pages.iter().map(|kv| kv.key.as_str()).collect();
    ensure!(
        keys == [
            "/snap/k0", "/snap/k1", "/snap/k2", "/snap/k3", "/snap/k4", "/snap/k5"
        ],
        "{keys:?}"
    );
    ensure!(pages.iter().all(|kv| kv.value == "old" && kv.version == 1));

    let now = range_prefix(&*store, "/snap/", 0, 0).await?;
    let keys: Vec<_> = now.kvs.iter().map(|kv| kv.key.as_str()).collect();
    ensure!(
        keys == [
            "/snap/k0", "/snap/k1", "/snap/k3", "/snap/k4", "/snap/k5", "/snap/k7"
        ],
        "{keys:?}"
    );
    Ok(())
}

pub async fn compacted_and_future_revisions_fail(store: Arc<dyn Store>) -> anyhow::Result<()> {
    let first = write(&*store, vec![put("/compact/k", "1")]).await?;
    let second = write(&*store, vec![put("/compact/k", "2")]).await?;
    let third = write(&*store, vec![put("/compact/k", "3")]).await?;

    let future = range_prefix(&*store, "/compact/", third + 1, 0).await;
    ensure!(
        matches!(
            future
                .as_ref()
                .map_err(|error| error.downcast_ref::<StoreError>()),
            Err(Some(StoreError::FutureRevision { .. }))
        ),
        "{future:?}"
    );
    let future = store.compact(third + 1).await;
    ensure!(
        matches!(future, Err(StoreError::FutureRevision { .. })),
        "{future:?}"
    );

    store.compact(second).await?;
    ensure!(store.compacted_revision().await? == second);
    let old = range_prefix(&*store, "/compact/", first, 0).await;
    match old
        .as_ref()
        .map_err(|error| error.downcast_ref::<StoreError>())
    {
        Err(Some(StoreError::Compacted { compacted, .. })) if *compacted == second => {}
        other => bail!("range below the compacted revision: {other:?}"),
    }
    let at = range_prefix(&*store, "/compact/", second, 0).await?;
    ensure!(at.kvs.len() == 1 && at.kvs[0].value == "2");

    match store.watch("/compact/", second, false).await {
        Err(StoreError::Compacted { compacted, .. }) if compacted == second => {}
        Err(other) => bail!("watch at the compacted revision: {other:?}"),
        Ok(_) => bail!("watch at the compacted revision must fail"),
    }
    let mut watch = store.watch("/compact/", second + 1, false).await?;
    let event = next_change(&mut watch).await?;
    ensure!(event.revision() == third && kv_of(&event)?.value == "3");

    // Repeating a compaction is harmless.
    store.compact(second).await?;
    ensure!(store.compacted_revision().await? == second);
    Ok(())
}

pub async fn compaction_keeps_the_current_state(store: Arc<dyn Store>) -> anyhow::Result<()> {
    write(&*store, vec![put("/keep/a", "1"), put("/keep/b", "1")]).await?;
    write(&*store, vec![put("/keep/a", "2"), delete("/keep/b")]).await?;
    write(&*store, vec![put("/keep/c", "1")]).await?;
    let before = range_prefix(&*store, "/keep/", 0, 0).await?;
    let revision = store.current_revision().await?;
    store.compact(revision).await?;
    let after = range_prefix(&*store, "/keep/", 0, 0).await?;
    ensure!(before.kvs == after.kvs, "{before:?} vs {after:?}");
    let at = range_prefix(&*store, "/keep/", revision, 0).await?;
    ensure!(at.kvs == after.kvs);

    let next = write(&*store, vec![put("/keep/a", "3"), put("/keep/b", "again")]).await?;
    let a = get_kv(&*store, "/keep/a").await?.context("a")?;
    ensure!(a.version == 3 && a.mod_revision == next, "{a:?}");
    let b = get_kv(&*store, "/keep/b").await?.context("b")?;
    ensure!(b.version == 1 && b.create_revision == next, "{b:?}");
    Ok(())
}

pub async fn watch_from_a_revision_has_no_gaps_or_duplicates_under_concurrent_writers(
    store: Arc<dyn Store>,
) -> anyhow::Result<()> {
    const WRITERS: usize = 8;
    const PUTS: usize = 40;
    let start = store.current_revision().await? + 1;
    let mut live = store.watch("/gaps/", start, false).await?;

    let mut tasks = Vec::new();
    for writer in 0..WRITERS {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..PUTS {
                let key = format!("/gaps/w{writer}/k{}", i % 7);
                let value = format!("{writer}-{i}");
                let revision = write(&*store, vec![put(&key, &value)]).await?;
                // Unrelated writes the watch must skip.
                write(&*store, vec![put("/other/noise", &value)]).await?;
                acked.push((revision, key, value));
            }
            anyhow::Ok(acked)
        }));
    }
    let mut acked = Vec::new();
    for task in tasks {
        acked.extend(task.await??);
    }
    acked.sort();

    let check = |events: Vec<(Revision, String, String)>| -> anyhow::Result<()> {
        ensure!(
            events.len() == acked.len(),
            "{} of {}",
            events.len(),
            acked.len()
        );
        ensure!(events == acked, "events differ from acknowledged writes");
        Ok(())
    };
    let mut seen = Vec::new();
    while seen.len() < acked.len() {
        let event = next_change(&mut live).await?;
        let kv = kv_of(&event)?;
        if let Some((last, _, _)) = seen.last() {
            ensure!(
                kv.mod_revision > *last,
                "out of order or duplicate: {event:?}"
            );
        }
        seen.push((
            kv.mod_revision,
            kv.key.clone(),
            String::from_utf8_lossy(&kv.value).into(),
        ));
    }
    check(seen)?;

    // A watch started afterwards replays the same from history.
    let mut replay = store.watch("/gaps/", start, false).await?;
    let mut replayed = Vec::new();
    while replayed.len() < acked.len() {
        let event = next_change(&mut replay).await?;
        let kv = kv_of(&event)?;
        replayed.push((
            kv.mod_revision,
            kv.key.clone(),
            String::from_utf8_lossy(&kv.value).into(),
        ));
    }
    check(replayed)?;

    // And from the middle: exactly the tail.
    let middle = acked[acked.len() / 2].0;
    let mut tail = store.watch("/gaps/", middle, false).await?;
    let expected: Vec<_> = acked
        .iter()
        .filter(|(r, _, _)| *r >= middle)
        .cloned()
        .collect();
    let mut got = Vec::new();
    while got.len() < expected.len() {
        let event = next_change(&mut tail).await?;
        let kv = kv_of(&event)?;
        got.push((
            kv.mod_revision,
            kv.key.clone(),
            String::from_utf8_lossy(&kv.value).into(),
        ));
    }
    ensure!(got == expected, "tail replay differs");
    Ok(())
}

pub async fn watch_from_zero_starts_after_the_current_revision(
    store: Arc<dyn Store>,
) -> anyhow::Result<()> {
    write(&*store, vec![put("/zero/before", "1")]).await?;
    let mut watch = store.watch("/zero/", 0, false).await?;
    let after = write(&*store, vec![put("/zero/after", "1")]).await?;
    let event = next_change(&mut watch).await?;
    ensure!(event.revision() == after && kv_of(&event)?.key == "/zero/after");
    Ok(())
}

pub async fn watch_sees_only_its_prefix(store: Arc<dyn Store>) -> anyhow::Result<()> {
    let start = store.current_revision().await? + 1;
    let mut watch = store.watch("/pre/a/", start, false).await?;
    write(&*store, vec![put("/pre/a/1", "x")]).await?;
    write(&*store, vec![put("/pre/ab", "x"), put("/pre/b/1", "x")]).await?;
    write(&*store, vec![put("/pre/a", "x")]).await?;
    let last = write(&*store, vec![put("/pre/a/2", "x"), put("/pre/b/2", "x")]).await?;
    let first = next_change(&mut watch).await?;
    ensure!(kv_of(&first)?.key == "/pre/a/1", "{first:?}");
    let second = next_change(&mut watch).await?;
    ensure!(
        kv_of(&second)?.key == "/pre/a/2" && second.revision() == last,
        "{second:?}"
    );
    // Nothing else arrives: a marker write under the prefix comes next.
    let marker = write(&*store, vec![put("/pre/a/marker", "x")]).await?;
    let next = next_change(&mut watch).await?;
    ensure!(next.revision() == marker, "{next:?}");
    Ok(())
}

pub async fn delete_events_carry_the_previous_state(store: Arc<dyn Store>) -> anyhow::Result<()> {
    let start = store.current_revision().await? + 1;
    let mut watch = store.watch("/del/", start, false).await?;
    let created = write(&*store, vec![put("/del/k", "v1")]).await?;
    let updated = write(&*store, vec![put("/del/k", "v2")]).await?;
    let deleted = write(&*store, vec![delete("/del/k")]).await?;

    match next_change(&mut watch).await? {
        WatchEvent::Put { kv, prev: None } if kv.mod_revision == created => {}
        other => bail!("create: {other:?}"),
    }
    match next_change(&mut watch).await? {
        WatchEvent::Put {
            kv,
            prev: Some(prev),
        } if kv.mod_revision == updated && prev.value == "v1" && prev.mod_revision == created => {}
        other => bail!("update: {other:?}"),
    }
    match next_change(&mut watch).await? {
        WatchEvent::Delete { prev, revision }
            if revision == deleted && prev.value == "v2" && prev.mod_revision == updated => {}
        other => bail!("delete: {other:?}"),
    }
    Ok(())
}

pub async fn progress_notifications_report_a_complete_revision(
    store: Arc<dyn Store>,
) -> anyhow::Result<()> {
    let mut watch = store.watch("/progress/", 0, true).await?;
    let elsewhere = write(&*store, vec![put("/unrelated/k", "v")]).await?;
    // The watch stays quiet under its prefix; a notification eventually covers `elsewhere`.
    let deadline = tokio::time::Instant::now() + EVENT_TIMEOUT;
    loop {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "no progress notification reached revision {elsewhere}"
        );
        match next_event(&mut watch).await? {
            WatchEvent::Progress { revision } if revision >= elsewhere => break,
            WatchEvent::Progress { .. } => {}
            other => bail!("unexpected change {other:?}"),
        }
    }
    // A change after a notification is still delivered.
    let mine = write(&*store, vec![put("/progress/k", "v")]).await?;
    let event = next_change(&mut watch).await?;
    ensure!(event.revision() == mine);
    Ok(())
}

pub async fn slow_watcher_is_caught_up_or_told_it_lagged(
    store: Arc<dyn Store>,
) -> anyhow::Result<()> {
    const WRITES: usize = 2000;
    let start = store.current_revision().await? + 1;
    let mut watch = store.watch("/slow/", start, false).await?;
    // Write far more than any buffer holds while the stream is not polled.
    let mut tasks = Vec::new();
    for writer in 0..16 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..WRITES / 16 {
                write(&*store, vec![put(&format!("/slow/{writer}/{i}"), "v")]).await?;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let mut last = start - 1;
    let mut keys = BTreeSet::new();
    while keys.len() < WRITES {
        match tokio::time::timeout(EVENT_TIMEOUT, watch.next()).await {
            Err(_) => bail!("stalled after {} events", keys.len()),
            Ok(None) => bail!("stream ended without an error after {} events", keys.len()),
            Ok(Some(Err(StoreError::WatcherLagged))) => {
                // Allowed, and it must be the stream's last item.
                ensure!(watch.next().await.is_none(), "events after WatcherLagged");
                return Ok(());
            }
            Ok(Some(Err(other))) => bail!("{other}"),
            Ok(Some(Ok(WatchEvent::Progress { .. }))) => {}
            Ok(Some(Ok(event))) => {
                ensure!(event.revision() > last, "gap or duplicate at {event:?}");
                last = event.revision();
                ensure!(keys.insert(kv_of(&event)?.key.clone()), "duplicate key");
            }
        }
    }
    Ok(())
}

pub async fn concurrent_writers_get_distinct_consecutive_revisions(
    store: Arc<dyn Store>,
) -> anyhow::Result<()> {
    const WRITERS: usize = 32;
    const TXNS: usize = 20;
    let start = store.current_revision().await?;
    let mut tasks = Vec::new();
    for writer in 0..WRITERS {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut revisions = Vec::new();
            for i in 0..TXNS {
                let key = format!("/conc/{writer}/{i}");
                revisions.push((write(&*store, vec![put(&key, "v")]).await?, key));
            }
            anyhow::Ok(revisions)
        }));
    }
    let mut by_revision = BTreeMap::new();
    for task in tasks {
        for (revision, key) in task.await?? {
            ensure!(
                by_revision.insert(revision, key).is_none(),
                "revision {revision} reused"
            );
        }
    }
    let revisions: Vec<_> = by_revision.keys().copied().collect();
    let expected: Vec<_> = (start + 1..=start + (WRITERS * TXNS) as Revision).collect();
    ensure!(revisions == expected, "revisions are not consecutive");
    ensure!(store.current_revision().await? == start + (WRITERS * TXNS) as Revision);
    for (revision, key) in &by_revision {
        let kv = get_kv(&*store, key)
            .await?
            .ok_or_else(|| anyhow!("{key} lost"))?;
        ensure!(kv.mod_revision == *revision);
    }
    Ok(())
}

pub async fn concurrent_compare_and_swap_increments_are_serializable(
    store: Arc<dyn Store>,
) -> anyhow::Result<()> {
    const WORKERS: usize = 16;
    const INCREMENTS: usize = 10;
    write(&*store, vec![put("/counter", "0")]).await?;
    let mut tasks = Vec::new();
    for _ in 0..WORKERS {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut conflicts = 0usize;
            for _ in 0..INCREMENTS {
                loop {
                    let current = get_kv(&*store, "/counter").await?.context("counter")?;
                    let value: u64 = String::from_utf8_lossy(&current.value).parse()?;
                    let response = store
                        .txn(Txn {
                            compares: vec![Compare::ModRevision {
                                key: "/counter".into(),
                                revision: current.mod_revision,
                            }],
                            success: vec![put("/counter", &(value + 1).to_string())],
                            failure: vec![],
                        })
                        .await?;
                    if response.succeeded {
                        break;
                    }
                    conflicts += 1;
                }
            }
            anyhow::Ok(conflicts)
        }));
    }
    for task in tasks {
        task.await??;
    }
    let counter = get_kv(&*store, "/counter").await?.context("counter")?;
    ensure!(
        counter.value == (WORKERS * INCREMENTS).to_string(),
        "lost updates: {counter:?}"
    );
    ensure!(counter.version == (WORKERS * INCREMENTS + 1) as i64);
    Ok(())
}
