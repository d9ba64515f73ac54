//! An echo guest in Rust, for both modes: `on_recv` for direct mode, `run`
//! (a `wait_msg` loop) for queue mode. It also counts bytes per connection in
//! a map, to show ordinary `std` collections working inside a guest.
use std::collections::HashMap;
use std::sync::Mutex;

#[link(wasm_import_module = "env")]
extern "C" {
    fn send(conn: i32, ptr: *const u8, len: i32) -> i32;
    fn wait_msg(buf: *mut u8, cap: i32, info: *mut [i32; 2]) -> i32;
}

const EVENT_DATA: i32 = 0;
const EVENT_CLOSE: i32 = 2;
const SHUTDOWN: i32 = -4;
const CHUNK: usize = 65536;

static SEEN: Mutex<Option<HashMap<i32, u64>>> = Mutex::new(None);

fn count(conn: i32, n: usize) {
    let mut seen = SEEN.lock().unwrap();
    *seen.get_or_insert_with(HashMap::new).entry(conn).or_insert(0) += n as u64;
}

/// The receive buffer for direct mode, in guest memory.
#[no_mangle]
pub extern "C" fn alloc(size: i32) -> i32 {
    if size < 0 || size as usize > CHUNK {
        return 0;
    }
    let buf = vec![0u8; size as usize].leak();
    buf.as_mut_ptr() as i32
}

/// Direct mode: echo.
#[no_mangle]
pub extern "C" fn on_recv(conn: i32, ptr: *const u8, len: i32) -> i32 {
    count(conn, len as usize);
    // SAFETY: the host passes a range inside our memory, valid for the call.
    let r = unsafe { send(conn, ptr, len) };
    if r < 0 { -1 } else { 0 }
}

/// Queue mode: our own loop.
#[no_mangle]
pub extern "C" fn run() -> i32 {
    let mut buf = vec![0u8; CHUNK];
    let mut info = [0i32; 2];
    loop {
        // SAFETY: buf and info are ours and live across the call.
        let n = unsafe { wait_msg(buf.as_mut_ptr(), CHUNK as i32, &mut info) };
        if n == SHUTDOWN {
            return 0;
        }
        if n < 0 {
            return n;
        }
        match info[1] {
            EVENT_DATA => {
                on_recv(info[0], buf.as_ptr(), n);
            }
            EVENT_CLOSE => {
                SEEN.lock().unwrap().get_or_insert_with(HashMap::new).remove(&info[0]);
            }
            _ => {}
        }
    }
}
