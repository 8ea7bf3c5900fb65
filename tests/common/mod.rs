//! Shared helpers for the acceptance tests (each `tests/*.rs` is its own crate and says
//! `mod common;`). Not every test binary uses every helper.
#![allow(dead_code)]

pub mod cli;
pub mod compare;
pub mod containers;
pub mod data;
pub mod devtable;
pub mod env;
pub mod fixtures;
pub mod http;
pub mod mount;
pub mod registry;
pub mod shapes;
pub mod snapshot;
