//! The model on the wire: UDP and TCP on one address, with a [`RequestHandler`] that asks the
//! [`Model`].
//!
//! TCP is hickory-server's [`Server`]. UDP is several sockets bound to the same address with
//! `SO_REUSEPORT` (one per available core, at least two), so the kernel spreads queries over
//! them, each served by its own task that receives, answers and sends in turn. hickory's own
//! UDP loop spawns a task per query and passes every response through a channel back to the
//! receiving task; under load that costs more in wake-ups, task switches and allocation than
//! answering does (BENCHMARKS.md, "DNS"), and the answer here never waits on anything.
//!
//! The handler is a `RequestHandler` rather than a `ZoneHandler` behind hickory's `Catalog`
//! because the model already decides everything a catalog would (zone membership, NXDOMAIN
//! versus NODATA, SERVFAIL before sync); the handler only turns an [`Answer`] into a message.
//!
//! Size limits: over UDP a response is bounded by the client's EDNS buffer size (at most
//! [`MAX_UDP_PAYLOAD`]) or 512 bytes without EDNS; over TCP by 65535 bytes. A response that
//! does not fit first loses its additional records (SRV and NS target addresses), which are
//! no reason for TC (RFC 2181 §9); if it still does not fit, it is cut to the answers that
//! fit and sent with TC, so the client retries over TCP. The handler does this cutting
//! itself: hickory 0.26's encoder can truncate and set TC too, but leaves the bytes of the
//! record that did not fit at the end of the message.
//!
//! Response rate limiting ([`RateLimit`], after BIND's RRL): over UDP, each client prefix
//! (/24 for IPv4, /56 for IPv6) gets at most `responses_per_second` responses a second (a
//! token bucket holding one second's worth). Past that, queries are dropped, except that
//! every `slip`-th one is answered with an empty truncated (TC) response, no larger than the
//! query, so a real client behind a flooded prefix retries over TCP, which is not limited. A
//! spoofed flood thus gets nothing amplified out of the server.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use hickory_server::Server;
use hickory_server::net::NetError;
use hickory_server::net::runtime::Time;
use hickory_server::net::xfer::Protocol;
use hickory_server::proto::op::{
    Edns, Header, HeaderCounts, MessageType, Metadata, OpCode, ResponseCode,
};
use hickory_server::proto::rr::{DNSClass, Record, RecordType};
use hickory_server::proto::serialize::binary::{BinDecodable, BinDecoder, BinEncoder};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::{MessageResponse, MessageResponseBuilder, Queries};
use tokio::net::{TcpListener, UdpSocket};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::Error;
use crate::model::{Answer, Model};

/// A hook for the fuzz target; see [`crate::fuzzing`].
pub(crate) mod fuzzing;

/// The largest UDP response sent, whatever the client advertises: the DNS Flag Day 2020
/// value, which avoids IP fragmentation on common paths.
pub const MAX_UDP_PAYLOAD: u16 = 1232;
/// A TCP connection idle this long is closed.
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Responses queued per TCP connection.
const TCP_RESPONSE_BUFFER: usize = 32;
/// Attempts at finding a port free for both UDP and TCP when asked for port 0.
const BIND_ATTEMPTS: usize = 32;
/// The largest UDP query read; anything longer is cut here and answered FORMERR.
const MAX_UDP_QUERY: usize = 4096;
/// The size of a DNS header; shorter datagrams are not DNS and get no answer.
const HEADER_LEN: usize = 12;

/// Client prefixes tracked by the rate limiter before stale ones are forgotten.
const RATE_LIMIT_TABLE: usize = 65_536;

/// Response rate limiting over UDP, per client prefix (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    /// Responses a second per client prefix; 0 turns rate limiting off.
    pub responses_per_second: u32,
    /// Every `slip`-th limited query gets an empty TC response instead of nothing (BIND's
    /// default is 2); 0 drops them all.
    pub slip: u32,
    /// The IPv4 prefix length a client is counted by.
    pub ipv4_prefix: u8,
    /// The IPv6 prefix length a client is counted by.
    pub ipv6_prefix: u8,
}

