//! Image references as the docker CLI reads them: `alpine` is `docker.io/library/alpine:latest`,
//! `127.0.0.1:5000/team/app:v1` names the registry `127.0.0.1:5000`, and
//! `app@sha256:<64 hex>` pins a digest.
//!
//! The grammar is the one of `github.com/distribution/reference`: an optional registry host (a
//! first component holding a `.` or a `:`, or `localhost`, or upper-case letters), a repository
//! path of lower-case components, an optional tag and an optional digest.

use std::fmt;

/// The registry of images named without one.
pub const DOCKER_HUB: &str = "docker.io";
/// The key under which the docker CLI files Docker Hub's credentials.
pub const DOCKER_HUB_CREDENTIALS_KEY: &str = "https://index.docker.io/v1/";
/// The tag of a reference that names neither a tag nor a digest.
pub const DEFAULT_TAG: &str = "latest";

const MAX_NAME_LEN: usize = 255;
const MAX_TAG_LEN: usize = 128;

/// A parsed, normalised image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageRef {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<String>,
}

/// Why a string is not an image reference.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid image reference {reference:?}: {reason}")]
pub struct ReferenceError {
    pub reference: String,
    pub reason: String,
}

impl ImageRef {
    /// Parses and normalises `text` as `docker pull` does. A reference with neither a tag nor a
    /// digest gets the tag `latest`.
    pub fn parse(text: &str) -> Result<ImageRef, ReferenceError> {
        let fail = |reason: &str| ReferenceError { reference: text.to_string(), reason: reason.to_string() };
        if text.is_empty() {
            return Err(fail("the reference is empty"));
        }
        if is_image_id(text) {
            return Err(fail("this is an image ID, not a name that can be pulled"));
        }
        let (rest, digest) = match text.split_once('@') {
            Some((rest, digest)) => (rest, Some(digest)),
            None => (text, None),
        };
        let last_slash = rest.rfind('/');
        let (name, tag) = match rest.rfind(':') {
            Some(colon) if last_slash.map_or(true, |slash| colon > slash) => (&rest[..colon], Some(&rest[colon + 1..])),
            _ => (rest, None),
        };
        if name.is_empty() {
            return Err(fail("the repository name is empty"));
        }
        let (registry, path) = split_registry(name);
        if !valid_registry(registry) {
            return Err(fail("the registry must be a host name or address, with an optional :port"));
        }
        if path.is_empty() || path.split('/').any(|c| c.is_empty()) {
            return Err(fail("the repository path has an empty component"));
        }
        for component in path.split('/') {
            if !valid_path_component(component) {
                return Err(fail(if component.chars().any(|c| c.is_ascii_uppercase()) {
                    "the repository name must be lower-case"
                } else {
                    "repository path components are lower-case letters and digits, separated by '.', '_', '__' or '-'"
                }));
            }
        }
        let repository = if registry == DOCKER_HUB && !path.contains('/') {
            format!("library/{path}")
        } else {
            path.to_string()
        };
        if registry.len() + 1 + repository.len() > MAX_NAME_LEN {
            return Err(fail("the name is longer than 255 characters"));
        }
        if let Some(tag) = tag {
            if !valid_tag(tag) {
                return Err(fail("a tag is 1 to 128 letters, digits, '_', '.' or '-', and does not start with '.' or '-'"));
            }
        }
        if let Some(digest) = digest {
            valid_digest(digest).map_err(|reason| fail(&reason))?;
        }
        let tag = match (tag, digest) {
            (Some(tag), _) => Some(tag.to_string()),
            (None, None) => Some(DEFAULT_TAG.to_string()),
            (None, Some(_)) => None,
        };
        Ok(ImageRef { registry: registry.to_string(), repository, tag, digest: digest.map(str::to_string) })
    }

    /// The registry's host, with its port where it has one (`docker.io`, `127.0.0.1:5000`).
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The repository path within the registry (`library/alpine`, `team/app`).
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The tag; `latest` when the reference named neither a tag nor a digest.
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The digest (`sha256:...`), when the reference pins one.
    pub fn digest(&self) -> Option<&str> {
        self.digest.as_deref()
    }

    /// `registry/repository`, without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    pub fn is_docker_hub(&self) -> bool {
        self.registry == DOCKER_HUB
    }

    /// The key the docker CLI files this registry's credentials under:
    /// `https://index.docker.io/v1/` for Docker Hub, the registry's `host[:port]` otherwise.
    pub fn credentials_key(&self) -> String {
        if self.is_docker_hub() {
            DOCKER_HUB_CREDENTIALS_KEY.to_string()
        } else {
            self.registry.clone()
        }
    }

    /// What to ask the engine to pull: the digest when there is one (it pins the content; a tag
    /// beside it is ignored, as `docker pull` does), the tag otherwise. Never a bare name, which
    /// would fetch every tag of the repository.
    pub fn pull_reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(digest), _) => format!("{}@{digest}", self.name()),
            (None, Some(tag)) => format!("{}:{tag}", self.name()),
            (None, None) => format!("{}:{DEFAULT_TAG}", self.name()),
        }
    }
}

