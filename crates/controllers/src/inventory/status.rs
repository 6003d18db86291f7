//! The ClusterProfile status controller for push-mode clusters.
//!
//! One worker per joined cluster keeps its profile's status true to the member:
//! - `ControlPlaneHealthy`, from probing `/readyz` (falling back to `/healthz` where `/readyz`
//!   is not served) every `period`, with a `timeout`, turning False only after
//!   `failure_threshold` consecutive failures and True again after `success_threshold`
//!   successes (KubeFed's defaults: 10 s, 3 s, 3, 1);
//! - `status.version.kubernetes`, from the member's `/version`;
//! - `status.properties`, mirroring every ClusterProperty in the member through a watch, so
//!   a change shows within moments; deleted properties disappear. The exception is
//!   `cluster.clusterset.k8s.io`: the ID recorded at join (push) or accept (pull) is
//!   authoritative and never mirrored over; a member reporting another ID gets the condition
//!   `ClusterIDConsistent=False` (reason `ClusterIDMismatch`) instead, lifted once it agrees;
//! - the taints `atoll.io/unreachable` and `atoll.io/not-ready` (effect NoExecute) in
//!   `spec.taints` while the cluster is unhealthy, lifted when it recovers. Other taints are
//!   left as they are.
//!
//! The set of workers follows the set of ClusterProfiles managed by Atoll (level-triggered: a
//! watch on profiles starts and stops workers). Status writes happen only when something
//! changed, so a steady fleet costs no writes.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use atoll_api::about::CLUSTER_ID_PROPERTY;
use atoll_api::cluster_profile::{
    CONDITION_CLUSTER_ID_CONSISTENT, CONDITION_CONTROL_PLANE_HEALTHY, ClusterProfile,
    ClusterVersion, Property, TAINT_NOT_READY, TAINT_UNREACHABLE, Taint, TaintEffect,
};
use atoll_api::conditions;
use futures::{Stream, StreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::runtime::{WatchStreamExt, reflector};
use kube::{Client, ResourceExt};
use tokio_util::task::AbortOnDropHandle;
use tracing::{debug, info, warn};

use super::join::member_http_from_secret;
use super::names::{LABEL_CLUSTER_NAME, cluster_namespace};
use super::profiles::{ClusterWorkers, Gone, ProfileEvents, ProfileFeed, WorkerSet};
use super::property_watch::{self, Properties};
use super::pull::{
    AGENT_LEASE, AGENT_STATUS_CONFIGMAP, STATUS_KEY_MCS_CRDS_MISSING, STATUS_KEY_PROPERTIES,
    STATUS_KEY_READY, STATUS_KEY_VERSION,
};
use crate::client::{Answer, MemberHttp, read_limited};

/// Health-check settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthConfig {
    /// Time between probes.
    pub period: Duration,
    /// How long one probe may take.
    pub timeout: Duration,
    /// Consecutive failures before the cluster is unhealthy.
    pub failure_threshold: u32,
    /// Consecutive successes before an unhealthy cluster is healthy again.
    pub success_threshold: u32,
    /// How long a pull-mode cluster's agent may go without renewing its Lease before the
    /// cluster's health is Unknown and it is tainted unreachable.
    pub lease_grace: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            period: Duration::from_secs(10),
            timeout: Duration::from_secs(3),
            failure_threshold: 3,
            success_threshold: 1,
            lease_grace: Duration::from_secs(40),
        }
    }
}

/// The outcome of one probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// The API server said it is ready.
    Ready,
    /// The API server answered, but not ready.
    NotReady(String),
    /// No answer.
    Unreachable(String),
}

/// Turns a sequence of probes into a health verdict with thresholds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthTracker {
    config: HealthConfig,
    healthy: Option<bool>,
    successes: u32,
    failures: u32,
    last: Option<Probe>,
}

impl HealthTracker {
    /// A tracker that has seen no probe.
    pub fn new(config: HealthConfig) -> Self {
        HealthTracker {
            config,
            healthy: None,
            successes: 0,
            failures: 0,
            last: None,
        }
    }

    /// Records a probe; returns the verdict: `None` while still unknown.
    pub fn observe(&mut self, probe: Probe) -> Option<bool> {
        if probe == Probe::Ready {
            self.successes += 1;
            self.failures = 0;
            if self.healthy != Some(true)
                && (self.healthy.is_none() || self.successes >= self.config.success_threshold)
            {
                self.healthy = Some(true);
            }
        } else {
            self.failures += 1;
            self.successes = 0;
            if self.healthy != Some(false) && self.failures >= self.config.failure_threshold {
                self.healthy = Some(false);
            }
        }
        self.last = Some(probe);
        self.healthy
    }