impl RateLimit {
    /// No limit.
    pub const OFF: RateLimit = RateLimit {
        responses_per_second: 0,
        slip: 2,
        ipv4_prefix: 24,
        ipv6_prefix: 56,
    };

    /// `responses_per_second` per client prefix, with BIND's default slip and prefixes.
    pub fn per_second(responses_per_second: u32) -> RateLimit {
        RateLimit {
            responses_per_second,
            ..RateLimit::OFF
        }
    }
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit::OFF
    }
}

/// What to do with one UDP query under the rate limit.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Answer,
    Slip,
    Drop,
}

struct Bucket {
    tokens: f64,
    refilled: Instant,
    limited: u32,
}

/// Token buckets per client prefix.
struct RateLimiter {
    limit: RateLimit,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

impl RateLimiter {
    fn new(limit: RateLimit) -> RateLimiter {
        RateLimiter {
            limit,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn prefix(&self, ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V4(v4) => {
                let bits = u32::from(self.limit.ipv4_prefix.min(32));
                let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(u32::from(v4) & mask))
            }
            IpAddr::V6(v6) => {
                let bits = u32::from(self.limit.ipv6_prefix.min(128));
                let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
            }
        }
    }

    fn check(&self, source: IpAddr, now: Instant) -> Verdict {
        let rate = self.limit.responses_per_second;
        if rate == 0 {
            return Verdict::Answer;
        }
        let rate = f64::from(rate);
        let key = self.prefix(source);
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        if buckets.len() >= RATE_LIMIT_TABLE && !buckets.contains_key(&key) {
            // Forget clients whose bucket has refilled anyway (idle for a second or more).
            buckets
                .retain(|_, bucket| now.duration_since(bucket.refilled) < Duration::from_secs(1));
            if buckets.len() >= RATE_LIMIT_TABLE {
                buckets.clear();
            }
        }
        let bucket = buckets.entry(key).or_insert(Bucket {
            tokens: rate,
            refilled: now,
            limited: 0,
        });
        let elapsed = now.duration_since(bucket.refilled).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(rate);
        bucket.refilled = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Verdict::Answer;
        }
        bucket.limited = bucket.limited.wrapping_add(1);
        let slip = self.limit.slip;
        if slip > 0 && bucket.limited.is_multiple_of(slip) {
            Verdict::Slip
        } else {
            Verdict::Drop
        }
    }
}

/// A DNS server for one [`Model`], bound and ready to [`run`](Self::run).
pub struct DnsServer {
    tcp: Server<Handler>,
    udp: Vec<UdpSocket>,
    handler: Arc<Handler>,
    local_addr: SocketAddr,
    rate_limit: RateLimit,
}

impl DnsServer {
    /// Binds TCP and [`default_udp_sockets`] UDP sockets on `listen`. With port 0, all get
    /// the same free port.
    pub async fn bind(listen: SocketAddr, model: Arc<Model>) -> Result<Self, Error> {
        Self::bind_with_udp_sockets(listen, model, default_udp_sockets()).await
    }

    /// [`bind`](Self::bind) with `udp_sockets` UDP sockets (at least one) sharing the address
    /// through `SO_REUSEPORT`.
    ///
    /// Any other socket on the same address with `SO_REUSEPORT` set, owned by the same user,
    /// would share the UDP queries too; the TCP listener (without it) makes a second
    /// `atoll dns` on a taken port fail to bind instead.
    pub async fn bind_with_udp_sockets(
        listen: SocketAddr,
        model: Arc<Model>,
        udp_sockets: usize,
    ) -> Result<Self, Error> {
        let (udp, tcp) = bind_all(listen, udp_sockets.max(1))?;
        let local_addr = tcp.local_addr().map_err(|source| Error::Bind {
            protocol: "tcp",
            addr: listen,
            source,
        })?;
        let handler = Arc::new(Handler { model });
        let mut server = Server::new(Handler::clone(&handler));
        server.register_listener(tcp, TCP_IDLE_TIMEOUT, TCP_RESPONSE_BUFFER);
        Ok(Self {
            tcp: server,
            udp,
            handler,
            local_addr,
            rate_limit: RateLimit::OFF,
        })
    }

