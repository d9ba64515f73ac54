//! An echo server: every byte a client sends comes back.
//!
//! The guest is `guests/echo.wat` (WebAssembly text, loaded at run time).
//!
//! ```sh
//! cargo run --release --example echo_server          # then: nc 127.0.0.1 7879
//! ```
use wamr_coro::server::{Mode, Server};
use wamr_coro::Module;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Colour only on a terminal: piped logs stay plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt().with_env_filter("info,may=warn").with_ansi(ansi).with_writer(std::io::stderr).init();

    let guest = concat!(env!("CARGO_MANIFEST_DIR"), "/guests/echo.wat");
    let module = Module::from_file(guest)?;

    let server = std::sync::Arc::new(
        Server::builder(module)
            .listen("127.0.0.1:7879")
            .mode(Mode::Direct) // or Mode::Queue: the same guest works in both
            .start()?,
    );
    println!("echo server on {} (Ctrl-C stops it)", server.local_addr());

    wamr_coro::server::signals::stop_on_signal(&server)?;
    println!("{}", server.stop());
    Ok(())
}
