//! Watch fan-out shared by the embedded backends.
//!
//! The writer publishes each committed revision's events to a bounded broadcast ring, which
//! never blocks it. Each watcher runs its own task: it first replays history from the backend
//! (memory log or the redb log table) up to the revision it subscribed at, then follows the
//! ring. A watcher whose consumer is slow falls behind the ring; it then re-subscribes and
//! catches up from history again, so it sees no gaps and no duplicates. Only when the history
//! it needs has been compacted away does its stream end with [`StoreError::WatcherLagged`].

use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::{broadcast, mpsc};

use crate::{Revision, StoreError, WatchEvent, WatchStream};

/// How the embedded backends run watches.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    /// A watcher with `progress_notify` that sent nothing for this long gets a
    /// [`WatchEvent::Progress`].
    pub progress_interval: Duration,
    /// Revisions buffered in the fan-out ring before a slow watcher must catch up from history.
    pub ring_capacity: usize,
    /// Events buffered per watcher between its task and its stream.
    pub watcher_buffer: usize,
    /// Revisions read from history per step while catching up.
    pub history_chunk: usize,
}

impl Default for WatchOptions {
    fn default() -> Self {
        WatchOptions {
            progress_interval: Duration::from_secs(5),
            ring_capacity: 4096,
            watcher_buffer: 1024,
            history_chunk: 512,
        }
    }
}

/// Every event of one committed revision.
#[derive(Debug)]
pub(crate) struct Batch {
    pub revision: Revision,
    pub events: Vec<WatchEvent>,
}

/// Where a watcher catches up from.
pub(crate) trait History: Send + Sync + 'static {
    /// Events under `prefix` with revisions in `[from, to]`, covering at most `max_revisions`
    /// revisions that hold events; returns them and the last revision covered. Fails with
    /// [`StoreError::Compacted`] when `from` is not after the compacted revision.
    fn read(
        &self,
        prefix: &str,
        from: Revision,
        to: Revision,
        max_revisions: usize,
    ) -> Result<(Vec<WatchEvent>, Revision), StoreError>;
}

struct HubState {
    revision: Revision,
    compacted: Revision,
    sender: broadcast::Sender<Arc<Batch>>,
}

/// The publishing side; dropping it ends every watch.
pub(crate) struct Hub {
    state: Mutex<HubState>,
    options: WatchOptions,
}

