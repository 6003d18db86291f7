//! One watch of the Atoll-managed ClusterProfiles, shared by the hub-side controllers that
//! follow them (status, Work, MCS): when they run together they cost the hub one
//! list-and-watch and keep one cache, not one of each per controller.
//!
//! kube-runtime's shared reflector (`unstable-runtime-subscribe`) hands its subscribers only
//! the objects applied, never a deletion nor the end of a relist, which is what tells these
//! controllers to stop a worker; so the feed passes on the watcher's events themselves. Each
//! subscriber has its own unbounded queue: nothing is dropped, and a subscriber that is slow
//! for a moment holds up neither the watch nor the others (each only starts and stops tasks).
//!
//! The cache is updated before an event is passed on, exactly as `reflect` does, so a
//! subscriber that sees an event finds the cache at least as new.
//!
//! [`WorkerSet`] is what each of those controllers does with the events: one worker per
//! cluster, started and stopped as its profile comes and goes, with the controller's own
//! decisions (which clusters qualify, what a worker is) as [`ClusterWorkers`] hooks.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use atoll_api::cluster_profile::{ATOLL_CLUSTER_MANAGER, ClusterProfile, LABEL_CLUSTER_MANAGER};
use futures::{Stream, StreamExt};
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, Event};
use kube::{Client, ResourceExt};
use tokio::sync::mpsc;
use tracing::warn;

/// A ClusterProfile watch event, shared by every subscriber.
pub type ProfileEvent = Arc<Event<ClusterProfile>>;

/// The watch and cache of the Atoll-managed ClusterProfiles in the manager namespace, before
/// it runs: take every [`subscribe`](ProfileFeed::subscribe) first, then [`run`](ProfileFeed::run)
/// it (so that no subscriber misses the first listing).
pub struct ProfileFeed {
    writer: reflector::store::Writer<ClusterProfile>,
    subscribers: Vec<mpsc::UnboundedSender<ProfileEvent>>,
}

/// One subscriber's view of a [`ProfileFeed`]: every watch event in order, and the cache.
pub struct ProfileEvents {
    cache: Store<ClusterProfile>,
    events: mpsc::UnboundedReceiver<ProfileEvent>,
}

impl ProfileEvents {
    /// The shared cache of profiles (without managedFields).
    pub fn cache(&self) -> &Store<ClusterProfile> {
        &self.cache
    }

    /// The next watch event; `None` once the feed has stopped.
    pub async fn next(&mut self) -> Option<ProfileEvent> {
        self.events.recv().await
    }
}

impl Default for ProfileFeed {
    fn default() -> Self {
        Self::new()
    }
}

impl ProfileFeed {
    /// A feed with no subscriber yet.
    pub fn new() -> Self {
        ProfileFeed {
            writer: reflector::store::Writer::default(),
            subscribers: Vec::new(),
        }
    }

    /// A new subscriber, which will see every event from the first listing on.
    pub fn subscribe(&mut self) -> ProfileEvents {
        let (sender, events) = mpsc::unbounded_channel();
        self.subscribers.push(sender);
        ProfileEvents {
            cache: self.writer.as_reader(),
            events,
        }
    }

    /// Watches the Atoll-managed ClusterProfiles in `manager_namespace` (relisting after
    /// errors, with backoff) until every subscriber is gone.
    pub async fn run(self, hub: Client, manager_namespace: &str) {
        let profiles: Api<ClusterProfile> = Api::namespaced(hub, manager_namespace);
        let config = watcher::Config::default()
            .labels(&format!("{LABEL_CLUSTER_MANAGER}={ATOLL_CLUSTER_MANAGER}"));
        let events = watcher::watcher(profiles, config).default_backoff();
        self.feed(events).await;
    }

    /// Applies `events` to the cache and passes them on, until they end or every subscriber
    /// is gone.
    async fn feed(
        mut self,
        events: impl Stream<Item = Result<Event<ClusterProfile>, watcher::Error>>,
    ) {
        let mut events = std::pin::pin!(events);
        loop {
            let event = tokio::select! {
                event = events.next() => event,
                () = all_closed(&self.subscribers) => break,
            };
            let Some(event) = event else { break };
            let event = match event {
                // Nothing downstream reads managedFields, most of a profile's size.
                Ok(event) => event.modify(|profile| profile.managed_fields_mut().clear()),
                Err(error) => {
                    warn!(%error, "watching ClusterProfiles");
                    continue;
                }
            };
            self.writer.apply_watcher_event(&event);
            let event = Arc::new(event);
            self.subscribers
                .retain(|subscriber| subscriber.send(event.clone()).is_ok());
        }
    }
}

