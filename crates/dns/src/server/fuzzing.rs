//! A hook into the private UDP path for [`crate::fuzzing`] (the fuzz target in `fuzz/` and its
//! corpus-replay test). A child module, so the handler stays private; the server does not
//! use it.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::UdpSocket;

use super::{Handler, MAX_UDP_QUERY, RateLimit, RateLimiter, answer_udp};
use crate::model::Model;

/// Answers one datagram from `src` with `serve_udp`'s own per-datagram function (same checks,
/// response rate limiting as the server's default configures it, handler and responder),
/// sending the answer, if any, to `src` through `socket`.
pub(crate) async fn answer_datagram(
    model: Arc<Model>,
    socket: Arc<UdpSocket>,
    src: SocketAddr,
    datagram: &[u8],
) {
    // serve_udp reads into a buffer of MAX_UDP_QUERY bytes: longer datagrams are cut there.
    let datagram = datagram.get(..MAX_UDP_QUERY).unwrap_or(datagram);
    let handler = Handler { model };
    let limiter = RateLimiter::new(RateLimit::default());
    answer_udp(&socket, &handler, &limiter, src, datagram).await;
}
