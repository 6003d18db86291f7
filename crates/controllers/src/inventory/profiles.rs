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
}
