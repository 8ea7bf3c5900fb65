//! The Linux /dev/cachefiles on-demand protocol, and nothing else: message
//! parsing ([`wire`]), what EROFS puts in the OPEN keys ([`keys`]), text
//! commands ([`command`]), the READ_COMPLETE ioctl ([`ioctl`]) and the device
//! handle ([`device`]). Daemon policy (what to fetch, when to copen what)
//! lives in the erofsd crate.
//!
//! Protocol facts: docs/protocols/cachefiles.md (kernel 5.19–7.1).

pub mod command;
pub mod device;
pub mod ioctl;
pub mod keys;
pub mod wire;

pub use command::{Command, CommandError, CopenResult, Threshold};
pub use device::{Device, DeviceError, DEVICE_PATH};
pub use ioctl::{read_complete, CACHEFILES_IOC_READ_COMPLETE};
pub use keys::{ErofsKeys, KeyError};
pub use wire::{
    parse_message, CloseRequest, Header, Message, Opcode, OpenRequest, ParseError, ReadRequest,
    MSG_MAX_SIZE,
};
