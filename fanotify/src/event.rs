//! Parsing the events one `read()` on a fanotify group returns.
//!
//! A batch is a sequence of `fanotify_event_metadata` records, each
//! `event_len` bytes long including its info records. Two levels of failure:
//!
//! * **Batch errors** ([`BatchError`]): a bad version or length means we no
//!   longer know where the next event starts, so the rest of the batch is
//!   untrustworthy and iteration stops. Events before it are fine.
//! * **Per-event errors** ([`RangeError`]): the event's boundary is sound but
//!   its RANGE record is missing, zero, duplicated or malformed. The event
//!   still carries its fd, so the caller denies it and moves on.
//!
//! Host-endian, unaligned-safe (fields are copied out, never cast).

use std::fmt;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use crate::consts::*;

/// The byte range a pre-content event is about (the access's exact `{pos, count}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub offset: u64,
    pub count: u64,
}

impl Range {
    /// `offset + count`; parsing guarantees it does not overflow.
    pub fn end(&self) -> u64 {
        self.offset + self.count
    }
}

/// Why an event has no usable RANGE. Deny the event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeError {
    /// No RANGE record (e.g. not a pre-content event).
    Missing,
    /// More than one RANGE record.
    Duplicate,
    /// `count == 0`.
    Zero,
    /// `offset + count` wraps.
    Overflow { offset: u64, count: u64 },
    /// A RANGE record whose `len` is not 24.
    BadRecordLen { len: u16 },
    /// An info header that is truncated, shorter than 4 bytes or runs past
    /// the event: the remaining info records cannot be walked.
    MalformedInfo { at: usize },
}

impl fmt::Display for RangeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RangeError::Missing => write!(f, "event has no RANGE record"),
            RangeError::Duplicate => write!(f, "event has more than one RANGE record"),
            RangeError::Zero => write!(f, "event RANGE has count 0"),
            RangeError::Overflow { offset, count } => {
                write!(f, "event RANGE offset {offset} + count {count} overflows")
            }
            RangeError::BadRecordLen { len } => {
                write!(
                    f,
                    "RANGE record is {len} bytes, expected {FAN_RANGE_INFO_LEN}"
                )
            }
            RangeError::MalformedInfo { at } => {
                write!(f, "malformed info record at event byte {at}")
            }
        }
    }
}

impl std::error::Error for RangeError {}

/// The batch cannot be walked past this point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchError {
    /// Fewer than 24 bytes left at `at`.
    Truncated {
        at: usize,
        remaining: usize,
    },
    BadVersion {
        at: usize,
        version: u8,
    },
    /// `metadata_len` below 24 or above `event_len`.
    BadMetadataLen {
        at: usize,
        metadata_len: u16,
        event_len: u32,
    },
    /// `event_len` below 24 or beyond the bytes left.
    BadEventLen {
        at: usize,
        event_len: u32,
        remaining: usize,
    },
}

impl fmt::Display for BatchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BatchError::Truncated { at, remaining } => {
                write!(f, "fanotify batch truncated at byte {at}: {remaining} bytes left, metadata needs {FAN_EVENT_METADATA_LEN}")
            }
            BatchError::BadVersion { at, version } => write!(
                f,
                "fanotify event at byte {at} has metadata version {version}, expected {FANOTIFY_METADATA_VERSION}"
            ),
            BatchError::BadMetadataLen { at, metadata_len, event_len } => write!(
                f,
                "fanotify event at byte {at} has metadata_len {metadata_len} (event_len {event_len})"
            ),
            BatchError::BadEventLen { at, event_len, remaining } => {
                write!(f, "fanotify event at byte {at} has event_len {event_len} with {remaining} bytes left")
            }
        }
    }
}

impl std::error::Error for BatchError {}

/// One event as the kernel reported it. `fd` is the raw number the kernel
/// installed for us (or [`FAN_NOFD`]); see [`Event::take_fd`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    pub mask: u64,
    pub fd: RawFd,
    pub pid: i32,
    /// The RANGE record, or why there is none usable.
    pub range: Result<Range, RangeError>,
}

impl Event {
    pub fn is_overflow(&self) -> bool {
        self.mask & FAN_Q_OVERFLOW != 0
    }

    pub fn is_pre_access(&self) -> bool {
        self.mask & FAN_PRE_ACCESS != 0
    }