    /// The health taint the cluster should carry: `Some(None)` for none, `None` while the
    /// verdict is unknown (taints are then left as they are).
    pub fn taint(&self) -> Option<Option<&'static str>> {
        match (self.healthy?, self.last.as_ref()?) {
            (true, _) => Some(None),
            (false, Probe::NotReady(_)) => Some(Some(TAINT_NOT_READY)),
            (false, _) => Some(Some(TAINT_UNREACHABLE)),
        }
    }

    /// The condition to publish: (status, reason, message).
    pub fn condition(&self) -> (&'static str, &'static str, String) {
        let last = match &self.last {
            None => return (conditions::UNKNOWN, "NotProbed", "not probed yet".into()),
            Some(last) => last,
        };
        match (self.healthy, last) {
            (Some(true), Probe::Ready) => (
                conditions::TRUE,
                "Ready",
                "the API server reports ready".into(),
            ),
            (Some(true), failing) => (
                conditions::TRUE,
                "Ready",
                format!(
                    "ready, but the last {} probe(s) failed ({}); unhealthy after {}",
                    self.failures,
                    describe(failing),
                    self.config.failure_threshold
                ),
            ),
            (Some(false), Probe::Unreachable(why)) => (
                conditions::FALSE,
                "Unreachable",
                format!(
                    "{} consecutive probes failed; last: {why}",
                    self.failures.max(1)
                ),
            ),
            (Some(false), Probe::NotReady(why)) => (
                conditions::FALSE,
                "NotReady",
                format!("the API server is not ready: {why}"),
            ),
            (Some(false), Probe::Ready) => (
                conditions::FALSE,
                "Recovering",
                format!(
                    "answered ready {} time(s); healthy after {}",
                    self.successes, self.config.success_threshold
                ),
            ),
            (None, last) => (
                conditions::UNKNOWN,
                "Probing",
                format!("first probes failing: {}", describe(last)),
            ),
        }
    }
}

/// A health verdict to publish: the condition, and the taint (`None` leaves taints alone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// (status, reason, message) of `ControlPlaneHealthy`.
    pub condition: (&'static str, &'static str, String),
    /// The health taint wanted: `Some(None)` for none.
    pub taint: Option<Option<&'static str>>,
}

impl Verdict {
    fn of(tracker: &HealthTracker) -> Verdict {
        Verdict {
            condition: tracker.condition(),
            taint: tracker.taint(),
        }
    }
}

fn describe(probe: &Probe) -> String {
    match probe {
        Probe::Ready => "ready".into(),
        Probe::NotReady(why) => format!("not ready: {why}"),
        Probe::Unreachable(why) => format!("unreachable: {why}"),
    }
}

/// How much of a probe's answer is read (a failing `/readyz` lists every check).
const PROBE_ANSWER_LIMIT: usize = 64 * 1024;

/// Probes the member's `/readyz`, and `/healthz` where `/readyz` is not served.
pub async fn probe(member: &MemberHttp, timeout: Duration) -> Probe {
    probe_with(
        |path| async move {
            member
                .get(path, PROBE_ANSWER_LIMIT)
                .await
                .map_err(|e| e.to_string())
        },
        timeout,
    )
    .await
}

/// [`probe`] through a `kube::Client` (the pull-mode agent probes its own cluster so).
pub async fn probe_client(member: &Client, timeout: Duration) -> Probe {
    probe_with(
        |path| async move {
            let request = http::Request::get(path)
                .body(kube::client::Body::from(Vec::new()))
                .map_err(|e| e.to_string())?;
            let response = member.send(request).await.map_err(|e| e.to_string())?;
            let status = response.status();
            let body = read_limited(response.into_body(), PROBE_ANSWER_LIMIT)
                .await
                .map_err(|e| e.to_string())?;
            Ok(Answer { status, body })
        },
        timeout,
    )
    .await
}

