//! Memory sizes and CPU sets in Docker's own notation.
//!
//! `memory` takes what `docker run --memory` takes: a whole number of bytes or a number with a
//! unit suffix (`b`, `k`, `m`, `g`, `t`, `p`, any case, an optional trailing `b`), in powers of
//! 1024. `cpuset_cpus` takes `docker run --cpuset-cpus` lists such as `0-3` or `0,2`.

use std::fmt;

/// A byte count written in Docker's notation (`512m`, `2g`, `1073741824`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MemorySize(pub u64);

impl MemorySize {
    /// The smallest memory limit the Docker engine accepts for a container.
    pub const ENGINE_MINIMUM: MemorySize = MemorySize(6 * 1024 * 1024);
    /// One past the largest limit the engine takes: it holds limits as signed 64-bit numbers,
    /// and a larger one silently became no limit at all.
    pub const ENGINE_CEILING: MemorySize = MemorySize(1 << 63);

    pub fn bytes(self) -> u64 {
        self.0
    }

    /// Parses Docker's notation; `None` when it is not a size.
    pub fn parse(text: &str) -> Option<MemorySize> {
        let text = text.trim();
        let digits_end = text
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(digits_end);
        if number.is_empty() || number.starts_with('.') || number.ends_with('.') {
            return None;
        }
        let number: f64 = number.parse().ok()?;
        let unit = unit.trim_start().to_ascii_lowercase();
        let unit = unit.strip_suffix("ib").map(|u| format!("{u}b")).unwrap_or(unit);
        let shift = match unit.as_str() {
            "" | "b" => 0,
            "k" | "kb" => 10,
            "m" | "mb" => 20,
            "g" | "gb" => 30,
            "t" | "tb" => 40,
            "p" | "pb" => 50,
            _ => return None,
        };
        let bytes = number * (1u64 << shift) as f64;
        if !bytes.is_finite() || bytes >= u64::MAX as f64 {
            return None;
        }
        Some(MemorySize(bytes as u64))
    }
}

impl fmt::Display for MemorySize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(u32, &str); 5] = [(50, "p"), (40, "t"), (30, "g"), (20, "m"), (10, "k")];
        for (shift, suffix) in UNITS {
            let unit = 1u64 << shift;
            if self.0 >= unit && self.0 % unit == 0 {
                return write!(f, "{}{}", self.0 / unit, suffix);
            }
        }
        write!(f, "{}", self.0)
    }
}

/// A set of CPU numbers in Docker's list notation (`0-3`, `0,2`, `0-1,4`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CpuSet {
    text: String,
    highest: u32,
}

impl CpuSet {
    /// Parses the list notation; `None` when it is malformed (`a-b`, `3-1`, `1,,2`).
    pub fn parse(text: &str) -> Option<CpuSet> {
        let text = text.trim();
        if text.is_empty() {
            return None;
        }
        let mut highest = 0;
        for part in text.split(',') {
            let (low, high) = match part.split_once('-') {
                Some((low, high)) => (low, high),
                None => (part, part),
            };
            let low: u32 = parse_cpu(low)?;
            let high: u32 = parse_cpu(high)?;
            if low > high {
                return None;
            }
            highest = highest.max(high);
        }
        Some(CpuSet { text: text.to_string(), highest })
    }

    /// The highest CPU number named; the set fits a machine with more CPUs than this.
    pub fn highest(&self) -> u32 {
        self.highest
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

fn parse_cpu(text: &str) -> Option<u32> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

impl fmt::Display for CpuSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_takes_docker_notation() {
        assert_eq!(MemorySize::parse("2g"), Some(MemorySize(2 << 30)));
        assert_eq!(MemorySize::parse("512m"), Some(MemorySize(512 << 20)));
        assert_eq!(MemorySize::parse("512MB"), Some(MemorySize(512 << 20)));
        assert_eq!(MemorySize::parse("1073741824"), Some(MemorySize(1 << 30)));
        assert_eq!(MemorySize::parse("1.5g"), Some(MemorySize(3 << 29)));
        assert_eq!(MemorySize::parse("64k"), Some(MemorySize(64 << 10)));
        assert_eq!(MemorySize::parse("10b"), Some(MemorySize(10)));
        assert_eq!(MemorySize::parse("1gib"), Some(MemorySize(1 << 30)));
    }

    #[test]
    fn memory_rejects_what_docker_rejects() {
        for bad in ["lots", "", "g", "-1g", "1x", "1.g", ".5g", "1..2m", "2 gigs"] {
            assert_eq!(MemorySize::parse(bad), None, "{bad:?} should not parse");
        }
    }

    #[test]
    fn memory_displays_in_the_largest_whole_unit() {
        assert_eq!(MemorySize(2 << 30).to_string(), "2g");
        assert_eq!(MemorySize(6 << 20).to_string(), "6m");
        assert_eq!(MemorySize(1000).to_string(), "1000");
        assert_eq!(MemorySize::ENGINE_CEILING.to_string(), "8192p");
        assert_eq!(MemorySize::parse("16000p").unwrap().to_string(), "16000p");
    }

    #[test]
    fn cpuset_parses_lists_and_ranges() {
        assert_eq!(CpuSet::parse("0-3").unwrap().highest(), 3);
        assert_eq!(CpuSet::parse("0,2").unwrap().highest(), 2);
        assert_eq!(CpuSet::parse("1-1,7").unwrap().highest(), 7);
        for bad in ["a-b", "3-1", "", "1,,2", "-1", "0-", "1.5"] {
            assert_eq!(CpuSet::parse(bad), None, "{bad:?} should not parse");
        }
    }
}
