//! End-to-end tests: the `denoise` binary run as a user runs it, on data the tests write.
//! One test binary (its tests run in parallel), one file per subject; the shared helpers are in
//! `common`.

mod bad_input;
mod bench;
mod common;
mod generate;
mod reliability;
mod shipped;
mod train;
