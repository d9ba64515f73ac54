//! What the bench says to a server and what it must hear back.
//!
//! Two protocols: HTTP/1.1 keep-alive (`GET /`, every response must be
//! byte-identical to the first one, framed by its `Content-Length`) and
//! echo (every message must come back byte-exact). A probe tells them apart
//! when the user does not say.
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The request a bench client sends over HTTP.
pub const HTTP_REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n";

/// What the native baseline answers: the embedded guest's (`guests/http.wat`)
/// response, byte for byte.
pub const HTTP_RESPONSE: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 21\r\n\r\nHello from wamr-coro\n";

/// Bytes per echo message.
pub const ECHO_MESSAGE_BYTES: usize = 64;

/// The wire protocol of a bench run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// HTTP/1.1 keep-alive, `GET /`.
    Http,
    /// Every byte sent comes back.
    Echo,
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Protocol::Http => "http",
            Protocol::Echo => "echo",
        })
    }
}

/// Echo message number `seq`: its number, then bytes derived from it, so a
/// stale or misplaced answer never matches.
pub fn echo_message(seq: u64, out: &mut Vec<u8>) {
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend((0..ECHO_MESSAGE_BYTES - 8).map(|i| (seq as u8).wrapping_mul(31).wrapping_add(i as u8) | 0x20));
}

/// Asks the server at `addr` one request and works out the protocol (unless
/// `want` says it) and, for HTTP, the response every later request must
/// get. Returns the protocol and that reference response (empty for echo).
pub fn probe(addr: SocketAddr, want: Option<Protocol>) -> Result<(Protocol, Vec<u8>)> {
    let io = |what: &str, e| Error::io(format!("probing {addr}: {what}"), e);
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| io("connect", e))?;
    s.set_nodelay(true).map_err(|e| io("nodelay", e))?;
    let request: Vec<u8> = match want {
        Some(Protocol::Echo) => {
            let mut m = Vec::new();
            echo_message(0, &mut m);
            m
        }
        _ => HTTP_REQUEST.to_vec(),
    };
    s.write_all(&request).map_err(|e| io("write", e))?;
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(full) = http_response_len(&got) {
            if want != Some(Protocol::Echo) {
                got.truncate(full);
                return Ok((Protocol::Http, got));
            }
        }
        if got.len() >= request.len() && got[..request.len()] == request[..] && want != Some(Protocol::Http) {
            return Ok((Protocol::Echo, Vec::new()));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        s.set_read_timeout(Some(left)).map_err(|e| io("timeout", e))?;
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => break,
            Err(e) => return Err(io("read", e)),
        }
    }
    let shown = String::from_utf8_lossy(&got[..got.len().min(120)]).into_owned();
    Err(Error::Bench(format!(
        "probing {addr}: the server answered neither HTTP with a Content-Length nor an echo of the request \
         ({} bytes: {shown:?}); pass --protocol to say which it speaks",
        got.len()
    )))
}

/// If `b` starts with a complete HTTP response framed by `Content-Length`,
/// its length.
fn http_response_len(b: &[u8]) -> Option<usize> {
    if !b.starts_with(b"HTTP/1.") {
        return None;
    }
    let head_end = b.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&b[..head_end]).ok()?;
    let body: usize = head
        .lines()
        .find_map(|l| l.split_once(':').filter(|(k, _)| k.trim().eq_ignore_ascii_case("content-length")))?
        .1
        .trim()
        .parse()
        .ok()?;
    (b.len() >= head_end + body).then_some(head_end + body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_framing() {
        assert_eq!(http_response_len(HTTP_RESPONSE), Some(HTTP_RESPONSE.len()));
        assert_eq!(http_response_len(&HTTP_RESPONSE[..40]), None);
        assert_eq!(http_response_len(b"HTTP/1.1 200 OK\r\n\r\n"), None);
        let mut m = Vec::new();
        echo_message(7, &mut m);
        assert_eq!(m.len(), ECHO_MESSAGE_BYTES);
    }
}