    /// Takes ownership of the event fd (None for `FAN_NOFD`).
    ///
    /// # Safety
    /// The event must come from a `read()` on a fanotify group in this process
    /// and the fd must not be taken twice. Respond to a permission event
    /// *before* dropping its fd (the kernel matches responses by fd number).
    pub unsafe fn take_fd(&self) -> Option<OwnedFd> {
        if self.fd < 0 {
            None
        } else {
            Some(OwnedFd::from_raw_fd(self.fd))
        }
    }
}

/// Walks a batch; yields `Err` at most once, as its last item.
#[derive(Debug, Clone)]
pub struct Events<'a> {
    buf: &'a [u8],
    pos: usize,
    done: bool,
}

/// Iterates over the events in exactly the bytes one `read()` returned.
pub fn events(buf: &[u8]) -> Events<'_> {
    Events {
        buf,
        pos: 0,
        done: false,
    }
}

/// Collects a batch: the events that could be parsed, and the batch error if
/// the walk had to stop early.
pub fn parse_batch(buf: &[u8]) -> (Vec<Event>, Option<BatchError>) {
    let mut out = Vec::new();
    for e in events(buf) {
        match e {
            Ok(e) => out.push(e),
            Err(err) => return (out, Some(err)),
        }
    }
    (out, None)
}

impl Iterator for Events<'_> {
    type Item = Result<Event, BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done || self.pos >= self.buf.len() {
            return None;
        }
        let r = parse_one(&self.buf[self.pos..], self.pos);
        match r {
            Ok((ev, len)) => {
                self.pos += len;
                Some(Ok(ev))
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

fn rd<const N: usize>(b: &[u8], off: usize) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&b[off..off + N]);
    a
}

/// Parses the event at the start of `b` (`at` is its batch offset, for
/// errors). Returns the event and its length.
fn parse_one(b: &[u8], at: usize) -> Result<(Event, usize), BatchError> {
    if b.len() < FAN_EVENT_METADATA_LEN {
        return Err(BatchError::Truncated {
            at,
            remaining: b.len(),
        });
    }
    let event_len = u32::from_ne_bytes(rd(b, 0));
    let version = b[4];
    let metadata_len = u16::from_ne_bytes(rd(b, 6));
    if version != FANOTIFY_METADATA_VERSION {
        return Err(BatchError::BadVersion { at, version });
    }
    if (event_len as usize) < FAN_EVENT_METADATA_LEN || event_len as usize > b.len() {
        return Err(BatchError::BadEventLen {
            at,
            event_len,
            remaining: b.len(),
        });
    }
    if (metadata_len as usize) < FAN_EVENT_METADATA_LEN || metadata_len as u32 > event_len {
        return Err(BatchError::BadMetadataLen {
            at,
            metadata_len,
            event_len,
        });
    }
    let mask = u64::from_ne_bytes(rd(b, 8));
    let fd = i32::from_ne_bytes(rd(b, 16));
    let pid = i32::from_ne_bytes(rd(b, 20));
    let info = &b[metadata_len as usize..event_len as usize];
    let range = find_range(info, metadata_len as usize);
    Ok((
        Event {
            mask,
            fd,
            pid,
            range,
        },
        event_len as usize,
    ))
}

/// Walks the info records of one event looking for exactly one RANGE.
/// `base` is where `info` starts inside the event (for error positions).
fn find_range(info: &[u8], base: usize) -> Result<Range, RangeError> {
    let mut found: Option<Range> = None;
    let mut pos = 0;
    while pos < info.len() {
        let rest = &info[pos..];
        if rest.len() < FAN_INFO_HEADER_LEN {
            return Err(RangeError::MalformedInfo { at: base + pos });
        }
        let info_type = rest[0];
        let len = u16::from_ne_bytes(rd(rest, 2));
        // len < 4 would never advance; len > rest runs off the event.
        if (len as usize) < FAN_INFO_HEADER_LEN || len as usize > rest.len() {
            return Err(RangeError::MalformedInfo { at: base + pos });
        }
        if info_type == FAN_EVENT_INFO_TYPE_RANGE {
            if len as usize != FAN_RANGE_INFO_LEN {
                return Err(RangeError::BadRecordLen { len });
            }
            if found.is_some() {
                return Err(RangeError::Duplicate);
            }
            let offset = u64::from_ne_bytes(rd(rest, 8));
            let count = u64::from_ne_bytes(rd(rest, 16));
            found = Some(Range { offset, count });
        }
        pos += len as usize;
    }
    let r = found.ok_or(RangeError::Missing)?;
    if r.count == 0 {
        return Err(RangeError::Zero);
    }
    if r.offset.checked_add(r.count).is_none() {
        return Err(RangeError::Overflow {
            offset: r.offset,
            count: r.count,
        });
    }
    Ok(r)
}

