//! The model on the wire: a hickory-server [`Server`] over UDP and TCP on one address, with a
//! [`RequestHandler`] that asks the [`Model`].
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

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_server::Server;
use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{
    Edns, Header, HeaderCounts, MessageType, Metadata, OpCode, ResponseCode,
};
use hickory_server::proto::rr::{DNSClass, Record, RecordType};
use hickory_server::proto::serialize::binary::BinEncoder;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::{MessageResponseBuilder, Queries};
use tokio::net::{TcpListener, UdpSocket};
use tokio_util::sync::CancellationToken;

use crate::Error;
use crate::model::{Answer, Model};

/// The largest UDP response sent, whatever the client advertises: the DNS Flag Day 2020
/// value, which avoids IP fragmentation on common paths.
pub const MAX_UDP_PAYLOAD: u16 = 1232;
/// A TCP connection idle this long is closed.
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Responses queued per TCP connection.
const TCP_RESPONSE_BUFFER: usize = 32;
/// Attempts at finding a port free for both UDP and TCP when asked for port 0.
const BIND_ATTEMPTS: usize = 32;

/// A DNS server for one [`Model`], bound and ready to [`run`](Self::run).
pub struct DnsServer {
    server: Server<Handler>,
    local_addr: SocketAddr,
}

impl DnsServer {
    /// Binds UDP and TCP on `listen`. With port 0, both get the same free port.
    pub async fn bind(listen: SocketAddr, model: Arc<Model>) -> Result<Self, Error> {
        let (udp, tcp) = bind_pair(listen).await?;
        let local_addr = udp.local_addr().map_err(|source| Error::Bind {
            protocol: "udp",
            addr: listen,
            source,
        })?;
        let mut server = Server::new(Handler { model });
        server.register_socket(udp);
        server.register_listener(tcp, TCP_IDLE_TIMEOUT, TCP_RESPONSE_BUFFER);
        Ok(Self { server, local_addr })
    }

    /// The bound address (UDP and TCP).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `cancel` fires, then stops accepting, lets in-flight requests finish and
    /// returns `Ok`. Returns an error if a listener fails first.
    pub async fn run(mut self, cancel: CancellationToken) -> Result<(), Error> {
        tokio::select! {
            result = self.server.block_until_done() => return result.map_err(Error::Serve),
            () = cancel.cancelled() => {}
        }
        tracing::info!("DNS server shutting down");
        self.server
            .shutdown_gracefully()
            .await
            .map_err(Error::Serve)
    }
}

async fn bind_pair(listen: SocketAddr) -> Result<(UdpSocket, TcpListener), Error> {
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
        let udp = UdpSocket::bind(listen).await.map_err(udp_error)?;
        let port = udp.local_addr().map_err(udp_error)?.port();
        match TcpListener::bind(SocketAddr::new(listen.ip(), port)).await {
            Ok(tcp) => return Ok((udp, tcp)),
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

/// Turns requests into [`Model::answer`] calls.
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
    let mut buffer = Vec::with_capacity(512);
    let mut encoder = BinEncoder::new(&mut buffer);
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
