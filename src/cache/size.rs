//! Human byte sizes: `20GiB`, `512M`, `1.5T`, `4096` (binary multiples: K = KiB = 1024).

use anyhow::{bail, Result};
use serde::{Deserialize, Deserializer, Serializer};

/// Parses a size; suffixes K/M/G/T with optional `i`/`iB`/`B`, case-insensitive, all binary.
pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() {
        bail!("size {s:?}: expected a number, e.g. 20GiB");
    }
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "ki" | "kib" => 10,
        "m" | "mb" | "mi" | "mib" => 20,
        "g" | "gb" | "gi" | "gib" => 30,
        "t" | "tb" | "ti" | "tib" => 40,
        u => bail!("size {s:?}: unknown unit {u:?} (use K, M, G or T, e.g. 20GiB)"),
    };
    let mult = 1u64 << shift;
    let bytes = if num.contains('.') {
        let v: f64 = num.parse().map_err(|_| anyhow::anyhow!("size {s:?}: bad number"))?;
        let b = v * mult as f64;
        if !b.is_finite() || b < 0.0 || b > u64::MAX as f64 {
            bail!("size {s:?} is out of range");
        }
        b as u64
    } else {
        let v: u64 = num.parse().map_err(|_| anyhow::anyhow!("size {s:?}: bad number"))?;
        v.checked_mul(mult).ok_or_else(|| anyhow::anyhow!("size {s:?} is out of range"))?
    };
    Ok(bytes)
}

/// `1.5 GiB`-style rendering for reports.
pub fn format_size(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// serde: a size given as a string (`"20GiB"`) or a plain byte count.
pub fn deserialize_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        N(u64),
        S(String),
    }
    match Option::<Raw>::deserialize(d)? {
        None => Ok(None),
        Some(Raw::N(n)) => Ok(Some(n)),
        Some(Raw::S(s)) => parse_size(&s).map(Some).map_err(serde::de::Error::custom),
    }
}

pub fn serialize_opt<S: Serializer>(v: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(n) => s.serialize_u64(*n),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("20GiB").unwrap(), 20 << 30);
        assert_eq!(parse_size("20G").unwrap(), 20 << 30);
        assert_eq!(parse_size("512m").unwrap(), 512 << 20);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("1.5K").unwrap(), 1536);
        assert_eq!(parse_size("0").unwrap(), 0);
        assert!(parse_size("").is_err());
        assert!(parse_size("GiB").is_err());
        assert!(parse_size("5 parsecs").is_err());
        assert!(parse_size("99999999999T").is_err());
        assert_eq!(format_size(1536), "1.5 KiB");
        assert_eq!(format_size(12), "12 B");
    }
}