/// Builders for kernel-shaped bytes, for tests here and in the daemon.
pub mod build {
    use super::*;

    /// Metadata with `event_len = 24 + info.len()`, followed by `info`.
    pub fn event(mask: u64, fd: i32, pid: i32, info: &[u8]) -> Vec<u8> {
        let mut v = Vec::with_capacity(FAN_EVENT_METADATA_LEN + info.len());
        v.extend_from_slice(&((FAN_EVENT_METADATA_LEN + info.len()) as u32).to_ne_bytes());
        v.push(FANOTIFY_METADATA_VERSION);
        v.push(0);
        v.extend_from_slice(&(FAN_EVENT_METADATA_LEN as u16).to_ne_bytes());
        v.extend_from_slice(&mask.to_ne_bytes());
        v.extend_from_slice(&fd.to_ne_bytes());
        v.extend_from_slice(&pid.to_ne_bytes());
        v.extend_from_slice(info);
        v
    }

    pub fn range_record(offset: u64, count: u64) -> Vec<u8> {
        let mut v = vec![FAN_EVENT_INFO_TYPE_RANGE, 0];
        v.extend_from_slice(&(FAN_RANGE_INFO_LEN as u16).to_ne_bytes());
        v.extend_from_slice(&[0; 4]);
        v.extend_from_slice(&offset.to_ne_bytes());
        v.extend_from_slice(&count.to_ne_bytes());
        v
    }

    /// A pre-content event with one RANGE record.
    pub fn pre_access(fd: i32, pid: i32, offset: u64, count: u64) -> Vec<u8> {
        event(FAN_PRE_ACCESS, fd, pid, &range_record(offset, count))
    }
}

#[cfg(test)]
mod tests {
    use super::build::*;
    use super::*;

    /// A FAN_PRE_ACCESS event exactly as a little-endian kernel writes it.
    #[cfg(target_endian = "little")]
    const PRE_ACCESS_LE: &[u8] = &[
        48, 0, 0, 0, // event_len 48 = 24 + 24
        3, 0, // vers 3, reserved
        24, 0, // metadata_len 24
        0, 0, 0x10, 0, 0, 0, 0, 0, // mask FAN_PRE_ACCESS
        7, 0, 0, 0, // fd 7
        0x39, 0x30, 0, 0, // pid 12345
        6, 0, 24, 0, // info: type RANGE, pad, len 24
        0, 0, 0, 0, // pad
        0, 0, 1, 0, 0, 0, 0, 0, // offset 65536
        0, 0x20, 0, 0, 0, 0, 0, 0, // count 8192
    ];

    #[test]
    #[cfg(target_endian = "little")]
    fn parses_pre_access_bytes() {
        let (evs, err) = parse_batch(PRE_ACCESS_LE);
        assert_eq!(err, None);
        assert_eq!(
            evs,
            vec![Event {
                mask: FAN_PRE_ACCESS,
                fd: 7,
                pid: 12345,
                range: Ok(Range {
                    offset: 65536,
                    count: 8192
                })
            }]
        );
        assert!(evs[0].is_pre_access() && !evs[0].is_overflow());
        assert_eq!(evs[0].range.unwrap().end(), 65536 + 8192);
        assert_eq!(pre_access(7, 12345, 65536, 8192), PRE_ACCESS_LE);
    }

