//! A member's ClusterProperties, name to value, kept current by a list and a watch.
//!
//! The status worker needs only each property's name and value, for every member, for as long
//! as the member is joined. kube's watcher and reflector keep whole objects, an 8 KiB line
//! buffer per watch and a task of their own; at a thousand members that was about 14 KiB each.
//! This keeps the map the worker mirrors and nothing else: a partial line lives only while an
//! event spans frames. It is a [`Stream`] of snapshots, polled by the worker itself, so a
//! member costs one task.
//!
//! Level-triggered like any reflector: it lists, watches from the list's resourceVersion
//! (with bookmarks), watches again when the server ends a watch, and lists again when the
//! server has compacted past that version (410 Gone). Failures back off exponentially up to
//! [`MAX_BACKOFF`].

use std::collections::BTreeMap;
use std::time::Duration;

use atoll_api::about::ClusterProperty;
use bytes::Bytes;
use futures::Stream;
use http_body_util::BodyExt;
use kube::Resource;
use kube::api::{ListParams, WatchParams};
use serde::Deserialize;
use tower::BoxError;
use tracing::debug;

use crate::client::{MemberHttp, http2::ResponseBody, read_limited};

/// The longest pause between attempts after failures.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// A list of properties larger than this is refused (a member has a handful).
const LIST_LIMIT: usize = 16 * 1024 * 1024;
/// A single watch event larger than this ends the watch (a property's value is at most
/// 128 KiB by its CRD).
const EVENT_LIMIT: usize = 1024 * 1024;

/// Property name to value.
pub type Properties = BTreeMap<String, String>;

/// A stream that yields the member's properties after the first list and after every
/// change; it never ends.
pub fn watch(member: MemberHttp) -> impl Stream<Item = Properties> + Send {
    let state = PropertyWatch {
        member,
        url_path: ClusterProperty::url_path(&(), None),
        values: Properties::new(),
        resource_version: None,
        watch: None,
        backoff: FIRST_BACKOFF,
    };
    futures::stream::unfold(state, |mut state| async move {
        let snapshot = state.next_change().await;
        Some((snapshot, state))
    })
}

struct PropertyWatch {
    member: MemberHttp,
    url_path: String,
    values: Properties,
    /// Where the next watch starts; `None` means list first.
    resource_version: Option<String>,
    watch: Option<Lines<ResponseBody>>,
    backoff: Duration,
}

