//! What a chain is: its stages, their keys and defaults, and the validation of user input.
//!
//! User input arrives as a generic value (JSON, YAML, a Python dict) and is read key by key, so
//! that one pass reports every problem of every stage: the stage index, the key, what was
//! expected and what was given. A [`Stage`] that exists is valid; nothing touches the engine
//! before the whole chain is.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::engine::reference::{is_image_id, ImageRef};
use crate::engine::EngineInfo;
use crate::units::{CpuSet, MemorySize};

/// The seed's default memory cap.
pub const DEFAULT_MEMORY: MemorySize = MemorySize(2 << 30);
/// The seed's default timeout in seconds.
pub const DEFAULT_TIMEOUT_SECS: f64 = 30.0;
/// Enough processes for any honest program, few enough to contain a fork bomb.
pub const DEFAULT_PIDS_LIMIT: i64 = 1024;
/// Bytes of output kept per stream by default.
pub const DEFAULT_OUTPUT_LIMIT: u64 = 16 << 20;
/// Bytes a stage may write into `/job` and its container's writable layer by default.
pub const DEFAULT_DISK_LIMIT: u64 = 1 << 30;
const ENV_NAME_EXPECTED: &str = "variable names that are not empty and hold no '=' or NUL";
/// The longest timeout accepted: a year.
const MAX_TIMEOUT_SECS: f64 = 365.0 * 24.0 * 3600.0;

/// A resource limit in `docker run --ulimit` terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ulimit {
    pub soft: i64,
    pub hard: i64,
}

/// One stage of a chain: a container and how to run it. Build one with [`Stage::new`] and
/// adjust its fields, or read one from user input with [`parse_stages`].
#[derive(Debug, Clone, PartialEq)]
pub struct Stage {
    /// The image to run (required).
    pub image: String,
    /// The container's entrypoint; the image's own when `None`.
    pub entrypoint: Option<Vec<String>>,
    pub hostname: String,
    /// Memory cap; swap is off (memory + swap = memory).
    pub memory: MemorySize,
    /// CPUs the stage may use; all when `None`.
    pub cpuset_cpus: Option<CpuSet>,
    /// `false`: no network interface but loopback.
    pub networking: bool,
    pub privileged: bool,
    /// How long the stage may run before it is killed.
    pub timeout: Duration,
    /// Whether the stage's output is kept in its result.
    pub logs: bool,
    /// Environment additions and overrides, laid over the run's base environment.
    pub env: BTreeMap<String, String>,
    /// Most processes the stage may hold at once; `None` for no limit.
    pub pids_limit: Option<i64>,
    /// CPU quota in CPUs (`1.5`); `None` for no quota.
    pub cpus: Option<f64>,
    /// `user`, `user:group`, `uid` or `uid:gid`; the image's own when `None`.
    pub user: Option<String>,
    /// Root filesystem read-only (`/job` and a small `/tmp` stay writable).
    pub read_only: bool,
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    pub no_new_privileges: bool,
    /// `docker run --ulimit` limits by name; core dumps are off unless set here.
    pub ulimits: BTreeMap<String, Ulimit>,
    /// tmpfs mounts: path to mount options (`size=64m`).
    pub tmpfs: BTreeMap<String, String>,
    /// OCI runtime (`runc`, `runsc`, `crun`); the engine's default when `None`.
    pub runtime: Option<String>,
    /// Allocate a terminal: stdout and stderr then arrive merged, as stdout.
    pub tty: bool,
    /// Bytes kept per stream; later output is dropped and counted.
    pub output_limit: u64,
    /// Bytes the stage may write into `/job` plus its container's writable layer before it is
    /// killed (outcome `disk_limit`); `None` for no limit.
    pub disk_limit: Option<u64>,
}

impl Stage {
    /// A stage with the seed's defaults for every key but the image.
    pub fn new(image: impl Into<String>) -> Stage {
        Stage {
            image: image.into(),
            entrypoint: None,
            hostname: "container".to_string(),
            memory: DEFAULT_MEMORY,
            cpuset_cpus: None,
            networking: true,
            privileged: false,
            timeout: Duration::from_secs_f64(DEFAULT_TIMEOUT_SECS),
            logs: true,
            env: BTreeMap::new(),
            pids_limit: Some(DEFAULT_PIDS_LIMIT),
            cpus: None,
            user: None,
            read_only: false,
            cap_add: Vec::new(),
            cap_drop: Vec::new(),
            no_new_privileges: false,
            ulimits: BTreeMap::from([("core".to_string(), Ulimit { soft: 0, hard: 0 })]),
            tmpfs: BTreeMap::new(),
            runtime: None,
            tty: false,
            output_limit: DEFAULT_OUTPUT_LIMIT,
            disk_limit: Some(DEFAULT_DISK_LIMIT),
        }
    }

    /// Sets the entrypoint (builder style).
    pub fn entrypoint<I, S>(mut self, argv: I) -> Stage
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.entrypoint = Some(argv.into_iter().map(Into::into).collect());
        self
    }

    /// Sets the timeout (builder style).
    pub fn timeout(mut self, timeout: Duration) -> Stage {
        self.timeout = timeout;
        self
    }

    /// Adds an environment variable (builder style).
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Stage {
        self.env.insert(key.into(), value.into());
        self
    }

    /// Checks what the types alone do not guarantee (a stage built in Rust skips the parser).
    pub fn check(&self, index: usize) -> Vec<Problem> {
        let mut problems = Vec::new();
        let mut bad = |key: &str, expected: &str, got: String| {
            problems.push(Problem::new(Some(index), Some(key), expected, got));
        };
        // A NUL byte cannot cross into the engine or the kernel: refused once per key, and
        // that key's other checks are skipped so one mistake is one problem.
        let mut with_nul: Vec<&str> = Vec::new();
        let tmpfs_texts = self.tmpfs.iter().flat_map(|(k, v)| [k, v]);
        let strings: [(&str, Vec<&String>); 8] = [
            ("image", vec![&self.image]),
            ("entrypoint", self.entrypoint.iter().flatten().collect()),
            ("user", self.user.iter().collect()),
            ("runtime", self.runtime.iter().collect()),
            ("cap_add", self.cap_add.iter().collect()),
            ("cap_drop", self.cap_drop.iter().collect()),
            ("ulimits", self.ulimits.keys().collect()),
            ("tmpfs", tmpfs_texts.collect()),
        ];
        for (key, texts) in strings {
            if let Some(text) = texts.into_iter().find(|t| t.contains('\0')) {
                bad(key, NO_NUL_EXPECTED, quote(text));
                with_nul.push(key);
            }
        }
        let clean = |key: &str| !with_nul.contains(&key);
        if self.image.trim().is_empty() {
            bad("image", "an image name such as \"busybox:latest\"", quote(&self.image));
        } else if clean("image") && !is_image_id(&self.image) {
            if let Err(e) = ImageRef::parse(&self.image) {
                let expected = format!("an image reference such as \"busybox:latest\" ({})", e.reason);
                bad("image", &expected, quote(&self.image));
            }
        }
        if let Some(argv) = &self.entrypoint {
            if argv.is_empty() {
                bad("entrypoint", ENTRYPOINT_EXPECTED, "[]".into());
            } else if argv[0].is_empty() {
                bad("entrypoint", "a program to run as the first element", describe(&Value::from(argv.clone())));
            }
        }
        if !valid_hostname(&self.hostname) {
            bad("hostname", "a hostname of letters, digits, '-' and '.', at most 63 characters a label", quote(&self.hostname));
        }
        if self.memory < MemorySize::ENGINE_MINIMUM {
            bad("memory", "at least 6m, the engine's minimum", self.memory.to_string());
        } else if self.memory >= MemorySize::ENGINE_CEILING {
            bad("memory", "less than 8192p, the engine's largest limit", self.memory.to_string());
        }
        let secs = self.timeout.as_secs_f64();
        if secs <= 0.0 || secs > MAX_TIMEOUT_SECS {
            bad("timeout", TIMEOUT_EXPECTED, format!("{secs}"));
        }
        for key in self.env.keys() {
            if key.is_empty() || key.contains('=') || key.contains('\0') {
                bad("env", ENV_NAME_EXPECTED, quote(key));
            }
        }
        for value in self.env.values() {
            if value.contains('\0') {
                bad("env", "values without NUL bytes", quote(value));
            }
        }
        if let Some(limit) = self.pids_limit {
            if !(1..=MAX_PIDS_LIMIT).contains(&limit) {
                bad("pids_limit", PIDS_LIMIT_EXPECTED, limit.to_string());
            }
        }
        if let Some(cpus) = self.cpus {
            // The engine's floor is a CFS quota of 1 ms a 100 ms period, on the rounded value
            // it is sent as.
            if !(cpus.is_finite() && (cpus * 1e9).round() >= 1e7) {
                bad("cpus", CPUS_EXPECTED, cpus.to_string());
            }
        }
        if let Some(user) = self.user.as_deref().filter(|_| clean("user")) {
            if !valid_user(user) {
                bad("user", USER_EXPECTED, quote(user));
            }
        }
        if clean("tmpfs") {
            for (path, options) in &self.tmpfs {
                if !valid_tmpfs_path(path) {
                    bad("tmpfs", TMPFS_PATH_EXPECTED, quote(path));
                }
                if !valid_tmpfs_options(options) {
                    bad("tmpfs", TMPFS_OPTIONS_EXPECTED, format!("{}: {}", quote(path), quote(options)));
                }
            }
        }
        for (key, caps) in [("cap_add", &self.cap_add), ("cap_drop", &self.cap_drop)] {
            if let Some(cap) = caps.iter().find(|c| !valid_capability(c)).filter(|_| clean(key)) {
                bad(key, CAPABILITY_EXPECTED, quote(cap));
            }
        }
        for (name, limit) in self.ulimits.iter().filter(|_| clean("ulimits")) {
            let shown = if limit.soft == limit.hard { format!("{name}: {}", limit.soft) } else { format!("{name}: {}:{}", limit.soft, limit.hard) };
            if !ULIMIT_NAMES.contains(&name.as_str()) {
                bad("ulimits", ULIMIT_NAME_EXPECTED, quote(name));
            } else if limit.soft < -1 || limit.hard < -1 {
                bad("ulimits", "limits of 0 or more, or -1 for unlimited", shown);
            } else if name == "nofile" && ![limit.soft, limit.hard].iter().all(|n| (0..=MAX_NOFILE).contains(n)) {
                bad("ulimits", "a nofile limit from 0 to 1048576, the kernel's default most", shown);
            } else if limit.hard != -1 && (limit.soft == -1 || limit.soft > limit.hard) {
                bad("ulimits", "soft limits no higher than hard limits", shown);
            }
        }
        if let Some(runtime) = self.runtime.as_deref().filter(|_| clean("runtime")) {
            if runtime.trim().is_empty() || runtime.contains(char::is_whitespace) {
                bad("runtime", RUNTIME_EXPECTED, quote(runtime));
            }
        }
        if let Some(limit) = self.disk_limit.filter(|&l| l < MIN_DISK_LIMIT) {
            bad("disk_limit", DISK_LIMIT_EXPECTED, MemorySize(limit).to_string());
        }
        if self.output_limit == 0 || self.output_limit > MAX_OUTPUT_LIMIT {
            bad("output_limit", OUTPUT_LIMIT_EXPECTED, MemorySize(self.output_limit).to_string());
        }
        problems
    }

    /// Checks what only the engine's host can tell (see [`ENGINE_CHECKS`]); run right after
    /// connecting, before anything is created.
    pub fn check_engine(&self, index: usize, engine: &EngineInfo) -> Vec<Problem> {
        let mut problems = Vec::new();
        let mut bad = |key: &str, expected: String, got: String| {
            problems.push(Problem::new(Some(index), Some(key), &expected, got));
        };
        if let Some(set) = &self.cpuset_cpus {
            if set.highest() >= engine.cpus {
                bad("cpuset_cpus", format!("CPUs the engine has (0-{})", engine.cpus.saturating_sub(1)), quote(set.as_str()));
            }
        }
        if let Some(cpus) = self.cpus {
            if cpus > f64::from(engine.cpus) {
                bad("cpus", format!("at most the engine's CPU count ({})", engine.cpus), cpus.to_string());
            }
        }
        // The default is the seed's and stays whatever the host: a limit above the host's
        // memory is only no limit, and refusing the default would refuse every small host.
        if engine.mem_total > 0 && self.memory != DEFAULT_MEMORY && self.memory.bytes() > engine.mem_total {
            let total = MemorySize(engine.mem_total);
            bad("memory", format!("at most the engine's memory ({total})"), self.memory.to_string());
        }
        if let Some(runtime) = &self.runtime {
            if !engine.runtimes.contains(runtime) {
                bad("runtime", format!("a runtime the engine has ({})", engine.runtimes.join(", ")), quote(runtime));
            }
        }
        problems
    }

    /// Whether [`Stage::check_engine`] has anything to check, so a chain of defaults spares
    /// the engine the call.
    pub fn needs_engine_check(&self) -> bool {
        self.cpuset_cpus.is_some() || self.cpus.is_some() || self.runtime.is_some() || self.memory != DEFAULT_MEMORY
    }
}