    #[test]
    fn walks_a_batch_by_event_len() {
        let mut batch = pre_access(5, 1, 0, 4096);
        batch.extend(pre_access(6, 2, 4096, 4096));
        batch.extend(event(FAN_Q_OVERFLOW, FAN_NOFD, 0, &[]));
        let evs: Vec<_> = events(&batch).collect::<Result<_, _>>().unwrap();
        assert_eq!(evs.len(), 3);
        assert_eq!(evs[0].fd, 5);
        assert_eq!(
            evs[1].range,
            Ok(Range {
                offset: 4096,
                count: 4096
            })
        );
        assert!(evs[2].is_overflow());
        assert_eq!(evs[2].fd, FAN_NOFD);
        assert_eq!(evs[2].range, Err(RangeError::Missing));
        assert!(unsafe { evs[2].take_fd() }.is_none());
    }

    #[test]
    fn unaligned_batch() {
        let ev = pre_access(5, 1, 12288, 4096);
        let mut backing = vec![0u8; ev.len() + 3];
        backing[3..].copy_from_slice(&ev);
        let (evs, err) = parse_batch(&backing[3..]);
        assert!(err.is_none());
        assert_eq!(
            evs[0].range,
            Ok(Range {
                offset: 12288,
                count: 4096
            })
        );
    }

    #[test]
    fn empty_batch() {
        assert_eq!(parse_batch(&[]), (vec![], None));
    }

    #[test]
    fn skips_other_info_records() {
        // An unknown info record (type 99, 12 bytes) before the RANGE.
        let mut info = vec![99, 0, 12, 0, 1, 2, 3, 4, 5, 6, 7, 8];
        info.extend(range_record(8192, 4096));
        let (evs, err) = parse_batch(&event(FAN_PRE_ACCESS, 9, 1, &info));
        assert!(err.is_none());
        assert_eq!(
            evs[0].range,
            Ok(Range {
                offset: 8192,
                count: 4096
            })
        );
    }

    #[test]
    fn metadata_len_larger_than_24_is_honoured() {
        // A future kernel could grow the metadata; info starts at metadata_len.
        let mut ev = event(FAN_PRE_ACCESS, 9, 1, &[0xaa; 8]);
        ev.extend(range_record(0, 4096));
        let len = ev.len() as u32;
        ev[0..4].copy_from_slice(&len.to_ne_bytes());
        ev[6..8].copy_from_slice(&32u16.to_ne_bytes());
        let (evs, err) = parse_batch(&ev);
        assert!(err.is_none());
        assert_eq!(
            evs[0].range,
            Ok(Range {
                offset: 0,
                count: 4096
            })
        );
    }

    // ---- per-event errors: the event survives, the batch continues ----

    fn one_then_good(bad: Vec<u8>) -> (Event, Event) {
        let mut batch = bad;
        batch.extend(pre_access(11, 1, 0, 4096));
        let (evs, err) = parse_batch(&batch);
        assert_eq!(err, None, "per-event errors must not stop the batch");
        assert_eq!(evs.len(), 2);
        assert_eq!(
            evs[1].range,
            Ok(Range {
                offset: 0,
                count: 4096
            })
        );
        (evs[0], evs[1])
    }

    #[test]
    fn missing_range() {
        let (e, _) = one_then_good(event(FAN_PRE_ACCESS, 10, 1, &[]));
        assert_eq!(e.fd, 10, "the fd must survive so the caller can deny");
        assert_eq!(e.range, Err(RangeError::Missing));
    }

    #[test]
    fn zero_range() {
        let (e, _) = one_then_good(pre_access(10, 1, 4096, 0));
        assert_eq!(e.range, Err(RangeError::Zero));
    }

    #[test]
    fn overflowing_range() {
        let (e, _) = one_then_good(pre_access(10, 1, u64::MAX, 2));
        assert_eq!(
            e.range,
            Err(RangeError::Overflow {
                offset: u64::MAX,
                count: 2
            })
        );
    }

    #[test]
    fn duplicate_range() {
        let mut info = range_record(0, 4096);
        info.extend(range_record(4096, 4096));
        let (e, _) = one_then_good(event(FAN_PRE_ACCESS, 10, 1, &info));
        assert_eq!(e.range, Err(RangeError::Duplicate));
    }

    #[test]
    fn range_record_with_wrong_len() {
        let mut rec = range_record(0, 4096);
        rec[2..4].copy_from_slice(&16u16.to_ne_bytes());
        rec.truncate(16);
        let (e, _) = one_then_good(event(FAN_PRE_ACCESS, 10, 1, &rec));
        assert_eq!(e.range, Err(RangeError::BadRecordLen { len: 16 }));
    }

