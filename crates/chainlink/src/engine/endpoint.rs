//! Which Docker engine to talk to, and how, decided as the docker CLI decides it.
//!
//! [`resolve`] is pure apart from reading the docker CLI's files: the environment comes in as a
//! lookup function and the home directory as a path, so the order (`DOCKER_HOST`, then
//! `DOCKER_CONTEXT`, then `currentContext` in `$DOCKER_CONFIG/config.json`, then the default
//! socket) and the TLS material can be tested against a temporary `DOCKER_CONFIG`. Every file
//! is checked here, before any request, so a typo names the file or the context rather than
//! surfacing later as a failed handshake. No bollard type appears in this module.

use std::path::{Path, PathBuf};

/// The engine's default socket, used when nothing names another endpoint.
pub const DEFAULT_HOST: &str = "unix:///var/run/docker.sock";

/// The client certificate and key files of a TLS connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCert {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The files of a verified TLS connection to a `tcp://` endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The CA the engine's certificate must chain to (`ca.pem`).
    pub ca: PathBuf,
    /// `cert.pem` and `key.pem` when both exist; none when neither does (an engine that does
    /// not ask for client certificates).
    pub client: Option<ClientCert>,
}

/// Where the endpoint came from, for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// `DOCKER_HOST`, or a host the caller named.
    Host,
    /// A docker context, named by `DOCKER_CONTEXT` or by `currentContext` in config.json.
    Context(String),
    /// Nothing named an endpoint (or the context `default` did).
    Default,
}

/// An engine endpoint: `unix://`, `tcp://` (plain HTTP, or TLS with [`TlsFiles`]) or `ssh://`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub tls: Option<TlsFiles>,
    pub origin: Origin,
}

/// Why the endpoint could not be decided; each names the variable, file or context at fault.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EndpointError {
    #[error("failed to read the docker CLI config {path}: {reason}")]
    ConfigUnreadable { path: PathBuf, reason: String },
    #[error("failed to parse the docker CLI config {path}: {reason}")]
    ConfigMalformed { path: PathBuf, reason: String },
    #[error("failed to find the docker context {name:?} (named by {named_by}): {meta} does not exist")]
    UnknownContext { name: String, named_by: String, meta: PathBuf },
    #[error("failed to parse the metadata of the docker context {name:?} at {path}: {reason}")]
    ContextMalformed { name: String, path: PathBuf, reason: String },
    #[error("failed to use the docker context {name:?}: {path} has no Endpoints.docker.Host")]
    ContextWithoutDockerEndpoint { name: String, path: PathBuf },
    #[error(
        "failed to use the docker context {name:?}: it sets SkipTLSVerify, and an engine whose \
         certificate is not verified is not supported; give the context a ca.pem instead"
    )]
    ContextSkipsTlsVerify { name: String },
    #[error(
        "failed to set up TLS: DOCKER_TLS is set without DOCKER_TLS_VERIFY, which asks for an \
         engine whose certificate is not verified and is not supported; set DOCKER_TLS_VERIFY=1 \
         with ca.pem, cert.pem and key.pem in DOCKER_CERT_PATH"
    )]
    TlsWithoutVerify,
    #[error("failed to find the TLS file {path} ({wanted_by}): {reason}")]
    TlsFileMissing { path: PathBuf, wanted_by: String, reason: String },
    #[error("failed to locate the docker CLI config directory for {wanted_by}: neither DOCKER_CONFIG nor HOME is set")]
    NoConfigDir { wanted_by: String },
}

/// The docker CLI's environment variables, empty values counting as unset (as the CLI reads
/// them).
struct Env<'a> {
    lookup: &'a dyn Fn(&str) -> Option<String>,
    home: Option<&'a Path>,
}

impl Env<'_> {
    fn var(&self, name: &str) -> Option<String> {
        (self.lookup)(name).filter(|v| !v.is_empty())
    }

    /// `$DOCKER_CONFIG`, else `~/.docker` (the CLI's `config.Dir()`).
    fn config_dir(&self) -> Option<PathBuf> {
        self.var("DOCKER_CONFIG").map(PathBuf::from).or_else(|| self.home.map(|h| h.join(".docker")))
    }
}

/// The endpoint the docker CLI would use, read from the process's environment and home.
pub fn resolve_from_process() -> Result<Endpoint, EndpointError> {
    let home = std::env::var_os("HOME").filter(|h| !h.is_empty()).map(PathBuf::from);
    resolve(&|name| std::env::var(name).ok(), home.as_deref())
}

