//! What became of a stage: the [`Outcome`] as a type, and the [`StageResult`] that carries it
//! with the engine's `State` and the stage's output.
//!
//! A non-zero exit, a timeout or an OOM kill is an outcome, never an error: errors are kept for
//! things that stop us from knowing the outcome (the engine failing, bad input).

use std::time::Duration;

use serde_json::{json, Map, Value};

/// How a stage ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The stage's process exited by itself with this code (0 is success).
    Exited(i64),
    /// The stage outlived its timeout and was killed.
    TimedOut,
    /// The stage went over its memory cap and the kernel killed it.
    OomKilled,
    /// The stage wrote more than its `disk_limit` into `/job` and its writable layer and was
    /// killed.
    DiskLimit,
    /// The stage's program could not be started (not found: 127; not executable, or a user or
    /// group the image does not have: 126, as a shell reports them); the engine's reason is
    /// the last line of its stderr.
    StartFailed(i64),
    /// The stage did not run because an earlier stage failed.
    Skipped,
}

impl Outcome {
    pub fn success(self) -> bool {
        self == Outcome::Exited(0)
    }

    /// Decides the outcome from what the engine reported; success is "not killed and exit 0".
    pub fn from_exit(killed_by_timeout: bool, exit_code: i64, oom_killed: bool) -> Outcome {
        if killed_by_timeout {
            Outcome::TimedOut
        } else if exit_code == 0 {
            Outcome::Exited(0)
        } else if oom_killed {
            Outcome::OomKilled
        } else {
            Outcome::Exited(exit_code)
        }
    }
}

/// The output of one stream of a stage, as `docker logs --timestamps` prints it, up to the
/// stage's `output_limit`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Output {
    /// The kept bytes: the beginning of the stream, whole log lines, ending with a marker
    /// line when anything was dropped.
    pub bytes: Vec<u8>,
    /// Bytes dropped after the limit was reached: a lower bound, since a stream that is full
    /// is no longer read.
    pub dropped: u64,
}

impl Output {
    pub fn truncated(&self) -> bool {
        self.dropped > 0
    }
}

/// Collects one stream's output up to a limit, counting what it drops.
#[derive(Debug)]
pub(crate) struct OutputBuffer {
    kept: Vec<u8>,
    limit: u64,
    dropped: u64,
    /// Marker lines of ours to end the stream with, after any truncation marker.
    marks: Vec<String>,
}

impl OutputBuffer {
    pub(crate) fn new(limit: u64) -> Self {
        OutputBuffer { kept: Vec::new(), limit, dropped: 0, marks: Vec::new() }
    }

    /// Ends the stream with the line `<timestamp> [chainlink] <message>`, whether or not the
    /// stream was truncated; the stamp is taken when the stream is finished, so marker lines
    /// stay in time order.
    pub(crate) fn mark(&mut self, message: String) {
        self.marks.push(message);
    }

    /// Whether the limit has been reached: a chunk was dropped, and every later one will be.
    pub(crate) fn full(&self) -> bool {
        self.dropped > 0
    }

    /// Keeps the chunk if it fits whole; once one chunk is dropped, every later one is too, so
    /// the kept part is always a prefix of the stream.
    pub(crate) fn push(&mut self, chunk: &[u8]) {
        if self.dropped == 0 && (self.kept.len() + chunk.len()) as u64 <= self.limit {
            self.kept.extend_from_slice(chunk);
        } else {
            self.dropped += chunk.len() as u64;
        }
    }

    pub(crate) fn finish(mut self) -> Output {
        if self.dropped > 0 {
            // Timestamped like every other line, so line parsers need no special case.
            let marker = format!(
                "{} [chainlink] output truncated: at least {} bytes dropped after the first {} bytes (output_limit {})\n",
                rfc3339_now(),
                self.dropped,
                self.kept.len(),
                self.limit
            );
            self.kept.extend_from_slice(marker.as_bytes());
        }
        for message in &self.marks {
            // A stage may end without a final newline; the marker still starts a line.
            if self.kept.last().is_some_and(|&b| b != b'\n') {
                self.kept.push(b'\n');
            }
            self.kept.extend_from_slice(format!("{} [chainlink] {message}\n", rfc3339_now()).as_bytes());
        }
        Output { bytes: self.kept, dropped: self.dropped }
    }
}

/// The current UTC time as the engine writes log timestamps (`2026-11-28T14:02:03.123456789Z`).
fn rfc3339_now() -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let (days, secs) = ((now.as_secs() / 86_400) as i64, now.as_secs() % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        now.subsec_nanos()
    )
}

/// The engine's timestamp at the start of a log chunk, as (seconds since the epoch,
/// nanoseconds); `None` when the chunk does not start with one.
pub(crate) fn log_stamp(chunk: &[u8]) -> Option<(i64, u32)> {
    let end = chunk.iter().position(|&b| b == b' ')?;
    let stamp = std::str::from_utf8(&chunk[..end]).ok()?.strip_suffix('Z')?;
    let (date, time) = stamp.split_once('T')?;
    let mut ymd = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (year, month, day) = (ymd.next()??, ymd.next()??, ymd.next()??);
    let (hms, fraction) = time.split_once('.').unwrap_or((time, "0"));
    let mut parts = hms.splitn(3, ':').map(|p| p.parse::<i64>().ok());
    let (h, m, sec) = (parts.next()??, parts.next()??, parts.next()??);
    let digits: String = fraction.chars().chain(std::iter::repeat('0')).take(9).collect();
    let nanos = digits.parse().ok()?;
    // Days since 1970-01-01 from a civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + h * 3600 + m * 60 + sec, nanos))
}