async fn probe_with<F, A>(get: F, timeout: Duration) -> Probe
where
    F: Fn(&'static str) -> A,
    A: Future<Output = Result<Answer, String>>,
{
    let attempt = async {
        match get("/readyz").await {
            Ok(answer) if answer.status == http::StatusCode::NOT_FOUND => get("/healthz").await,
            other => other,
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Err(_) => Probe::Unreachable(format!("no answer within {timeout:?}")),
        Ok(Err(why)) => Probe::Unreachable(why),
        Ok(Ok(answer)) if !answer.status.is_success() => Probe::NotReady(format!(
            "HTTP {}: {}",
            answer.status.as_u16(),
            answer.message(200)
        )),
        Ok(Ok(answer)) if answer.body.trim_ascii() == b"ok" => Probe::Ready,
        Ok(Ok(answer)) => Probe::NotReady(answer.message(200)),
    }
}

/// The member's `gitVersion`, from `/version`.
async fn member_version(member: &MemberHttp, timeout: Duration) -> Option<String> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Version {
        git_version: String,
    }
    let answer = tokio::time::timeout(timeout, member.get("/version", PROBE_ANSWER_LIMIT))
        .await
        .ok()?
        .ok()?;
    if !answer.status.is_success() {
        return None;
    }
    serde_json::from_slice::<Version>(&answer.body)
        .ok()
        .map(|v| v.git_version)
}

/// Runs the status controller, with a watch of profiles of its own, until `shutdown` resolves.
pub async fn run(
    hub: Client,
    manager_namespace: String,
    health: HealthConfig,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let mut feed = ProfileFeed::new();
    let profiles = feed.subscribe();
    tokio::join!(
        feed.run(hub.clone(), &manager_namespace),
        run_with(
            hub.clone(),
            manager_namespace.clone(),
            health,
            profiles,
            shutdown
        ),
    );
}

/// Runs the status controller on `profiles` (a shared watch) until `shutdown` resolves or the
/// watch stops.
pub async fn run_with(
    hub: Client,
    manager_namespace: String,
    health: HealthConfig,
    mut profiles: ProfileEvents,
    shutdown: impl std::future::Future<Output = ()>,
) {
    // Workers read profiles from this cache, so a steady fleet costs the hub no reads.
    let cache = profiles.cache().clone();
    let agents = AgentReports::watch(&hub);
    let mut hooks = StatusWorkers {
        hub,
        cache,
        agents,
        manager_namespace,
        health,
    };
    // Dropped at the end, which aborts every worker.
    let mut workers = WorkerSet::new();
    tokio::pin!(shutdown);
    loop {
        let event = tokio::select! {
            () = &mut shutdown => break,
            event = profiles.next() => event,
        };
        let Some(event) = event else { break };
        workers.handle(&event, &mut hooks);
    }
}

/// The status controller's workers: one per Atoll-managed cluster, push or pull.
struct StatusWorkers {
    hub: Client,
    cache: reflector::Store<ClusterProfile>,
    agents: AgentReports,
    manager_namespace: String,
    health: HealthConfig,
}

impl ClusterWorkers for StatusWorkers {
    type Worker = AbortOnDropHandle<()>;

    fn start(&mut self, profile: &ClusterProfile) -> Option<Self::Worker> {
        let name = profile.name_any();
        let pull = super::names::is_pull_mode(profile);
        info!(cluster = %name, pull, "watching cluster");
        let task = if pull {
            tokio::spawn(pull_worker(
                self.hub.clone(),
                self.cache.clone(),
                self.agents.clone(),
                self.manager_namespace.clone(),
                name,
                self.health,
            ))
        } else {
            tokio::spawn(cluster_worker(
                self.hub.clone(),
                self.cache.clone(),
                self.manager_namespace.clone(),
                name,
                self.health,
            ))
        };
        Some(AbortOnDropHandle::new(task))
    }

    fn stop(&mut self, name: String, worker: Option<Self::Worker>, why: Gone) {
        if worker.is_some() && why == Gone::Deleted {
            info!(cluster = %name, "cluster gone; stopping its worker");
        }
        // Dropping the worker aborts it.
        drop(worker);
    }
}

/// Keeps one cluster's profile status up to date until aborted.
async fn cluster_worker(
    hub: Client,
    cache: reflector::Store<ClusterProfile>,
    manager_namespace: String,
    name: String,
    health: HealthConfig,
) {
    let profiles: Api<ClusterProfile> = Api::namespaced(hub.clone(), &manager_namespace);
    let key = ObjectRef::new(&name).within(&manager_namespace);
    let mut tracker = HealthTracker::new(health);
    let mut member: Option<MemberHttp> = None;
    // The member's properties, watched by this task itself (no task of its own per member)
    // from the moment its credentials are read.
    let mut properties: Option<Pin<Box<dyn Stream<Item = Properties> + Send>>> = None;
    let mut observed: Option<Properties> = None;
    let mut ticker = tokio::time::interval(health.period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let probe_due = tokio::select! {
            _ = ticker.tick() => true,
            Some(snapshot) = next_snapshot(&mut properties) => {
                observed = Some(snapshot);
                false
            }
        };
        if member.is_none() {
            match member_http_from_secret(&hub, &manager_namespace, &name).await {
                Ok(Some(http)) => {
                    properties = Some(Box::pin(property_watch::watch(http.clone())));
                    member = Some(http);
                }
                Ok(None) => {
                    debug!(cluster = %name, "no member credentials yet");
                    continue;
                }
                Err(error) => {
                    warn!(cluster = %name, %error, "member credentials unusable");
                    continue;
                }
            }
        }
        let Some(http) = member.as_ref() else {
            continue;
        };
        let mut version = None;
        if probe_due {
            tracker.observe(probe(http, health.timeout).await);
            if tracker.healthy == Some(true) {
                version = member_version(http, health.timeout).await;
            }
        }
        let verdict = probe_due.then(|| Verdict::of(&tracker));
        publish_retrying(
            &profiles,
            &cache,
            &key,
            &name,
            verdict,
            version,
            observed.clone(),
        )
        .await;
    }
}

/// The next snapshot of a property watch; never, while there is none.
async fn next_snapshot(
    watch: &mut Option<Pin<Box<dyn Stream<Item = Properties> + Send>>>,
) -> Option<Properties> {
    match watch {
        Some(stream) => stream.next().await,
        None => std::future::pending().await,
    }
}

/// What pull-mode agents report on the hub: their Leases and status ConfigMaps, cached from
/// two hub-wide watches (labelled with the cluster name), so that a fleet of agents costs one
/// watch each, not one per cluster.
#[derive(Clone)]
struct AgentReports {
    leases: reflector::Store<Lease>,
    reports: reflector::Store<ConfigMap>,
    _tasks: Arc<(AbortOnDropHandle<()>, AbortOnDropHandle<()>)>,
}

impl AgentReports {
    fn watch(hub: &Client) -> AgentReports {
        fn cache<K>(api: Api<K>) -> (reflector::Store<K>, AbortOnDropHandle<()>)
        where
            K: kube::Resource<DynamicType = ()>
                + Clone
                + serde::de::DeserializeOwned
                + std::fmt::Debug
                + Send
                + Sync
                + 'static,
        {
            let (reader, writer) = reflector::store();
            let stream =
                watcher::watcher(api, watcher::Config::default().labels(LABEL_CLUSTER_NAME))
                    .default_backoff()
                    .modify(|object| object.managed_fields_mut().clear())
                    .reflect(writer)
                    .touched_objects();
            let task = tokio::spawn(async move {
                let mut stream = std::pin::pin!(stream);
                while stream.next().await.is_some() {}
            });
            (reader, AbortOnDropHandle::new(task))
        }
        let (leases, lease_task) = cache(Api::<Lease>::all(hub.clone()));
        let (reports, report_task) = cache(Api::<ConfigMap>::all(hub.clone()));
        AgentReports {
            leases,
            reports,
            _tasks: Arc::new((lease_task, report_task)),
        }
    }
}

/// The health of a pull-mode cluster from its agent's Lease: `None` without a lease.
pub fn lease_verdict(
    renewed: Option<Timestamp>,
    member_ready: Option<&str>,
    grace: Duration,
    now: Timestamp,
) -> Verdict {
    let Some(renewed) = renewed else {
        return Verdict {
            condition: (
                conditions::UNKNOWN,
                "AgentNotConnected",
                "the cluster's agent has not renewed its lease yet".into(),
            ),
            taint: None,
        };
    };
    let silent = Duration::try_from(now.duration_since(renewed)).unwrap_or(Duration::ZERO);
    if silent > grace {
        return Verdict {
            condition: (
                conditions::UNKNOWN,
                "AgentLeaseExpired",
                format!(
                    "the agent has not renewed its lease for {}s (grace {}s); is it running, and can it reach the hub?",
                    silent.as_secs(),
                    grace.as_secs()
                ),
            ),
            taint: Some(Some(TAINT_UNREACHABLE)),
        };
    }
    match member_ready {
        Some(why) if why != "ok" => Verdict {
            condition: (
                conditions::FALSE,
                "NotReady",
                format!("the agent reports the API server not ready: {why}"),
            ),
            taint: Some(Some(TAINT_NOT_READY)),
        },
        _ => Verdict {
            condition: (
                conditions::TRUE,
                "AgentReporting",
                "the agent renews its lease and reports the API server ready".into(),
            ),
            taint: Some(None),
        },
    }
}

/// The most of an agent's report of missing MCS CRDs that its profile repeats (the agent says
/// which kinds it lacks in one short sentence).
const MCS_REPORT_MAX_CHARS: usize = 256;

/// Keeps a pull-mode cluster's profile status true to what its agent reports, until aborted.
async fn pull_worker(
    hub: Client,
    cache: reflector::Store<ClusterProfile>,
    agents: AgentReports,
    manager_namespace: String,
    name: String,
    health: HealthConfig,
) {
    let profiles: Api<ClusterProfile> = Api::namespaced(hub.clone(), &manager_namespace);
    let key = ObjectRef::new(&name).within(&manager_namespace);
    let namespace = cluster_namespace(&name);
    let lease_key = ObjectRef::new(AGENT_LEASE).within(&namespace);
    let report_key = ObjectRef::new(AGENT_STATUS_CONFIGMAP).within(&namespace);
    // Reading the caches is cheap; a short tick keeps mirrored properties well within 5 s.
    let mut ticker = tokio::time::interval(Duration::from_secs(1).min(health.lease_grace));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let renewed = agents
            .leases
            .get(&lease_key)
            .and_then(|lease| lease.spec.as_ref()?.renew_time.clone())
            .map(|t| t.0);
        let report = agents.reports.get(&report_key);
        let data = report
            .as_ref()
            .and_then(|r| r.data.clone())
            .unwrap_or_default();
        let verdict = lease_verdict(
            renewed,
            data.get(STATUS_KEY_READY).map(String::as_str),
            health.lease_grace,
            Timestamp::now(),
        );
        let version = data.get(STATUS_KEY_VERSION).cloned();
        let observed = report.as_ref().map(|_| {
            data.get(STATUS_KEY_PROPERTIES)
                .and_then(|p| serde_json::from_str::<Properties>(p).ok())
                .unwrap_or_default()
        });
        publish_retrying(
            &profiles,
            &cache,
            &key,
            &name,
            Some(verdict),
            version,
            observed,
        )
        .await;
        // What the agent found of the MCS CRDs: the same condition as push mode's, with at
        // most a sentence of what the agent wrote.
        if let Some(missing) = data.get(STATUS_KEY_MCS_CRDS_MISSING) {
            let missing: Option<String> =
                (!missing.is_empty()).then(|| missing.chars().take(MCS_REPORT_MAX_CHARS).collect());
            if let Err(error) =
                crate::mcs::publish_crd_condition(&profiles, &cache, &key, missing.as_deref()).await
            {
                debug!(cluster = %name, %error, "writing the MCS condition; again at the next tick");
            }
        }
    }
}

