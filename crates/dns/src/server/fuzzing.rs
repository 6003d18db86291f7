//! A hook into the private UDP path for [`crate::fuzzing`] (the fuzz target in `fuzz/` and its
//! corpus-replay test). A child module, so the handler stays private; the server does not
//! use it.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::UdpSocket;

use super::{HEADER_LEN, Handler, MAX_UDP_QUERY, MessageType, Protocol, Request, RequestHandler};
use super::{UdpResponder, form_error};
use crate::model::Model;

/// Answers one datagram from `src` as one turn of `serve_udp`'s loop does (same checks, same
/// handler, same responder), sending the answer, if any, to `src` through `socket`.
pub(crate) async fn answer_datagram(
    model: Arc<Model>,
    socket: Arc<UdpSocket>,
    src: SocketAddr,
    datagram: &[u8],
) {
    // serve_udp reads into a buffer of MAX_UDP_QUERY bytes: longer datagrams are cut there.
    let datagram = &datagram[..datagram.len().min(MAX_UDP_QUERY)];
    if src.port() == 0 || src.ip().is_unspecified() || datagram.len() < HEADER_LEN {
        return;
    }
    let handler = Handler { model };
    let responder = UdpResponder { socket, dst: src };
    match Request::from_bytes(datagram.to_vec(), src, Protocol::Udp) {
        Ok(request) if request.metadata.message_type == MessageType::Response => {}
        Ok(request) => {
            handler
                .handle_request::<_, hickory_server::net::runtime::TokioTime>(&request, responder)
                .await;
        }
        Err(_) => form_error(datagram, responder).await,
    }
}