/// The checks that need the engine, for `validate` to say what it could not check.
pub const ENGINE_CHECKS: &[&str] = &[
    "cpuset_cpus names only CPUs the engine has",
    "cpus is at most the engine's CPU count",
    "memory (when set) is at most the engine's memory",
    "runtime is one the engine has",
];

/// Messages and bounds shared by the parser and the checks, so they cannot drift apart.
const NO_NUL_EXPECTED: &str = "text without NUL bytes";
const ENTRYPOINT_EXPECTED: &str = "a non-empty list of strings (omit the key for the image's own)";
const TIMEOUT_EXPECTED: &str = "a number of seconds above 0 and at most a year, such as 30 or 2.5";
const PIDS_LIMIT_EXPECTED: &str = "a number of processes from 1 to 4194304, or null for no limit";
/// The kernel's PID_MAX_LIMIT: a larger pids.max is refused when the container starts.
const MAX_PIDS_LIMIT: i64 = 4_194_304;
const CPUS_EXPECTED: &str = "a number of CPUs of at least 0.01, such as 0.5 or 2";
const USER_EXPECTED: &str =
    "a user such as \"1000\", \"1000:1000\" or \"nobody\" (ids up to 2147483647, names without spaces, ':' or a leading '-')";
const TMPFS_PATH_EXPECTED: &str =
    "absolute, normalised mount paths other than /, and not in /job, /proc, /sys or /dev";
const TMPFS_OPTIONS_EXPECTED: &str =
    "tmpfs options such as \"size=64m,mode=1777\" (size, nr_blocks, nr_inodes, mode, uid, gid, mpol=default, and mount flags such as ro, noexec)";
const CAPABILITY_EXPECTED: &str = "capability names such as \"NET_ADMIN\" or \"CAP_NET_ADMIN\", or \"ALL\"";
const ULIMIT_NAME_EXPECTED: &str =
    "limit names the engine knows (core, cpu, data, fsize, locks, memlock, msgqueue, nice, nofile, nproc, rss, rtprio, rttime, sigpending, stack, as)";
/// The kernel's default `fs.nr_open`: a higher nofile limit, or unlimited, fails at start.
const MAX_NOFILE: i64 = 1 << 20;
const RUNTIME_EXPECTED: &str = "a runtime name such as \"runc\" or \"runsc\" (null for the engine's default)";
const DISK_LIMIT_EXPECTED: &str = "a size of at least 1m such as \"1g\" or \"500m\", or null for no limit";
/// The smallest `disk_limit`: a stage that writes nothing already holds about 20 KiB of the
/// engine's own files and mount points in its layer, so a smaller limit would kill it.
pub const MIN_DISK_LIMIT: u64 = 1 << 20;
const OUTPUT_LIMIT_EXPECTED: &str = "a number of bytes from 1 to 1g, such as \"16m\" or 1048576";
/// Output is kept in memory, per stream of every running stage, and the engine keeps twice
/// as much on its disk: past a gigabyte a result is better written to `/job`.
const MAX_OUTPUT_LIMIT: u64 = 1 << 30;

/// `ulimits` names the engine maps onto the kernel's resources (docker 20.10's daemon).
const ULIMIT_NAMES: &[&str] = &[
    "as", "core", "cpu", "data", "fsize", "locks", "memlock", "msgqueue", "nice", "nofile", "nproc", "rss", "rtprio",
    "rttime", "sigpending", "stack",
];

/// The capabilities docker 20.10 knows (it refuses newer ones such as CAP_BPF).
const CAPABILITIES: &[&str] = &[
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID", "SETPCAP",
    "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW", "IPC_LOCK", "IPC_OWNER",
    "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT", "SYS_ADMIN", "SYS_BOOT", "SYS_NICE",
    "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD", "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP",
    "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG", "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ",
];

/// A capability as the engine reads it: any case, with or without `CAP_`; `ALL` alone.
fn valid_capability(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    upper == "ALL" || CAPABILITIES.contains(&upper.strip_prefix("CAP_").unwrap_or(&upper))
}

/// `uid[:gid]` or `name[:group]`: ids within the kernel's range, names the engine can look up.
fn valid_user(user: &str) -> bool {
    let mut parts = user.split(':');
    let valid_part = |part: &str| {
        if !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()) {
            part.parse::<u32>().is_ok_and(|id| id <= i32::MAX as u32)
        } else {
            !part.is_empty() && !part.starts_with('-') && !part.contains(char::is_whitespace)
        }
    };
    let user_part = parts.next().is_some_and(valid_part);
    let group_part = parts.next().is_none_or(valid_part);
    user_part && group_part && parts.next().is_none()
}

/// Absolute and written the one way (no `//`, `.`, `..` or trailing `/`), so `/job` cannot be
/// hidden under another spelling; never `/`, `/job` (the run's shared directory), or the
/// kernel's and the engine's own `/proc`, `/sys` and `/dev`.
fn valid_tmpfs_path(path: &str) -> bool {
    let Some(rest) = path.strip_prefix('/') else { return false };
    let components: Vec<&str> = rest.split('/').collect();
    if components.iter().any(|c| c.is_empty() || *c == "." || *c == "..") {
        return false;
    }
    !["job", "proc", "sys", "dev"].contains(&components[0])
}