/// [`publish`], again after a conflict: the cached profile was behind (the worker's own last
/// write, or someone else's, has not reached the cache yet), so give the watch a moment rather
/// than waiting a whole health period.
async fn publish_retrying(
    profiles: &Api<ClusterProfile>,
    cache: &reflector::Store<ClusterProfile>,
    key: &ObjectRef<ClusterProfile>,
    name: &str,
    health: Option<Verdict>,
    version: Option<String>,
    observed: Option<Properties>,
) {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let permit = super::hub_request_permit().await;
        let result = publish(
            profiles,
            cache.get(key),
            name,
            health.clone(),
            version.clone(),
            observed.clone(),
        )
        .await;
        drop(permit);
        match result {
            Ok(()) => return,
            Err(kube::Error::Api(status)) if status.code == 409 && attempt < 10 => {
                debug!(cluster = %name, attempt, "profile changed meanwhile; writing again");
                tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
            }
            Err(error) => {
                warn!(cluster = %name, %error, "updating the ClusterProfile status");
                return;
            }
        }
    }
}

/// Writes the status fields that differ from what the profile shows.
async fn publish(
    profiles: &Api<ClusterProfile>,
    cached: Option<Arc<ClusterProfile>>,
    name: &str,
    health: Option<Verdict>,
    version: Option<String>,
    observed: Option<Properties>,
) -> Result<(), kube::Error> {
    let Some(profile) = cached else {
        return Ok(());
    };
    let current = profile.status.clone().unwrap_or_default();
    let mut status = current.clone();
    let now = Time(Timestamp::now());
    if let Some(verdict) = &health {
        let (state, reason, message) = verdict.condition.clone();
        conditions::set(
            &mut status.conditions,
            conditions::condition(
                CONDITION_CONTROL_PLANE_HEALTHY,
                state,
                reason,
                message,
                profile.metadata.generation,
                now.clone(),
            ),
        );
    }
    if let Some(version) = version {
        status.version = Some(ClusterVersion {
            kubernetes: Some(version),
        });
    }
    if let Some(observed) = observed {
        status.properties = mirror(&current.properties, &observed, &now);
        let recorded = current
            .property(CLUSTER_ID_PROPERTY)
            .map(|p| p.value.as_str());
        let reported = observed.get(CLUSTER_ID_PROPERTY).map(String::as_str);
        match id_mismatch(recorded, reported) {
            Some(message) => {
                if conditions::set(
                    &mut status.conditions,
                    conditions::condition(
                        CONDITION_CLUSTER_ID_CONSISTENT,
                        conditions::FALSE,
                        REASON_CLUSTER_ID_MISMATCH,
                        message,
                        profile.metadata.generation,
                        now.clone(),
                    ),
                ) {
                    warn!(
                        cluster = %name,
                        recorded = recorded.unwrap_or_default(),
                        reported = reported.unwrap_or_default(),
                        "the member reports another cluster ID than the one recorded; keeping the recorded one"
                    );
                }
            }
            None => {
                let before = status.conditions.len();
                status
                    .conditions
                    .retain(|c| c.type_ != CONDITION_CLUSTER_ID_CONSISTENT);
                if status.conditions.len() != before {
                    info!(cluster = %name, "the member reports its recorded cluster ID again");
                }
            }
        }
    }
    if let Some(wanted) = health.and_then(|verdict| verdict.taint) {
        let taints = with_health_taint(&profile.spec.taints, wanted, &now);
        if taints != profile.spec.taints {
            // Merge patch with the resourceVersion read above: a concurrent edit of the
            // taints (by a user) makes this write fail and the next round retry, never lose it.
            profiles
                .patch(
                    name,
                    &PatchParams::default(),
                    &Patch::Merge(serde_json::json!({
                        "metadata": {"resourceVersion": profile.metadata.resource_version},
                        "spec": {"taints": taints},
                    })),
                )
                .await?;
        }
    }
    if status == current {
        return Ok(());
    }
    profiles
        .patch_status(
            name,
            &PatchParams::default(),
            // Conditions are written as a whole list computed from the cached profile, so the
            // write is conditional on that profile being current: otherwise a condition written
            // meanwhile by someone else (Joined, at join or accept) would be lost.
            &Patch::Merge(serde_json::json!({
                "metadata": {"resourceVersion": profile.metadata.resource_version},
                "status": {
                "conditions": status.conditions,
                "version": status.version,
                "properties": status.properties,
            }})),
        )
        .await?;
    Ok(())
}

