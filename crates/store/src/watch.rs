//! Watch fan-out shared by the embedded backends.
//!
//! The writer publishes each committed revision's events to a bounded broadcast ring, which
//! never blocks it. Each watcher runs its own task: it first replays history from the backend
//! (memory log or the redb log table), then follows the ring, handing events to its consumer
//! through a queue bounded both by events and by bytes. The task never waits for its consumer
//! while it holds a place in the ring: when the queue is full it leaves the ring, waits for
//! room (at most [`WatchOptions::lag_timeout`]) and catches up from history again, so it sees
//! no gaps and no duplicates and a slow consumer pins no more than its queue. A consumer that
//! makes no room in time, or whose history was compacted away meanwhile, is dropped: its
//! queue is freed and its stream ends with [`StoreError::WatcherLagged`].

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::{Notify, broadcast};

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
    /// Bytes (keys and values) buffered per watcher between its task and its stream; one
    /// event larger than this still passes alone.
    pub watcher_buffer_bytes: usize,
    /// How long a watcher whose buffer is full waits for its consumer to make room before it
    /// is dropped with [`StoreError::WatcherLagged`].
    pub lag_timeout: Duration,
    /// Revisions read from history per step while catching up (at most).
    pub history_chunk: usize,
}

impl Default for WatchOptions {
    fn default() -> Self {
        WatchOptions {
            progress_interval: Duration::from_secs(5),
            ring_capacity: 4096,
            watcher_buffer: 1024,
            watcher_buffer_bytes: 16 * 1024 * 1024,
            lag_timeout: Duration::from_secs(15),
            history_chunk: 512,
        }
    }
}

/// Bytes of events buffered for every watcher of every embedded store in this process and not
/// yet taken by their consumers (a measure for tests and diagnostics).
pub fn buffered_bytes() -> usize {
    BUFFERED.load(Ordering::Relaxed)
}

static BUFFERED: AtomicUsize = AtomicUsize::new(0);

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

    fn lock(&self) -> MutexGuard<'_, HubState> {
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

    /// A receiver of every revision after the returned one.
    fn subscribe(&self) -> (broadcast::Receiver<Arc<Batch>>, Revision) {
        let state = self.lock();
        (state.sender.subscribe(), state.revision)
    }

    /// The newest published revision and the compacted revision.
    fn head(&self) -> (Revision, Revision) {
        let state = self.lock();
        (state.revision, state.compacted)
    }

    /// Starts a watch; see [`crate::Store::watch`].
    pub fn watch(
        self: &Arc<Self>,
        history: Arc<dyn History>,
        prefix: &str,
        start_revision: Revision,
        progress_notify: bool,
    ) -> Result<WatchStream, StoreError> {
        let (head, compacted) = self.head();
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
        let queue = Arc::new(Queue::new(
            self.options.watcher_buffer.max(1),
            self.options.watcher_buffer_bytes.max(1),
        ));
        let watcher = Watcher {
            hub: Arc::downgrade(self),
            history,
            prefix: prefix.to_owned(),
            next: start,
            seen: head,
            queue: queue.clone(),
            options: self.options.clone(),
        };
        tokio::spawn(watcher.run(progress_notify));
        let consumer = Consumer(queue);
        Ok(futures::stream::unfold(consumer, |consumer| async move {
            consumer.next().await.map(|item| (item, consumer))
        })
        .boxed())
    }
}

/// The size an event is counted at in a watcher's buffer.
fn event_bytes(event: &WatchEvent) -> usize {
    let kv_bytes = |kv: &crate::KeyValue| kv.key.len().saturating_add(kv.value.len());
    match event {
        WatchEvent::Put { kv, prev } => {
            kv_bytes(kv).saturating_add(prev.as_ref().map_or(0, kv_bytes))
        }
        WatchEvent::Delete { prev, .. } => kv_bytes(prev),
        WatchEvent::Progress { .. } => 0,
    }
    .saturating_add(64)
}

/// One watcher's buffer between its task and its stream, bounded by events and bytes.
struct Queue {
    state: Mutex<QueueState>,
    max_events: usize,
    max_bytes: usize,
    /// The consumer waits here for events or the end.
    readable: Notify,
    /// The task waits here for room, or for the consumer to go away.
    writable: Notify,
}

#[derive(Default)]
struct QueueState {
    events: VecDeque<(WatchEvent, usize)>,
    bytes: usize,
    /// The task has stopped; the stream ends after the events, with this error if any.
    finished: bool,
    error: Option<StoreError>,
    /// The stream was dropped.
    consumer_gone: bool,
}

/// Why a push did not happen.
enum Refused {
    Full,
    ConsumerGone,
}

