//! The guest `serve` runs when no module is given: `guests/http.wat`, a small
//! HTTP/1.1 responder (keep-alive, pipelining, requests split across reads),
//! so that `curl` and `wrk` work against the server out of the box.

/// WebAssembly text of the default guest.
pub const HTTP_GUEST_WAT: &str = include_str!("../guests/http.wat");

/// The guest `serve` runs when no module is given (`guests/http.wat`).
pub fn default_guest() -> crate::Result<crate::Module> {
    crate::Module::from_wat(HTTP_GUEST_WAT)
}
