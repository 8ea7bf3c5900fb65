//! Thin command-line front ends; the work happens in the library modules they call.

/// Appends a line to a command's report, which is printed at the end.
macro_rules! outln {
    ($out:ident, $($arg:tt)*) => {{
        use std::fmt::Write as _;
        let _ = writeln!($out, $($arg)*);
    }};
}

/// Prints a report; a closed stdout (`erofsd build … | head`) is not an error.
fn print_report(out: &str) {
    use std::io::Write;
    let _ = std::io::stdout().lock().write_all(out.as_bytes());
}

pub mod build;
pub mod cache;
pub mod check;
pub mod convert;
pub mod daemon;
pub mod doctor;
pub mod inspect;
pub mod mount;
pub mod status;
pub mod trace;
