//! UAPI constants (`include/uapi/linux/fanotify.h`, 6.14+). Spelled out here
//! rather than taken from libc because libc does not (yet) carry the
//! pre-content ones, and one place with all values is easier to audit.

// fanotify_init flags.
pub const FAN_CLOEXEC: u32 = 0x0000_0001;
pub const FAN_NONBLOCK: u32 = 0x0000_0002;
pub const FAN_CLASS_NOTIF: u32 = 0x0000_0000;
pub const FAN_CLASS_CONTENT: u32 = 0x0000_0004;
/// Required for `FAN_PRE_ACCESS` marks.
pub const FAN_CLASS_PRE_CONTENT: u32 = 0x0000_0008;
pub const FAN_UNLIMITED_QUEUE: u32 = 0x0000_0010;
pub const FAN_UNLIMITED_MARKS: u32 = 0x0000_0020;

// fanotify_mark flags (inode marks are the default: FAN_MARK_INODE = 0).
pub const FAN_MARK_ADD: u32 = 0x0000_0001;
pub const FAN_MARK_REMOVE: u32 = 0x0000_0002;
pub const FAN_MARK_DONT_FOLLOW: u32 = 0x0000_0004;
pub const FAN_MARK_FLUSH: u32 = 0x0000_0080;

// Event masks.
pub const FAN_ACCESS: u64 = 0x0000_0001;
pub const FAN_OPEN_PERM: u64 = 0x0001_0000;
pub const FAN_ACCESS_PERM: u64 = 0x0002_0000;
/// Overflow marker event (fd is `FAN_NOFD`).
pub const FAN_Q_OVERFLOW: u64 = 0x0000_4000;
/// Pre-content access (6.14+). Early RFCs used other values: ignore them.
pub const FAN_PRE_ACCESS: u64 = 0x0010_0000;

// Responses.
pub const FAN_ALLOW: u32 = 0x01;
pub const FAN_DENY: u32 = 0x02;
/// Errnos the kernel accepts in `FAN_DENY_ERRNO` (pre-content groups only).
pub const FAN_DENY_ERRNO_ALLOWED: [i32; 7] = [
    libc::EPERM,
    libc::EIO,
    libc::EBUSY,
    libc::ETXTBSY,
    libc::EAGAIN,
    libc::ENOSPC,
    libc::EDQUOT,
];

/// `FAN_DENY_ERRNO(e)`: deny and make the access fail with `e`.
pub const fn fan_deny_errno(errno: i32) -> u32 {
    FAN_DENY | (((errno as u32) & 0xff) << 24)
}

/// fd of an event that has none (overflow).
pub const FAN_NOFD: i32 = -1;

/// `FANOTIFY_METADATA_VERSION`.
pub const FANOTIFY_METADATA_VERSION: u8 = 3;
/// `sizeof(struct fanotify_event_metadata)`.
pub const FAN_EVENT_METADATA_LEN: usize = 24;
/// `sizeof(struct fanotify_event_info_header)`.
pub const FAN_INFO_HEADER_LEN: usize = 4;
/// `FAN_EVENT_INFO_TYPE_RANGE`.
pub const FAN_EVENT_INFO_TYPE_RANGE: u8 = 6;
/// `sizeof(struct fanotify_event_info_range)`.
pub const FAN_RANGE_INFO_LEN: usize = 24;
/// `sizeof(struct fanotify_response)`.
pub const FAN_RESPONSE_LEN: usize = 8;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_match_uapi() {
        assert_eq!(FAN_PRE_ACCESS, 0x0010_0000);
        assert_eq!(FAN_CLASS_PRE_CONTENT, 8);
        assert_eq!(fan_deny_errno(libc::EIO), 0x0500_0002);
        assert_eq!(fan_deny_errno(libc::EPERM), 0x0100_0002);
        // Cross-check the ones libc does carry.
        assert_eq!(FAN_CLASS_PRE_CONTENT, libc::FAN_CLASS_PRE_CONTENT);
        assert_eq!(FAN_MARK_ADD, libc::FAN_MARK_ADD);
        assert_eq!(FAN_MARK_REMOVE, libc::FAN_MARK_REMOVE);
        assert_eq!(FAN_Q_OVERFLOW, libc::FAN_Q_OVERFLOW);
        assert_eq!(FAN_ALLOW, libc::FAN_ALLOW);
        assert_eq!(FAN_DENY, libc::FAN_DENY);
        assert_eq!(FAN_NOFD, libc::FAN_NOFD);
        assert_eq!(FANOTIFY_METADATA_VERSION, libc::FANOTIFY_METADATA_VERSION);
        assert_eq!(
            FAN_EVENT_METADATA_LEN,
            std::mem::size_of::<libc::fanotify_event_metadata>()
        );
        assert_eq!(
            FAN_RESPONSE_LEN,
            std::mem::size_of::<libc::fanotify_response>()
        );
    }
}