/// Options the engine passes on and the kernel's tmpfs takes; `size=0` and `nr_blocks=0`
/// would mean no limit at all, so they are refused.
fn valid_tmpfs_options(options: &str) -> bool {
    const FLAGS: &[&str] = &[
        "defaults", "ro", "rw", "suid", "nosuid", "dev", "nodev", "exec", "noexec", "sync", "async", "dirsync",
        "mand", "nomand", "atime", "noatime", "diratime", "nodiratime", "relatime", "norelatime", "strictatime",
        "nostrictatime",
    ];
    // The kernel's memparse: digits and at most one binary suffix; `size` also takes a percentage.
    let amount = |value: &str, percent: bool| {
        let digits = value.trim_end_matches(|c: char| "kKmMgGtTpPeE".contains(c) || (percent && c == '%'));
        value.len() - digits.len() <= 1
            && !digits.is_empty()
            && digits.bytes().all(|b| b.is_ascii_digit())
            && digits.parse::<u64>().is_ok_and(|n| n > 0 && (!value.ends_with('%') || n <= 100))
    };
    let id = |value: &str| value.bytes().all(|b| b.is_ascii_digit()) && value.parse::<u32>().is_ok_and(|n| n <= i32::MAX as u32);
    options.is_empty()
        || options.split(',').all(|option| match option.split_once('=') {
            None => FLAGS.contains(&option),
            Some(("size", value)) => amount(value, true),
            Some(("nr_blocks", value)) => amount(value, false),
            Some(("nr_inodes", value)) => value == "0" || amount(value, false),
            Some(("mode", value)) => {
                !value.is_empty()
                    && value.bytes().all(|b| (b'0'..=b'7').contains(&b))
                    && u32::from_str_radix(value, 8).is_ok_and(|m| m <= 0o7777)
            }
            Some(("uid" | "gid", value)) => id(value),
            Some(("mpol", value)) => value == "default" || value == "local",
            Some(_) => false,
        })
}

/// Whether a stage's image is pulled before the chain runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PullPolicy {
    /// Pull every image; fall back to the local copy when the pull fails (the seed's way).
    #[default]
    Always,
    /// Pull only the images the engine does not have.
    IfMissing,
    /// Never contact a registry; every image must be local.
    Never,
}

impl PullPolicy {
    pub fn parse(text: &str) -> Option<PullPolicy> {
        match text {
            "always" => Some(PullPolicy::Always),
            "if-missing" | "missing" | "if_missing" => Some(PullPolicy::IfMissing),
            "never" => Some(PullPolicy::Never),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            PullPolicy::Always => "always",
            PullPolicy::IfMissing => "if-missing",
            PullPolicy::Never => "never",
        }
    }
}

/// One thing wrong with the input: where it is, what was expected, what was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The stage's index in the chain (from 0); `None` for the chain as a whole.
    pub stage: Option<usize>,
    pub key: Option<String>,
    pub expected: String,
    pub got: String,
}

impl Problem {
    pub fn new(stage: Option<usize>, key: Option<&str>, expected: &str, got: String) -> Problem {
        Problem { stage, key: key.map(str::to_string), expected: expected.to_string(), got }
    }

    /// Where the problem is, as a path into the input (`stages[2].timeout`).
    pub fn location(&self) -> String {
        match (self.stage, &self.key) {
            (Some(i), Some(key)) => format!("stages[{i}].{key}"),
            (Some(i), None) => format!("stages[{i}]"),
            (None, Some(key)) => key.clone(),
            (None, None) => "stages".to_string(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: expected {}, got {}", self.location(), self.expected, self.got)
    }
}

/// Every problem found in a chain's input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problems(pub Vec<Problem>);

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        write!(f, "{n} problem{} in the chain:", if n == 1 { "" } else { "s" })?;
        for problem in &self.0 {
            write!(f, "\n  {problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Problems {}

/// The keys a stage may have, for unknown-key suggestions and documentation.
pub const STAGE_KEYS: &[&str] = &[
    "image", "entrypoint", "hostname", "memory", "cpuset_cpus", "networking", "privileged",
    "timeout", "logs", "env", "pids_limit", "cpus", "user", "read_only", "cap_add", "cap_drop",
    "no_new_privileges", "ulimits", "tmpfs", "runtime", "tty", "output_limit", "disk_limit",
];

/// Reads a list of stages from a generic value, reporting every problem at once.
pub fn parse_stages(value: &Value) -> Result<Vec<Stage>, Problems> {
    let items = match value {
        Value::Array(items) if !items.is_empty() => items,
        Value::Array(_) => {
            return Err(Problems(vec![Problem::new(None, None, "a non-empty list of stages", "[]".into())]))
        }
        other => {
            return Err(Problems(vec![Problem::new(None, None, "a list of stages", describe(other))]))
        }
    };
    let mut problems = Vec::new();
    let mut stages = Vec::with_capacity(items.len());
    for (index, item) in items.iter().enumerate() {
        match parse_stage(index, item) {
            Ok(stage) => {
                problems.extend(exec_problems(index, &stage));
                stages.push(stage);
            }
            Err(mut found) => problems.append(&mut found),
        }
    }
    if problems.is_empty() {
        Ok(stages)
    } else {
        Err(Problems(problems))
    }
}

/// Checks stages built in Rust (or parsed) as a chain: not empty, each stage valid.
pub fn check_stages(stages: &[Stage]) -> Result<(), Problems> {
    if stages.is_empty() {
        return Err(Problems(vec![Problem::new(None, None, "a non-empty list of stages", "[]".into())]));
    }
    let problems: Vec<Problem> =
        stages.iter().enumerate().flat_map(|(i, s)| s.check(i).into_iter().chain(exec_problems(i, s))).collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Problems(problems))
    }
}

/// Reads one stage; `index` is its place in the chain, for messages.
pub fn parse_stage(index: usize, value: &Value) -> Result<Stage, Vec<Problem>> {
    let Value::Object(map) = value else {
        return Err(vec![Problem::new(Some(index), None, "a mapping of stage keys", describe(value))]);
    };
    let mut reader = Reader { index, map, problems: Vec::new() };
    for key in map.keys() {
        if !STAGE_KEYS.contains(&key.as_str()) {
            let expected = match suggest(key, STAGE_KEYS) {
                Some(near) => format!("one of the stage keys (did you mean `{near}`?)"),
                None => format!("one of the stage keys ({})", STAGE_KEYS.join(", ")),
            };
            reader.problems.push(Problem { stage: Some(index), key: Some(key.clone()), expected, got: "an unknown key".into() });
        }
    }
    let mut stage = Stage::new(String::new());
    match map.get("image") {
        None => reader.problem("image", "an image name (the key is required)", "nothing".into()),
        Some(_) => {
            if let Some(image) = reader.string("image") {
                stage.image = image;
            }
        }
    }
    if let Some(argv) = reader.string_list("entrypoint") {
        stage.entrypoint = Some(argv);
    }
    if let Some(hostname) = reader.string("hostname") {
        stage.hostname = hostname;
    }
    if let Some(memory) = reader.size("memory", "a memory size such as \"512m\", \"2g\" or a number of bytes") {
        stage.memory = memory;
    }
    if let Some(value) = reader.present("cpuset_cpus") {
        let parsed = match value {
            Value::String(text) => CpuSet::parse(text),
            Value::Number(n) if n.is_u64() => CpuSet::parse(&n.to_string()),
            _ => None,
        };
        match parsed {
            Some(set) => stage.cpuset_cpus = Some(set),
            None => reader.problem("cpuset_cpus", "a CPU list such as \"0-3\" or \"0,2\"", describe(value)),
        }
    }
    if let Some(flag) = reader.boolean("networking") {
        stage.networking = flag;
    }
    if let Some(flag) = reader.boolean("privileged") {
        stage.privileged = flag;
    }
    if let Some(value) = reader.present("timeout") {
        match value.as_f64() {
            Some(secs) if secs > 0.0 && secs <= MAX_TIMEOUT_SECS => stage.timeout = Duration::from_secs_f64(secs),
            _ => reader.problem("timeout", TIMEOUT_EXPECTED, describe(value)),
        }
    }
    if let Some(flag) = reader.boolean("logs") {
        stage.logs = flag;
    }
    if let Some(env) = reader.string_map("env") {
        stage.env = env;
    }
    if let Some(value) = reader.present_or_null("pids_limit") {
        match value {
            Value::Null => stage.pids_limit = None,
            Value::Number(n) if n.is_i64() => stage.pids_limit = n.as_i64(),
            _ => reader.problem("pids_limit", PIDS_LIMIT_EXPECTED, describe(value)),
        }
    }
    if let Some(value) = reader.present("cpus") {
        match value {
            Value::Number(n) => stage.cpus = n.as_f64(),
            _ => reader.problem("cpus", CPUS_EXPECTED, describe(value)),
        }
    }
    if let Some(value) = reader.present("user") {
        match value {
            Value::String(user) => stage.user = Some(user.clone()),
            Value::Number(n) if n.is_u64() => stage.user = Some(n.to_string()),
            _ => reader.problem("user", USER_EXPECTED, describe(value)),
        }
    }
    if let Some(flag) = reader.boolean("read_only") {
        stage.read_only = flag;
    }
    if let Some(caps) = reader.string_list_allow_empty("cap_add") {
        stage.cap_add = caps;
    }
    if let Some(caps) = reader.string_list_allow_empty("cap_drop") {
        stage.cap_drop = caps;
    }
    if let Some(flag) = reader.boolean("no_new_privileges") {
        stage.no_new_privileges = flag;
    }
    if let Some(value) = reader.present("ulimits") {
        match parse_ulimits(value) {
            Some(limits) => stage.ulimits = limits,
            None => reader.problem("ulimits", "a mapping of limit names to a number or {soft: N, hard: N}, such as {nofile: 1024}", describe(value)),
        }
    }
    if let Some(tmpfs) = reader.string_map("tmpfs") {
        stage.tmpfs = tmpfs;
    }
    if let Some(runtime) = reader.string("runtime") {
        stage.runtime = Some(runtime);
    }
    if let Some(flag) = reader.boolean("tty") {
        stage.tty = flag;
    }
    if let Some(limit) = reader.size("output_limit", OUTPUT_LIMIT_EXPECTED) {
        stage.output_limit = limit.bytes();
    }
    if let Some(value) = reader.present_or_null("disk_limit") {
        match value {
            Value::Null => stage.disk_limit = None,
            _ => {
                if let Some(limit) = reader.size("disk_limit", DISK_LIMIT_EXPECTED) {
                    stage.disk_limit = Some(limit.bytes());
                }
            }
        }
    }

    let Reader { mut problems, .. } = reader;
    // Semantic checks only for keys that parsed, so a bad key is reported once.
    let reported: Vec<Option<String>> = problems.iter().map(|p| p.key.clone()).collect();
    for problem in stage.check(index) {
        if !reported.contains(&problem.key) {
            problems.push(problem);
        }
    }
    if problems.is_empty() {
        Ok(stage)
    } else {
        Err(problems)
    }
}

fn parse_ulimits(value: &Value) -> Option<BTreeMap<String, Ulimit>> {
    let Value::Object(map) = value else { return None };
    let mut limits = BTreeMap::new();
    for (name, limit) in map {
        let limit = match limit {
            Value::Number(n) => {
                let n = n.as_i64()?;
                Ulimit { soft: n, hard: n }
            }
            Value::Object(pair) => Ulimit {
                soft: pair.get("soft")?.as_i64()?,
                hard: pair.get("hard")?.as_i64()?,
            },
            _ => return None,
        };
        limits.insert(name.clone(), limit);
    }
    Some(limits)
}

struct Reader<'a> {
    index: usize,
    map: &'a Map<String, Value>,
    problems: Vec<Problem>,
}

impl<'a> Reader<'a> {
    fn problem(&mut self, key: &str, expected: &str, got: String) {
        self.problems.push(Problem::new(Some(self.index), Some(key), expected, got));
    }

