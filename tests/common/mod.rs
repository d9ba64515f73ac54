//! Shared test helpers: guests and their paths.
#![allow(dead_code)]
use std::path::PathBuf;

pub fn guest_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("guests").join(name)
}

pub fn guest_text(name: &str) -> String {
    std::fs::read_to_string(guest_path(name)).expect("guest source")
}