/// `taints` with Atoll's health taints replaced by `wanted`; the user's taints stay, and a
/// taint that stays keeps its `timeAdded`.
pub fn with_health_taint(taints: &[Taint], wanted: Option<&str>, now: &Time) -> Vec<Taint> {
    let mut result: Vec<Taint> = taints
        .iter()
        .filter(|t| {
            let ours = t.key == TAINT_UNREACHABLE || t.key == TAINT_NOT_READY;
            !ours || Some(t.key.as_str()) == wanted
        })
        .cloned()
        .collect();
    if let Some(key) = wanted
        && !result.iter().any(|t| t.key == key)
    {
        result.push(Taint {
            key: key.to_owned(),
            value: None,
            effect: TaintEffect::NoExecute,
            time_added: Some(now.clone()),
        });
    }
    result
}

/// Reason of `ClusterIDConsistent=False`.
pub const REASON_CLUSTER_ID_MISMATCH: &str = "ClusterIDMismatch";

/// The `ClusterIDConsistent=False` message when the member reports (`reported`) another
/// cluster ID than the one recorded at join or accept (`recorded`); `None` when they agree,
/// or when either is missing (nothing recorded yet, or no report of that property).
pub fn id_mismatch(recorded: Option<&str>, reported: Option<&str>) -> Option<String> {
    let (recorded, reported) = (recorded?, reported?);
    (recorded != reported).then(|| {
        format!(
            "the member reports cluster ID {reported:?} in its cluster.clusterset.k8s.io ClusterProperty, but this cluster joined as {recorded:?}, which stays its ID; \
             restore the member's ClusterProperty to {recorded:?}, or unjoin the cluster and join it again to take a new ID"
        )
    })
}