    /// The key's value, unless absent or null (null means "use the default").
    fn present(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn present_or_null(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key)
    }

    fn string(&mut self, key: &str) -> Option<String> {
        let value = self.map.get(key)?;
        match value {
            Value::String(s) => Some(s.clone()),
            Value::Null if key != "image" => None,
            _ => {
                self.problem(key, "a string", describe(value));
                None
            }
        }
    }

    fn boolean(&mut self, key: &str) -> Option<bool> {
        let value = self.present(key)?;
        match value {
            Value::Bool(flag) => Some(*flag),
            _ => {
                self.problem(key, "true or false", describe(value));
                None
            }
        }
    }

    fn size(&mut self, key: &str, expected: &str) -> Option<MemorySize> {
        let value = self.present(key)?;
        let parsed = match value {
            Value::String(text) => MemorySize::parse(text),
            Value::Number(n) => n.as_u64().map(MemorySize),
            _ => None,
        };
        if parsed.is_none() {
            self.problem(key, expected, describe(value));
        }
        parsed
    }

    fn string_list(&mut self, key: &str) -> Option<Vec<String>> {
        let value = self.present(key)?;
        match value {
            Value::Array(items) if !items.is_empty() => self.strings(key, items),
            Value::Array(_) => {
                self.problem(key, ENTRYPOINT_EXPECTED, "[]".into());
                None
            }
            _ => {
                self.problem(key, "a list of strings such as [\"sh\", \"-c\", \"echo hi\"]", describe(value));
                None
            }
        }
    }

    fn string_list_allow_empty(&mut self, key: &str) -> Option<Vec<String>> {
        let value = self.present(key)?;
        match value {
            Value::Array(items) => self.strings(key, items),
            _ => {
                self.problem(key, "a list of strings", describe(value));
                None
            }
        }
    }

    fn strings(&mut self, key: &str, items: &[Value]) -> Option<Vec<String>> {
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            match item {
                Value::String(s) => out.push(s.clone()),
                other => {
                    self.problem(key, "a list of strings", format!("a list holding {}", describe(other)));
                    return None;
                }
            }
        }
        Some(out)
    }

    fn string_map(&mut self, key: &str) -> Option<BTreeMap<String, String>> {
        let value = self.present(key)?;
        let Value::Object(map) = value else {
            self.problem(key, "a mapping of strings to strings", describe(value));
            return None;
        };
        let mut out = BTreeMap::new();
        let mut ok = true;
        for (name, item) in map {
            match item {
                Value::String(s) => {
                    if key == "env" && (name.is_empty() || name.contains('=') || name.contains('\0')) {
                        self.problem(key, ENV_NAME_EXPECTED, quote(name));
                        ok = false;
                    }
                    out.insert(name.clone(), s.clone());
                }
                other => {
                    let hint = match other {
                        Value::Number(_) | Value::Bool(_) => format!(" (quote it: \"{other}\")"),
                        _ => String::new(),
                    };
                    self.problem(key, "string values", format!("{name}: {}{hint}", describe(other)));
                    ok = false;
                }
            }
        }
        ok.then_some(out)
    }
}

/// A short description of a given value for messages: the value itself when short.
pub fn describe(value: &Value) -> String {
    let text = match value {
        Value::Null => return "null".to_string(),
        Value::Object(map) if map.is_empty() => return "an empty mapping".to_string(),
        Value::Object(_) => "a mapping".to_string(),
        Value::Array(items) if items.len() > 4 => format!("a list of {} items", items.len()),
        other => other.to_string(),
    };
    if text.chars().count() > 60 {
        let cut: String = text.chars().take(57).collect();
        format!("{cut}...")
    } else {
        text
    }
}

fn quote(text: &str) -> String {
    describe(&Value::String(text.to_string()))
}

fn valid_hostname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// The closest known key within a small edit distance, for "did you mean" hints.
pub fn suggest<'k>(given: &str, known: &[&'k str]) -> Option<&'k str> {
    let given_lower = given.to_ascii_lowercase();
    if given_lower.len() >= 4 {
        if let Some(k) = known.iter().find(|k| k.starts_with(&given_lower)) {
            return Some(k);
        }
    }
    known
        .iter()
        .map(|k| (edit_distance(&given_lower, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = if ca == *cb { prev } else { 1 + prev.min(row[j]).min(cur) };
            prev = cur;
        }
    }
    row[b.len()]
}

/// A chain as written in a file: a list of stages, or a mapping with `stages`, `env` and
/// `workdir`.
#[derive(Debug, Clone, PartialEq)]
pub struct ChainFile {
    pub stages: Vec<Stage>,
    pub env: BTreeMap<String, String>,
    pub workdir: Option<PathBuf>,
}

/// The text of a chain file could not be read as YAML or JSON.
#[derive(Debug, thiserror::Error)]
#[error("failed to parse {format}: {message}")]
pub struct SyntaxError {
    pub format: &'static str,
    pub message: String,
    /// 1-based line and column, where the parser knows them.
    pub line: Option<usize>,
    pub column: Option<usize>,
}

/// Why a chain file was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ChainFileError {
    #[error(transparent)]
    Syntax(#[from] SyntaxError),
    #[error(transparent)]
    Invalid(#[from] Problems),
    /// Nothing but blank lines and comments.
    #[error("the file is empty (expected a list of stages or a mapping with `stages`)")]
    Empty,
    #[error("the file is larger than {MAX_CHAIN_FILE_BYTES} bytes (16 MiB), the most a chain file may hold")]
    TooLarge,
}

/// The largest chain file read: far above any real chain, far below what would strain memory.
pub const MAX_CHAIN_FILE_BYTES: usize = 16 << 20;
/// Linux's MAX_ARG_STRLEN: execve refuses a longer argument or environment string (its NUL
/// included).
pub const MAX_ARG_BYTES: usize = 131_072;
/// The most bytes of arguments and environment a stage may have, each string counted with its
/// NUL and an 8-byte pointer as execve counts them. Linux allows a quarter of the stack rlimit
/// (2 MiB under the usual 8 MiB); the container's rlimit is not known here, so half of that.
pub const MAX_EXEC_BYTES: usize = 1 << 20;

fn exec_bytes(text_len: usize) -> usize {
    text_len + 1 + 8
}

/// What makes a stage's own entrypoint and env too long for execve (the run's environment is
/// checked with them in [`environ_problems`]).
fn exec_problems(index: usize, stage: &Stage) -> Vec<Problem> {
    let mut problems = Vec::new();
    let argv = stage.entrypoint.as_deref().unwrap_or_default();
    if let Some(longest) = argv.iter().map(String::len).max().filter(|&n| n + 1 > MAX_ARG_BYTES) {
        let expected = format!("arguments of at most {} bytes each", MAX_ARG_BYTES - 1);
        problems.push(Problem::new(Some(index), Some("entrypoint"), &expected, format!("one of {longest} bytes")));
    }
    if let Some((name, n)) = stage.env.iter().map(|(k, v)| (k, k.len() + 1 + v.len())).find(|(_, n)| n + 1 > MAX_ARG_BYTES) {
        let expected = format!("variables of at most {} bytes each (NAME=value)", MAX_ARG_BYTES - 1);
        problems.push(Problem::new(Some(index), Some("env"), &expected, format!("{} of {n} bytes", quote(name))));
    }
    let total: usize = argv.iter().map(|a| exec_bytes(a.len())).sum::<usize>()
        + stage.env.iter().map(|(k, v)| exec_bytes(k.len() + 1 + v.len())).sum::<usize>();
    if total > MAX_EXEC_BYTES {
        let expected = format!(
            "an entrypoint and env of at most {MAX_EXEC_BYTES} bytes in all (each string with its NUL and an 8-byte pointer)"
        );
        problems.push(Problem::new(Some(index), None, &expected, format!("{total} bytes")));
    }
    problems
}

/// What is wrong with a run's base environment: names that are empty or hold '=' or NUL,
/// values with NUL, and, laid under each stage's env, more than execve takes with the stage's
/// entrypoint ([`MAX_ARG_BYTES`] a string, [`MAX_EXEC_BYTES`] in all).
pub fn environ_problems(environ: &BTreeMap<String, String>, stages: &[Stage]) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut bad = |expected: &str, got: String| problems.push(Problem::new(None, Some("environ"), expected, got));
    for (name, value) in environ {
        if name.is_empty() || name.contains('=') || name.contains('\0') {
            bad(ENV_NAME_EXPECTED, quote(name));
        } else if value.contains('\0') {
            bad("values without NUL bytes", format!("{}: {}", name, quote(value)));
        } else if name.len() + 1 + value.len() + 1 > MAX_ARG_BYTES {
            let n = name.len() + 1 + value.len();
            bad(&format!("variables of at most {} bytes each (NAME=value)", MAX_ARG_BYTES - 1), format!("{} of {n} bytes", quote(name)));
        }
    }
    let base: usize = environ.iter().map(|(k, v)| exec_bytes(k.len() + 1 + v.len())).sum();
    for (index, stage) in stages.iter().enumerate() {
        let argv: usize = stage.entrypoint.iter().flatten().map(|a| exec_bytes(a.len())).sum();
        let mut total = base + argv;
        for (k, v) in &stage.env {
            total += exec_bytes(k.len() + 1 + v.len());
            if let Some(under) = environ.get(k) {
                total -= exec_bytes(k.len() + 1 + under.len());
            }
        }
        if total > MAX_EXEC_BYTES {
            let expected = format!(
                "at most {MAX_EXEC_BYTES} bytes of entrypoint and environment for stages[{index}] (this environ under the stage's env; each string with its NUL and an 8-byte pointer)"
            );
            bad(&expected, format!("{total} bytes with {} variables", environ.len()));
        }
    }
    problems
}

