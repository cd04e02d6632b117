//! Registry credentials, found where `docker pull` finds them.
//!
//! The docker CLI's configuration directory is `$DOCKER_CONFIG`, else `~/.docker`; its
//! `config.json` names, for a registry key (`https://index.docker.io/v1/` for Docker Hub, the
//! registry's `host[:port]` otherwise, see [`ImageRef::credentials_key`]):
//!
//! 1. a credential helper in `credHelpers[key]`, else the store in `credsStore`: the program
//!    `docker-credential-<name>` is run with the argument `get` and the key on its stdin, and
//!    answers `{"Username": ..., "Secret": ...}` on stdout (a `Username` of `<token>` makes the
//!    secret an identity token); "credentials not found" means none;
//! 2. otherwise `auths[key]`: `auth` (base64 of `user:password`), or `username` and
//!    `password`, and/or `identitytoken`. Keys written as URLs (`https://host/v1/`) match their
//!    host, as the CLI allows for old files.
//!
//! Secrets never leave this module in a form that prints: [`Secret`]'s `Debug` hides them, it
//! has no `Display`, and no error of this module quotes the configuration's values or a
//! helper's answer.
//!
//! [`ImageRef::credentials_key`]: super::reference::ImageRef::credentials_key

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

/// How long a credential helper may take to answer.
const HELPER_TIMEOUT: Duration = Duration::from_secs(30);
/// The helper answer the CLI takes for "no credentials" rather than a failure.
const HELPER_NOT_FOUND: &str = "credentials not found";
/// The user name a helper gives when its secret is an identity token.
const TOKEN_USERNAME: &str = "<token>";

/// A password or an identity token. Its `Debug` hides the value; read it with
/// [`Secret::expose`], only to hand it to the engine.
#[derive(Clone, PartialEq, Eq)]
pub enum Secret {
    Password(String),
    /// An OAuth refresh token, exchanged by the engine for access tokens.
    IdentityToken(String),
}

impl Secret {
    pub fn expose(&self) -> &str {
        match self {
            Secret::Password(s) | Secret::IdentityToken(s) => s,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Secret::Password(_) => "password",
            Secret::IdentityToken(_) => "identity token",
        }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Secret::Password(_) => f.write_str("Password(<redacted>)"),
            Secret::IdentityToken(_) => f.write_str("IdentityToken(<redacted>)"),
        }
    }
}

/// Credentials for one registry, and where they were found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryCredentials {
    /// The key they were looked up under (`127.0.0.1:5000`, `https://index.docker.io/v1/`).
    pub registry: String,
    pub username: Option<String>,
    pub secret: Secret,
    /// Where they came from, for messages (`auths in /root/.docker/config.json`,
    /// `credential helper docker-credential-pass`).
    pub origin: String,
}

impl RegistryCredentials {
    /// A line for messages, without the secret: `user alice, password from auths in ...`.
    pub fn describe(&self) -> String {
        match &self.username {
            Some(user) => format!("user {user:?} with a {} from {}", self.secret.kind(), self.origin),
            None => format!("an {} from {}", self.secret.kind(), self.origin),
        }
    }
}

/// A failure to read credentials that exist or are configured; never quotes a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot read the credentials for registry {registry}: {problem}")]
pub struct CredentialError {
    pub registry: String,
    pub problem: String,
}

/// Where credentials are looked up: the CLI's configuration directory and the search path for
/// credential helpers. [`CredentialSource::from_env`] reads `DOCKER_CONFIG`, `HOME` and `PATH`
/// at each lookup, as the CLI would at each `docker pull`; [`CredentialSource::new`] fixes
/// both (tests, and callers that must not depend on the process environment).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CredentialSource {
    config_dir: Option<PathBuf>,
    search_path: Option<OsString>,
}

impl CredentialSource {
    /// `$DOCKER_CONFIG` or `~/.docker`, and `$PATH`, read at each lookup.
    pub fn from_env() -> CredentialSource {
        CredentialSource::default()
    }

