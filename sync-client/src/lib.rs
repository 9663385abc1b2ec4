//! Concord's client SDK, written once for every platform.
#![forbid(unsafe_code)]

pub mod platform;
