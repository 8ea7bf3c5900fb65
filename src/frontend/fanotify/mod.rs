//! The fanotify front-end (being written).

use std::sync::Arc;

use anyhow::Result;

use super::{Frontend, Support};
use crate::core::fill::Filler;
use crate::daemon::config::Config;

/// Starts the front-end: takes the kernel channel and serves it on the current tokio runtime.
pub fn start(_config: &Config, _filler: Filler) -> Result<Arc<dyn Frontend>> {
    anyhow::bail!("the fanotify front-end is being written")
}

/// Whether this kernel and machine can run the front-end, in plain words.
pub fn probe() -> Support {
    Support { usable: false, details: vec!["the fanotify front-end is being written".into()] }
}