/// The endpoint `docker -H host` would use, from the process's environment (see [`for_host`]).
pub fn for_host_from_process(host: &str) -> Result<Endpoint, EndpointError> {
    let home = std::env::var_os("HOME").filter(|h| !h.is_empty()).map(PathBuf::from);
    for_host(host, &|name| std::env::var(name).ok(), home.as_deref())
}

/// The endpoint the docker CLI would use: `DOCKER_HOST` (with `DOCKER_TLS_VERIFY` and
/// `DOCKER_CERT_PATH` for `tcp://`); else the context `DOCKER_CONTEXT` names; else the
/// `currentContext` of `$DOCKER_CONFIG/config.json` (default `~/.docker`); else the default
/// socket. The context `default` is the default socket.
pub fn resolve(lookup: &dyn Fn(&str) -> Option<String>, home: Option<&Path>) -> Result<Endpoint, EndpointError> {
    let env = Env { lookup, home };
    if let Some(host) = env.var("DOCKER_HOST") {
        return from_host(&env, &host);
    }
    if let Some(name) = env.var("DOCKER_CONTEXT") {
        return from_context(&env, &name, "DOCKER_CONTEXT");
    }
    let Some(config_dir) = env.config_dir() else {
        return Ok(default_endpoint());
    };
    let config = config_dir.join("config.json");
    match current_context(&config)? {
        Some(name) => {
            let named_by = format!("currentContext in {}", config.display());
            from_context(&env, &name, &named_by)
        }
        None => Ok(default_endpoint()),
    }
}

/// The endpoint for a host the caller names, as `docker -H host` reads it: `DOCKER_TLS_VERIFY`
/// and `DOCKER_CERT_PATH` apply to `tcp://`. When the environment itself resolves to this very
/// host (a reconnection to the engine [`resolve`] chose), its answer is kept, so a context's own
/// TLS files still apply.
pub fn for_host(host: &str, lookup: &dyn Fn(&str) -> Option<String>, home: Option<&Path>) -> Result<Endpoint, EndpointError> {
    let host = if host.starts_with('/') { format!("unix://{host}") } else { host.to_string() };
    if let Ok(resolved) = resolve(lookup, home) {
        if resolved.host == host {
            return Ok(resolved);
        }
    }
    from_host(&Env { lookup, home }, &host)
}

fn default_endpoint() -> Endpoint {
    Endpoint { host: DEFAULT_HOST.to_string(), tls: None, origin: Origin::Default }
}

/// A host from `DOCKER_HOST` (or the caller), with the environment's TLS settings.
fn from_host(env: &Env<'_>, host: &str) -> Result<Endpoint, EndpointError> {
    let host = if host.starts_with('/') { format!("unix://{host}") } else { host.to_string() };
    let tls = if host.starts_with("tcp://") { env_tls(env)? } else { None };
    Ok(Endpoint { host, tls, origin: Origin::Host })
}

/// TLS as the CLI's flags read the environment: on when `DOCKER_TLS_VERIFY` is non-empty (any
/// value, `0` included, as the CLI has it), with the files in `DOCKER_CERT_PATH`, else in the
/// config directory.
fn env_tls(env: &Env<'_>) -> Result<Option<TlsFiles>, EndpointError> {
    if env.var("DOCKER_TLS_VERIFY").is_none() {
        return match env.var("DOCKER_TLS") {
            Some(_) => Err(EndpointError::TlsWithoutVerify),
            None => Ok(None),
        };
    }
    let (dir, wanted_by) = match env.var("DOCKER_CERT_PATH") {
        Some(dir) => (PathBuf::from(dir), "DOCKER_TLS_VERIFY is set; files from DOCKER_CERT_PATH".to_string()),
        None => {
            let wanted_by = "DOCKER_TLS_VERIFY is set and DOCKER_CERT_PATH is not; files from the docker config directory";
            let dir = env.config_dir().ok_or_else(|| EndpointError::NoConfigDir { wanted_by: wanted_by.to_string() })?;
            (dir, wanted_by.to_string())
        }
    };
    tls_files(&dir, &wanted_by).map(Some)
}

