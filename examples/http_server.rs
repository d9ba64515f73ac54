//! The HTTP/1.1 responder: the embedded default guest (`guests/http.wat`),
//! here in queue mode — one guest instance answers every connection.
//!
//! ```sh
//! cargo run --release --example http_server          # then: curl 127.0.0.1:7880
//! wrk -t2 -c100 -d5s http://127.0.0.1:7880/
//! ```
use wamr_coro::server::{Mode, Server};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Colour only on a terminal: piped logs stay plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt().with_env_filter("info,may=warn").with_ansi(ansi).with_writer(std::io::stderr).init();

    let server = std::sync::Arc::new(
        Server::builder(wamr_coro::default_guest()?).listen("127.0.0.1:7880").mode(Mode::Queue).start()?,
    );
    println!("HTTP on http://{}/ (Ctrl-C stops it)", server.local_addr());

    wamr_coro::server::signals::stop_on_signal(&server)?;
    println!("{}", server.stop());
    Ok(())
}
