//! Where WAMR's own output goes.
//!
//! WAMR prints through `BH_VPRINTF`, which this project points at
//! `wamr/src/log_bridge.c` (see `.cargo/config.toml`). The bridge hands each
//! complete line to [`wamr_coro_log_line`], which emits it through `tracing`
//! under the target `wamr` — or drops it when the runtime was configured with
//! [`WamrLog::Silent`](crate::WamrLog::Silent).
use std::sync::atomic::{AtomicU8, Ordering};

/// 0 = silent, 1 = tracing.
static MODE: AtomicU8 = AtomicU8::new(1);

pub(crate) fn set_tracing(enabled: bool) {
    MODE.store(enabled as u8, Ordering::Relaxed);
}

extern "C" {
    fn wamr_coro_log_bridge_present() -> libc::c_int;
}

/// Makes sure the bridge's object file is linked (libiwasm.a, which calls
/// `wamr_coro_vprintf`, comes after ours on the link line).
pub(crate) fn bridge_linked() -> bool {
    // SAFETY: a C function without arguments or side effects.
    unsafe { wamr_coro_log_bridge_present() == 1 }
}

/// Called by the C bridge with one line of WAMR output (no newline).
///
/// # Safety
/// `line` points to `len` readable bytes for the duration of the call.
#[no_mangle]
pub unsafe extern "C" fn wamr_coro_log_line(line: *const libc::c_char, len: usize) {
    if MODE.load(Ordering::Relaxed) == 0 || line.is_null() {
        return;
    }
    // SAFETY: the bridge passes its own buffer and its length (see above).
    let bytes = unsafe { std::slice::from_raw_parts(line as *const u8, len) };
    let lossy = String::from_utf8_lossy(bytes);
    let text = printable(&lossy);
    let lower = text.to_ascii_lowercase();
    if lower.contains("error") || lower.contains("exception") {
        tracing::error!(target: "wamr", "{}", text);
    } else if lower.contains("warning") {
        tracing::warn!(target: "wamr", "{}", text);
    } else {
        tracing::debug!(target: "wamr", "{}", text);
    }
}

/// `text` with its control characters escaped (`\n`, `\r`, `\t`, others as
/// `\u{..}`), so that what it carries cannot start a line of its own in a
/// log: a guest's `log` text often holds what its client sent, and WAMR's
/// messages quote names from the module. Borrows when there is nothing to
/// escape (the usual case).
pub(crate) fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.extend(c.escape_unicode()),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::printable;

    #[test]
    fn control_characters_are_escaped_and_the_rest_kept() {
        assert!(matches!(printable("plain text, ü ✓"), std::borrow::Cow::Borrowed(_)));
        assert_eq!(printable("a\nb\r\tc\0d\u{1b}[31me\u{85}"), "a\\nb\\r\\tc\\u{0}d\\u{1b}[31me\\u{85}");
    }
}