/// `ca.pem` is required (the engine's certificate is always verified against it); `cert.pem`
/// and `key.pem` go together, both or neither.
fn tls_files(dir: &Path, wanted_by: &str) -> Result<TlsFiles, EndpointError> {
    let ca = dir.join("ca.pem");
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    check_readable(&ca, wanted_by)?;
    let client = match (cert.exists(), key.exists()) {
        (false, false) => None,
        (true, false) => return Err(missing(&key, &format!("{wanted_by}; it must go with {}", cert.display()))),
        (false, true) => return Err(missing(&cert, &format!("{wanted_by}; it must go with {}", key.display()))),
        (true, true) => {
            check_readable(&cert, wanted_by)?;
            check_readable(&key, wanted_by)?;
            Some(ClientCert { cert, key })
        }
    };
    Ok(TlsFiles { ca, client })
}

fn missing(path: &Path, wanted_by: &str) -> EndpointError {
    EndpointError::TlsFileMissing { path: path.to_path_buf(), wanted_by: wanted_by.to_string(), reason: "no such file".to_string() }
}

fn check_readable(path: &Path, wanted_by: &str) -> Result<(), EndpointError> {
    match std::fs::File::open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(missing(path, wanted_by)),
        Err(e) => Err(EndpointError::TlsFileMissing {
            path: path.to_path_buf(),
            wanted_by: wanted_by.to_string(),
            reason: e.to_string(),
        }),
    }
}

/// `currentContext` from config.json; none when the file is absent or names no context.
fn current_context(config: &Path) -> Result<Option<String>, EndpointError> {
    let text = match std::fs::read_to_string(config) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(EndpointError::ConfigUnreadable { path: config.to_path_buf(), reason: e.to_string() }),
    };
    let malformed = |reason: String| EndpointError::ConfigMalformed { path: config.to_path_buf(), reason };
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| malformed(e.to_string()))?;
    let object = value.as_object().ok_or_else(|| malformed("expected a JSON object".to_string()))?;
    match object.get("currentContext") {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(name)) if name.is_empty() => Ok(None),
        Some(serde_json::Value::String(name)) => Ok(Some(name.clone())),
        Some(other) => Err(malformed(format!("currentContext: expected a string, got {other}"))),
    }
}