    /// `config_dir` holds `config.json`; `search_path` is a `PATH`-like list of directories
    /// where `docker-credential-*` helpers are looked for.
    pub fn new(config_dir: impl Into<PathBuf>, search_path: impl Into<OsString>) -> CredentialSource {
        CredentialSource { config_dir: Some(config_dir.into()), search_path: Some(search_path.into()) }
    }

    /// The configuration directory this source reads, if one can be determined.
    pub fn config_dir(&self) -> Option<PathBuf> {
        if let Some(dir) = &self.config_dir {
            return Some(dir.clone());
        }
        if let Some(dir) = std::env::var_os("DOCKER_CONFIG").filter(|d| !d.is_empty()) {
            return Some(PathBuf::from(dir));
        }
        std::env::var_os("HOME").filter(|h| !h.is_empty()).map(|home| Path::new(&home).join(".docker"))
    }

    /// The `config.json` this source reads, if one can be determined.
    pub fn config_file(&self) -> Option<PathBuf> {
        self.config_dir().map(|dir| dir.join("config.json"))
    }

    fn search_path(&self) -> OsString {
        match &self.search_path {
            Some(path) => path.clone(),
            None => std::env::var_os("PATH").unwrap_or_default(),
        }
    }

    /// The credentials for `registry` (a key from [`ImageRef::credentials_key`]); `None` when
    /// none are configured, as for an anonymous pull. Blocking: it reads a file and may run a
    /// helper program.
    ///
    /// [`ImageRef::credentials_key`]: super::reference::ImageRef::credentials_key
    pub fn lookup(&self, registry: &str) -> Result<Option<RegistryCredentials>, CredentialError> {
        let fail = |problem: String| CredentialError { registry: registry.to_string(), problem };
        let Some(file) = self.config_file() else { return Ok(None) };
        let text = match std::fs::read(&file) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(fail(format!("cannot read {}: {e}", file.display()))),
        };
        if text.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        // serde_json's messages can quote the input; only the position is reported.
        let config: Value = serde_json::from_slice(&text).map_err(|e| {
            fail(format!("{} is not valid JSON (line {}, column {})", file.display(), e.line(), e.column()))
        })?;
        let Value::Object(config) = config else {
            return Err(fail(format!("{} does not hold a JSON object", file.display())));
        };
        let field = |name: &str| -> Result<Option<&Map<String, Value>>, CredentialError> {
            match config.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::Object(map)) => Ok(Some(map)),
                Some(_) => Err(fail(format!("{}: {name} is not an object", file.display()))),
            }
        };
        let helper_for_registry = match field("credHelpers")?.and_then(|h| h.get(registry)) {
            None | Some(Value::Null) => None,
            Some(Value::String(name)) => Some((name.clone(), "credHelpers")),
            Some(_) => return Err(fail(format!("{}: credHelpers[{registry:?}] is not a string", file.display()))),
        };
        let store = match config.get("credsStore") {
            None | Some(Value::Null) => None,
            Some(Value::String(name)) if name.is_empty() => None,
            Some(Value::String(name)) => Some((name.clone(), "credsStore")),
            Some(_) => return Err(fail(format!("{}: credsStore is not a string", file.display()))),
        };
        if let Some((name, key)) = helper_for_registry.or(store) {
            let origin = format!("{key} in {}", file.display());
            return run_helper(&name, &origin, registry, &self.search_path()).map_err(fail);
        }
        let Some(auths) = field("auths")? else { return Ok(None) };
        let entry = auths.get(registry).map(|e| (registry, e)).or_else(|| {
            auths.iter().find(|(key, _)| convert_to_hostname(key) == registry).map(|(k, e)| (k.as_str(), e))
        });
        let Some((key, entry)) = entry else { return Ok(None) };
        let origin = format!("auths[{key:?}] in {}", file.display());
        auth_entry(registry, entry, &origin).map_err(|problem| fail(format!("{}: {problem}", file.display())))
    }
}

/// `https://host:5000/v1/` -> `host:5000`, as the CLI reads old `auths` keys.
fn convert_to_hostname(key: &str) -> &str {
    let rest = key.strip_prefix("http://").or_else(|| key.strip_prefix("https://")).unwrap_or(key);
    rest.split('/').next().unwrap_or(rest)
}

