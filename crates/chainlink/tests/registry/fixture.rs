//! A real distribution registry (Debian's `docker-registry`) on a 127.0.0.1 port, with htpasswd
//! authentication, started for one test and stopped when it is dropped. The engine treats
//! 127.0.0.0/8 registries as insecure, so plain HTTP is enough.
//!
//! The docker CLI is used to push test images, with its own configuration directory (`docker
//! --config`), so the invoking user's `~/.docker` is never read or written.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The registry's user.
pub const USER: &str = "chainlink";
/// Its password: the symbols make bollard's standard-base64 `X-Registry-Auth` hold a `+`, which
/// the engine would silently drop without the URL-safe translation (see docker.rs).
pub const PASSWORD: &str = "p?w>~~chainlink";

/// Built by `scripts/build-test-images.sh`.
pub const BUSYBOX: &str = "chainlink-test/busybox";

pub struct Registry {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl Registry {
    /// Starts a registry on a free port and logs the fixture's CLI configuration in.
    pub fn start() -> Registry {
        let mut dir = tempfile::Builder::new().prefix("chainlink-registry-").tempdir().expect("registry dir");
        let htpasswd = run("htpasswd", &["-Bbn", USER, PASSWORD]);
        std::fs::write(dir.path().join("htpasswd"), htpasswd).unwrap();
        std::fs::create_dir_all(dir.path().join("cli")).unwrap();
        let mut last_error = String::new();
        // A port found free may be taken before the registry binds it: try a few.
        for _ in 0..5 {
            let port = free_port();
            let config = format!(
                "version: 0.1\n\
                 log:\n  level: info\n  accesslog:\n    disabled: false\n\
                 storage:\n  filesystem:\n    rootdirectory: {root}/data\n  delete:\n    enabled: true\n\
                 http:\n  addr: 127.0.0.1:{port}\n\
                 auth:\n  htpasswd:\n    realm: chainlink-test\n    path: {root}/htpasswd\n",
                root = dir.path().display()
            );
            let config_path = dir.path().join("config.yml");
            std::fs::write(&config_path, config).unwrap();
            // stdout carries the access log (one line a request), stderr the rest.
            let access = std::fs::File::create(dir.path().join("access.log")).unwrap();
            let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
            let child = Command::new("docker-registry")
                .arg("serve")
                .arg(&config_path)
                .stdin(Stdio::null())
                .stdout(access)
                .stderr(log)
                .spawn()
                .expect("docker-registry (Debian package docker-registry) must be installed");
            let mut registry = Registry { child: Some(child), port, dir };
            match registry.wait_ready() {
                Ok(()) => {
                    registry.login();
                    return registry;
                }
                Err(e) => {
                    last_error = e;
                    registry.stop();
                    dir = std::mem::replace(&mut registry.dir, tempfile::tempdir().unwrap());
                }
            }
        }
        panic!("the registry did not start: {last_error}");
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                return Err(format!("docker-registry exited ({status}): {}", self.log_tail()));
            }
            // Without credentials /v2/ answers 401: up, and authentication on.
            if let Some(status) = http_status(self.port, "/v2/") {
                return if status == 401 { Ok(()) } else { Err(format!("/v2/ answered {status}, expected 401")) };
            }
            if Instant::now() > deadline {
                return Err(format!("no answer on port {} within 15 s: {}", self.port, self.log_tail()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn login(&self) {
        let mut child = Command::new("docker")
            .arg("--config")
            .arg(self.cli_config_dir())
            .args(["login", "--username", USER, "--password-stdin", &self.host()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(PASSWORD.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "docker login failed: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `127.0.0.1:PORT/<path>`.
    pub fn image(&self, path: &str) -> String {
        format!("{}/{path}", self.host())
    }

    /// The docker CLI configuration the fixture logged in with (`auths` with a base64 `auth`).
    pub fn cli_config_dir(&self) -> PathBuf {
        self.dir.path().join("cli")
    }

    /// Tags the local image `local` as `127.0.0.1:PORT/<path>`, pushes it, and removes that
    /// tag again so the engine has to pull it. Returns the digest the registry gave it.
    pub fn push(&self, local: &str, path: &str) -> String {
        let target = self.image(path);
        docker(&["tag", local, &target]);
        let config = self.cli_config_dir();
        let out = docker(&["--config", config.to_str().unwrap(), "push", &target]);
        docker(&["rmi", &target]);
        out.split_whitespace()
            .skip_while(|w| *w != "digest:")
            .nth(1)
            .unwrap_or_else(|| panic!("no digest in the push output: {out}"))
            .to_string()
    }

    /// Stops the registry (SIGKILL); it answers nothing from then on.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The access log's lines so far, once the registry has stopped writing to it.
    pub fn requests(&self) -> Vec<String> {
        let path = self.dir.path().join("access.log");
        let read = || std::fs::read_to_string(&path).unwrap_or_default();
        // A request's line is written when its handler returns, which may be just after the
        // engine has what it asked for: wait for the log to hold still.
        let mut last = read();
        let mut stable_since = Instant::now();
        let deadline = Instant::now() + Duration::from_secs(5);
        while stable_since.elapsed() < Duration::from_millis(300) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
            let now = read();
            if now != last {
                last = now;
                stable_since = Instant::now();
            }
        }
        last.lines().map(str::to_string).collect()
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(5)..].join("\n")
    }

    /// Removes every local image reference under this registry's host (tags and digests), so
    /// nothing this test pulled is left for another.
    pub fn remove_local_images(&self) {
        let prefix = format!("{}/", self.host());
        let listing = docker(&["images", "--digests", "--format", "{{.Repository}} {{.Tag}} {{.Digest}}"]);
        let mut references = Vec::new();
        for line in listing.lines() {
            let mut parts = line.split_whitespace();
            let (Some(repo), Some(tag), Some(digest)) = (parts.next(), parts.next(), parts.next()) else { continue };
            if !repo.starts_with(&prefix) {
                continue;
            }
            if tag != "<none>" {
                references.push(format!("{repo}:{tag}"));
            }
            if digest != "<none>" {
                references.push(format!("{repo}@{digest}"));
            }
        }
        for reference in references {
            // By reference, never by ID: an ID may be shared with chainlink-test/busybox.
            let _ = Command::new("docker").args(["rmi", &reference]).output();
        }
    }

    /// The local image references under this registry's host.
    pub fn local_images(&self) -> Vec<String> {
        let prefix = format!("{}/", self.host());
        docker(&["images", "--digests", "--format", "{{.Repository}}:{{.Tag}}@{{.Digest}}"])
            .lines()
            .filter(|l| l.starts_with(&prefix))
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
        self.remove_local_images();
    }
}

/// Builds a runnable image of its own: static busybox and `size` random bytes at `/blob`, in
/// one layer no other image shares, so pulling it really downloads it. Imported, no container.
pub fn unique_image(tag: &str, size: usize) {
    let dir = tempfile::Builder::new().prefix("chainlink-image-").tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("/bin/busybox (busybox-static)");
    std::os::unix::fs::symlink("busybox", root.join("bin/sh")).unwrap();
    let mut blob = vec![0u8; size];
    std::fs::File::open("/dev/urandom").unwrap().read_exact(&mut blob).unwrap();
    std::fs::write(root.join("blob"), blob).unwrap();
    let tar = dir.path().join("root.tar");
    run("tar", &["-C", root.to_str().unwrap(), "-cf", tar.to_str().unwrap(), "."]);
    docker(&["import", "--change", "CMD [\"sh\"]", "--change", "ENV PATH=/bin", tar.to_str().unwrap(), tag]);
}

/// Whether the engine has `image`.
pub fn present(image: &str) -> bool {
    Command::new("docker").args(["image", "inspect", image]).output().unwrap().status.success()
}

pub fn docker(args: &[&str]) -> String {
    run("docker", args)
}

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The status of `GET path`, or `None` when nothing answers.
fn http_status(port: u16, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n").ok()?;
    let mut head = [0u8; 64];
    let n = stream.read(&mut head).ok()?;
    let text = std::str::from_utf8(&head[..n]).ok()?;
    text.split_whitespace().nth(1)?.parse().ok()
}

/// A path that holds no credential helper.
pub fn no_helpers() -> &'static Path {
    Path::new("/nonexistent")
}
