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
        if self.image.trim().is_empty() {
            bad("image", "an image name such as \"busybox:latest\"", quote(&self.image));
        } else if !is_image_id(&self.image) {
            if let Err(e) = ImageRef::parse(&self.image) {
                let expected = format!("an image reference such as \"busybox:latest\" ({})", e.reason);
                bad("image", &expected, quote(&self.image));
            }
        }
        if let Some(argv) = &self.entrypoint {
            if argv.is_empty() {
                bad("entrypoint", "a non-empty list of strings (omit the key for the image's own)", "[]".into());
            }
        }
        if !valid_hostname(&self.hostname) {
            bad("hostname", "a hostname of letters, digits, '-' and '.', at most 63 characters a label", quote(&self.hostname));
        }
        if self.memory < MemorySize::ENGINE_MINIMUM {
            bad("memory", "at least 6m, the engine's minimum", self.memory.to_string());
        }
        let secs = self.timeout.as_secs_f64();
        if secs <= 0.0 || secs > MAX_TIMEOUT_SECS {
            bad("timeout", "a number of seconds above 0 and at most a year", format!("{secs}"));
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
            if limit <= 0 {
                bad("pids_limit", "a positive number of processes (null for no limit)", limit.to_string());
            }
        }
        if let Some(cpus) = self.cpus {
            if !(cpus > 0.0 && cpus <= 1024.0) {
                bad("cpus", "a positive number of CPUs such as 0.5 or 2", cpus.to_string());
            }
        }
        if let Some(user) = &self.user {
            if user.is_empty() || user.contains(char::is_whitespace) {
                bad("user", "a user such as \"1000\", \"1000:1000\" or \"nobody\"", quote(user));
            }
        }
        for path in self.tmpfs.keys() {
            if !path.starts_with('/') || path == "/" || path == "/job" {
                bad("tmpfs", "absolute mount paths other than / and /job", quote(path));
            }
        }
        for (name, limit) in &self.ulimits {
            if limit.soft > limit.hard && limit.hard >= 0 {
                bad("ulimits", "soft limits no higher than hard limits", format!("{name}: {}:{}", limit.soft, limit.hard));
            }
        }
        if self.disk_limit == Some(0) {
            bad("disk_limit", "a positive size such as \"1g\" (null for no limit)", "0".into());
        }
        if self.output_limit == 0 {
            bad("output_limit", "a positive number of bytes such as \"16m\"", "0".into());
        }
        problems
    }
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
            Ok(stage) => stages.push(stage),
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
    let problems: Vec<Problem> = stages.iter().enumerate().flat_map(|(i, s)| s.check(i)).collect();
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
            _ => reader.problem("timeout", "a number of seconds above 0 and at most a year, such as 30 or 2.5", describe(value)),
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
            Value::Number(n) if n.as_i64().is_some_and(|n| n > 0) => stage.pids_limit = n.as_i64(),
            _ => reader.problem("pids_limit", "a positive number of processes, or null for no limit", describe(value)),
        }
    }
    if let Some(value) = reader.present("cpus") {
        match value.as_f64() {
            Some(cpus) if cpus > 0.0 && cpus <= 1024.0 => stage.cpus = Some(cpus),
            _ => reader.problem("cpus", "a positive number of CPUs such as 0.5 or 2", describe(value)),
        }
    }
    if let Some(value) = reader.present("user") {
        match value {
            Value::String(user) => stage.user = Some(user.clone()),
            Value::Number(n) if n.is_u64() => stage.user = Some(n.to_string()),
            _ => reader.problem("user", "a user such as \"1000\", \"1000:1000\" or \"nobody\"", describe(value)),
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
    if let Some(limit) = reader.size("output_limit", "a number of bytes such as \"16m\" or 1048576") {
        stage.output_limit = limit.bytes();
    }
    if let Some(value) = reader.present_or_null("disk_limit") {
        match value {
            Value::Null => stage.disk_limit = None,
            _ => {
                if let Some(limit) = reader.size("disk_limit", "a size such as \"1g\" or \"500m\", or null for no limit") {
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
                self.problem(key, "a non-empty list of strings (omit the key for the image's own)", "[]".into());
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
}

impl ChainFile {
    /// Parses a chain file's text; `json` picks the JSON parser (whose messages are JSON's),
    /// otherwise YAML, which also reads JSON.
    pub fn parse(text: &str, json: bool) -> Result<ChainFile, ChainFileError> {
        let value: Value = if json {
            serde_json::from_str(text).map_err(|e| SyntaxError {
                format: "JSON",
                message: e.to_string(),
                line: Some(e.line()),
                column: Some(e.column()),
            })?
        } else {
            serde_norway::from_str(text).map_err(|e| {
                let location = e.location();
                SyntaxError {
                    format: "YAML",
                    message: e.to_string(),
                    line: location.as_ref().map(|l| l.line()),
                    column: location.as_ref().map(|l| l.column()),
                }
            })?
        };
        Self::from_value(&value).map_err(ChainFileError::Invalid)
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
                            Value::String(s) if !k.is_empty() && !k.contains('=') => {
                                env.insert(k.clone(), s.clone());
                            }
                            Value::String(_) => problems.push(Problem::new(None, Some("env"), "variable names that are not empty and hold no '='", quote(k))),
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
        match stages {
            Some(stages) if problems.is_empty() => Ok(ChainFile { stages, env, workdir }),
            _ => Err(Problems(problems)),
        }
    }
}

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