    #[test]
    fn malformed_info_headers() {
        // Zero-length info record: must not loop forever.
        let (e, _) = one_then_good(event(FAN_PRE_ACCESS, 10, 1, &[6, 0, 0, 0]));
        assert_eq!(e.range, Err(RangeError::MalformedInfo { at: 24 }));
        // Info record claiming more than the event holds.
        let (e, _) = one_then_good(event(FAN_PRE_ACCESS, 10, 1, &[6, 0, 200, 0, 0, 0, 0, 0]));
        assert_eq!(e.range, Err(RangeError::MalformedInfo { at: 24 }));
        // Trailing bytes too short for a header.
        let mut info = range_record(0, 4096);
        info.extend([1, 2]);
        let (e, _) = one_then_good(event(FAN_PRE_ACCESS, 10, 1, &info));
        assert_eq!(e.range, Err(RangeError::MalformedInfo { at: 48 }));
    }

    // ---- batch errors: stop, keep what came before ----

    fn good_then(bad: &[u8]) -> (Vec<Event>, Option<BatchError>) {
        let mut batch = pre_access(5, 1, 0, 4096);
        batch.extend_from_slice(bad);
        // A good event after the bad one must NOT be reported.
        batch.extend(pre_access(6, 1, 0, 4096));
        parse_batch(&batch)
    }

    #[test]
    fn bad_version_stops_batch() {
        let mut bad = pre_access(9, 1, 0, 4096);
        bad[4] = 2;
        let (evs, err) = good_then(&bad);
        assert_eq!(evs.len(), 1);
        assert_eq!(evs[0].fd, 5);
        assert_eq!(err, Some(BatchError::BadVersion { at: 48, version: 2 }));
    }

    #[test]
    fn event_len_too_small_stops_batch() {
        let mut bad = pre_access(9, 1, 0, 4096);
        bad[0..4].copy_from_slice(&0u32.to_ne_bytes());
        let (evs, err) = good_then(&bad);
        assert_eq!(evs.len(), 1);
        assert!(
            matches!(
                err,
                Some(BatchError::BadEventLen {
                    at: 48,
                    event_len: 0,
                    ..
                })
            ),
            "{err:?}"
        );
    }

    #[test]
    fn event_len_beyond_batch_stops() {
        let mut bad = pre_access(9, 1, 0, 4096);
        bad[0..4].copy_from_slice(&u32::MAX.to_ne_bytes());
        let (evs, err) = good_then(&bad);
        assert_eq!(evs.len(), 1);
        assert_eq!(
            err,
            Some(BatchError::BadEventLen {
                at: 48,
                event_len: u32::MAX,
                remaining: 96
            })
        );
    }

    #[test]
    fn bad_metadata_len_stops_batch() {
        let mut bad = pre_access(9, 1, 0, 4096);
        bad[6..8].copy_from_slice(&8u16.to_ne_bytes());
        let (_, err) = good_then(&bad);
        assert_eq!(
            err,
            Some(BatchError::BadMetadataLen {
                at: 48,
                metadata_len: 8,
                event_len: 48
            })
        );
        let mut bad = pre_access(9, 1, 0, 4096);
        bad[6..8].copy_from_slice(&49u16.to_ne_bytes());
        let (_, err) = good_then(&bad);
        assert_eq!(
            err,
            Some(BatchError::BadMetadataLen {
                at: 48,
                metadata_len: 49,
                event_len: 48
            })
        );
    }

    #[test]
    fn truncated_tail_stops_batch() {
        let mut batch = pre_access(5, 1, 0, 4096);
        batch.extend_from_slice(&[48, 0, 0, 0, 3]);
        let (evs, err) = parse_batch(&batch);
        assert_eq!(evs.len(), 1);
        assert_eq!(
            err,
            Some(BatchError::Truncated {
                at: 48,
                remaining: 5
            })
        );
        // Iterator yields the error once and then ends.
        let mut it = events(&batch);
        assert!(it.next().unwrap().is_ok());
        assert!(it.next().unwrap().is_err());
        assert!(it.next().is_none());
    }

    #[test]
    fn errors_display() {
        assert!(RangeError::Missing.to_string().contains("no RANGE"));
        assert!(BatchError::BadVersion { at: 0, version: 2 }
            .to_string()
            .contains("expected 3"));
    }
}