/// Resolves once every subscriber has dropped its receiver.
async fn all_closed(subscribers: &[mpsc::UnboundedSender<ProfileEvent>]) {
    for subscriber in subscribers {
        subscriber.closed().await;
    }
}

/// Why a cluster's worker stops (or, for [`Gone::Deleting`] and [`Gone::Deleted`], why a
/// cluster without one is forgotten).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gone {
    /// The profile is being deleted (it has a deletionTimestamp).
    Deleting,
    /// The watch saw the profile deleted.
    Deleted,
    /// A relist did not list the profile: it was deleted while the watch was down.
    Vanished,
}

/// What a controller runs per cluster, and its own decisions about which clusters qualify:
/// the hooks of a [`WorkerSet`].
pub trait ClusterWorkers {
    /// A cluster's worker (its task, stopped or aborted when dropped or stopped).
    type Worker;

    /// A live profile (no deletionTimestamp) was applied and its cluster has no worker: the
    /// worker to start, or `None` if the cluster does not qualify (yet).
    fn start(&mut self, profile: &ClusterProfile) -> Option<Self::Worker>;

    /// The cluster is gone, with its worker if it had one. Called for every profile being
    /// deleted or deleted, and for the worker of every profile a relist no longer lists.
    fn stop(&mut self, name: String, worker: Option<Self::Worker>, why: Gone);

    /// A relist ended, listing `listed` (before [`stop`](ClusterWorkers::stop) is called for
    /// the workers of the profiles it no longer lists): for a controller that remembers
    /// clusters without workers.
    fn relisted(&mut self, _listed: &HashSet<String>) {}
}

/// The workers of a controller that runs one per Atoll-managed ClusterProfile (status, Work
/// and MCS): a profile applied starts its cluster's worker if the controller's hooks say so;
/// a profile being deleted, deleted, or missing from a relist stops it (level-triggered).
///
/// The names a relist lists are collected only between its `Init` and `InitDone`, as a set:
/// status writes, each an `Apply` of a profile, cost no bookkeeping.
pub struct WorkerSet<W> {
    workers: HashMap<String, W>,
    /// The profiles listed so far, while a relist is under way.
    relist: Option<HashSet<String>>,
}

impl<W> Default for WorkerSet<W> {
    fn default() -> Self {
        Self::new()
    }
}

impl<W> WorkerSet<W> {
    /// No worker yet.
    pub fn new() -> Self {
        WorkerSet {
            workers: HashMap::new(),
            relist: None,
        }
    }

    /// Follows one watch event, starting and stopping workers through `hooks`.
    pub fn handle<H>(&mut self, event: &Event<ClusterProfile>, hooks: &mut H)
    where
        H: ClusterWorkers<Worker = W>,
    {
        match event {
            Event::Apply(profile) | Event::InitApply(profile) => {
                let name = profile.name_any();
                if let Some(listed) = &mut self.relist {
                    listed.insert(name.clone());
                }
                if profile.metadata.deletion_timestamp.is_some() {
                    let worker = self.workers.remove(&name);
                    hooks.stop(name, worker, Gone::Deleting);
                } else if !self.workers.contains_key(&name)
                    && let Some(worker) = hooks.start(profile)
                {
                    self.workers.insert(name, worker);
                }
            }
            Event::Delete(profile) => {
                let name = profile.name_any();
                let worker = self.workers.remove(&name);
                hooks.stop(name, worker, Gone::Deleted);
            }
            Event::Init => self.relist = Some(HashSet::new()),
            Event::InitDone => {
                // A relist's end without its start (never from kube's watcher) stops nothing.
                let Some(listed) = self.relist.take() else {
                    return;
                };
                hooks.relisted(&listed);
                let vanished: Vec<String> = self
                    .workers
                    .keys()
                    .filter(|name| !listed.contains(*name))
                    .cloned()
                    .collect();
                for name in vanished {
                    let worker = self.workers.remove(&name);
                    hooks.stop(name, worker, Gone::Vanished);
                }
            }
        }
    }

    /// Whether `name` has a worker.
    pub fn contains(&self, name: &str) -> bool {
        self.workers.contains_key(name)
    }