impl ChainFile {
    /// Parses a chain file's text; `json` picks the JSON parser (whose messages are JSON's),
    /// otherwise YAML, which also reads JSON.
    /// Refuses nesting deeper than [`load::MAX_DEPTH`], a key given twice in a mapping and
    /// numbers that are not finite, which the parsers alone would take or choke on.
    pub fn parse(text: &str, json: bool) -> Result<ChainFile, ChainFileError> {
        if text.len() > MAX_CHAIN_FILE_BYTES {
            return Err(ChainFileError::TooLarge);
        }
        if load::is_blank(text, json) {
            return Err(ChainFileError::Empty);
        }
        let loaded = load::load(text, json)?;
        match Self::from_value(&loaded.value) {
            Ok(file) if loaded.problems.is_empty() => Ok(file),
            Ok(_) => Err(ChainFileError::Invalid(Problems(loaded.problems))),
            Err(Problems(parsed)) => {
                // A non-finite number was read as null: drop what the parser said of its key.
                let places: Vec<(Option<usize>, Option<String>)> = loaded
                    .problems
                    .iter()
                    .map(|p| (p.stage, p.key.as_ref().map(|k| k.split(['.', '[']).next().unwrap_or(k).to_string())))
                    .collect();
                let mut problems = loaded.problems;
                problems.extend(parsed.into_iter().filter(|p| !places.contains(&(p.stage, p.key.clone()))));
                problems.sort_by_key(|p| p.stage.map_or(0, |s| s + 1));
                Err(ChainFileError::Invalid(Problems(problems)))
            }
        }
    }

    /// [`ChainFile::parse`] of a file's bytes: more than [`MAX_CHAIN_FILE_BYTES`] are refused
    /// (read at most one byte more), and text that is not UTF-8 is located.
    pub fn parse_bytes(bytes: &[u8], json: bool) -> Result<ChainFile, ChainFileError> {
        if bytes.len() > MAX_CHAIN_FILE_BYTES {
            return Err(ChainFileError::TooLarge);
        }
        Self::parse(load::utf8(bytes, json)?, json)
    }

    pub fn from_value(value: &Value) -> Result<ChainFile, Problems> {
        let (stages_value, env_value, workdir_value) = match value {
            Value::Object(map) => {
                let mut problems = Vec::new();
                for key in map.keys() {
                    if !["stages", "env", "workdir"].contains(&key.as_str()) {
                        let hint = suggest(key, &["stages", "env", "workdir"])
                            .map(|k| format!(" (did you mean `{k}`?)"))
                            .unwrap_or_default();
                        problems.push(Problem::new(None, Some(key), &format!("one of stages, env, workdir{hint}"), "an unknown key".into()));
                    }
                }
                if !problems.is_empty() {
                    return Err(Problems(problems));
                }
                match map.get("stages") {
                    Some(stages) => (stages, map.get("env"), map.get("workdir")),
                    None => {
                        return Err(Problems(vec![Problem::new(None, Some("stages"), "a list of stages (the key is required)", "nothing".into())]))
                    }
                }
            }
            other => (other, None, None),
        };
        let mut problems = Vec::new();
        let stages = parse_stages(stages_value).map_err(|p| problems.extend(p.0)).ok();
        let mut env = BTreeMap::new();
        if let Some(value) = env_value.filter(|v| !v.is_null()) {
            match value {
                Value::Object(map) => {
                    for (k, v) in map {
                        match v {
                            Value::String(_) if k.is_empty() || k.contains('=') || k.contains('\0') => {
                                problems.push(Problem::new(None, Some("env"), ENV_NAME_EXPECTED, quote(k)))
                            }
                            Value::String(s) if s.contains('\0') => {
                                problems.push(Problem::new(None, Some("env"), "values without NUL bytes", format!("{k}: {}", quote(s))))
                            }
                            Value::String(s) => {
                                env.insert(k.clone(), s.clone());
                            }
                            other => problems.push(Problem::new(None, Some("env"), "string values", format!("{k}: {}", describe(other)))),
                        }
                    }
                }
                other => problems.push(Problem::new(None, Some("env"), "a mapping of strings to strings", describe(other))),
            }
        }
        let workdir = match workdir_value.filter(|v| !v.is_null()) {
            None => None,
            Some(Value::String(path)) if !path.is_empty() => Some(PathBuf::from(path)),
            Some(other) => {
                problems.push(Problem::new(None, Some("workdir"), "a directory path", describe(other)));
                None
            }
        };
        if let Some(stages) = &stages {
            // The file's env is the run's base environment: too long for a stage is known now.
            let too_long = environ_problems(&env, stages).into_iter().map(|p| Problem { key: Some("env".into()), ..p });
            problems.extend(too_long);
        }
        match stages {
            Some(stages) if problems.is_empty() => Ok(ChainFile { stages, env, workdir }),
            _ => Err(Problems(problems)),
        }
    }
}