    /// Limits UDP responses per client prefix (off unless set).
    pub fn with_rate_limit(mut self, rate_limit: RateLimit) -> Self {
        self.rate_limit = rate_limit;
        self
    }

    /// The bound address (UDP and TCP).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// How many UDP sockets share the address.
    pub fn udp_sockets(&self) -> usize {
        self.udp.len()
    }

    /// Serves until `cancel` fires, then stops accepting, lets in-flight requests finish and
    /// returns `Ok`. Returns an error if a listener fails first.
    pub async fn run(mut self, cancel: CancellationToken) -> Result<(), Error> {
        let udp_stop = CancellationToken::new();
        let mut udp_loops = JoinSet::new();
        let limiter = Arc::new(RateLimiter::new(self.rate_limit));
        for socket in self.udp {
            udp_loops.spawn(serve_udp(
                Arc::new(socket),
                self.handler.clone(),
                limiter.clone(),
                udp_stop.clone(),
            ));
        }
        let failure = tokio::select! {
            result = self.tcp.block_until_done() => Some(result.map_err(Error::Serve)),
            Some(result) = udp_loops.join_next() => Some(udp_result(result)),
            () = cancel.cancelled() => None,
        };
        // A UDP loop answers each query before it looks at `udp_stop` again, so stopping
        // them lets their in-flight requests finish.
        udp_stop.cancel();
        let mut udp_outcome = Ok(());
        while let Some(result) = udp_loops.join_next().await {
            udp_outcome = udp_outcome.and(udp_result(result));
        }
        if let Some(failure) = failure {
            return failure;
        }
        tracing::info!("DNS server shutting down");
        self.tcp.shutdown_gracefully().await.map_err(Error::Serve)?;
        udp_outcome
    }
}

/// One UDP socket per available core, at least two: fewer leaves cores idle under load, more
/// only adds wake-ups.
pub fn default_udp_sockets() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().max(2))
}

fn udp_result(result: Result<Result<(), NetError>, tokio::task::JoinError>) -> Result<(), Error> {
    match result {
        Ok(result) => result.map_err(Error::Serve),
        Err(join) => Err(Error::Serve(NetError::from(format!(
            "UDP loop failed: {join}"
        )))),
    }
}

/// Receives, answers and sends on one socket until `stop` fires; an error only when the
/// socket itself fails.
async fn serve_udp(
    socket: Arc<UdpSocket>,
    handler: Arc<Handler>,
    limiter: Arc<RateLimiter>,
    stop: CancellationToken,
) -> Result<(), NetError> {
    let mut buffer = vec![0_u8; MAX_UDP_QUERY];
    loop {
        let (len, src) = tokio::select! {
            biased;
            () = stop.cancelled() => return Ok(()),
            received = socket.recv_from(&mut buffer) => match received {
                Ok(received) => received,
                // ICMP errors from earlier sends (a client gone) and the like.
                Err(error) if is_transient(&error) => continue,
                Err(error) => return Err(NetError::from(error)),
            },
        };
        let datagram = buffer.get(..len).unwrap_or_default();
        answer_udp(&socket, &handler, &limiter, src, datagram).await;
    }
}