/// One `auths` entry. `auth` wins over `username`/`password`, as when the CLI loads the file;
/// an identity token wins over a password, as in the engine.
fn auth_entry(registry: &str, entry: &Value, origin: &str) -> Result<Option<RegistryCredentials>, String> {
    let Value::Object(entry) = entry else { return Err(format!("auths[{registry:?}] is not an object")) };
    let string = |name: &str| -> Result<Option<String>, String> {
        match entry.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.is_empty() => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(format!("auths[{registry:?}].{name} is not a string")),
        }
    };
    let (mut username, mut password) = (string("username")?, string("password")?);
    if let Some(auth) = string("auth")? {
        let decoded = base64_decode(auth.trim())
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .ok_or_else(|| format!("auths[{registry:?}].auth is not base64"))?;
        let (user, pass) = decoded
            .split_once(':')
            .ok_or_else(|| format!("auths[{registry:?}].auth does not decode to user:password"))?;
        username = Some(user.to_string()).filter(|u| !u.is_empty());
        password = Some(pass.to_string()).filter(|p| !p.is_empty());
    }
    let secret = match (string("identitytoken")?, password) {
        (Some(token), _) => Secret::IdentityToken(token),
        (None, Some(password)) => Secret::Password(password),
        // An entry without a secret (left by a login through a helper): anonymous.
        (None, None) => return Ok(None),
    };
    Ok(Some(RegistryCredentials { registry: registry.to_string(), username, secret, origin: origin.to_string() }))
}

/// Runs `docker-credential-<name> get` with the registry key on stdin.
fn run_helper(
    name: &str,
    origin: &str,
    registry: &str,
    search_path: &OsStr,
) -> Result<Option<RegistryCredentials>, String> {
    let program = format!("docker-credential-{name}");
    if name.is_empty() || name.contains('/') || name.contains('\0') {
        return Err(format!("the credential helper named by {origin} is not a program name"));
    }
    let Some(path) = find_program(&program, search_path) else {
        return Err(format!("the credential helper {program} (from {origin}) is not on the search path"));
    };
    let mut attempts = 0;
    let mut child = loop {
        let spawned = Command::new(&path)
            .arg("get")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        match spawned {
            Ok(child) => break child,
            // A helper written a moment ago can still be open for writing in a process forked
            // meanwhile (before its exec closed the descriptor): wait a little and retry.
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && attempts < 20 => {
                attempts += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(format!("cannot run the credential helper {}: {e}", path.display())),
        }
    };
    // As the CLI: the key, without a newline. A helper that does not read it is fine.
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(registry.as_bytes());
    }
    let reader = |pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.take(1 << 20).read_to_end(&mut bytes);
            bytes
        })
    };
    let stdout = child.stdout.take().map(|p| reader(Box::new(p)));
    let stderr = child.stderr.take().map(|p| reader(Box::new(p)));
    let deadline = Instant::now() + HELPER_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("the credential helper {program} did not answer within {} s", HELPER_TIMEOUT.as_secs()));
            }
            Err(e) => return Err(format!("cannot wait for the credential helper {program}: {e}")),
        }
    };
    let stdout = stdout.and_then(|t| t.join().ok()).unwrap_or_default();
    let stderr = stderr.and_then(|t| t.join().ok()).unwrap_or_default();
    if !status.success() {
        let said = String::from_utf8_lossy(if stdout.iter().all(u8::is_ascii_whitespace) { &stderr } else { &stdout });
        let said = said.trim();
        if said.contains(HELPER_NOT_FOUND) {
            return Ok(None);
        }
        // The helper's own complaint, first line only and short: it explains the failure and
        // a failed helper has no secret of ours to repeat.
        let first: String = said.lines().next().unwrap_or("").chars().take(200).collect();
        return Err(format!("the credential helper {program} failed ({status}): {first}"));
    }
    let answer: Value = serde_json::from_slice(&stdout)
        .map_err(|_| format!("the credential helper {program} did not answer with JSON"))?;
    let field = |name: &str| -> Result<String, String> {
        match answer.get(name) {
            None | Some(Value::Null) => Ok(String::new()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(format!("the credential helper {program} answered a {name} that is not a string")),
        }
    };
    let (username, secret) = (field("Username")?, field("Secret")?);
    if secret.is_empty() {
        return Ok(None);
    }
    let origin = format!("credential helper {program} ({origin})");
    let (username, secret) = if username == TOKEN_USERNAME {
        (None, Secret::IdentityToken(secret))
    } else {
        (Some(username).filter(|u| !u.is_empty()), Secret::Password(secret))
    };
    Ok(Some(RegistryCredentials { registry: registry.to_string(), username, secret, origin }))
}