mod load;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn problems_of(value: Value) -> Vec<String> {
        parse_stages(&value).unwrap_err().0.iter().map(|p| p.to_string()).collect()
    }

    #[test]
    fn a_minimal_stage_takes_the_seed_defaults() {
        let stages = parse_stages(&json!([{"image": "busybox"}])).unwrap();
        let stage = &stages[0];
        assert_eq!(stage.image, "busybox");
        assert_eq!(stage.hostname, "container");
        assert_eq!(stage.memory, MemorySize(2 << 30));
        assert_eq!(stage.timeout, Duration::from_secs(30));
        assert!(stage.networking && !stage.privileged && stage.logs);
        assert_eq!(stage.entrypoint, None);
        assert_eq!(stage.cpuset_cpus, None);
    }

    #[test]
    fn every_seed_key_is_read() {
        let stages = parse_stages(&json!([{
            "entrypoint": ["ip", "link", "set", "lo", "up"], "hostname": "somehost", "image": "alpine:3.5",
            "memory": "512m", "cpuset_cpus": "0-1", "networking": false, "privileged": true,
            "timeout": 2.5, "logs": false, "env": {"VAR1": "1"}
        }]))
        .unwrap();
        let s = &stages[0];
        assert_eq!(s.entrypoint.as_deref().unwrap()[0], "ip");
        assert_eq!(s.hostname, "somehost");
        assert_eq!(s.memory, MemorySize(512 << 20));
        assert_eq!(s.cpuset_cpus.as_ref().unwrap().as_str(), "0-1");
        assert!(!s.networking && s.privileged && !s.logs);
        assert_eq!(s.timeout, Duration::from_millis(2500));
        assert_eq!(s.env["VAR1"], "1");
    }

    #[test]
    fn every_problem_of_every_stage_is_reported_at_once() {
        let found = problems_of(json!([
            {"image": "a", "timout": 3, "memory": "lots"},
            {"timeout": "30s", "networking": "yes"},
            {"image": "b", "env": {"A=B": "1", "N": 1}, "entrypoint": [], "cpuset_cpus": "a-b"}
        ]));
        let text = found.join("\n");
        for expected in [
            "stages[0].timout: expected one of the stage keys (did you mean `timeout`?)",
            "stages[0].memory: expected a memory size",
            "stages[1].image: expected an image name (the key is required), got nothing",
            "stages[1].timeout: expected a number of seconds above 0 and at most a year, such as 30 or 2.5, got \"30s\"",
            "stages[1].networking: expected true or false, got \"yes\"",
            "stages[2].env: expected string values, got N: 1 (quote it: \"1\")",
            "stages[2].env: expected variable names that are not empty and hold no '=' or NUL, got \"A=B\"",
            "stages[2].entrypoint: expected a non-empty list of strings",
            "stages[2].cpuset_cpus: expected a CPU list",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
        }
        assert_eq!(found.len(), 9, "{text}");
    }

    #[test]
    fn limits_below_the_engine_minimum_and_bad_timeouts_are_refused() {
        let text = problems_of(json!([{"image": "a", "memory": "1m", "timeout": 0}, {"image": "", "timeout": -1}])).join("\n");
        assert!(text.contains("stages[0].memory: expected at least 6m"), "{text}");
        assert!(text.contains("stages[0].timeout"), "{text}");
        assert!(text.contains("stages[1].image"), "{text}");
        assert!(text.contains("stages[1].timeout"), "{text}");
    }

    #[test]
    fn images_must_be_references_the_engine_can_pull() {
        let text = problems_of(json!([{"image": "Team/App:v1"}, {"image": "app:-bad"}, {"image": "a@sha256:12"}])).join("\n");
        assert!(text.contains("stages[0].image: expected an image reference such as \"busybox:latest\" (the repository name must be lower-case), got \"Team/App:v1\""), "{text}");
        assert!(text.contains("stages[1].image: expected an image reference"), "{text}");
        assert!(text.contains("stages[2].image: expected an image reference"), "{text}");
        let id = "ac5f88b0704e6adb7930939e91fcb5c07927036156a4c786043ce7d3c2777d2a";
        for good in ["busybox", "127.0.0.1:5000/team/app:v1", id] {
            assert!(parse_stages(&json!([{"image": good}])).is_ok(), "{good}");
        }
    }

    #[test]
    fn stages_must_be_a_non_empty_list_of_mappings() {
        assert_eq!(problems_of(json!([])), vec!["stages: expected a non-empty list of stages, got []"]);
        assert_eq!(problems_of(json!({"image": "a"})), vec!["stages: expected a list of stages, got a mapping"]);
        assert_eq!(problems_of(json!(["busybox"])), vec!["stages[0]: expected a mapping of stage keys, got \"busybox\""]);
    }

    #[test]
    fn chain_files_take_a_list_or_a_mapping() {
        let list = ChainFile::parse("- image: busybox\n  timeout: 2\n", false).unwrap();
        assert_eq!(list.stages[0].timeout, Duration::from_secs(2));
        let mapping = ChainFile::parse("{\"stages\": [{\"image\": \"x\"}], \"env\": {\"A\": \"1\"}, \"workdir\": \"/w\"}", true).unwrap();
        assert_eq!(mapping.env["A"], "1");
        assert_eq!(mapping.workdir, Some(PathBuf::from("/w")));
    }

    #[test]
    fn syntax_errors_carry_line_and_column() {
        let ChainFileError::Syntax(e) = ChainFile::parse("- image: [unclosed\n", false).unwrap_err() else { panic!() };
        assert!(e.line.is_some() && e.column.is_some(), "{e:?}");
        let ChainFileError::Syntax(e) = ChainFile::parse("[{\"image\": }]", true).unwrap_err() else { panic!() };
        assert_eq!((e.line, e.column), (Some(1), Some(12)));
    }

    #[test]
    fn suggestions_find_near_keys_only() {
        assert_eq!(suggest("timout", STAGE_KEYS), Some("timeout"));
        assert_eq!(suggest("Image", STAGE_KEYS), Some("image"));
        assert_eq!(suggest("cpuset", STAGE_KEYS), Some("cpuset_cpus"));
        assert_eq!(suggest("zzzzzz", STAGE_KEYS), None);
    }
}

/// The checks of each stage key, and docs/bad-input.md against the messages they give.
#[cfg(test)]
mod key_tests {
    use super::*;
    use serde_json::json;

    /// Bad values of one key each (on a stage with image `a`) and the one message each gives;
    /// every message must be a row of docs/bad-input.md.
    fn refused() -> Vec<(Value, &'static str)> {
        vec![
            (json!({"image": null}), "stages[0].image: expected a string, got null"),
            (json!({"image": ""}), "stages[0].image: expected an image name such as \"busybox:latest\", got \"\""),
            (json!({"image": "bu\u{0}sybox"}), "stages[0].image: expected text without NUL bytes, got \"bu\\u0000sybox\""),
            (json!({"timout": 3}), "stages[0].timout: expected one of the stage keys (did you mean `timeout`?), got an unknown key"),
            (json!({"timeout": "30s"}), "stages[0].timeout: expected a number of seconds above 0 and at most a year, such as 30 or 2.5, got \"30s\""),
            (json!({"timeout": 0}), "stages[0].timeout: expected a number of seconds above 0 and at most a year, such as 30 or 2.5, got 0"),
            (json!({"memory": "lots"}), "stages[0].memory: expected a memory size such as \"512m\", \"2g\" or a number of bytes, got \"lots\""),
            (json!({"memory": "1m"}), "stages[0].memory: expected at least 6m, the engine's minimum, got 1m"),
            (json!({"memory": "16000p"}), "stages[0].memory: expected less than 8192p, the engine's largest limit, got 16000p"),
            (json!({"memory": u64::MAX}), "stages[0].memory: expected less than 8192p, the engine's largest limit, got 18446744073709551615"),
            (json!({"hostname": "a_b"}), "stages[0].hostname: expected a hostname of letters, digits, '-' and '.', at most 63 characters a label, got \"a_b\""),
            (json!({"entrypoint": []}), "stages[0].entrypoint: expected a non-empty list of strings (omit the key for the image's own), got []"),
            (json!({"entrypoint": [""]}), "stages[0].entrypoint: expected a program to run as the first element, got [\"\"]"),
            (json!({"entrypoint": ["sh", "-c", "a\u{0}b"]}), "stages[0].entrypoint: expected text without NUL bytes, got \"a\\u0000b\""),
            (json!({"env": {"A": "x\u{0}"}}), "stages[0].env: expected values without NUL bytes, got \"x\\u0000\""),
            (json!({"pids_limit": 0}), "stages[0].pids_limit: expected a number of processes from 1 to 4194304, or null for no limit, got 0"),
            (json!({"pids_limit": i64::MAX}), "stages[0].pids_limit: expected a number of processes from 1 to 4194304, or null for no limit, got 9223372036854775807"),
            (json!({"cpus": 0.001}), "stages[0].cpus: expected a number of CPUs of at least 0.01, such as 0.5 or 2, got 0.001"),
            (json!({"cpus": "2"}), "stages[0].cpus: expected a number of CPUs of at least 0.01, such as 0.5 or 2, got \"2\""),
            (json!({"user": "-1"}), "stages[0].user: expected a user such as \"1000\", \"1000:1000\" or \"nobody\" (ids up to 2147483647, names without spaces, ':' or a leading '-'), got \"-1\""),
            (json!({"user": 99999999999u64}), "stages[0].user: expected a user such as \"1000\", \"1000:1000\" or \"nobody\" (ids up to 2147483647, names without spaces, ':' or a leading '-'), got \"99999999999\""),
            (json!({"user": "nobody\u{0}"}), "stages[0].user: expected text without NUL bytes, got \"nobody\\u0000\""),
            (json!({"tmpfs": {"/scratch": "size=lots"}}), "stages[0].tmpfs: expected tmpfs options such as \"size=64m,mode=1777\" (size, nr_blocks, nr_inodes, mode, uid, gid, mpol=default, and mount flags such as ro, noexec), got \"/scratch\": \"size=lots\""),
            (json!({"tmpfs": {"/job/": ""}}), "stages[0].tmpfs: expected absolute, normalised mount paths other than /, and not in /job, /proc, /sys or /dev, got \"/job/\""),
            (json!({"tmpfs": {"/proc": ""}}), "stages[0].tmpfs: expected absolute, normalised mount paths other than /, and not in /job, /proc, /sys or /dev, got \"/proc\""),
            (json!({"tmpfs": {"/tmp/..": ""}}), "stages[0].tmpfs: expected absolute, normalised mount paths other than /, and not in /job, /proc, /sys or /dev, got \"/tmp/..\""),
            (json!({"tmpfs": {"/s": "size=1m\u{0}"}}), "stages[0].tmpfs: expected text without NUL bytes, got \"size=1m\\u0000\""),
            (json!({"cap_add": ["NOT_A_CAP"]}), "stages[0].cap_add: expected capability names such as \"NET_ADMIN\" or \"CAP_NET_ADMIN\", or \"ALL\", got \"NOT_A_CAP\""),
            (json!({"cap_drop": ["CAP_ALL"]}), "stages[0].cap_drop: expected capability names such as \"NET_ADMIN\" or \"CAP_NET_ADMIN\", or \"ALL\", got \"CAP_ALL\""),
            (json!({"ulimits": {"bogus": 5}}), "stages[0].ulimits: expected limit names the engine knows (core, cpu, data, fsize, locks, memlock, msgqueue, nice, nofile, nproc, rss, rtprio, rttime, sigpending, stack, as), got \"bogus\""),
            (json!({"ulimits": {"nofile": -5}}), "stages[0].ulimits: expected limits of 0 or more, or -1 for unlimited, got nofile: -5"),
            (json!({"ulimits": {"nofile": 99999999999i64}}), "stages[0].ulimits: expected a nofile limit from 0 to 1048576, the kernel's default most, got nofile: 99999999999"),
            (json!({"ulimits": {"nproc": {"soft": 10, "hard": 5}}}), "stages[0].ulimits: expected soft limits no higher than hard limits, got nproc: 10:5"),
            (json!({"ulimits": {"nofile": "many"}}), "stages[0].ulimits: expected a mapping of limit names to a number or {soft: N, hard: N}, such as {nofile: 1024}, got a mapping"),
            (json!({"runtime": ""}), "stages[0].runtime: expected a runtime name such as \"runc\" or \"runsc\" (null for the engine's default), got \"\""),
            (json!({"runtime": "run\u{0}c"}), "stages[0].runtime: expected text without NUL bytes, got \"run\\u0000c\""),
            (json!({"output_limit": "lots"}), "stages[0].output_limit: expected a number of bytes from 1 to 1g, such as \"16m\" or 1048576, got \"lots\""),
            (json!({"output_limit": "2g"}), "stages[0].output_limit: expected a number of bytes from 1 to 1g, such as \"16m\" or 1048576, got 2g"),
            (json!({"disk_limit": 0}), "stages[0].disk_limit: expected a size of at least 1m such as \"1g\" or \"500m\", or null for no limit, got 0"),
            (json!({"disk_limit": "16k"}), "stages[0].disk_limit: expected a size of at least 1m such as \"1g\" or \"500m\", or null for no limit, got 16k"),
        ]
    }