/// The directory name the CLI's context store gives a context: the hex SHA-256 of its name.
pub fn context_dir_name(name: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, name.as_bytes());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// A context from the CLI's store: `contexts/meta/<sha256>/meta.json` for the host, and
/// `contexts/tls/<sha256>/docker/` for its TLS files.
fn from_context(env: &Env<'_>, name: &str, named_by: &str) -> Result<Endpoint, EndpointError> {
    if name == "default" {
        return Ok(default_endpoint());
    }
    let config_dir = env
        .config_dir()
        .ok_or_else(|| EndpointError::NoConfigDir { wanted_by: format!("the docker context {name:?} ({named_by})") })?;
    let id = context_dir_name(name);
    let meta = config_dir.join("contexts").join("meta").join(&id).join("meta.json");
    let text = match std::fs::read_to_string(&meta) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(EndpointError::UnknownContext { name: name.to_string(), named_by: named_by.to_string(), meta })
        }
        Err(e) => {
            return Err(EndpointError::ContextMalformed { name: name.to_string(), path: meta, reason: e.to_string() })
        }
    };
    let malformed = |reason: String| EndpointError::ContextMalformed { name: name.to_string(), path: meta.clone(), reason };
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| malformed(e.to_string()))?;
    let docker = value.get("Endpoints").and_then(|e| e.get("docker"));
    let host = match docker.and_then(|d| d.get("Host")) {
        Some(serde_json::Value::String(host)) if !host.is_empty() => host.clone(),
        Some(serde_json::Value::String(_)) | None | Some(serde_json::Value::Null) => {
            return Err(EndpointError::ContextWithoutDockerEndpoint { name: name.to_string(), path: meta })
        }
        Some(other) => return Err(malformed(format!("Endpoints.docker.Host: expected a string, got {other}"))),
    };
    let skip_verify = match docker.and_then(|d| d.get("SkipTLSVerify")) {
        None | Some(serde_json::Value::Null) => false,
        Some(serde_json::Value::Bool(b)) => *b,
        Some(other) => return Err(malformed(format!("Endpoints.docker.SkipTLSVerify: expected true or false, got {other}"))),
    };
    let tls_dir = config_dir.join("contexts").join("tls").join(&id).join("docker");
    let has_tls = ["ca.pem", "cert.pem", "key.pem"].iter().any(|f| tls_dir.join(f).exists());
    let tls = if !host.starts_with("tcp://") {
        None
    } else if skip_verify {
        return Err(EndpointError::ContextSkipsTlsVerify { name: name.to_string() });
    } else if has_tls {
        Some(tls_files(&tls_dir, &format!("TLS material of the docker context {name:?}"))?)
    } else {
        None
    };
    Ok(Endpoint { host, tls, origin: Origin::Context(name.to_string()) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// A `DOCKER_CONFIG` laid out as the docker CLI lays it out.
    struct Store {
        dir: tempfile::TempDir,
    }

    impl Store {
        fn new() -> Store {
            Store { dir: tempfile::tempdir().unwrap() }
        }

        fn path(&self) -> &Path {
            self.dir.path()
        }

        fn config(&self, json: &str) {
            std::fs::write(self.path().join("config.json"), json).unwrap();
        }

        fn context(&self, name: &str, meta: &str) -> PathBuf {
            let dir = self.path().join("contexts/meta").join(context_dir_name(name));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("meta.json"), meta).unwrap();
            dir.join("meta.json")
        }

        fn context_tls(&self, name: &str, files: &[&str]) -> PathBuf {
            let dir = self.path().join("contexts/tls").join(context_dir_name(name)).join("docker");
            std::fs::create_dir_all(&dir).unwrap();
            for f in files {
                std::fs::write(dir.join(f), "-----BEGIN CERTIFICATE-----\n").unwrap();
            }
            dir
        }

        fn tcp_context(&self, name: &str, host: &str) -> PathBuf {
            self.context(
                name,
                &format!(r#"{{"Name":"{name}","Metadata":{{}},"Endpoints":{{"docker":{{"Host":"{host}","SkipTLSVerify":false}}}}}}"#),
            )
        }
    }

    fn resolve_with(vars: &[(&str, &str)], home: Option<&Path>) -> Result<Endpoint, EndpointError> {
        let vars: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        resolve(&|name| vars.get(name).cloned(), home)
    }

    fn cert_dir(files: &[&str]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for f in files {
            std::fs::write(dir.path().join(f), "pem").unwrap();
        }
        dir
    }

    #[test]
    fn context_directories_are_the_sha256_of_the_name() {
        // `printf default | sha256sum`, as the CLI's store names directories.
        assert_eq!(context_dir_name("default"), "37a8eec1ce19687d132fe29051dca629d164e2c4958ba141d5f4133a33f0688f");
        assert_eq!(context_dir_name(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    }

    #[test]
    fn docker_host_wins_over_docker_context_over_current_context_over_default() {
        let store = Store::new();
        let config = store.path().to_str().unwrap();
        store.tcp_context("from-env", "tcp://env.example:2375");
        store.tcp_context("from-config", "tcp://config.example:2375");
        store.config(r#"{"auths":{},"currentContext":"from-config"}"#);

        let all = [("DOCKER_CONFIG", config), ("DOCKER_HOST", "tcp://host.example:2375"), ("DOCKER_CONTEXT", "from-env")];
        let got = resolve_with(&all, None).unwrap();
        assert_eq!((got.host.as_str(), &got.origin, &got.tls), ("tcp://host.example:2375", &Origin::Host, &None));

        let got = resolve_with(&all[..1].iter().chain(&all[2..]).copied().collect::<Vec<_>>(), None).unwrap();
        assert_eq!((got.host.as_str(), got.origin), ("tcp://env.example:2375", Origin::Context("from-env".into())));

        let got = resolve_with(&all[..1], None).unwrap();
        assert_eq!((got.host.as_str(), got.origin), ("tcp://config.example:2375", Origin::Context("from-config".into())));

        store.config(r#"{"auths":{}}"#);
        assert_eq!(resolve_with(&all[..1], None).unwrap(), default_endpoint());
        std::fs::remove_file(store.path().join("config.json")).unwrap();
        assert_eq!(resolve_with(&all[..1], None).unwrap(), default_endpoint());
    }

    #[test]
    fn empty_variables_count_as_unset_and_default_is_the_socket() {
        let store = Store::new();
        store.tcp_context("remote", "tcp://remote:2376");
        store.config(r#"{"currentContext":"remote"}"#);
        let config = store.path().to_str().unwrap();
        let got = resolve_with(&[("DOCKER_CONFIG", config), ("DOCKER_HOST", ""), ("DOCKER_CONTEXT", "")], None).unwrap();
        assert_eq!(got.host, "tcp://remote:2376");
        // `default` names the default socket whatever config.json says.
        let got = resolve_with(&[("DOCKER_CONFIG", config), ("DOCKER_CONTEXT", "default")], None).unwrap();
        assert_eq!(got, default_endpoint());
        store.config(r#"{"currentContext":"default"}"#);
        assert_eq!(resolve_with(&[("DOCKER_CONFIG", config)], None).unwrap(), default_endpoint());
        // Nothing at all: no DOCKER_CONFIG, no HOME.
        assert_eq!(resolve_with(&[], None).unwrap(), default_endpoint());
    }

    #[test]
    fn the_config_directory_defaults_to_dot_docker_in_home() {
        let home = tempfile::tempdir().unwrap();
        let dot_docker = home.path().join(".docker");
        std::fs::create_dir(&dot_docker).unwrap();
        std::fs::write(dot_docker.join("config.json"), r#"{"currentContext":"ctx"}"#).unwrap();
        let meta = dot_docker.join("contexts/meta").join(context_dir_name("ctx"));
        std::fs::create_dir_all(&meta).unwrap();
        std::fs::write(meta.join("meta.json"), r#"{"Name":"ctx","Endpoints":{"docker":{"Host":"ssh://me@box"}}}"#).unwrap();
        let got = resolve_with(&[], Some(home.path())).unwrap();
        assert_eq!((got.host.as_str(), got.tls, got.origin), ("ssh://me@box", None, Origin::Context("ctx".into())));
    }

    #[test]
    fn a_context_reads_its_tls_files_from_the_store() {
        let store = Store::new();
        let config = store.path().to_str().unwrap();
        store.tcp_context("tls", "tcp://secure:2376");
        let dir = store.context_tls("tls", &["ca.pem", "cert.pem", "key.pem"]);
        let got = resolve_with(&[("DOCKER_CONFIG", config), ("DOCKER_CONTEXT", "tls")], None).unwrap();
        assert_eq!(
            got.tls,
            Some(TlsFiles { ca: dir.join("ca.pem"), client: Some(ClientCert { cert: dir.join("cert.pem"), key: dir.join("key.pem") }) })
        );

        // Only a CA: the engine is verified, no client certificate is offered.
        store.tcp_context("ca-only", "tcp://secure:2376");
        let dir = store.context_tls("ca-only", &["ca.pem"]);
        let got = resolve_with(&[("DOCKER_CONFIG", config), ("DOCKER_CONTEXT", "ca-only")], None).unwrap();
        assert_eq!(got.tls, Some(TlsFiles { ca: dir.join("ca.pem"), client: None }));

        // No TLS material: plain HTTP, as the CLI does.
        store.tcp_context("plain", "tcp://plain:2375");
        let got = resolve_with(&[("DOCKER_CONFIG", config), ("DOCKER_CONTEXT", "plain")], None).unwrap();
        assert_eq!((got.host.as_str(), got.tls), ("tcp://plain:2375", None));
    }

    #[test]
    fn a_context_with_half_its_tls_material_names_the_missing_file() {
        let store = Store::new();
        let config = store.path().to_str().unwrap();
        store.tcp_context("half", "tcp://secure:2376");
        let dir = store.context_tls("half", &["ca.pem", "cert.pem"]);
        let err = resolve_with(&[("DOCKER_CONFIG", config), ("DOCKER_CONTEXT", "half")], None).unwrap_err();
        assert!(matches!(&err, EndpointError::TlsFileMissing { path, .. } if *path == dir.join("key.pem")), "{err:?}");
        let message = err.to_string();
        assert!(message.starts_with("failed to find the TLS file"), "{message}");
        assert!(message.contains(&dir.join("key.pem").display().to_string()) && message.contains("\"half\""), "{message}");

        std::fs::remove_file(dir.join("ca.pem")).unwrap();
        let err = resolve_with(&[("DOCKER_CONFIG", config), ("DOCKER_CONTEXT", "half")], None).unwrap_err();
        assert!(matches!(&err, EndpointError::TlsFileMissing { path, .. } if *path == dir.join("ca.pem")), "{err:?}");
    }

    #[test]
    fn a_context_that_skips_verification_is_refused() {
        let store = Store::new();
        let config = store.path().to_str().unwrap();
        store.context("lax", r#"{"Name":"lax","Endpoints":{"docker":{"Host":"tcp://lax:2376","SkipTLSVerify":true}}}"#);
        let err = resolve_with(&[("DOCKER_CONFIG", config), ("DOCKER_CONTEXT", "lax")], None).unwrap_err();
        assert_eq!(err, EndpointError::ContextSkipsTlsVerify { name: "lax".into() });
        assert!(err.to_string().contains("\"lax\"") && err.to_string().contains("SkipTLSVerify"));
    }

    #[test]
    fn docker_tls_verify_reads_docker_cert_path_else_the_config_directory() {
        let certs = cert_dir(&["ca.pem", "cert.pem", "key.pem"]);
        let cert_path = certs.path().to_str().unwrap();
        let tcp = ("DOCKER_HOST", "tcp://secure:2376");
        let got = resolve_with(&[tcp, ("DOCKER_TLS_VERIFY", "1"), ("DOCKER_CERT_PATH", cert_path)], None).unwrap();
        let expected = TlsFiles {
            ca: certs.path().join("ca.pem"),
            client: Some(ClientCert { cert: certs.path().join("cert.pem"), key: certs.path().join("key.pem") }),
        };
        assert_eq!(got.tls, Some(expected.clone()));
        // Any non-empty value turns it on, `0` included, as in the CLI.
        let got = resolve_with(&[tcp, ("DOCKER_TLS_VERIFY", "0"), ("DOCKER_CERT_PATH", cert_path)], None).unwrap();
        assert_eq!(got.tls, Some(expected.clone()));
        // Without DOCKER_CERT_PATH: $DOCKER_CONFIG.
        let got = resolve_with(&[tcp, ("DOCKER_TLS_VERIFY", "1"), ("DOCKER_CONFIG", cert_path)], None).unwrap();
        assert_eq!(got.tls, Some(expected));
        // ... else ~/.docker.
        let home = tempfile::tempdir().unwrap();
        let dot_docker = home.path().join(".docker");
        std::fs::create_dir(&dot_docker).unwrap();
        std::fs::write(dot_docker.join("ca.pem"), "pem").unwrap();
        let got = resolve_with(&[tcp, ("DOCKER_TLS_VERIFY", "yes")], Some(home.path())).unwrap();
        assert_eq!(got.tls, Some(TlsFiles { ca: dot_docker.join("ca.pem"), client: None }));
        // Unset or empty: plain HTTP; and never TLS on a socket or over SSH.
        for vars in [vec![tcp], vec![tcp, ("DOCKER_TLS_VERIFY", "")]] {
            let got = resolve_with(&[vars.as_slice(), &[("DOCKER_CERT_PATH", cert_path)]].concat(), None).unwrap();
            assert_eq!((got.host.as_str(), got.tls), ("tcp://secure:2376", None));
        }
        for host in ["unix:///run/docker.sock", "ssh://me@box"] {
            let got = resolve_with(&[("DOCKER_HOST", host), ("DOCKER_TLS_VERIFY", "1")], None).unwrap();
            assert_eq!((got.host.as_str(), got.tls), (host, None));
        }
    }

    #[test]
    fn docker_tls_verify_names_the_missing_file_and_the_variable() {
        let certs = cert_dir(&["cert.pem", "key.pem"]);
        let vars = [("DOCKER_HOST", "tcp://secure:2376"), ("DOCKER_TLS_VERIFY", "1"), ("DOCKER_CERT_PATH", certs.path().to_str().unwrap())];
        let err = resolve_with(&vars, None).unwrap_err();
        let message = err.to_string();
        assert!(message.contains(&certs.path().join("ca.pem").display().to_string()), "{message}");
        assert!(message.contains("DOCKER_CERT_PATH"), "{message}");

        std::fs::write(certs.path().join("ca.pem"), "pem").unwrap();
        std::fs::remove_file(certs.path().join("cert.pem")).unwrap();
        let err = resolve_with(&vars, None).unwrap_err();
        assert!(matches!(&err, EndpointError::TlsFileMissing { path, .. } if *path == certs.path().join("cert.pem")), "{err:?}");
        assert!(err.to_string().contains("key.pem"), "{err}");

        let err = resolve_with(&vars[..2], None).unwrap_err();
        assert!(matches!(err, EndpointError::NoConfigDir { .. }), "{err:?}");
        assert!(err.to_string().contains("DOCKER_CERT_PATH is not"), "{err}");
    }

    #[test]
    fn docker_tls_without_verify_is_refused() {
        let err = resolve_with(&[("DOCKER_HOST", "tcp://x:2376"), ("DOCKER_TLS", "1")], None).unwrap_err();
        assert_eq!(err, EndpointError::TlsWithoutVerify);
        assert!(err.to_string().contains("DOCKER_TLS_VERIFY"));
    }

    #[test]
    fn unknown_contexts_and_malformed_files_are_named() {
        let store = Store::new();
        let config = store.path().to_str().unwrap();
        let err = resolve_with(&[("DOCKER_CONFIG", config), ("DOCKER_CONTEXT", "nope")], None).unwrap_err();
        let meta = store.path().join("contexts/meta").join(context_dir_name("nope")).join("meta.json");
        assert_eq!(err, EndpointError::UnknownContext { name: "nope".into(), named_by: "DOCKER_CONTEXT".into(), meta: meta.clone() });
        assert_eq!(
            err.to_string(),
            format!("failed to find the docker context \"nope\" (named by DOCKER_CONTEXT): {} does not exist", meta.display())
        );

        let config_json = store.path().join("config.json");
        store.config(r#"{"currentContext":"gone"}"#);
        let err = resolve_with(&[("DOCKER_CONFIG", config)], None).unwrap_err();
        assert!(err.to_string().contains(&format!("currentContext in {}", config_json.display())), "{err}");

        store.config(r#"{"currentContext": "#);
        let err = resolve_with(&[("DOCKER_CONFIG", config)], None).unwrap_err();
        assert!(matches!(&err, EndpointError::ConfigMalformed { path, .. } if *path == config_json), "{err:?}");
        assert!(err.to_string().starts_with(&format!("failed to parse the docker CLI config {}", config_json.display())), "{err}");
        store.config(r#"{"currentContext": 3}"#);
        let err = resolve_with(&[("DOCKER_CONFIG", config)], None).unwrap_err();
        assert!(err.to_string().contains("currentContext: expected a string"), "{err}");
        // DOCKER_HOST never reads config.json.
        assert!(resolve_with(&[("DOCKER_CONFIG", config), ("DOCKER_HOST", "unix:///x.sock")], None).is_ok());

        let meta = store.context("broken", "{not json");
        let err = resolve_with(&[("DOCKER_CONFIG", config), ("DOCKER_CONTEXT", "broken")], None).unwrap_err();
        assert!(matches!(&err, EndpointError::ContextMalformed { name, path, .. } if name == "broken" && *path == meta), "{err:?}");
        let meta = store.context("k8s-only", r#"{"Name":"k8s-only","Endpoints":{"kubernetes":{}}}"#);
        let err = resolve_with(&[("DOCKER_CONFIG", config), ("DOCKER_CONTEXT", "k8s-only")], None).unwrap_err();
        assert_eq!(err, EndpointError::ContextWithoutDockerEndpoint { name: "k8s-only".into(), path: meta });
    }

    #[test]
    fn a_named_host_keeps_the_environments_tls_and_a_reconnection_keeps_the_contexts() {
        let store = Store::new();
        let config = store.path().to_str().unwrap();
        store.tcp_context("tls", "tcp://secure:2376");
        let dir = store.context_tls("tls", &["ca.pem"]);
        let vars: HashMap<&str, &str> = [("DOCKER_CONFIG", config), ("DOCKER_CONTEXT", "tls")].into();
        let lookup = |name: &str| vars.get(name).map(|v| v.to_string());
        // The context's host again (as `reconnect` passes it): the context's TLS files.
        let got = for_host("tcp://secure:2376", &lookup, None).unwrap();
        assert_eq!((got.tls, got.origin), (Some(TlsFiles { ca: dir.join("ca.pem"), client: None }), Origin::Context("tls".into())));
        // Another host: `docker -H` semantics, no TLS without DOCKER_TLS_VERIFY.
        let got = for_host("tcp://other:2375", &lookup, None).unwrap();
        assert_eq!((got.tls, got.origin), (None, Origin::Host));
        // A bare socket path.
        assert_eq!(for_host("/tmp/d.sock", &lookup, None).unwrap().host, "unix:///tmp/d.sock");
    }
}
