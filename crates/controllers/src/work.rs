//! Push-mode Work distribution: one Work applier per joined cluster, run on the hub with the
//! member credentials stored at join.
//!
//! The set of appliers follows the ClusterProfiles managed by Atoll (level-triggered, like the
//! status controller): a profile appears, its cluster's applier starts on the cluster's hub
//! namespace `atoll-cluster-<name>`; the profile goes (the cluster was unjoined), the applier
//! stops and the Works left in that namespace are released from their cleanup finalizer, so
//! the namespace's deletion never waits on a member that is gone. The applier itself
//! (`atoll_work::run`) is the same code the pull-mode agent runs inside a member.
//!
//! An applier starts only once its cluster's namespace holds a Work (seen through one hub-wide
//! watch of Works): an applier holds a watch on the hub and a client of the member, which a
//! fleet of a thousand clusters, most with nothing to apply, should not pay for. Once started,
//! an applier runs until its cluster goes.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::time::Duration;

use atoll_api::cluster_profile::ClusterProfile;
use atoll_api::work::Work;
use atoll_work::ApplierConfig;
use futures::StreamExt;
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::inventory::profiles::{ClusterWorkers, Gone, ProfileEvents, ProfileFeed, WorkerSet};
use crate::inventory::{CLUSTER_NAMESPACE_PREFIX, cluster_namespace, work_member_from_secret};

struct Worker {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

/// Runs one applier per Atoll-managed cluster, with a watch of profiles of its own, until
/// `shutdown` resolves.
pub async fn run(
    hub: Client,
    manager_namespace: String,
    config: ApplierConfig,
    shutdown: impl Future<Output = ()>,
) {
    let mut feed = ProfileFeed::new();
    let profiles = feed.subscribe();
    tokio::join!(
        feed.run(hub.clone(), &manager_namespace),
        run_with(hub, config, profiles, shutdown),
    );
}

/// Runs one applier per Atoll-managed cluster in `profiles` (a shared watch) until `shutdown`
/// resolves or the watch stops.
pub async fn run_with(
    hub: Client,
    config: ApplierConfig,
    mut profiles: ProfileEvents,
    shutdown: impl Future<Output = ()>,
) {
    // Only the namespaces of Works matter here; the appliers watch the Works themselves.
    let mut works = watcher::watcher(Api::<Work>::all(hub.clone()), watcher::Config::default())
        .default_backoff()
        .applied_objects()
        .boxed();
    let mut workers: WorkerSet<Worker> = WorkerSet::new();
    let mut hooks = WorkAppliers {
        hub: hub.clone(),
        config,
        push_clusters: HashMap::new(),
        with_works: HashSet::new(),
    };
    tokio::pin!(shutdown);
    loop {
        let event = tokio::select! {
            () = &mut shutdown => break,
            event = profiles.next() => event,
            work = works.next() => {
                match work {
                    Some(Ok(work)) => {
                        let cluster = work
                            .namespace()
                            .and_then(|ns| ns.strip_prefix(CLUSTER_NAMESPACE_PREFIX).map(str::to_owned));
                        if let Some(cluster) = cluster
                            && hooks.with_works.insert(cluster.clone())
                            && let Some(manager_namespace) = hooks.push_clusters.get(&cluster)
                        {
                            workers.start_with(&cluster, || hooks.spawn(&cluster, manager_namespace));
                        }
                    }
                    Some(Err(error)) => warn!(%error, "watching Works"),
                    None => break,
                }
                continue;
            }
        };
        let Some(event) = event else { break };
        workers.handle(&event, &mut hooks);
    }
    // Shutdown: stop every applier cleanly (in-flight reconciles finish), keep finalizers.
    let mut stopping = Vec::new();
    for (_, worker) in workers.into_workers() {
        let _ = worker.stop.send(());
        stopping.push(worker.task);
    }
    for task in stopping {
        let _ = tokio::time::timeout(Duration::from_secs(20), task).await;
    }
}

/// The Work controller's appliers: one per push-mode cluster whose namespace has held a Work.
struct WorkAppliers {
    hub: Client,
    config: ApplierConfig,
    /// Push-mode clusters whose profiles are live, with their manager namespace (where their
    /// credentials are).
    push_clusters: HashMap<String, String>,
    /// Clusters whose namespace has held a Work.
    with_works: HashSet<String>,
}

impl WorkAppliers {
    fn spawn(&self, name: &str, manager_namespace: &str) -> Worker {
        info!(cluster = %name, "starting the cluster's Work applier");
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(cluster_applier(
            self.hub.clone(),
            manager_namespace.to_owned(),
            name.to_owned(),
            self.config.clone(),
            stopped,
        ));
        Worker { stop, task }
    }
}

impl ClusterWorkers for WorkAppliers {
    type Worker = Worker;

    fn start(&mut self, profile: &ClusterProfile) -> Option<Worker> {
        // A pull-mode cluster's agent runs its applier; the hub holds no credentials.
        if crate::inventory::is_pull_mode(profile) {
            return None;
        }
        let name = profile.name_any();
        let manager_namespace = profile.namespace().unwrap_or_default();
        let start = self
            .with_works
            .contains(&name)
            .then(|| self.spawn(&name, &manager_namespace));
        self.push_clusters.insert(name, manager_namespace);
        start
    }

    fn stop(&mut self, name: String, worker: Option<Worker>, _why: Gone) {
        self.push_clusters.remove(&name);
        if let Some(worker) = worker {
            retire(self.hub.clone(), name, worker);
        }
    }

    fn relisted(&mut self, listed: &HashSet<String>) {
        self.push_clusters.retain(|name, _| listed.contains(name));
    }
}

/// Stops a cluster's applier and releases its Works: the cluster was unjoined.
fn retire(hub: Client, name: String, worker: Worker) {
    info!(cluster = %name, "cluster gone; stopping its Work applier and releasing its Works");
    tokio::spawn(async move {
        let _ = worker.stop.send(());
        if tokio::time::timeout(Duration::from_secs(20), worker.task)
            .await
            .is_err()
        {
            debug!(cluster = %name, "the applier did not stop in time");
        }
        let works: Api<Work> = Api::namespaced(hub, &cluster_namespace(&name));
        match atoll_work::release_finalizers(&works).await {
            Ok(released) => debug!(cluster = %name, released, "released Works"),
            Err(error) => {
                warn!(cluster = %name, %error, "releasing the Works of an unjoined cluster")
            }
        }
    });
}

/// Waits for the member's credentials, then applies the cluster's Works until stopped.
async fn cluster_applier(
    hub: Client,
    manager_namespace: String,
    name: String,
    config: ApplierConfig,
    mut stopped: oneshot::Receiver<()>,
) {
    let namespace = cluster_namespace(&name);
    let mut delay = Duration::from_millis(500);
    let member = loop {
        match work_member_from_secret(&hub, &manager_namespace, &name).await {
            Ok(Some(member)) => break member,
            Ok(None) => debug!(cluster = %name, "no member credentials yet"),
            Err(error) => warn!(cluster = %name, %error, "member credentials unusable"),
        }
        tokio::select! {
            _ = &mut stopped => return,
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(30));
    };
    atoll_work::run(
        Api::namespaced(hub, &namespace),
        member,
        config,
        async move {
            let _ = stopped.await;
        },
    )
    .await;
}