    /// A fixed engine: what the engine-backed rows of docs/bad-input.md show.
    fn engine() -> EngineInfo {
        EngineInfo { cpus: 2, mem_total: 8 << 30, runtimes: vec!["runc".into()] }
    }

    fn engine_refused() -> Vec<(Value, &'static str)> {
        vec![
            (json!({"cpuset_cpus": "0-999"}), "stages[0].cpuset_cpus: expected CPUs the engine has (0-1), got \"0-999\""),
            (json!({"cpus": 4}), "stages[0].cpus: expected at most the engine's CPU count (2), got 4"),
            (json!({"memory": "100t"}), "stages[0].memory: expected at most the engine's memory (8g), got 100t"),
            (json!({"runtime": "runsc"}), "stages[0].runtime: expected a runtime the engine has (runc), got \"runsc\""),
        ]
    }

    fn stage_with(extra: &Value) -> Value {
        let mut stage = json!({"image": "a"});
        for (k, v) in extra.as_object().unwrap() {
            stage[k] = v.clone();
        }
        stage
    }

    fn messages(extra: &Value) -> Vec<String> {
        match parse_stage(0, &stage_with(extra)) {
            Ok(_) => Vec::new(),
            Err(problems) => problems.iter().map(ToString::to_string).collect(),
        }
    }

    fn engine_messages(extra: &Value) -> Vec<String> {
        let stage = parse_stage(0, &stage_with(extra)).unwrap();
        stage.check_engine(0, &engine()).iter().map(ToString::to_string).collect()
    }

    #[test]
    fn each_bad_value_gives_one_problem_naming_the_stage_and_the_key() {
        for (extra, expected) in refused() {
            assert_eq!(messages(&extra), vec![expected.to_string()], "for {extra}");
        }
    }

    #[test]
    fn engine_backed_values_pass_without_the_engine_and_are_refused_against_it() {
        for (extra, expected) in engine_refused() {
            assert_eq!(messages(&extra), Vec::<String>::new(), "for {extra}");
            assert_eq!(engine_messages(&extra), vec![expected.to_string()], "for {extra}");
        }
        let fits = json!({"cpuset_cpus": "0-1", "cpus": 2, "memory": "8g", "runtime": "runc"});
        assert_eq!(engine_messages(&fits), Vec::<String>::new());
        // The default memory is the seed's whatever the host.
        let small = EngineInfo { mem_total: 1 << 30, ..engine() };
        assert!(Stage::new("a").check_engine(0, &small).is_empty());
        assert!(!Stage::new("a").needs_engine_check());
        assert!(parse_stage(0, &stage_with(&json!({"cpus": 1}))).unwrap().needs_engine_check());
    }

    #[test]
    fn the_bad_input_doc_lists_every_message() {
        let doc = include_str!("../../../docs/bad-input.md");
        for (extra, expected) in refused().into_iter().chain(engine_refused()) {
            assert!(doc.contains(&format!("`{expected}`")), "docs/bad-input.md lacks the message for {extra}: {expected}");
        }
        for check in ENGINE_CHECKS {
            let key = check.split(' ').next().unwrap();
            assert!(engine_refused().iter().any(|(extra, _)| extra.get(key).is_some()), "no engine row for {key}");
        }
    }

    #[test]
    fn problems_of_several_keys_come_at_once() {
        let found = messages(&json!({"ulimits": {"bogus": 1}, "user": "", "cap_add": ["x"], "tmpfs": {"/dev/shm": "mode=8"}}));
        let keys: Vec<&str> = found.iter().map(|m| m.split(':').next().unwrap()).collect();
        assert_eq!(keys, ["stages[0].user", "stages[0].tmpfs", "stages[0].tmpfs", "stages[0].cap_add", "stages[0].ulimits"], "{found:?}");
    }

    #[test]
    fn what_the_engine_accepts_is_accepted() {
        for good in [
            json!({"ulimits": {"core": -1, "stack": {"soft": 8388608, "hard": -1}, "nofile": {"soft": 1024, "hard": 1048576}, "as": 1 << 30}}),
            json!({"cap_add": ["net_admin", "CAP_SYS_PTRACE", "Cap_Chown", "ALL", "all", "AUDIT_READ"], "cap_drop": ["ALL"]}),
            json!({"user": "1000"}), json!({"user": 0}), json!({"user": "2147483647:0"}), json!({"user": "nobody:nogroup"}),
            json!({"user": "1000:staff"}),
            json!({"tmpfs": {"/scratch": "size=64m", "/a": "size=64M,mode=1777,uid=1000,gid=1000", "/b": "", "/c/d": "rw,nosuid,nodev,noexec"}}),
            json!({"tmpfs": {"/e": "size=10%,nr_inodes=1k,nr_blocks=100", "/f": "ro,noatime,mpol=default", "/jobs": "mode=0755", "/dev0": "size=65536"}}),
            json!({"pids_limit": 4194304}), json!({"pids_limit": null}), json!({"cpus": 0.01}), json!({"memory": "6m"}),
            json!({"output_limit": "1g"}), json!({"output_limit": 1}), json!({"runtime": "io.containerd.runc.v2"}), json!({"disk_limit": null}),
            json!({"entrypoint": ["sh", ""]}),
        ] {
            assert_eq!(messages(&good), Vec::<String>::new(), "for {good}");
        }
    }

    #[test]
    fn job_and_the_kernels_trees_cannot_be_hidden_under_any_spelling() {
        for path in ["/job", "/job/", "//job", "/job/.", "/./job", "/job/x", "/", "//", "/proc/sys", "/sys", "/dev", "/dev/shm", "scratch", "", "/a//b", "/a/../job"] {
            let found = messages(&json!({"tmpfs": {path: ""}}));
            assert_eq!(found.len(), 1, "{path:?}: {found:?}");
            assert!(found[0].starts_with("stages[0].tmpfs: expected absolute, normalised mount paths"), "{path:?}: {found:?}");
        }
    }

    #[test]
    fn tmpfs_options_the_kernel_or_engine_refuses_are_refused() {
        for options in [
            "size=64mb", "size=1.5m", "size= 1m", "size=", "size=0", "size=101%", "size=1km", "mode=8", "mode=", "mode=17777",
            "uid=-1", "uid=2147483648", "size=1m,", ",size=1m", "bind", "remount", "huge=always", "mpol=bind:9", "nr_blocks=0",
        ] {
            assert_eq!(messages(&json!({"tmpfs": {"/s": options}})).len(), 1, "{options:?} should be refused");
        }
    }

    #[test]
    fn users_outside_the_kernels_ids_or_with_empty_parts_are_refused() {
        for user in ["", "2147483648", "4294967294", "1000:", ":1000", "a:b:c", "a b", "0:-1", "-nobody"] {
            assert_eq!(messages(&json!({"user": user})).len(), 1, "{user:?} should be refused");
        }
        assert_eq!(messages(&json!({"user": -1})).len(), 1);
    }

    #[test]
    fn ulimits_the_kernel_refuses_are_refused() {
        for limits in [
            json!({"nofile": -1}), json!({"nofile": 1048577}), json!({"core": -2}), json!({"core": {"soft": -1, "hard": 5}}),
            json!({"NOFILE": 5}), json!({"rlimit_nofile": 5}), json!({"core": {"soft": 1}}),
        ] {
            assert_eq!(messages(&json!({"ulimits": limits})).len(), 1, "{limits} should be refused");
        }
    }

    #[test]
    fn stages_built_in_rust_are_checked_as_parsed_ones() {
        let mut stage = Stage::new("a");
        stage.cpus = Some(f64::NAN);
        stage.pids_limit = Some(-1);
        stage.entrypoint = Some(vec![String::new()]);
        stage.memory = MemorySize(u64::MAX);
        stage.hostname = "a\0b".into();
        stage.ulimits.insert("nice".into(), Ulimit { soft: 5, hard: 1 });
        let keys: Vec<Option<String>> = stage.check(3).into_iter().map(|p| p.key).collect();
        let expected = ["entrypoint", "hostname", "memory", "pids_limit", "cpus", "ulimits"];
        assert_eq!(keys, expected.map(|k| Some(k.to_string())));
        stage.cpus = Some(f64::INFINITY);
        assert!(stage.check(0).iter().any(|p| p.to_string() == "stages[0].cpus: expected a number of CPUs of at least 0.01, such as 0.5 or 2, got inf"));
    }
}