impl fmt::Display for ImageRef {
    /// The canonical form: `docker.io/library/alpine:latest`, `host:5000/team/app@sha256:...`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for ImageRef {
    type Err = ReferenceError;

    fn from_str(text: &str) -> Result<ImageRef, ReferenceError> {
        ImageRef::parse(text)
    }
}

/// Whether `text` is an image ID (`sha256:<64 hex>`, or the 64 hex digits alone) rather than a
/// name: the engine runs it from its local store, and there is nothing to pull.
pub fn is_image_id(text: &str) -> bool {
    let hex = text.strip_prefix("sha256:").unwrap_or(text);
    hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Splits off the registry as the CLI does: the first component is a registry when it holds a
/// `.` or a `:`, is `localhost`, or holds upper-case letters (which a repository path cannot).
fn split_registry(name: &str) -> (&str, &str) {
    match name.split_once('/') {
        Some((first, rest))
            if first.contains(['.', ':']) || first == "localhost" || first.chars().any(|c| c.is_ascii_uppercase()) =>
        {
            // The registry's legacy name is the same registry.
            let registry = if first == "index.docker.io" { DOCKER_HUB } else { first };
            (registry, rest)
        }
        _ => (DOCKER_HUB, name),
    }
}

fn valid_registry(registry: &str) -> bool {
    let (host, port) = if let Some(rest) = registry.strip_prefix('[') {
        // An IPv6 address: [::1]:5000.
        let Some((address, after)) = rest.split_once(']') else { return false };
        if address.is_empty() || !address.chars().all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.') {
            return false;
        }
        match after {
            "" => return true,
            _ => match after.strip_prefix(':') {
                Some(port) => ("x", Some(port)),
                None => return false,
            },
        }
    } else {
        match registry.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (registry, None),
        }
    };
    if let Some(port) = port {
        if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
            return false;
        }
    }
    !host.is_empty()
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// `[a-z0-9]+(?:(?:[._]|__|[-]*)[a-z0-9]+)*`
fn valid_path_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if bytes.is_empty() || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        // A separator run: '.', '_', '__', or any number of '-'.
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let separator = &component[start..i];
        let ok = matches!(separator, "." | "_" | "__") || separator.bytes().all(|b| b == b'-');
        if !ok {
            return false;
        }
    }
    true
}

/// `[\w][\w.-]{0,127}`
fn valid_tag(tag: &str) -> bool {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let bytes = tag.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_TAG_LEN
        && word(bytes[0])
        && bytes.iter().all(|&b| word(b) || b == b'.' || b == b'-')
}