/// What this needs of a ClusterProperty, a list of them, or a watch event's `Status`.
#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct Object {
    metadata: Metadata,
    spec: Spec,
    code: Option<u16>,
    message: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct Metadata {
    name: Option<String>,
    resource_version: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Spec {
    value: String,
}

#[derive(Deserialize)]
struct List {
    #[serde(default)]
    metadata: Metadata,
    #[serde(default)]
    items: Vec<Object>,
}

#[derive(Deserialize)]
struct WatchEvent {
    #[serde(rename = "type")]
    kind: String,
    object: Object,
}

/// Why a list or watch failed.
#[derive(Debug, thiserror::Error)]
enum WatchError {
    #[error("{0}")]
    Transport(#[from] BoxError),
    #[error("HTTP {code}: {message}")]
    Refused { code: u16, message: String },
    #[error("the server's answer is not what was expected: {0}")]
    Decode(#[from] serde_json::Error),
    #[error("building the request: {0}")]
    Request(#[from] kube::core::request::Error),
    #[error("the resourceVersion is too old")]
    Gone,
    #[error("a watch event longer than {EVENT_LIMIT} bytes")]
    TooLarge,
}

impl PropertyWatch {
    async fn next_change(&mut self) -> Properties {
        loop {
            match self.step().await {
                Ok(true) => {
                    self.backoff = FIRST_BACKOFF;
                    return self.values.clone();
                }
                Ok(false) => self.backoff = FIRST_BACKOFF,
                Err(WatchError::Gone) => {
                    debug!("ClusterProperty watch too old; listing again");
                    self.resource_version = None;
                    self.watch = None;
                }
                Err(error) => {
                    // The status worker's probes report an unreachable member; this only
                    // waits for it.
                    debug!(%error, "watching the member's ClusterProperties");
                    self.watch = None;
                    tokio::time::sleep(self.backoff).await;
                    self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// Lists, opens a watch or reads one event; true when the properties changed (or were
    /// listed).
    async fn step(&mut self) -> Result<bool, WatchError> {
        let Some(resource_version) = self.resource_version.clone() else {
            self.list().await?;
            return Ok(true);
        };
        let lines = match &mut self.watch {
            Some(lines) => lines,
            None => {
                let params = WatchParams::default().timeout(watch_timeout_seconds());
                let request =
                    kube::core::Request::new(&self.url_path).watch(&params, &resource_version)?;
                let response = self.member.send(request).await?;
                if !response.status().is_success() {
                    return Err(refused(response).await);
                }
                self.watch.insert(Lines::new(response.into_body()))
            }
        };
        let Some(line) = lines.next_line().await? else {
            // The server ended the watch (its timeout); watch again from where it was.
            self.watch = None;
            return Ok(false);
        };
        let event: WatchEvent = serde_json::from_slice(&line)?;
        if event.kind == "ERROR" {
            return match event.object.code {
                Some(410) => Err(WatchError::Gone),
                code => Err(WatchError::Refused {
                    code: code.unwrap_or_default(),
                    message: event.object.message.unwrap_or_default(),
                }),
            };
        }
        if let Some(version) = event.object.metadata.resource_version {
            self.resource_version = Some(version);
        }
        let Some(name) = event.object.metadata.name else {
            return Ok(false);
        };
        Ok(match event.kind.as_str() {
            "ADDED" | "MODIFIED" => {
                let value = event.object.spec.value;
                self.values.get(&name) != Some(&value) && {
                    self.values.insert(name, value);
                    true
                }
            }
            "DELETED" => self.values.remove(&name).is_some(),
            _ => false,
        })
    }

    async fn list(&mut self) -> Result<(), WatchError> {
        let request = kube::core::Request::new(&self.url_path).list(&ListParams::default())?;
        let response = self.member.send(request).await?;
        if !response.status().is_success() {
            return Err(refused(response).await);
        }
        let body = read_limited(response.into_body(), LIST_LIMIT).await?;
        let list: List = serde_json::from_slice(&body)?;
        self.values = list
            .items
            .into_iter()
            .filter_map(|item| Some((item.metadata.name?, item.spec.value)))
            .collect();
        self.resource_version = Some(list.metadata.resource_version.unwrap_or_default());
        self.watch = None;
        Ok(())
    }
}

/// Watches end after four to six minutes, spread so that a fleet's watches do not all end
/// (and reconnect) together.
fn watch_timeout_seconds() -> u32 {
    240 + rand::random_range(0..120)
}

async fn refused(response: http::Response<ResponseBody>) -> WatchError {
    let status = response.status();
    if status == http::StatusCode::GONE {
        return WatchError::Gone;
    }
    match read_limited(response.into_body(), 64 * 1024).await {
        Ok(body) => WatchError::Refused {
            code: status.as_u16(),
            message: crate::client::Answer { status, body }.message(300),
        },
        Err(error) => WatchError::Transport(error),
    }
}

/// Splits a streaming body into lines, holding bytes only while a line spans frames.
struct Lines<B> {
    body: B,
    pending: Vec<u8>,
    ready: Option<Bytes>,
}

impl<B> Lines<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    fn new(body: B) -> Lines<B> {
        Lines {
            body,
            pending: Vec::new(),
            ready: None,
        }
    }

    /// The next non-empty line; `None` when the body ends.
    async fn next_line(&mut self) -> Result<Option<Vec<u8>>, WatchError> {
        loop {
            if let Some(line) = self.take_line()? {
                return Ok(Some(line));
            }
            match self.body.frame().await {
                None => return Ok(None),
                Some(frame) => {
                    if let Ok(data) = frame.map_err(Into::into)?.into_data() {
                        self.ready = Some(data);
                    }
                }
            }
        }
    }

    /// A whole line from what has arrived, if there is one.
    fn take_line(&mut self) -> Result<Option<Vec<u8>>, WatchError> {
        loop {
            let Some(data) = self.ready.as_mut() else {
                return Ok(None);
            };
            match data.iter().position(|b| *b == b'\n') {
                Some(end) => {
                    let head = data.split_to(end + 1);
                    if data.is_empty() {
                        self.ready = None;
                    }
                    let mut line = std::mem::take(&mut self.pending);
                    line.extend_from_slice(&head[..end]);
                    if !line.iter().all(u8::is_ascii_whitespace) {
                        return Ok(Some(line));
                    }
                }
                None => {
                    self.pending.extend_from_slice(data);
                    self.ready = None;
                    if self.pending.len() > EVENT_LIMIT {
                        return Err(WatchError::TooLarge);
                    }
                    return Ok(None);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines_of(frames: &[&str]) -> Result<Vec<String>, WatchError> {
        let mut lines = Lines::new(http_body_util::Empty::<Bytes>::new());
        let mut out = Vec::new();
        for frame in frames {
            lines.ready = Some(Bytes::copy_from_slice(frame.as_bytes()));
            while let Some(line) = lines.take_line()? {
                out.push(String::from_utf8_lossy(&line).into_owned());
            }
        }
        Ok(out)
    }

    #[test]
    fn lines_are_split_across_and_within_frames() -> Result<(), WatchError> {
        assert_eq!(
            lines_of(&[
                "{\"a\":1}\n{\"b\"",
                ":2}\n\n{\"c\":3}\n",
                "{\"d\"",
                ":4",
                "}\n"
            ])?,
            ["{\"a\":1}", "{\"b\":2}", "{\"c\":3}", "{\"d\":4}"]
        );
        assert!(lines_of(&["\n", "  \n"])?.is_empty(), "blank lines skipped");
        let huge = "x".repeat(EVENT_LIMIT + 1);
        assert!(matches!(lines_of(&[&huge]), Err(WatchError::TooLarge)));
        Ok(())
    }

    /// A member whose properties change while watched, whose watch then ends with 410 Gone,
    /// and whose list after that differs: the snapshots follow every step.
    #[tokio::test]
    async fn follows_changes_and_lists_again_after_gone() -> Result<(), BoxError> {
        use crate::client::test_server::{TestServer, full};
        use futures::StreamExt;
        use http_body_util::StreamBody;
        use hyper::body::Frame;

        let lists = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let handler = {
            let lists = lists.clone();
            move |request: http::Request<hyper::body::Incoming>| {
                let lists = lists.clone();
                async move {
                    let query = request.uri().query().unwrap_or_default().to_owned();
                    let item = |name: &str, value: &str, version: &str| {
                        format!(
                            r#"{{"metadata":{{"name":"{name}","resourceVersion":"{version}"}},"spec":{{"value":"{value}"}}}}"#
                        )
                    };
                    let event = |kind: &str, object: String| {
                        Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from(
                            format!(r#"{{"type":"{kind}","object":{object}}}"#) + "\n",
                        )))
                    };
                    if !query.contains("watch=true") {
                        let body = if lists.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                            format!(
                                r#"{{"metadata":{{"resourceVersion":"10"}},"items":[{}]}}"#,
                                item("a", "1", "9")
                            )
                        } else {
                            format!(
                                r#"{{"metadata":{{"resourceVersion":"20"}},"items":[{},{}]}}"#,
                                item("a", "1", "18"),
                                item("c", "3", "19")
                            )
                        };
                        return http::Response::new(full(body));
                    }
                    use http_body_util::BodyExt;
                    if query.contains("resourceVersion=10") {
                        let frames = vec![
                            event("ADDED", item("b", "2", "11")),
                            event(
                                "BOOKMARK",
                                r#"{"metadata":{"resourceVersion":"12"}}"#.into(),
                            ),
                            event("MODIFIED", item("a", "5", "13")),
                            // Unchanged value: no snapshot.
                            event("MODIFIED", item("a", "5", "14")),
                            event("DELETED", item("b", "2", "15")),
                            event(
                                "ERROR",
                                r#"{"kind":"Status","code":410,"message":"too old"}"#.into(),
                            ),
                        ];
                        return http::Response::new(BodyExt::boxed(StreamBody::new(
                            futures::stream::iter(frames),
                        )));
                    }
                    http::Response::new(BodyExt::boxed(StreamBody::new(
                        futures::stream::pending::<Result<Frame<Bytes>, std::convert::Infallible>>(
                        ),
                    )))
                }
            }
        };
        let server = TestServer::start(&[b"h2"], handler).await?;
        let member = MemberHttp::new(&server.config()?)?;
        let snapshots: Vec<Properties> = tokio::time::timeout(
            Duration::from_secs(20),
            watch(member).take(5).collect::<Vec<_>>(),
        )
        .await?;
        let expected: Vec<Properties> = [
            vec![("a", "1")],
            vec![("a", "1"), ("b", "2")],
            vec![("a", "5"), ("b", "2")],
            vec![("a", "5")],
            vec![("a", "1"), ("c", "3")],
        ]
        .into_iter()
        .map(|pairs| {
            pairs
                .into_iter()
                .map(|(n, v)| (n.to_owned(), v.to_owned()))
                .collect()
        })
        .collect();
        assert_eq!(snapshots, expected);
        assert_eq!(lists.load(std::sync::atomic::Ordering::SeqCst), 2);
        Ok(())
    }
}
