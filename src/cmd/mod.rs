//! Thin command-line front ends; the work happens in the library modules they call.

pub mod build;
pub mod check;
pub mod daemon;
pub mod inspect;
pub mod mount;