#[cfg(test)]
mod chain_file_tests {
    use super::*;
    use serde_json::json;

    /// Each row of the chain-file table of docs/bad-input.md, made by the code: the message
    /// (after the `FILE:line:column: ` the CLI puts before it, byte counts written as `N`) must
    /// be in the doc, so the two cannot drift.
    #[test]
    fn the_bad_input_doc_lists_every_chain_file_message() {
        let doc = include_str!("../../../docs/bad-input.md");
        let syntax = |text: &[u8]| match ChainFile::parse_bytes(text, false).unwrap_err() {
            ChainFileError::Syntax(e) => e.to_string(),
            other => other.to_string(),
        };
        let big = vec![b' '; MAX_CHAIN_FILE_BYTES + 1];
        let deep = format!("stages: {}{}", "[".repeat(100), "]".repeat(100));
        let mut messages = vec![
            ChainFile::parse_bytes(&big, false).unwrap_err().to_string(),
            syntax(deep.as_bytes()),
            syntax(b"- image: a\n  timeout: 3\n  image: b\n"),
            ChainFile::parse_bytes(b"# nothing\n", false).unwrap_err().to_string(),
            syntax(b"- image: a\n  entrypoint: [caf\xe9]\n"),
        ];
        let invalid = |text: &str| match ChainFile::parse(text, false) {
            Err(ChainFileError::Invalid(p)) => p.0.iter().map(ToString::to_string).collect::<Vec<_>>(),
            other => panic!("{other:?}"),
        };
        messages.extend(invalid("- image: a\n  timeout: .nan\n"));
        messages.extend(invalid("stages: [{image: a}]\nenv: {C: \"x\\0y\"}\n"));
        let stages = [Stage::new("a")];
        for environ in [BTreeMap::from([("A\0B".to_string(), "x".to_string())]), BTreeMap::from([("A".to_string(), "x\0y".to_string())])] {
            messages.extend(environ_problems(&environ, &stages).iter().map(ToString::to_string));
        }
        let many: BTreeMap<String, String> = (0..100_000).map(|i| (format!("V{i}"), "x".to_string())).collect();
        messages.extend(environ_problems(&many, &stages).iter().map(ToString::to_string));
        let long = Stage::new("a").entrypoint(["sh".to_string(), "x".repeat(204_800)]);
        messages.extend(check_stages(&[Stage::new("a"), Stage::new("a"), long]).unwrap_err().0.iter().map(ToString::to_string));
        let wide = Stage::new("a").entrypoint((0..200).map(|_| "y".repeat(6000)));
        messages.extend(check_stages(&[wide]).unwrap_err().0.iter().map(ToString::to_string));
        for message in messages {
            let message = message.split_once(": failed to parse").map_or(message.clone(), |(_, rest)| format!("failed to parse{rest}"));
            // Counts that depend on the input are written as N in the doc.
            let general = message
                .split(' ')
                .map(|word| if word.len() > 3 && word.chars().all(|c| c.is_ascii_digit()) && !doc.contains(word) { "N" } else { word })
                .collect::<Vec<_>>()
                .join(" ");
            assert!(
                doc.contains(&message) || doc.contains(&general),
                "docs/bad-input.md lacks the message: {message}"
            );
        }
    }

    fn problems(text: &str) -> Vec<String> {
        match ChainFile::parse(text, false) {
            Err(ChainFileError::Invalid(p)) => p.0.iter().map(ToString::to_string).collect(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn empty_and_oversized_files_are_refused_as_such() {
        for text in ["", "\n\n", "# only a comment\n", "---\n# x\n"] {
            let e = ChainFile::parse(text, false).unwrap_err();
            assert_eq!(e.to_string(), "the file is empty (expected a list of stages or a mapping with `stages`)", "{text:?}");
        }
        assert!(matches!(ChainFile::parse(" \n", true), Err(ChainFileError::Empty)));
        // An explicit null is not empty: it is the wrong value.
        assert_eq!(problems("null\n"), ["stages: expected a list of stages, got null"]);
        let big = vec![b' '; MAX_CHAIN_FILE_BYTES + 1];
        assert_eq!(
            ChainFile::parse_bytes(&big, false).unwrap_err().to_string(),
            "the file is larger than 16777216 bytes (16 MiB), the most a chain file may hold"
        );
    }

    #[test]
    fn non_finite_numbers_are_refused_at_their_key_with_the_other_problems() {
        let found = problems("- {image: a, timeout: .inf, pids_limit: .nan, cpus: -.inf, memory: lots}\n");
        assert_eq!(
            found,
            [
                "stages[0].timeout: expected a finite number, got .inf",
                "stages[0].pids_limit: expected a finite number, got .nan",
                "stages[0].cpus: expected a finite number, got -.inf",
                "stages[0].memory: expected a memory size such as \"512m\", \"2g\" or a number of bytes, got \"lots\"",
            ]
        );
        // Reported once, not again by the parser of the key.
        let found = problems("- {image: a, ulimits: {nofile: .nan}}\n");
        assert_eq!(found, ["stages[0].ulimits.nofile: expected a finite number, got .nan"]);
    }

    #[test]
    fn duplicate_keys_and_bad_text_are_syntax_errors_with_a_position() {
        let Err(ChainFileError::Syntax(e)) = ChainFile::parse("- image: a\n  image: b\n", false) else { panic!() };
        assert_eq!((e.line, e.column), (Some(2), Some(3)));
        assert_eq!(e.to_string(), "failed to parse YAML: [0]: expected each key once in a mapping, got `image` twice, at lines 1 and 2");
        let Err(ChainFileError::Syntax(e)) = ChainFile::parse_bytes(b"- image: \xff\n", false) else { panic!() };
        assert_eq!((e.line, e.column), (Some(1), Some(10)));
    }

    #[test]
    fn the_files_env_is_checked_like_the_runs() {
        let found = problems("stages: [{image: a}]\nenv: {\"A\\0B\": x, C: \"x\\0y\", \"\": z}\n");
        assert_eq!(
            found,
            [
                "env: expected variable names that are not empty and hold no '=' or NUL, got \"\"",
                "env: expected variable names that are not empty and hold no '=' or NUL, got \"A\\u0000B\"",
                "env: expected values without NUL bytes, got C: \"x\\u0000y\"",
            ]
        );
    }

    #[test]
    fn arguments_and_environments_execve_would_refuse_are_refused() {
        let long = "x".repeat(204_800);
        let found: Vec<String> = parse_stages(&json!([{"image": "a"}, {"image": "a", "entrypoint": ["echo", long]}]))
            .unwrap_err()
            .0
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(found, ["stages[1].entrypoint: expected arguments of at most 131071 bytes each, got one of 204800 bytes"]);
        // Just under the limit a string is fine; many of them together are not.
        let arg = "x".repeat(MAX_ARG_BYTES - 1);
        assert!(check_stages(&[Stage::new("a").entrypoint([arg.clone()])]).is_ok());
        let found = check_stages(&[Stage::new("a").entrypoint(vec![arg; 9])]).unwrap_err().0;
        assert_eq!(found.len(), 1);
        assert!(found[0].to_string().starts_with("stages[0]: expected an entrypoint and env of at most 1048576 bytes in all"), "{}", found[0]);
        let stage = Stage::new("a").env("BIG", "y".repeat(MAX_ARG_BYTES));
        assert!(check_stages(&[stage]).unwrap_err().0[0].to_string().starts_with("stages[0].env: expected variables of at most 131071 bytes each"));
    }

    #[test]
    fn the_runs_environ_counts_under_each_stages_env() {
        let environ: BTreeMap<String, String> = (0..60_000).map(|i| (format!("VAR{i}"), "v".into())).collect();
        // Each "VARi=v" with its NUL and an 8-byte pointer; `true` likewise.
        let total: usize = environ.keys().map(|k| k.len() + 2 + 1 + 8).sum::<usize>() + 4 + 1 + 8;
        let stages = [Stage::new("a"), Stage::new("a").entrypoint(["true"])];
        let found: Vec<String> = environ_problems(&environ, &stages).iter().map(ToString::to_string).collect();
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[1].starts_with("environ: expected at most 1048576 bytes of entrypoint and environment for stages[1]"), "{}", found[1]);
        assert!(found[1].ends_with(&format!("got {total} bytes with 60000 variables")), "{}", found[1]);
        // A stage's env replaces a variable of the environ: counted once.
        let wide: BTreeMap<String, String> = (0..9).map(|i| (format!("V{i}"), "x".repeat(120_000))).collect();
        assert_eq!(environ_problems(&wide, &[Stage::new("a")]).len(), 1);
        assert!(environ_problems(&wide, &[Stage::new("a").env("V0", "short").env("V1", "short")]).is_empty());
        let nul: BTreeMap<String, String> = [("A\0B".to_string(), "x".into()), ("C".to_string(), "x\0y".into())].into();
        let found: Vec<String> = environ_problems(&nul, &stages).iter().map(ToString::to_string).collect();
        assert_eq!(
            found,
            [
                "environ: expected variable names that are not empty and hold no '=' or NUL, got \"A\\u0000B\"",
                "environ: expected values without NUL bytes, got C: \"x\\u0000y\"",
            ]
        );
    }
}