/// Answers one datagram received from `src` (at most [`MAX_UDP_QUERY`] bytes, as `serve_udp`
/// reads them), sending the answer, if any, through `socket`: every turn of `serve_udp`'s
/// loop, and the DNS fuzz target.
async fn answer_udp(
    socket: &Arc<UdpSocket>,
    handler: &Handler,
    limiter: &RateLimiter,
    src: std::net::SocketAddr,
    datagram: &[u8],
) {
    // Port 0 cannot be answered; nor can a datagram shorter than a header.
    if src.port() == 0 || src.ip().is_unspecified() || datagram.len() < HEADER_LEN {
        return;
    }
    let responder = UdpResponder {
        socket: socket.clone(),
        dst: src,
    };
    match limiter.check(src.ip(), Instant::now()) {
        Verdict::Answer => {}
        Verdict::Drop => return,
        Verdict::Slip => {
            truncated(datagram, responder).await;
            return;
        }
    }
    match Request::from_bytes(datagram.to_vec(), src, Protocol::Udp) {
        Ok(request) if request.metadata.message_type == MessageType::Response => {
            // Never answer responses: that would make this a reflector.
        }
        Ok(request) => {
            handler
                .handle_request::<_, hickory_server::net::runtime::TokioTime>(&request, responder)
                .await;
        }
        Err(_) => form_error(datagram, responder).await,
    }
}

/// Whether a UDP socket error concerns one peer or packet rather than the socket.
fn is_transient(error: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        error.kind(),
        ErrorKind::ConnectionRefused
            | ErrorKind::ConnectionReset
            | ErrorKind::Interrupted
            | ErrorKind::WouldBlock
            | ErrorKind::HostUnreachable
            | ErrorKind::NetworkUnreachable
    )
}

/// FORMERR for a query whose header parses but whose body does not, as hickory-server does.
async fn form_error(datagram: &[u8], mut responder: UdpResponder) {
    let Ok(header) = Header::read(&mut BinDecoder::new(datagram)) else {
        return;
    };
    if header.metadata.message_type == MessageType::Response {
        return;
    }
    // No question is echoed: the body did not parse.
    let Ok(queries) = Queries::read(&mut BinDecoder::new(&[]), 0) else {
        return;
    };
    let response = MessageResponseBuilder::new(&queries, None)
        .error_msg(&header.metadata, ResponseCode::FormErr);
    if let Err(error) = responder.send_response(response).await {
        tracing::debug!(%error, "sending FORMERR");
    }
}

/// An empty response with TC for a rate-limited query, so a real client retries over TCP: the
/// header and the question only, never larger than the query.
async fn truncated(datagram: &[u8], mut responder: UdpResponder) {
    let Ok(request) = Request::from_bytes(datagram.to_vec(), responder.dst, Protocol::Udp) else {
        return;
    };
    if request.metadata.message_type == MessageType::Response {
        return;
    }
    let mut metadata = Metadata::response_from_request(&request.metadata);
    metadata.truncation = true;
    let response = MessageResponseBuilder::new(&request.queries, None).build_no_records(metadata);
    if let Err(error) = responder.send_response(response).await {
        tracing::debug!(%error, "sending a rate-limited TC response");
    }
}

/// Sends one response straight from the task that received the query.
#[derive(Clone)]
struct UdpResponder {
    socket: Arc<UdpSocket>,
    dst: SocketAddr,
}

#[async_trait::async_trait]
impl ResponseHandler for UdpResponder {
    async fn send_response<'a>(
        &mut self,
        response: MessageResponse<
            '_,
            'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
        >,
    ) -> Result<ResponseInfo, NetError> {
        let mut bytes = Vec::with_capacity(512);
        let mut encoder = BinEncoder::new(&mut bytes);
        // The handler sizes the response for the client; this is the last guard.
        encoder.set_max_size(MAX_UDP_PAYLOAD);
        let info = response.destructive_emit(&mut encoder)?;
        self.socket.send_to(&bytes, self.dst).await?;
        Ok(info)
    }
}