impl Queue {
    fn new(max_events: usize, max_bytes: usize) -> Queue {
        Queue {
            state: Mutex::new(QueueState::default()),
            max_events,
            max_bytes,
            readable: Notify::new(),
            writable: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether `count` more events of `size` bytes fit; anything fits in an empty queue, so
    /// one revision larger than the budget still passes alone.
    fn has_room(&self, state: &QueueState, count: usize, size: usize) -> bool {
        state.events.is_empty()
            || (state.events.len().saturating_add(count) <= self.max_events
                && state.bytes.saturating_add(size) <= self.max_bytes)
    }

    /// Queues `events` (one revision's, or one event) if they all fit now.
    fn try_push(&self, events: Vec<WatchEvent>) -> Result<(), Refused> {
        let sized: Vec<(WatchEvent, usize)> = events
            .into_iter()
            .map(|event| {
                let size = event_bytes(&event);
                (event, size)
            })
            .collect();
        let size = sized
            .iter()
            .fold(0usize, |sum, (_, size)| sum.saturating_add(*size));
        let mut state = self.lock();
        if state.consumer_gone {
            return Err(Refused::ConsumerGone);
        }
        if !self.has_room(&state, sized.len(), size) {
            return Err(Refused::Full);
        }
        state.events.extend(sized);
        state.bytes = state.bytes.saturating_add(size);
        BUFFERED.fetch_add(size, Ordering::Relaxed);
        drop(state);
        self.readable.notify_one();
        Ok(())
    }

    /// Resolves once an event of `size` bytes fits, or the consumer is gone (`false`).
    async fn room_for(&self, size: usize) -> bool {
        loop {
            {
                let state = self.lock();
                if state.consumer_gone {
                    return false;
                }
                if self.has_room(&state, 1, size) {
                    return true;
                }
            }
            self.writable.notified().await;
        }
    }

    /// Resolves once the consumer is gone.
    async fn closed(&self) {
        loop {
            if self.lock().consumer_gone {
                return;
            }
            self.writable.notified().await;
        }
    }

    /// Ends the stream after the queued events, with `error` if any.
    fn finish(&self, error: Option<StoreError>) {
        let mut state = self.lock();
        state.finished = true;
        state.error = error;
        drop(state);
        self.readable.notify_one();
    }

    /// Drops the queued events (a lagging watcher) and ends the stream with
    /// [`StoreError::WatcherLagged`].
    fn drop_lagging(&self) {
        let mut state = self.lock();
        state.events.clear();
        BUFFERED.fetch_sub(std::mem::take(&mut state.bytes), Ordering::Relaxed);
        state.finished = true;
        state.error = Some(StoreError::WatcherLagged);
        drop(state);
        self.readable.notify_one();
    }
}

impl Drop for Queue {
    fn drop(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(PoisonError::into_inner);
        BUFFERED.fetch_sub(state.bytes, Ordering::Relaxed);
    }
}

/// The stream's end of a queue.
struct Consumer(Arc<Queue>);

impl Consumer {
    async fn next(&self) -> Option<Result<WatchEvent, StoreError>> {
        loop {
            {
                let mut state = self.0.lock();
                if let Some((event, size)) = state.events.pop_front() {
                    state.bytes = state.bytes.saturating_sub(size);
                    BUFFERED.fetch_sub(size, Ordering::Relaxed);
                    drop(state);
                    self.0.writable.notify_one();
                    return Some(Ok(event));
                }
                if state.finished {
                    return state.error.take().map(Err);
                }
            }
            self.0.readable.notified().await;
        }
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.consumer_gone = true;
        state.events.clear();
        BUFFERED.fetch_sub(std::mem::take(&mut state.bytes), Ordering::Relaxed);
        drop(state);
        self.0.writable.notify_one();
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
    queue: Arc<Queue>,
    options: WatchOptions,
}

/// Why a watcher task stopped.
enum Stop {
    /// The consumer dropped the stream, or the store closed.
    Quietly,
    /// The consumer made no room in time: its queue is dropped.
    Lagged,
    /// The stream must end with this error.
    With(StoreError),
}

impl Watcher {
    async fn run(mut self, progress_notify: bool) {
        match self.follow(progress_notify).await {
            Ok(()) | Err(Stop::Quietly) => self.queue.finish(None),
            Err(Stop::Lagged) => self.queue.drop_lagging(),
            Err(Stop::With(error)) => self.queue.finish(Some(error)),
        }
    }

    fn hub(&self) -> Result<Arc<Hub>, Stop> {
        self.hub.upgrade().ok_or(Stop::Quietly)
    }

    /// Catches up from history without holding a place in the ring, then joins the ring and
    /// follows it; leaves it again whenever the consumer's queue is full.
    async fn follow(&mut self, progress_notify: bool) -> Result<(), Stop> {
        loop {
            // History up to the newest revision, waiting for the consumer as needed.
            let (head, _) = self.hub()?.head();
            self.catch_up(head).await.map_err(lagged_if_compacted)?;
            // Then join the ring and replay what was committed in between.
            let (mut receiver, head) = self.hub()?.subscribe();
            self.catch_up(head).await.map_err(lagged_if_compacted)?;
            self.follow_ring(&mut receiver, progress_notify).await?;
            // The queue is full: leave the ring, so it pins nothing for this watcher.
            drop(receiver);
            self.wait_for_room(0).await?;
        }
    }

    /// Follows the ring until the consumer's queue is full (then returns `Ok`).
    async fn follow_ring(
        &mut self,
        receiver: &mut broadcast::Receiver<Arc<Batch>>,
        progress_notify: bool,
    ) -> Result<(), Stop> {
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
                            let mine: Vec<WatchEvent> = batch
                                .events
                                .iter()
                                .filter(|event| event_key(event).starts_with(&self.prefix))
                                .cloned()
                                .collect();
                            if !mine.is_empty() {
                                // A revision is delivered whole or not at all: when it does
                                // not fit, it is read from history once there is room.
                                match self.queue.try_push(mine) {
                                    Ok(()) => sent_since_tick = true,
                                    Err(Refused::Full) => return Ok(()),
                                    Err(Refused::ConsumerGone) => return Err(Stop::Quietly),
                                }
                            }
                            self.next = batch.revision + 1;
                        }
                    }
                    // The task itself fell behind the ring: catch up from history.
                    Err(broadcast::error::RecvError::Lagged(_)) => return Ok(()),
                    Err(broadcast::error::RecvError::Closed) => return Err(Stop::Quietly),
                },
                _ = ticker.tick(), if progress_notify => {
                    if !sent_since_tick {
                        // Best effort: a full queue has events, so no progress is owed.
                        let progress = WatchEvent::Progress { revision: self.seen };
                        if let Err(Refused::ConsumerGone) = self.queue.try_push(vec![progress]) {
                            return Err(Stop::Quietly);
                        }
                    }
                    sent_since_tick = false;
                }
                _ = self.queue.closed() => return Err(Stop::Quietly),
            }
        }
    }

    /// Waits, at most the lag timeout, until an event of `size` bytes fits.
    async fn wait_for_room(&self, size: usize) -> Result<(), Stop> {
        match tokio::time::timeout(self.options.lag_timeout, self.queue.room_for(size)).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(Stop::Quietly),
            Err(_) => Err(Stop::Lagged),
        }
    }

    /// Replays history from `self.next` through `head`, waiting for room as needed. Chunks
    /// start small and grow while they stay well under the byte budget, so a history of large
    /// objects is never read into memory all at once.
    async fn catch_up(&mut self, head: Revision) -> Result<(), Stop> {
        self.seen = self.seen.max(head);
        let mut chunk = 8.min(self.options.history_chunk.max(1));
        while self.next <= head {
            let history = self.history.clone();
            let prefix = self.prefix.clone();
            let from = self.next;
            let read =
                tokio::task::spawn_blocking(move || history.read(&prefix, from, head, chunk))
                    .await
                    .map_err(|error| Stop::With(StoreError::Backend(error.to_string())))?;
            let (events, covered) = read.map_err(Stop::With)?;
            let bytes = events
                .iter()
                .fold(0usize, |sum, event| sum.saturating_add(event_bytes(event)));
            for event in events {
                let size = event_bytes(&event);
                self.wait_for_room(size).await?;
                match self.queue.try_push(vec![event]) {
                    Ok(()) => {}
                    Err(Refused::ConsumerGone) => return Err(Stop::Quietly),
                    // The task is the only producer: room it waited for stays.
                    Err(Refused::Full) => return Err(Stop::Lagged),
                }
            }
            self.next = covered.max(from) + 1;
            chunk = if bytes.saturating_mul(2) < self.options.watcher_buffer_bytes {
                chunk
                    .saturating_mul(2)
                    .min(self.options.history_chunk.max(1))
            } else {
                (chunk / 2).max(1)
            };
        }
        Ok(())
    }
}

/// History compacted away under a running watcher (its start was checked when it began): the
/// watcher lagged.
fn lagged_if_compacted(stop: Stop) -> Stop {
    match stop {
        Stop::With(StoreError::Compacted { .. }) => Stop::With(StoreError::WatcherLagged),
        other => other,
    }
}

pub(crate) fn event_key(event: &WatchEvent) -> &str {
    match event {
        WatchEvent::Put { kv, .. } => &kv.key,
        WatchEvent::Delete { prev, .. } => &prev.key,
        WatchEvent::Progress { .. } => "",
    }
}
