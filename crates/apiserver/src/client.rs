//! The in-process client: a `kube::Client` whose requests go straight into the router as a
//! tower service, with no TCP and no TLS, for controllers running inside the server's process.

use axum::Router;
use tower::ServiceBuilder;

use crate::auth::{ConnectionIdentity, UserInfo};

/// A client acting as `user` (authorized by RBAC like any other; `UserInfo::admin` is in
/// `system:masters`).
pub fn in_process_client(router: Router, user: UserInfo) -> kube::Client {
    let service = ServiceBuilder::new()
        .map_request(move |mut req: http::Request<kube::client::Body>| {
            req.extensions_mut()
                .insert(ConnectionIdentity::User(user.clone()));
            req.map(axum::body::Body::new)
        })
        .service(router);
    kube::Client::new(service, "default")
}
