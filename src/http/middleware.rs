//! What wraps every route: the security headers ([`security_headers`]), and the connections per client
//! address ([`Connections`], [`refuse_over_limit`]). Identity, rate limits and metrics plug in here.
//!
//! Connections per client address: each connection is counted from accept to close, and a request on a
//! connection past [`HttpLimits::max_connections_per_client`](super::HttpLimits) of its address is answered
//! 429 and the connection closed, so one client cannot hold every file descriptor of the node.
//!
//! A connection that never sends a request is closed by the request-head time-out, and a stalled body by the
//! body time-out; this bounds what one address holds meanwhile.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{Extensions, ServiceRequest, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::middleware::Next;

/// The default of [`HttpLimits::max_connections_per_client`](super::HttpLimits): above the hundreds of live
/// feeds and parked reads one client may fairly hold, well below the descriptors a node has.
pub const DEFAULT_MAX_PER_CLIENT: usize = 512;

/// The open connections of each client address. Cheap to clone.
#[derive(Clone)]
pub struct Connections {
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
    max: usize,
}

/// One connection, counted for as long as the connection's data lives (until it closes).
struct Counted {
    connections: Connections,
    address: IpAddr,
    /// Its address had more than the limit open when it was accepted.
    over: bool,
}

impl Drop for Counted {
    fn drop(&mut self) {
        let mut open = self.connections.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.address);
            }
        }
    }
}

impl Connections {
    /// At most `max` connections per address.
    pub fn new(max: usize) -> Self {
        Self { open: Arc::default(), max }
    }

    /// Counts a new connection (`HttpServer::on_connect`).
    pub fn accepted(&self, io: &dyn std::any::Any, data: &mut Extensions) {
        let Some(address) = io.downcast_ref::<actix_web::rt::net::TcpStream>().and_then(|s| s.peer_addr().ok()) else {
            return;
        };
        let address = address.ip();
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(address).or_default();
        *count += 1;
        let over = *count > self.max;
        drop(open);
        data.insert(Counted { connections: self.clone(), address, over });
    }
}

/// The middleware: refuses requests on connections over their address's limit.
pub async fn refuse_over_limit(
    request: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let over = request.conn_data::<Counted>().filter(|c| c.over).map(|c| (c.address, c.connections.max));
    let Some((address, max)) = over else {
        return next.call(request).await.map(ServiceResponse::map_into_boxed_body);
    };
    tracing::debug!(%address, max, "refused a connection over its address's limit");
    let message = format!("{address} has more than {max} connections open to this node: close some and retry");
    let mut answer = actix_web::HttpResponse::build(StatusCode::TOO_MANY_REQUESTS);
    answer.force_close();
    let answer = answer.json(serde_json::json!({"error": {"kind": "too_many", "message": message}}));
    Ok(request.into_response(answer))
}

/// The headers every answer carries: no type guessing, no framing by other origins, no referrer leaking ids
/// in URLs, and the answers kept to this origin.
pub fn security_headers() -> actix_web::middleware::DefaultHeaders {
    actix_web::middleware::DefaultHeaders::new()
        .add((actix_web::http::header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .add((actix_web::http::header::X_FRAME_OPTIONS, "DENY"))
        .add((actix_web::http::header::REFERRER_POLICY, "no-referrer"))
        .add(("Cross-Origin-Resource-Policy", "same-origin"))
        .add(("Cross-Origin-Opener-Policy", "same-origin"))
}
