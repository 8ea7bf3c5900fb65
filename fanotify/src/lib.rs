//! The fanotify pre-content protocol (Linux 6.14+), and nothing else:
//! constants ([`consts`]), parsing of `read()` batches ([`event`]), response
//! encoding ([`response`]) and thin `fanotify_init`/`fanotify_mark` wrappers
//! ([`group`]). Daemon policy (what to mark, how to fill, shutdown order)
//! lives in erofsd.
//!
//! Facts: docs/protocols/fanotify-precontent.md.

pub mod consts;
pub mod event;
pub mod group;
pub mod response;

pub use consts::*;
pub use event::{events, parse_batch, BatchError, Event, Events, Range, RangeError};
pub use group::{Error, Group, Op, Target};
pub use response::{BadDenyErrno, Response};