    /// Starts `name`'s worker with `start` unless it has one (for a controller that starts
    /// workers on other events too).
    pub fn start_with(&mut self, name: &str, start: impl FnOnce() -> W) {
        if !self.workers.contains_key(name) {
            self.workers.insert(name.to_owned(), start());
        }
    }

    /// The workers, for a controller's shutdown.
    pub fn into_workers(self) -> impl Iterator<Item = (String, W)> {
        self.workers.into_iter()
    }

    /// How many names the relist under way has collected (0 outside a relist).
    #[cfg(test)]
    fn relist_len(&self) -> usize {
        self.relist.as_ref().map_or(0, HashSet::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use atoll_api::cluster_profile::{ClusterManager, ClusterProfileSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;
    use kube::runtime::reflector::ObjectRef;

    fn profile(name: &str, generation: i64) -> ClusterProfile {
        let mut profile = ClusterProfile::new(
            name,
            ClusterProfileSpec {
                display_name: None,
                cluster_manager: ClusterManager {
                    name: ATOLL_CLUSTER_MANAGER.into(),
                },
                taints: Vec::new(),
            },
        );
        profile.metadata.namespace = Some("atoll-system".into());
        profile.metadata.generation = Some(generation);
        profile.metadata.managed_fields = Some(vec![ManagedFieldsEntry {
            manager: Some("atoll".into()),
            ..Default::default()
        }]);
        profile
    }

    fn describe(event: &Event<ClusterProfile>) -> String {
        match event {
            Event::Init => "init".into(),
            Event::InitApply(p) => format!("init-apply {}", p.name_any()),
            Event::InitDone => "init-done".into(),
            Event::Apply(p) => format!("apply {}", p.name_any()),
            Event::Delete(p) => format!("delete {}", p.name_any()),
        }
    }

    async fn drain(mut subscriber: ProfileEvents) -> Vec<String> {
        let mut seen = Vec::new();
        while let Some(event) = subscriber.next().await {
            if let Event::InitApply(p) | Event::Apply(p) | Event::Delete(p) = &*event {
                assert!(p.managed_fields().is_empty(), "managedFields are dropped");
            }
            seen.push(describe(&event));
        }
        seen
    }

    #[tokio::test]
    async fn every_subscriber_sees_every_event_and_the_cache_follows() {
        let mut feed = ProfileFeed::new();
        let first = feed.subscribe();
        let second = feed.subscribe();
        let cache = first.cache().clone();
        let events = futures::stream::iter([
            Event::Init,
            Event::InitApply(profile("a", 1)),
            Event::InitApply(profile("b", 1)),
            Event::InitDone,
            Event::Apply(profile("a", 2)),
            Event::Delete(profile("b", 1)),
        ])
        .map(Ok);
        feed.feed(events).await;
        let expected = [
            "init",
            "init-apply a",
            "init-apply b",
            "init-done",
            "apply a",
            "delete b",
        ];
        assert_eq!(drain(first).await, expected);
        assert_eq!(drain(second).await, expected, "the feed ended: both end");
        let a = cache.get(&ObjectRef::new("a").within("atoll-system"));
        assert_eq!(a.as_ref().and_then(|a| a.metadata.generation), Some(2));
        assert!(a.is_some_and(|a| a.managed_fields().is_empty()));
        assert!(
            cache
                .get(&ObjectRef::new("b").within("atoll-system"))
                .is_none()
        );
    }

    #[tokio::test]
    async fn the_feed_stops_once_every_subscriber_is_gone() {
        let mut feed = ProfileFeed::new();
        let subscriber = feed.subscribe();
        drop(subscriber);
        // A watch that never ends, as a real one does not.
        let events = futures::stream::pending();
        let stopped =
            tokio::time::timeout(std::time::Duration::from_secs(30), feed.feed(events)).await;
        assert!(stopped.is_ok(), "the feed kept running without subscribers");
    }

    /// Hooks that record what the set asks for; a worker is its cluster's name.
    #[derive(Default)]
    struct Recorder {
        started: Vec<String>,
        stopped: Vec<(String, bool, Gone)>,
        relists: usize,
        /// Clusters that do not qualify for a worker.
        refuse: HashSet<String>,
    }

    impl ClusterWorkers for Recorder {
        type Worker = String;

        fn start(&mut self, profile: &ClusterProfile) -> Option<String> {
            let name = profile.name_any();
            if self.refuse.contains(&name) {
                return None;
            }
            self.started.push(name.clone());
            Some(name)
        }

        fn stop(&mut self, name: String, worker: Option<String>, why: Gone) {
            if let Some(worker) = &worker {
                assert_eq!(worker, &name, "a cluster's own worker is stopped");
            }
            self.stopped.push((name, worker.is_some(), why));
        }

        fn relisted(&mut self, _listed: &HashSet<String>) {
            self.relists += 1;
        }
    }

    fn names<W>(set: &WorkerSet<W>) -> Vec<String> {
        let mut names: Vec<String> = set.workers.keys().cloned().collect();
        names.sort();
        names
    }

    #[test]
    fn status_writes_between_relists_cost_no_bookkeeping() {
        let mut set = WorkerSet::new();
        let mut hooks = Recorder::default();
        set.handle(&Event::Init, &mut hooks);
        for name in ["a", "b", "c"] {
            set.handle(&Event::InitApply(profile(name, 1)), &mut hooks);
        }
        assert_eq!(set.relist_len(), 3);
        set.handle(&Event::InitDone, &mut hooks);
        assert_eq!(set.relist_len(), 0, "the relist's names go with its end");
        // A fleet's status writes: every one an Apply of a profile already followed.
        for round in 0..1000 {
            for name in ["a", "b", "c"] {
                set.handle(&Event::Apply(profile(name, round)), &mut hooks);
                assert_eq!(set.relist_len(), 0, "an Apply outside a relist is not kept");
            }
        }
        assert_eq!(hooks.started, ["a", "b", "c"], "each worker started once");
        assert!(hooks.stopped.is_empty());

        // A relist that no longer lists b (deleted while the watch was down): b's worker
        // stops, a's and c's keep running, and nothing starts again.
        set.handle(&Event::Init, &mut hooks);
        for _ in 0..1000 {
            set.handle(&Event::InitApply(profile("a", 1)), &mut hooks);
        }
        set.handle(&Event::InitApply(profile("c", 1)), &mut hooks);
        assert_eq!(set.relist_len(), 2, "a relist keeps each name once");
        set.handle(&Event::InitDone, &mut hooks);
        assert_eq!(set.relist_len(), 0);
        assert_eq!(hooks.relists, 2);
        assert_eq!(hooks.stopped, [("b".to_owned(), true, Gone::Vanished)]);
        assert_eq!(names(&set), ["a", "c"]);
        assert_eq!(hooks.started, ["a", "b", "c"]);
    }

    #[test]
    fn deletion_stops_a_worker_and_tells_the_hooks_of_clusters_without_one() {
        let mut set = WorkerSet::new();
        let mut hooks = Recorder {
            refuse: HashSet::from(["pull".to_owned()]),
            ..Recorder::default()
        };
        set.handle(&Event::Init, &mut hooks);
        for name in ["a", "b", "pull"] {
            set.handle(&Event::InitApply(profile(name, 1)), &mut hooks);
        }
        set.handle(&Event::InitDone, &mut hooks);
        assert_eq!(
            names(&set),
            ["a", "b"],
            "a cluster the hooks refuse has no worker"
        );

        let mut deleting = profile("a", 2);
        deleting.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ));
        set.handle(&Event::Apply(deleting.clone()), &mut hooks);
        // Still being deleted: no worker starts again.
        set.handle(&Event::Apply(deleting), &mut hooks);
        set.handle(&Event::Delete(profile("b", 1)), &mut hooks);
        set.handle(&Event::Delete(profile("pull", 1)), &mut hooks);
        assert!(names(&set).is_empty());
        assert_eq!(
            hooks.stopped,
            [
                ("a".to_owned(), true, Gone::Deleting),
                ("a".to_owned(), false, Gone::Deleting),
                ("b".to_owned(), true, Gone::Deleted),
                ("pull".to_owned(), false, Gone::Deleted),
            ]
        );
        assert_eq!(hooks.started, ["a", "b"]);

        // Another controller's event (a Work) may start a worker; a profile then applied
        // does not start a second.
        set.start_with("c", || "c".to_owned());
        set.handle(&Event::Apply(profile("c", 1)), &mut hooks);
        assert_eq!(names(&set), ["c"]);
        assert_eq!(hooks.started, ["a", "b"]);
        assert!(set.contains("c"));
        assert_eq!(set.into_workers().count(), 1);
    }
}