/// What one stage of a run produced.
#[derive(Debug, Clone, PartialEq)]
pub struct StageResult {
    pub index: usize,
    pub image: String,
    pub outcome: Outcome,
    /// The container's `State` as inspected before removal; `None` for a skipped stage.
    pub state: Option<Map<String, Value>>,
    /// `None` when the stage has `logs: false`.
    pub stdout: Option<Output>,
    pub stderr: Option<Output>,
    /// From the container's start to its end as the runner saw it.
    pub duration: Duration,
}

impl StageResult {
    pub(crate) fn skipped(index: usize, image: &str, logs: bool) -> StageResult {
        let empty = logs.then(Output::default);
        StageResult {
            index,
            image: image.to_string(),
            outcome: Outcome::Skipped,
            state: None,
            stdout: empty.clone(),
            stderr: empty,
            duration: Duration::ZERO,
        }
    }

    pub fn success(&self) -> bool {
        self.outcome.success()
    }

    /// Whether the timeout killed the stage (the seed's `killed`).
    pub fn killed(&self) -> bool {
        self.outcome == Outcome::TimedOut
    }

    pub fn skipped_stage(&self) -> bool {
        self.outcome == Outcome::Skipped
    }

    pub fn truncated(&self) -> bool {
        self.stdout.as_ref().is_some_and(Output::truncated) || self.stderr.as_ref().is_some_and(Output::truncated)
    }

    pub fn exit_code(&self) -> Option<i64> {
        self.state.as_ref()?.get("ExitCode")?.as_i64()
    }

    /// The seed's result shape without `logs`, whose form (bytes, text) is the caller's:
    /// `data`, `killed`, `success`, `skipped`, and `truncated`.
    pub fn to_map_without_logs(&self) -> Map<String, Value> {
        let data = self.state.clone().map(Value::Object).unwrap_or(Value::Null);
        let Value::Object(map) = json!({
            "data": data,
            "killed": self.killed(),
            "success": self.success(),
            "skipped": self.skipped_stage(),
            "truncated": self.truncated(),
        }) else {
            unreachable!("json! of an object literal is an object")
        };
        map
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn success_is_exit_zero_without_a_kill() {
        assert_eq!(Outcome::from_exit(false, 0, false), Outcome::Exited(0));
        assert_eq!(Outcome::from_exit(true, 0, false), Outcome::TimedOut);
        assert_eq!(Outcome::from_exit(false, 137, true), Outcome::OomKilled);
        // A child killed for memory while the main process still exits 0: the exit decides.
        assert_eq!(Outcome::from_exit(false, 0, true), Outcome::Exited(0));
        assert_eq!(Outcome::from_exit(false, 3, false), Outcome::Exited(3));
        assert!(Outcome::Exited(0).success() && !Outcome::Exited(1).success() && !Outcome::Skipped.success());
    }

    #[test]
    fn log_stamps_read_back_what_the_engine_and_the_marker_write() {
        assert_eq!(log_stamp(b"1970-01-01T00:00:01.5Z x"), Some((1, 500_000_000)));
        assert_eq!(log_stamp(b"2026-11-28T14:02:03.123456789Z line\n"), Some((1_795_874_523, 123_456_789)));
        assert_eq!(log_stamp(b"2000-03-01T00:00:00Z a"), Some((951_868_800, 0)));
        let now = rfc3339_now();
        let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
        let (parsed, _) = log_stamp(format!("{now} marker").as_bytes()).unwrap();
        assert!((parsed - secs).abs() <= 1, "{now} -> {parsed}, now {secs}");
        assert_eq!(log_stamp(b"no stamp here"), None);
    }

    #[test]
    fn output_keeps_a_prefix_of_whole_chunks_and_marks_the_rest() {
        let mut buffer = OutputBuffer::new(10);
        buffer.push(b"12345\n");
        buffer.push(b"67890\n");
        buffer.push(b"1\n");
        let output = buffer.finish();
        assert_eq!(output.dropped, 8);
        let text = String::from_utf8(output.bytes).unwrap();
        let (kept, marker) = text.split_once('\n').unwrap();
        assert_eq!(kept, "12345");
        let (stamp, message) = marker.split_once(' ').unwrap();
        assert!(stamp.len() == 30 && stamp.ends_with('Z') && &stamp[10..11] == "T", "{stamp}");
        assert!(message.starts_with("[chainlink] output truncated: at least 8 bytes dropped"), "{message}");
        let mut small = OutputBuffer::new(10);
        small.push(b"abc\n");
        assert_eq!(small.finish(), Output { bytes: b"abc\n".to_vec(), dropped: 0 });
    }

    #[test]
    fn marks_end_the_stream_on_lines_of_their_own_after_the_truncation_marker() {
        let mut buffer = OutputBuffer::new(4);
        buffer.push(b"ab\n");
        buffer.push(b"toolong\n");
        buffer.mark("disk_limit exceeded".into());
        let output = buffer.finish();
        assert_eq!(output.dropped, 8);
        let text = String::from_utf8(output.bytes).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text:?}");
        assert_eq!(lines[0], "ab");
        assert!(lines[1].contains("[chainlink] output truncated"), "{text:?}");
        let (stamp, message) = lines[2].split_once(' ').unwrap();
        assert!(log_stamp(lines[2].as_bytes()).is_some(), "{stamp}");
        assert_eq!(message, "[chainlink] disk_limit exceeded");
        let mut untruncated = OutputBuffer::new(100);
        untruncated.push(b"no newline");
        untruncated.mark("m".into());
        let text = String::from_utf8(untruncated.finish().bytes).unwrap();
        assert!(text.starts_with("no newline\n") && text.ends_with(" [chainlink] m\n"), "{text:?}");
    }
}
