//! Free loopback ports.
//!
//! A port is picked by binding `127.0.0.1:0` and releasing it, so another
//! process can take it before our server binds it. Callers detect that
//! ("address already in use" in the server's log) and retry with new ports;
//! within this process, ports already handed out are never handed out again.

use std::collections::HashSet;
use std::net::{Ipv4Addr, TcpListener};
use std::sync::{Mutex, PoisonError};

use crate::Error;

/// A loopback TCP port that was free a moment ago.
pub(crate) fn free_port() -> Result<u16, Error> {
    static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    for _ in 0..64 {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .map_err(Error::io("binding a free loopback port"))?;
        let port = listener
            .local_addr()
            .map_err(Error::io("reading a bound port"))?
            .port();
        let mut handed_out = HANDED_OUT.lock().unwrap_or_else(PoisonError::into_inner);
        if handed_out.get_or_insert_with(HashSet::new).insert(port) {
            return Ok(port);
        }
    }
    Err(Error::Io {
        context: "finding a free loopback port".into(),
        source: std::io::Error::from(std::io::ErrorKind::AddrInUse),
    })
}

/// Whether a log shows that a listener lost the race for its port.
pub(crate) fn lost_port_race(log_tail: &str) -> bool {
    log_tail.contains("address already in use")
}
