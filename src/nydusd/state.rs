//! The daemon states nydus-snapshotter reads from `GET /api/v1/daemon`.
//!
//! A fresh daemon goes straight to RUNNING (the snapshotter waits only ~2 s for it). A daemon
//! started for failover or hot upgrade stays INIT until `takeover` hands it the cachefiles
//! device, is READY after that, and RUNNING after `start`. `exit` makes it STOPPED.

use std::sync::atomic::{AtomicU8, Ordering};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    Init = 0,
    Ready = 1,
    Running = 2,
    Stopped = 3,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Init => "INIT",
            State::Ready => "READY",
            State::Running => "RUNNING",
            State::Stopped => "STOPPED",
        }
    }

    fn from_u8(v: u8) -> State {
        match v {
            0 => State::Init,
            1 => State::Ready,
            2 => State::Running,
            _ => State::Stopped,
        }
    }
}

#[derive(Default)]
pub struct StateCell(AtomicU8);

impl StateCell {
    pub fn get(&self) -> State {
        State::from_u8(self.0.load(Ordering::SeqCst))
    }

    pub fn set(&self, s: State) {
        self.0.store(s as u8, Ordering::SeqCst);
    }

    /// Moves to `to` if the state is one of `from`; returns the state found.
    pub fn transition(&self, from: &[State], to: State) -> Result<(), State> {
        let cur = self.get();
        if from.contains(&cur) {
            self.set(to);
            Ok(())
        } else {
            Err(cur)
        }
    }
}