/// The first executable file named `program` in the `PATH`-like `search_path`.
fn find_program(program: &str, search_path: &OsStr) -> Option<PathBuf> {
    std::env::split_paths(search_path).filter(|dir| !dir.as_os_str().is_empty()).map(|dir| dir.join(program)).find(|path| {
        std::fs::metadata(path).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
    })
}

/// Standard base64 with padding (tests write configuration files and check headers with it).
#[cfg(test)]
pub(crate) fn base64_encode(bytes: &[u8]) -> String {
    const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, &b)| n | (u32::from(b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(BASE64[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Base64 in the standard or the URL-safe alphabet, padding optional.
pub(crate) fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let text = text.trim_end_matches('=');
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes() {
        let value = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(value);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    // A lone 6-bit group cannot end a valid encoding.
    (bits < 6).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWORD: &str = "pa55:w>rd~~s3cret";

    struct Dir {
        dir: tempfile::TempDir,
    }

    impl Dir {
        fn new() -> Dir {
            Dir { dir: tempfile::Builder::new().prefix("chainlink-creds-").tempdir().unwrap() }
        }

        fn config(&self, json: &str) -> &Self {
            std::fs::write(self.dir.path().join("config.json"), json).unwrap();
            self
        }

        fn bin(&self) -> PathBuf {
            self.dir.path().join("bin")
        }

        /// A helper script `docker-credential-<name>` in `bin/`.
        fn helper(&self, name: &str, script: &str) -> &Self {
            std::fs::create_dir_all(self.bin()).unwrap();
            let path = self.bin().join(format!("docker-credential-{name}"));
            std::fs::write(&path, format!("#!/bin/sh\n{script}\n")).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
            self
        }

        fn source(&self) -> CredentialSource {
            let path = std::env::join_paths([self.bin(), PathBuf::from("/usr/bin"), PathBuf::from("/bin")]).unwrap();
            CredentialSource::new(self.dir.path(), path)
        }

        fn lookup(&self, registry: &str) -> Result<Option<RegistryCredentials>, CredentialError> {
            self.source().lookup(registry)
        }
    }

    fn password(creds: &RegistryCredentials) -> (&str, &str) {
        match &creds.secret {
            Secret::Password(p) => (creds.username.as_deref().unwrap_or(""), p),
            Secret::IdentityToken(_) => panic!("expected a password, got {creds:?}"),
        }
    }

    #[test]
    fn base64_round_trips() {
        for text in ["", "f", "fo", "foo", "foob", "fooba", "foobar", "alice:pa55:w>rd~~s3cret"] {
            let encoded = base64_encode(text.as_bytes());
            assert_eq!(base64_decode(&encoded).unwrap(), text.as_bytes(), "{encoded}");
        }
        assert_eq!(base64_encode(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64_encode(b"fo"), "Zm8=");
        assert_eq!(base64_decode("Zm8").unwrap(), b"fo");
        assert_eq!(base64_decode("-_-_").unwrap(), base64_decode("+/+/").unwrap());
        assert!(base64_decode("Z").is_none());
        assert!(base64_decode("Zm9v!").is_none());
    }

    #[test]
    fn auths_auth_field_is_user_colon_password() {
        let auth = base64_encode(format!("alice:{PASSWORD}").as_bytes());
        let d = Dir::new();
        d.config(&format!(r#"{{"auths": {{"127.0.0.1:5000": {{"auth": "{auth}"}}}}}}"#));
        let creds = d.lookup("127.0.0.1:5000").unwrap().unwrap();
        // Only the first colon separates: passwords may hold colons.
        assert_eq!(password(&creds), ("alice", PASSWORD));
        assert_eq!(creds.registry, "127.0.0.1:5000");
        assert!(creds.origin.contains("config.json"), "{}", creds.origin);
        assert_eq!(d.lookup("127.0.0.1:5001").unwrap(), None);
        assert_eq!(d.lookup("https://index.docker.io/v1/").unwrap(), None);
    }

    #[test]
    fn auths_username_password_and_identity_token() {
        let d = Dir::new();
        d.config(
            r#"{"auths": {
                "a.example": {"username": "bob", "password": "pw-b"},
                "b.example": {"username": "carol", "identitytoken": "tok-c"},
                "c.example": {"auth": "Ym9iOnB3LWE=", "username": "ignored", "password": "ignored"},
                "d.example": {"email": "x@y"},
                "https://index.docker.io/v1/": {"auth": "aHViOmh1Yi1wdw=="},
                "https://old.example:5000/v1/": {"auth": "b2xkOm9sZC1wdw=="}
            }}"#,
        );
        assert_eq!(password(&d.lookup("a.example").unwrap().unwrap()), ("bob", "pw-b"));
        let token = d.lookup("b.example").unwrap().unwrap();
        assert_eq!(token.secret, Secret::IdentityToken("tok-c".into()));
        assert_eq!(token.username.as_deref(), Some("carol"));
        assert_eq!(password(&d.lookup("c.example").unwrap().unwrap()), ("bob", "pw-a"));
        assert_eq!(d.lookup("d.example").unwrap(), None);
        assert_eq!(password(&d.lookup("https://index.docker.io/v1/").unwrap().unwrap()), ("hub", "hub-pw"));
        // Old URL-shaped keys match their host.
        assert_eq!(password(&d.lookup("old.example:5000").unwrap().unwrap()), ("old", "old-pw"));
    }

    #[test]
    fn missing_or_empty_configuration_means_anonymous() {
        let d = Dir::new();
        assert_eq!(d.lookup("a.example").unwrap(), None);
        d.config("");
        assert_eq!(d.lookup("a.example").unwrap(), None);
        d.config("{}");
        assert_eq!(d.lookup("a.example").unwrap(), None);
    }

    #[test]
    fn credential_helpers_answer_on_stdout() {
        let d = Dir::new();
        let log = d.dir.path().join("calls");
        // Answers for one host only; records its argument and stdin.
        d.helper(
            "test",
            &format!(
                r#"host=$(cat); echo "$1 $host" >> {log}
if [ "$host" = "127.0.0.1:5000" ]; then echo '{{"ServerURL":"127.0.0.1:5000","Username":"alice","Secret":"{PASSWORD}"}}'; exit 0; fi
if [ "$host" = "tok.example" ]; then echo '{{"Username":"<token>","Secret":"refresh-token"}}'; exit 0; fi
echo "credentials not found in native keychain"; exit 1"#,
                log = log.display()
            ),
        );
        d.config(r#"{"credsStore": "test", "auths": {"127.0.0.1:5000": {}}}"#);
        let creds = d.lookup("127.0.0.1:5000").unwrap().unwrap();
        assert_eq!(password(&creds), ("alice", PASSWORD));
        assert!(creds.origin.contains("docker-credential-test"), "{}", creds.origin);
        let token = d.lookup("tok.example").unwrap().unwrap();
        assert_eq!((token.username, token.secret), (None, Secret::IdentityToken("refresh-token".into())));
        assert_eq!(d.lookup("other.example").unwrap(), None);
        let calls = std::fs::read_to_string(&log).unwrap();
        assert_eq!(calls, "get 127.0.0.1:5000\nget tok.example\nget other.example\n");
    }

    #[test]
    fn cred_helpers_win_over_the_store_and_the_file() {
        let d = Dir::new();
        d.helper("good", &format!(r#"echo '{{"Username":"alice","Secret":"{PASSWORD}"}}'"#));
        d.config(
            r#"{"credsStore": "absent", "credHelpers": {"127.0.0.1:5000": "good"},
                "auths": {"127.0.0.1:5000": {"auth": "eDp5"}}}"#,
        );
        assert_eq!(password(&d.lookup("127.0.0.1:5000").unwrap().unwrap()), ("alice", PASSWORD));
        // Other registries go to the store, which is not installed: a clear error.
        let e = d.lookup("other.example").unwrap_err();
        assert_eq!(e.registry, "other.example");
        assert!(e.to_string().contains("docker-credential-absent"), "{e}");
        assert!(e.to_string().contains("not on the search path"), "{e}");
    }

    #[test]
    fn helper_failures_are_errors_without_secrets() {
        let d = Dir::new();
        d.helper("broken", "echo 'backend locked' >&2; exit 3");
        d.helper("garbled", &format!("echo 'Secret={PASSWORD}'"));
        d.helper("slash", "exit 0");
        d.config(r#"{"credHelpers": {"a.example": "broken", "b.example": "garbled", "c.example": "../bin/slash"}}"#);
        let e = d.lookup("a.example").unwrap_err().to_string();
        assert!(e.contains("docker-credential-broken failed") && e.contains("backend locked"), "{e}");
        let e = d.lookup("b.example").unwrap_err().to_string();
        assert!(e.contains("did not answer with JSON"), "{e}");
        assert!(!e.contains(PASSWORD), "{e}");
        let e = d.lookup("c.example").unwrap_err().to_string();
        assert!(e.contains("not a program name"), "{e}");
    }

    #[test]
    fn malformed_files_are_reported_without_their_content() {
        let d = Dir::new();
        for (json, expected) in [
            (format!(r#"{{"auths": {{"a.example": "{PASSWORD}"}}}}"#), "is not an object"),
            (format!(r#"{{"auths": {{"a.example": {{"auth": "{PASSWORD}"}}}}}}"#), "is not base64"),
            (format!(r#"{{"auths": {{"a.example": {{"auth": "{}"}}}}}}"#, base64_encode(PASSWORD.replace(':', "").as_bytes())), "user:password"),
            (format!(r#"{{"auths": {{"a.example": {{"password": ["{PASSWORD}"]}}}}}}"#), "is not a string"),
            (format!(r#"{{"auths": {{"a.example": {{"password": "{PASSWORD}""#), "is not valid JSON (line 1"),
            (format!(r#"["{PASSWORD}"]"#), "does not hold a JSON object"),
        ] {
            d.config(&json);
            let e = d.lookup("a.example").unwrap_err();
            let text = format!("{e} {e:?}");
            assert!(text.contains(expected), "{text}");
            assert!(text.contains("a.example") && text.contains("config.json"), "{text}");
            assert!(!text.contains(PASSWORD) && !text.contains("s3cret"), "{text}");
        }
    }

    #[test]
    fn debug_output_hides_secrets() {
        let creds = RegistryCredentials {
            registry: "r".into(),
            username: Some("alice".into()),
            secret: Secret::Password(PASSWORD.into()),
            origin: "here".into(),
        };
        let text = format!("{creds:?} {}", creds.describe());
        assert!(!text.contains(PASSWORD), "{text}");
        assert!(text.contains("alice") && text.contains("<redacted>"), "{text}");
        assert_eq!(creds.secret.expose(), PASSWORD);
        let token = format!("{:?}", Secret::IdentityToken("tok".into()));
        assert_eq!(token, "IdentityToken(<redacted>)");
    }

    #[test]
    fn the_environment_source_follows_docker_config() {
        // Reads the variables only; nothing here sets them.
        let source = CredentialSource::from_env();
        match std::env::var_os("DOCKER_CONFIG").filter(|d| !d.is_empty()) {
            Some(dir) => assert_eq!(source.config_dir(), Some(PathBuf::from(dir))),
            None => {
                if let Some(home) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
                    assert_eq!(source.config_file(), Some(Path::new(&home).join(".docker/config.json")));
                }
            }
        }
        let fixed = CredentialSource::new("/x", "/bin");
        assert_eq!(fixed.config_file(), Some(PathBuf::from("/x/config.json")));
    }
}