/// The profile's properties after observing the member's ClusterProperties: one per
/// property, in name order; `lastObservedTime` moves only when a value changes, so an
/// unchanged fleet writes nothing. Values longer than a profile allows are left out.
/// `cluster.clusterset.k8s.io` is never taken from the member: the recorded one (from join
/// or accept) stays as it is, and absent stays absent.
pub fn mirror(current: &[Property], observed: &Properties, now: &Time) -> Vec<Property> {
    let previous: BTreeMap<&str, &Property> =
        current.iter().map(|p| (p.name.as_str(), p)).collect();
    let recorded_id = previous.get(CLUSTER_ID_PROPERTY).map(|p| (*p).clone());
    // `observed` is ordered by name, so the result is too.
    let mut result: Vec<Property> = observed
        .iter()
        .filter(|(name, _)| name.as_str() != CLUSTER_ID_PROPERTY)
        .filter(|(_, value)| !value.is_empty() && value.len() <= 1024)
        .map(|(name, value)| {
            let unchanged = previous
                .get(name.as_str())
                .filter(|old| old.value == *value && old.last_observed_time.is_some());
            Property {
                name: name.clone(),
                value: value.clone(),
                last_observed_time: match unchanged {
                    Some(old) => old.last_observed_time.clone(),
                    None => Some(now.clone()),
                },
            }
        })
        .collect();
    if let Some(id) = recorded_id {
        let at = result.partition_point(|p| p.name < id.name);
        result.insert(at, id);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(failure_threshold: u32, success_threshold: u32) -> HealthConfig {
        HealthConfig {
            failure_threshold,
            success_threshold,
            ..HealthConfig::default()
        }
    }

    #[test]
    fn health_turns_only_after_the_thresholds() {
        let mut tracker = HealthTracker::new(config(3, 2));
        assert_eq!(tracker.condition().0, conditions::UNKNOWN);
        assert_eq!(
            tracker.observe(Probe::Ready),
            Some(true),
            "first success decides"
        );
        let down = || Probe::Unreachable("timeout".into());
        assert_eq!(tracker.observe(down()), Some(true));
        assert_eq!(tracker.observe(down()), Some(true));
        assert_eq!(tracker.condition().0, conditions::TRUE);
        assert_eq!(tracker.observe(down()), Some(false), "third failure");
        assert_eq!(tracker.condition().1, "Unreachable");
        assert_eq!(
            tracker.observe(Probe::Ready),
            Some(false),
            "one success is not enough"
        );
        assert_eq!(tracker.condition().1, "Recovering");
        assert_eq!(tracker.observe(Probe::Ready), Some(true));
        assert_eq!(tracker.observe(Probe::NotReady("etcd".into())), Some(true));
    }

    #[test]
    fn pull_clusters_are_judged_by_their_agents_lease() {
        let now = Timestamp::from_second(10_000).unwrap_or_default();
        let grace = Duration::from_secs(40);
        let ago = |s: i64| Some(Timestamp::from_second(10_000 - s).unwrap_or_default());
        let never = lease_verdict(None, None, grace, now);
        assert_eq!(never.condition.1, "AgentNotConnected");
        assert_eq!(never.taint, None, "no lease yet: taints left alone");
        let fresh = lease_verdict(ago(5), Some("ok"), grace, now);
        assert_eq!(
            (fresh.condition.0, fresh.condition.1),
            (conditions::TRUE, "AgentReporting")
        );
        assert_eq!(fresh.taint, Some(None));
        let stale = lease_verdict(ago(41), Some("ok"), grace, now);
        assert_eq!(
            (stale.condition.0, stale.condition.1),
            (conditions::UNKNOWN, "AgentLeaseExpired")
        );
        assert_eq!(stale.taint, Some(Some(TAINT_UNREACHABLE)));
        let not_ready = lease_verdict(ago(5), Some("etcd failed"), grace, now);
        assert_eq!(not_ready.condition.0, conditions::FALSE);
        assert!(not_ready.condition.2.contains("etcd failed"));
        assert_eq!(not_ready.taint, Some(Some(TAINT_NOT_READY)));
    }

    #[test]
    fn a_failing_start_stays_unknown_until_the_threshold() {
        let mut tracker = HealthTracker::new(config(2, 1));
        assert_eq!(tracker.observe(Probe::NotReady("etcd".into())), None);
        assert_eq!(tracker.condition().0, conditions::UNKNOWN);
        assert_eq!(tracker.observe(Probe::NotReady("etcd".into())), Some(false));
        assert_eq!(tracker.condition().1, "NotReady");
    }

    #[test]
    fn health_taints_replace_each_other_and_leave_user_taints() {
        let now = Time(Timestamp::from_second(1_000).unwrap_or_default());
        let user = Taint {
            key: "example.com/maintenance".into(),
            value: Some("true".into()),
            effect: TaintEffect::NoSchedule,
            time_added: None,
        };
        let unreachable =
            with_health_taint(std::slice::from_ref(&user), Some(TAINT_UNREACHABLE), &now);
        assert_eq!(unreachable.len(), 2);
        assert_eq!(unreachable[1].key, TAINT_UNREACHABLE);
        assert_eq!(unreachable[1].effect, TaintEffect::NoExecute);
        let later = Time(Timestamp::from_second(2_000).unwrap_or_default());
        assert_eq!(
            with_health_taint(&unreachable, Some(TAINT_UNREACHABLE), &later),
            unreachable,
            "a taint that stays keeps its time"
        );
        let not_ready = with_health_taint(&unreachable, Some(TAINT_NOT_READY), &later);
        assert_eq!(
            not_ready.iter().map(|t| t.key.as_str()).collect::<Vec<_>>(),
            ["example.com/maintenance", TAINT_NOT_READY]
        );
        assert_eq!(with_health_taint(&not_ready, None, &later), [user]);

        let mut tracker = HealthTracker::new(config(1, 1));
        assert_eq!(tracker.taint(), None, "unknown: leave taints alone");
        tracker.observe(Probe::Unreachable("down".into()));
        assert_eq!(tracker.taint(), Some(Some(TAINT_UNREACHABLE)));
        tracker.observe(Probe::Ready);
        assert_eq!(tracker.taint(), Some(None));
    }

    fn properties(pairs: &[(&str, &str)]) -> Properties {
        pairs
            .iter()
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
            .collect()
    }

    #[test]
    fn mirroring_keeps_observation_times_of_unchanged_values() {
        let t1 = Time(Timestamp::from_second(1_000).unwrap_or_default());
        let t2 = Time(Timestamp::from_second(2_000).unwrap_or_default());
        let first = mirror(&[], &properties(&[("b", "1"), ("a", "x")]), &t1);
        assert_eq!(
            first.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        let second = mirror(&first, &properties(&[("a", "x"), ("b", "2")]), &t2);
        assert_eq!(
            second[0].last_observed_time,
            Some(t1.clone()),
            "a unchanged"
        );
        assert_eq!(second[1].last_observed_time, Some(t2.clone()), "b changed");
        let third = mirror(&second, &properties(&[("a", "x")]), &t2);
        assert_eq!(third.len(), 1, "deleted properties disappear");
        let huge = mirror(&[], &properties(&[("big", &"v".repeat(1025))]), &t1);
        assert!(huge.is_empty());
    }

    #[test]
    fn the_recorded_cluster_id_is_never_mirrored_over() {
        let t1 = Time(Timestamp::from_second(1_000).unwrap_or_default());
        let t2 = Time(Timestamp::from_second(2_000).unwrap_or_default());
        let recorded = vec![Property {
            name: CLUSTER_ID_PROPERTY.into(),
            value: "east".into(),
            last_observed_time: Some(t1.clone()),
        }];
        let forged = properties(&[(CLUSTER_ID_PROPERTY, "west"), ("a", "x"), ("z", "y")]);
        let mirrored = mirror(&recorded, &forged, &t2);
        assert_eq!(
            mirrored
                .iter()
                .map(|p| (p.name.as_str(), p.value.as_str()))
                .collect::<Vec<_>>(),
            [("a", "x"), (CLUSTER_ID_PROPERTY, "east"), ("z", "y")]
        );
        assert!(
            mirror(&[], &forged, &t2)
                .iter()
                .all(|p| p.name != CLUSTER_ID_PROPERTY),
            "an ID is recorded by join or accept, never by the mirror"
        );
        let message = id_mismatch(Some("east"), Some("west")).unwrap_or_default();
        assert!(message.contains("\"east\"") && message.contains("\"west\""));
        assert!(message.contains("unjoin"));
        assert_eq!(id_mismatch(Some("east"), Some("east")), None);
        assert_eq!(id_mismatch(Some("east"), None), None);
    }
}
