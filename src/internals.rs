//! Not API: what this crate's command line, tests and benches reach that
//! embedders should not. No stability promise; hidden from the docs.
#[cfg(feature = "cli")]
#[path = "bench/mod.rs"]
pub mod bench;
#[cfg(feature = "cli")]
#[path = "stress.rs"]
pub mod stress;

pub use crate::default_guest::HTTP_GUEST_WAT as DEFAULT_GUEST_WAT;
pub use crate::ring::EventRing;
pub use crate::wamr::build_info::describe as wamr_build_info;
pub use crate::wamr::stack::GUARD as STACK_GUARD;
pub use crate::wamr::MemoryPages;