impl Hub {
    pub fn new(revision: Revision, compacted: Revision, options: WatchOptions) -> Hub {
        let (sender, _) = broadcast::channel(options.ring_capacity.max(1));
        Hub {
            state: Mutex::new(HubState {
                revision,
                compacted,
                sender,
            }),
            options,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HubState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Publishes committed revisions, in order. Never blocks on watchers.
    pub fn publish(&self, batches: impl IntoIterator<Item = Batch>) {
        let mut state = self.lock();
        for batch in batches {
            state.revision = state.revision.max(batch.revision);
            // No receivers is fine: nobody watches.
            let _ = state.sender.send(Arc::new(batch));
        }
    }

    pub fn set_compacted(&self, compacted: Revision) {
        let mut state = self.lock();
        state.compacted = state.compacted.max(compacted);
    }

    /// A receiver of every revision after the returned one, and the compacted revision.
    fn subscribe(&self) -> (broadcast::Receiver<Arc<Batch>>, Revision, Revision) {
        let state = self.lock();
        (state.sender.subscribe(), state.revision, state.compacted)
    }

    /// Starts a watch; see [`crate::Store::watch`].
    pub fn watch(
        self: &Arc<Self>,
        history: Arc<dyn History>,
        prefix: &str,
        start_revision: Revision,
        progress_notify: bool,
    ) -> Result<WatchStream, StoreError> {
        let (receiver, head, compacted) = self.subscribe();
        let start = if start_revision <= 0 {
            head + 1
        } else {
            start_revision
        };
        if start <= compacted {
            return Err(StoreError::Compacted {
                requested: start,
                compacted,
            });
        }
        let (sender, events) = mpsc::channel(self.options.watcher_buffer.max(1));
        let watcher = Watcher {
            hub: Arc::downgrade(self),
            history,
            prefix: prefix.to_owned(),
            next: start,
            seen: head,
            sender,
            options: self.options.clone(),
        };
        tokio::spawn(watcher.run(receiver, head, progress_notify));
        Ok(futures::stream::unfold(events, |mut events| async move {
            events.recv().await.map(|event| (event, events))
        })
        .boxed())
    }
}

struct Watcher {
    hub: Weak<Hub>,
    history: Arc<dyn History>,
    prefix: String,
    /// The first revision not yet delivered.
    next: Revision,
    /// The newest revision this watcher knows to be complete (for progress notifications).
    seen: Revision,
    sender: mpsc::Sender<Result<WatchEvent, StoreError>>,
    options: WatchOptions,
}

/// Why a watcher task stopped.
enum Stop {
    /// The consumer dropped the stream, or the store closed.
    Quietly,
    /// The stream must end with this error.
    With(StoreError),
}

impl Watcher {
    async fn run(
        mut self,
        mut receiver: broadcast::Receiver<Arc<Batch>>,
        head: Revision,
        progress_notify: bool,
    ) {
        let outcome = self.follow(&mut receiver, head, progress_notify).await;
        if let Err(Stop::With(error)) = outcome {
            let _ = self.sender.send(Err(error)).await;
        }
    }

    async fn follow(
        &mut self,
        receiver: &mut broadcast::Receiver<Arc<Batch>>,
        head: Revision,
        progress_notify: bool,
    ) -> Result<(), Stop> {
        self.catch_up(head).await?;
        let mut ticker = tokio::time::interval(self.options.progress_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        let mut sent_since_tick = false;
        loop {
            tokio::select! {
                received = receiver.recv() => match received {
                    Ok(batch) => {
                        self.seen = self.seen.max(batch.revision);
                        if batch.revision >= self.next {
                            for event in &batch.events {
                                if event_key(event).starts_with(&self.prefix) {
                                    self.send(event.clone()).await?;
                                    sent_since_tick = true;
                                }
                            }
                            self.next = batch.revision + 1;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let hub = self.hub.upgrade().ok_or(Stop::Quietly)?;
                        let (fresh, head, _) = hub.subscribe();
                        drop(hub);
                        *receiver = fresh;
                        self.catch_up(head).await.map_err(|stop| match stop {
                            Stop::With(StoreError::Compacted { .. }) => {
                                Stop::With(StoreError::WatcherLagged)
                            }
                            other => other,
                        })?;
                        sent_since_tick = true;
                    }
                    Err(broadcast::error::RecvError::Closed) => return Err(Stop::Quietly),
                },
                _ = ticker.tick(), if progress_notify => {
                    if !sent_since_tick {
                        self.send(WatchEvent::Progress { revision: self.seen }).await?;
                    }
                    sent_since_tick = false;
                }
                _ = self.sender.closed() => return Err(Stop::Quietly),
            }
        }
    }

    /// Replays history from `self.next` through `head`.
    async fn catch_up(&mut self, head: Revision) -> Result<(), Stop> {
        self.seen = self.seen.max(head);
        while self.next <= head {
            let history = self.history.clone();
            let prefix = self.prefix.clone();
            let (from, chunk) = (self.next, self.options.history_chunk.max(1));
            let read =
                tokio::task::spawn_blocking(move || history.read(&prefix, from, head, chunk))
                    .await
                    .map_err(|error| Stop::With(StoreError::Backend(error.to_string())))?;
            let (events, covered) = read.map_err(Stop::With)?;
            for event in events {
                self.send(event).await?;
            }
            self.next = covered.max(from) + 1;
        }
        Ok(())
    }

    async fn send(&self, event: WatchEvent) -> Result<(), Stop> {
        self.sender.send(Ok(event)).await.map_err(|_| Stop::Quietly)
    }
}

pub(crate) fn event_key(event: &WatchEvent) -> &str {
    match event {
        WatchEvent::Put { kv, .. } => &kv.key,
        WatchEvent::Delete { prev, .. } => &prev.key,
        WatchEvent::Progress { .. } => "",
    }
}
