//! Thin command-line front ends; the work happens in the library modules they call.

pub mod build;
pub mod check;
pub mod daemon;
pub mod doctor;
pub mod inspect;
pub mod mount;
pub mod status;