/// The TCP listener and `udp_sockets` UDP sockets, all on `listen` (with port 0, on one port
/// that is free for both protocols).
fn bind_all(
    listen: SocketAddr,
    udp_sockets: usize,
) -> Result<(Vec<UdpSocket>, TcpListener), Error> {
    let udp_error = |source| Error::Bind {
        protocol: "udp",
        addr: listen,
        source,
    };
    let tcp_error = |source| Error::Bind {
        protocol: "tcp",
        addr: listen,
        source,
    };
    let mut attempts = 0;
    loop {
        let first = reuse_port_udp(listen).map_err(udp_error)?;
        let port = first.local_addr().map_err(udp_error)?.port();
        let bound = SocketAddr::new(listen.ip(), port);
        match std::net::TcpListener::bind(bound)
            .and_then(|tcp| tcp.set_nonblocking(true).map(|()| tcp))
            .and_then(TcpListener::from_std)
        {
            Ok(tcp) => {
                let mut udp = vec![first];
                for _ in 1..udp_sockets {
                    udp.push(reuse_port_udp(bound).map_err(udp_error)?);
                }
                return Ok((udp, tcp));
            }
            // The UDP port is taken over TCP: with port 0, try another.
            Err(e)
                if listen.port() == 0
                    && e.kind() == std::io::ErrorKind::AddrInUse
                    && attempts < BIND_ATTEMPTS =>
            {
                attempts += 1;
            }
            Err(e) => return Err(tcp_error(e)),
        }
    }
}

/// A UDP socket on `addr` with `SO_REUSEPORT`, ready for tokio.
fn reuse_port_udp(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

/// Turns requests into [`Model::answer`] calls.
#[derive(Clone)]
struct Handler {
    model: Arc<Model>,
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let response_edns = request.edns.as_ref().map(|req| {
            let mut edns = Edns::new();
            edns.set_max_payload(req.max_payload().clamp(512, MAX_UDP_PAYLOAD));
            edns.set_version(0);
            edns
        });
        let mut metadata = Metadata::response_from_request(&request.metadata);
        let builder = || MessageResponseBuilder::new(&request.queries, response_edns.as_ref());

        let answer = match check(request) {
            Ok((name, rtype)) => self.model.answer(name, rtype),
            Err(code) => {
                metadata.response_code = code;
                let response = builder().build_no_records(metadata);
                return send(&mut response_handle, response, &request.metadata).await;
            }
        };
        metadata.response_code = answer.response_code();
        metadata.authoritative = answer.is_authoritative();
        let (mut answers, mut authorities, mut additionals): (&[Record], &[Record], &[Record]) =
            match &answer {
                Answer::Records {
                    answers,
                    additionals,
                } => (answers, &[], additionals),
                Answer::NoData { soa } | Answer::NxDomain { soa } => {
                    (&[], std::slice::from_ref(soa), &[])
                }
                Answer::ServFail | Answer::Refused => (&[], &[], &[]),
            };
        let limit = if request.protocol().is_datagram() {
            response_edns.as_ref().map_or(512, Edns::max_payload)
        } else {
            u16::MAX
        };
        let fits = |answers: &[Record], authorities: &[Record], additionals: &[Record]| {
            fits(
                &request.queries,
                response_edns.as_ref(),
                metadata,
                [answers, authorities, additionals],
                limit,
            )
        };
        if !fits(answers, authorities, additionals) {
            // Missing additional data is no reason for TC (RFC 2181 §9).
            additionals = &[];
            if !fits(answers, authorities, additionals) {
                // Send the longest prefix that fits, with TC, so the client retries over TCP.
                // (Leaving this to hickory's encoder sends the partly written record that
                // did not fit as trailing garbage.)
                authorities = &[];
                let (mut fitting, mut too_many) = (0, answers.len());
                while too_many - fitting > 1 {
                    let middle = fitting + (too_many - fitting) / 2;
                    if fits(&answers[..middle], &[], &[]) {
                        fitting = middle;
                    } else {
                        too_many = middle;
                    }
                }
                answers = &answers[..fitting];
                metadata.truncation = true;
            }
        }
        let response = builder().build(
            metadata,
            answers.iter(),
            authorities.iter(),
            std::iter::empty(),
            additionals.iter(),
        );
        send(&mut response_handle, response, &request.metadata).await
    }
}