/// `algorithm:hex`, with sha256 and sha512 held to their lengths and lower-case hex.
fn valid_digest(digest: &str) -> Result<(), String> {
    let Some((algorithm, hex)) = digest.split_once(':') else {
        return Err("a digest is algorithm:hex, such as sha256:<64 hex digits>".to_string());
    };
    let algorithm_ok = !algorithm.is_empty()
        && algorithm.as_bytes()[0].is_ascii_alphabetic()
        && algorithm.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'+' | b'.'));
    if !algorithm_ok {
        return Err(format!("{algorithm:?} is not a digest algorithm"));
    }
    let lower_hex = hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    let expected = match algorithm {
        "sha256" => Some(64),
        "sha384" => Some(96),
        "sha512" => Some(128),
        _ => None,
    };
    match expected {
        Some(len) if hex.len() != len || !lower_hex => {
            Err(format!("a {algorithm} digest is {len} lower-case hex digits"))
        }
        None if hex.len() < 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Err("a digest holds at least 32 hex digits".to_string())
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:d52f30e2023a57526bad90396bcde8015e83c55028ad0d957cadd6d6751f308b";

    fn canonical(text: &str) -> String {
        ImageRef::parse(text).unwrap_or_else(|e| panic!("{e}")).to_string()
    }

    #[test]
    fn short_docker_hub_names_are_normalised() {
        assert_eq!(canonical("alpine"), "docker.io/library/alpine:latest");
        assert_eq!(canonical("alpine:3.5"), "docker.io/library/alpine:3.5");
        assert_eq!(canonical("library/alpine"), "docker.io/library/alpine:latest");
        assert_eq!(canonical("docker.io/alpine"), "docker.io/library/alpine:latest");
        assert_eq!(canonical("index.docker.io/alpine"), "docker.io/library/alpine:latest");
        assert_eq!(canonical("docker.io/library/alpine:edge"), "docker.io/library/alpine:edge");
        assert_eq!(canonical("someuser/tool"), "docker.io/someuser/tool:latest");
        assert_eq!(canonical("chainlink-test/busybox"), "docker.io/chainlink-test/busybox:latest");
        assert_eq!(canonical("a/b/c"), "docker.io/a/b/c:latest");
        let hub = ImageRef::parse("alpine").unwrap();
        assert!(hub.is_docker_hub());
        assert_eq!(hub.registry(), "docker.io");
        assert_eq!(hub.repository(), "library/alpine");
        assert_eq!(hub.tag(), Some("latest"));
        assert_eq!(hub.digest(), None);
        assert_eq!(hub.credentials_key(), "https://index.docker.io/v1/");
        assert_eq!(hub.pull_reference(), "docker.io/library/alpine:latest");
    }

    #[test]
    fn registries_with_ports_and_hosts() {
        let r = ImageRef::parse("127.0.0.1:5000/team/busybox:v1").unwrap();
        assert_eq!(r.registry(), "127.0.0.1:5000");
        assert_eq!(r.repository(), "team/busybox");
        assert_eq!(r.tag(), Some("v1"));
        assert_eq!(r.credentials_key(), "127.0.0.1:5000");
        assert!(!r.is_docker_hub());
        assert_eq!(r.to_string(), "127.0.0.1:5000/team/busybox:v1");

        // A port but no tag: the colon belongs to the registry.
        let r = ImageRef::parse("localhost:5000/app").unwrap();
        assert_eq!((r.registry(), r.repository(), r.tag()), ("localhost:5000", "app", Some("latest")));
        // localhost and dotted hosts are registries; a single component is not made library/.
        assert_eq!(canonical("localhost/app"), "localhost/app:latest");
        assert_eq!(canonical("registry.example.com/app:1.0"), "registry.example.com/app:1.0");
        assert_eq!(ImageRef::parse("ghcr.io/org/app").unwrap().credentials_key(), "ghcr.io");
        assert_eq!(canonical("[::1]:5000/app"), "[::1]:5000/app:latest");
        // Upper case in the first component makes it a host, as in the CLI.
        assert_eq!(ImageRef::parse("Registry/app").unwrap().registry(), "Registry");
        // No slash: "localhost:5000" is the Hub image localhost, tag 5000 (as in the CLI).
        assert_eq!(canonical("localhost:5000"), "docker.io/library/localhost:5000");
    }

    #[test]
    fn digests() {
        let r = ImageRef::parse(&format!("127.0.0.1:5000/team/busybox@{DIGEST}")).unwrap();
        assert_eq!(r.digest(), Some(DIGEST));
        assert_eq!(r.tag(), None);
        assert_eq!(r.pull_reference(), format!("127.0.0.1:5000/team/busybox@{DIGEST}"));
        assert_eq!(r.to_string(), format!("127.0.0.1:5000/team/busybox@{DIGEST}"));

        let both = ImageRef::parse(&format!("alpine:3.5@{DIGEST}")).unwrap();
        assert_eq!(both.tag(), Some("3.5"));
        assert_eq!(both.to_string(), format!("docker.io/library/alpine:3.5@{DIGEST}"));
        // The digest wins: it pins the content.
        assert_eq!(both.pull_reference(), format!("docker.io/library/alpine@{DIGEST}"));
    }

    #[test]
    fn rejects_what_the_cli_rejects() {
        for bad in [
            "",
            "Alpine",
            "team/App",
            "alpine:",
            "alpine:-x",
            "alpine:.x",
            "alpine::1",
            "alpine@sha256:abc",
            "alpine@sha256:D52F30E2023A57526BAD90396BCDE8015E83C55028AD0D957CADD6D6751F308B",
            "alpine@",
            "alpine@md5",
            "/alpine",
            "alpine/",
            "team//app",
            "host:port/app",
            "-host.com/app",
            "a..b",
            "a-",
            "_a",
            "a b",
            "a/b c",
            "host:5000/",
            "a___b",
        ] {
            assert!(ImageRef::parse(bad).is_err(), "{bad:?} should be rejected");
        }
        let long = format!("team/{}", "a".repeat(260));
        assert!(ImageRef::parse(&long).is_err());
        let tag = format!("alpine:{}", "t".repeat(129));
        assert!(ImageRef::parse(&tag).is_err());
        let e = ImageRef::parse("team/App").unwrap_err();
        assert_eq!(e.to_string(), "invalid image reference \"team/App\": the repository name must be lower-case");
    }

    #[test]
    fn accepts_the_separators_of_the_grammar() {
        for good in ["a.b", "a_b", "a__b", "a-b", "a---b", "a.b_c-d", "0", "team/a.b/c__d", "my-host:1/x:T_1.0-rc"] {
            assert!(ImageRef::parse(good).is_ok(), "{good:?} should be accepted");
        }
    }

    #[test]
    fn image_ids_are_not_names() {
        let id = "ac5f88b0704e6adb7930939e91fcb5c07927036156a4c786043ce7d3c2777d2a";
        assert!(is_image_id(id));
        assert!(is_image_id(&format!("sha256:{id}")));
        assert!(!is_image_id("alpine"));
        assert!(ImageRef::parse(id).unwrap_err().reason.contains("image ID"));
    }
}