/// The single question of a standard query in class IN, or the response code refusing it.
fn check(
    request: &Request,
) -> Result<(&hickory_server::proto::rr::Name, RecordType), ResponseCode> {
    if request.edns.as_ref().is_some_and(|edns| edns.version() > 0) {
        return Err(ResponseCode::BADVERS);
    }
    if request.metadata.message_type != MessageType::Query {
        return Err(ResponseCode::FormErr);
    }
    if request.metadata.op_code != OpCode::Query {
        return Err(ResponseCode::NotImp);
    }
    let [query] = request.queries.queries() else {
        return Err(ResponseCode::FormErr);
    };
    let rtype = query.query_type();
    if query.query_class() != DNSClass::IN || matches!(rtype, RecordType::AXFR | RecordType::IXFR) {
        return Err(ResponseCode::Refused);
    }
    // The name as the client spelled it, so answers echo its case.
    Ok((query.original().name(), rtype))
}

/// Whether a response with these sections encodes in `limit` bytes.
fn fits(
    queries: &Queries,
    edns: Option<&Edns>,
    metadata: Metadata,
    [answers, authorities, additionals]: [&[Record]; 3],
    limit: u16,
) -> bool {
    thread_local! {
        // Every query is measured once at least: reuse one buffer per thread for it.
        static BUFFER: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(Vec::with_capacity(512));
    }
    BUFFER.with_borrow_mut(|buffer| {
        buffer.clear();
        let mut encoder = BinEncoder::new(buffer);
        encoder.set_max_size(limit);
        MessageResponseBuilder::new(queries, edns)
            .build(
                metadata,
                answers.iter(),
                authorities.iter(),
                std::iter::empty(),
                additionals.iter(),
            )
            .destructive_emit(&mut encoder)
            .is_ok_and(|info| !info.truncation)
    })
}

async fn send<'a, R: ResponseHandler>(
    handle: &mut R,
    response: hickory_server::zone_handler::MessageResponse<
        '_,
        'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
    >,
    request: &Metadata,
) -> ResponseInfo {
    match handle.send_response(response).await {
        Ok(info) => info,
        Err(error) => {
            tracing::warn!(%error, "sending DNS response");
            let mut metadata = Metadata::response_from_request(request);
            metadata.response_code = ResponseCode::ServFail;
            ResponseInfo::from(Header {
                metadata,
                counts: HeaderCounts::default(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_gets_its_rate_then_every_slip_th_query_a_tc() {
        let limiter = RateLimiter::new(RateLimit::per_second(3));
        let now = Instant::now();
        let flood: Vec<Verdict> = (0..7)
            .map(|_| limiter.check(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), now))
            .collect();
        assert_eq!(
            flood,
            [
                Verdict::Answer,
                Verdict::Answer,
                Verdict::Answer,
                Verdict::Drop,
                Verdict::Slip,
                Verdict::Drop,
                Verdict::Slip
            ]
        );
        // The same /24 shares the bucket; another prefix has its own.
        assert_ne!(
            limiter.check(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 99)), now),
            Verdict::Answer
        );
        assert_eq!(
            limiter.check(IpAddr::V4(Ipv4Addr::new(10, 0, 1, 1)), now),
            Verdict::Answer
        );
        // A second later the bucket is full again.
        let later = now + Duration::from_secs(1);
        assert_eq!(
            limiter.check(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), later),
            Verdict::Answer
        );
    }

    #[test]
    fn off_answers_everything() {
        let limiter = RateLimiter::new(RateLimit::OFF);
        let now = Instant::now();
        assert!(
            (0..10_000)
                .all(|_| limiter.check(IpAddr::V6(Ipv6Addr::LOCALHOST), now) == Verdict::Answer)
        );
    }
}
