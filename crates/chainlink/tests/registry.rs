//! Pulls against a real registry: parallel pulls and their progress, the three pull policies,
//! credentials from the docker CLI's configuration and from credential helpers, and references
//! by tag, default tag and digest.
//!
//! Every test starts its own registry (its own port, so its image names are its own), uses its
//! own workdir, and removes the images it pulled when its registry is dropped.

#[path = "registry/fixture.rs"]
mod fixture;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chainlink::engine::CredentialSource;
use chainlink::{Chain, ChainOptions, DockerEngine, Error, Event, ImageSource, PullPolicy, Stage};
use fixture::{docker, present, unique_image, Registry, BUSYBOX, PASSWORD, USER};

/// Events as they arrived, with their arrival times.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<(Instant, Event)>>>);

impl Recorder {
    fn options(&self, workdir: &Path, policy: PullPolicy) -> ChainOptions {
        let events = self.0.clone();
        ChainOptions::default()
            .workdir(workdir)
            .pull(policy)
            .events(Arc::new(move |e: &Event| events.lock().unwrap().push((Instant::now(), e.clone()))))
    }

    fn events(&self) -> Vec<(Instant, Event)> {
        self.0.lock().unwrap().clone()
    }

    fn clear(&self) {
        self.0.lock().unwrap().clear();
    }

    /// How each image was got, from the `PullFinished` events.
    fn sources(&self) -> BTreeMap<String, ImageSource> {
        self.events()
            .into_iter()
            .filter_map(|(_, e)| match e {
                Event::PullFinished { image, source, .. } => Some((image, source)),
                _ => None,
            })
            .collect()
    }

    fn started(&self) -> Vec<String> {
        self.events()
            .into_iter()
            .filter_map(|(_, e)| match e {
                Event::PullStarted { image } => Some(image),
                _ => None,
            })
            .collect()
    }

    /// Every event, printed, for searching for secrets.
    fn text(&self) -> String {
        self.events().iter().map(|(_, e)| format!("{e:?}\n")).collect()
    }
}

fn workdir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("chainlink-registry-test-").tempdir().unwrap()
}

/// An engine whose pulls look for credentials in `config_dir` only, with helpers on `path`.
async fn engine(config_dir: &Path, path: &Path) -> Arc<DockerEngine> {
    let engine = DockerEngine::connect().await.expect("the Docker engine");
    Arc::new(engine.with_credentials(CredentialSource::new(config_dir, path)))
}

async fn build(engine: &Arc<DockerEngine>, stages: Vec<Stage>, options: ChainOptions) -> Result<Chain, Error> {
    Chain::with_engine(stages, options, engine.clone()).await
}

fn sh(image: &str, script: &str) -> Stage {
    Stage::new(image).entrypoint(["sh", "-c", script])
}

/// Runs the chain and checks every stage succeeded.
async fn run_ok(chain: &Chain) {
    let results = chain.run(&BTreeMap::new()).await.unwrap_or_else(|e| panic!("run failed: {e}"));
    for r in &results {
        assert!(r.success(), "stage {} ({}) failed: {:?}", r.index, r.image, r.outcome);
    }
}

fn config_dir(json: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new().prefix("chainlink-docker-config-").tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), json).unwrap();
    dir
}

fn base64(text: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in text.as_bytes().chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, &b)| n | (u32::from(b) << (16 - 8 * i)));
        for i in 0..4 {
            out.push(if i <= chunk.len() { ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char } else { '=' });
        }
    }
    out
}

fn assert_no_secret(text: &str) {
    for secret in [PASSWORD, "wrong-p?w>~~", "~~chainlink"] {
        assert!(!text.contains(secret), "a secret ({secret:?}) appears in:\n{text}");
    }
}

/// Three images of their own (8 MiB each, nothing shared) pulled by one chain: every pull
/// starts before any finishes, and every image reports download progress before the first
/// finishes, which the engine can only do if it is transferring all three at once.
#[tokio::test(flavor = "multi_thread")]
async fn distinct_images_are_pulled_at_the_same_time_with_progress() {
    const SIZE: usize = 8 << 20;
    let registry = Registry::start();
    let names: Vec<String> = (1..=3).map(|i| format!("team/parallel-{i}:v1")).collect();
    for (i, name) in names.iter().enumerate() {
        // Named after the registry's port too, so concurrent test runs do not collide.
        let local = format!("chainlink-test/parallel-{}-{i}", registry.host().rsplit(':').next().unwrap());
        unique_image(&local, SIZE);
        registry.push(&local, name);
        docker(&["rmi", &local]);
    }
    let images: Vec<String> = names.iter().map(|n| registry.image(n)).collect();
    for image in &images {
        assert!(!present(image), "{image} should not be local before the pull");
    }
    let work = workdir();
    let engine = engine(&registry.cli_config_dir(), fixture::no_helpers()).await;
    let recorder = Recorder::default();
    let stages = images.iter().map(|i| sh(i, &format!("test $(wc -c < /blob) -eq {SIZE}"))).collect();
    let began = Instant::now();
    let chain = build(&engine, stages, recorder.options(work.path(), PullPolicy::Always)).await.unwrap();
    let wall = began.elapsed();
    let events = recorder.events();

    let at = |want: &dyn Fn(&Event) -> bool| -> Vec<Instant> { events.iter().filter(|(_, e)| want(e)).map(|(t, _)| *t).collect() };
    let starts = at(&|e| matches!(e, Event::PullStarted { .. }));
    let finishes = at(&|e| matches!(e, Event::PullFinished { .. }));
    assert_eq!((starts.len(), finishes.len()), (3, 3), "{events:?}");
    let first_finish = *finishes.iter().min().unwrap();
    assert!(starts.iter().all(|s| *s < first_finish), "a pull started after another finished");
    for image in &images {
        let progress: Vec<_> = events
            .iter()
            .filter_map(|(t, e)| match e {
                Event::PullProgress { image: i, progress } if i == image => Some((*t, *progress)),
                _ => None,
            })
            .collect();
        assert!(!progress.is_empty(), "no progress reported for {image}");
        assert!(progress.iter().any(|(_, p)| p.total >= SIZE as u64 / 2), "{image}: {progress:?}");
        assert!(
            progress.iter().any(|(t, _)| *t < first_finish),
            "{image} reported no progress before the first pull finished: the pulls did not overlap"
        );
    }
    for (image, source) in recorder.sources() {
        assert_eq!(source, ImageSource::Pulled, "{image}");
    }

    // Figures for the report: each pull's interval, from the chain's construction.
    let mut summed = Duration::ZERO;
    for (t, e) in &events {
        if let Event::PullFinished { image, duration, .. } = e {
            let start = (*t - *duration).duration_since(began);
            let progress: Vec<Instant> = events
                .iter()
                .filter(|(_, e)| matches!(e, Event::PullProgress { image: i, .. } if i == image))
                .map(|(t, _)| *t)
                .collect();
            eprintln!(
                "pull {image}: {:.0} ms .. {:.0} ms ({:.0} ms), {} progress events from {:.0} ms to {:.0} ms",
                start.as_secs_f64() * 1e3,
                t.duration_since(began).as_secs_f64() * 1e3,
                duration.as_secs_f64() * 1e3,
                progress.len(),
                progress[0].duration_since(began).as_secs_f64() * 1e3,
                progress[progress.len() - 1].duration_since(began).as_secs_f64() * 1e3,
            );
            summed += *duration;
        }
    }
    let last_start = starts.iter().max().unwrap().duration_since(began);
    eprintln!(
        "parallel: wall {:.0} ms, sum of pulls {:.0} ms, all started by {:.0} ms, first finished at {:.0} ms",
        wall.as_secs_f64() * 1e3,
        summed.as_secs_f64() * 1e3,
        last_start.as_secs_f64() * 1e3,
        first_finish.duration_since(began).as_secs_f64() * 1e3
    );
    run_ok(&chain).await;
    drop(chain);

    // The same three one after the other, for comparison (reported, not asserted: timing on a
    // shared machine is no test).
    registry.remove_local_images();
    let mut sequential = Duration::ZERO;
    for image in &images {
        let began = Instant::now();
        build(&engine, vec![sh(image, "true")], ChainOptions::default().workdir(work.path())).await.unwrap();
        sequential += began.elapsed();
    }
    eprintln!("sequential: {:.0} ms for the same three pulls", sequential.as_secs_f64() * 1e3);
    registry.remove_local_images();
    assert_eq!(registry.local_images(), Vec::<String>::new(), "the fixture's clean-up left images");
}

/// `always` pulls; with the registry stopped it falls back to the engine's copy and says why;
/// without a local copy it fails naming the image and the registry.
#[tokio::test(flavor = "multi_thread")]
async fn always_pulls_and_falls_back_to_the_local_copy_when_the_registry_is_down() {
    let mut registry = Registry::start();
    registry.push(BUSYBOX, "team/always:v1");
    let image = registry.image("team/always:v1");
    let work = workdir();
    // The credentials `docker login` wrote (auths, base64 auth).
    let engine = engine(&registry.cli_config_dir(), fixture::no_helpers()).await;
    let recorder = Recorder::default();
    let stages = vec![sh(&image, "echo pulled")];

    let chain = build(&engine, stages.clone(), recorder.options(work.path(), PullPolicy::Always)).await.unwrap();
    assert_eq!(recorder.sources()[&image], ImageSource::Pulled);
    run_ok(&chain).await;

    registry.stop();
    recorder.clear();
    let chain = build(&engine, stages.clone(), recorder.options(work.path(), PullPolicy::Always)).await.unwrap();
    assert_eq!(recorder.started(), vec![image.clone()], "always tries the registry");
    match &recorder.sources()[&image] {
        ImageSource::LocalAfterFailedPull(reason) => {
            assert!(reason.contains(&registry.host()), "{reason}");
            assert!(reason.contains(&format!("{image} from registry {}", registry.host())), "{reason}");
            assert_no_secret(reason);
        }
        other => panic!("expected the local copy after a failed pull, got {other:?}"),
    }
    run_ok(&chain).await;
    drop(chain);

    docker(&["rmi", &image]);
    let e = build(&engine, stages, recorder.options(work.path(), PullPolicy::Always)).await.unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, Error::ImagesUnavailable(_)), "{e:?}");
    assert!(text.contains(&image) && text.contains(&format!("registry {}", registry.host())), "{text}");
    assert_no_secret(&format!("{text} {e:?} {}", recorder.text()));
}

/// `never` uses what the engine has and fails clearly for the rest, without a single request
/// to the registry (its access log does not grow); a control pull shows the log would.
#[tokio::test(flavor = "multi_thread")]
async fn never_uses_local_images_and_never_contacts_the_registry() {
    let registry = Registry::start();
    registry.push(BUSYBOX, "team/never-here:v1");
    registry.push(BUSYBOX, "team/never-absent:v1");
    let (here, absent) = (registry.image("team/never-here:v1"), registry.image("team/never-absent:v1"));
    let work = workdir();
    let engine = engine(&registry.cli_config_dir(), fixture::no_helpers()).await;
    let recorder = Recorder::default();
    build(&engine, vec![sh(&here, "true")], recorder.options(work.path(), PullPolicy::Always)).await.unwrap();
    assert!(present(&here) && !present(&absent));

    let before = registry.requests().len();
    recorder.clear();
    let chain_here = build(&engine, vec![sh(&here, "echo local")], recorder.options(work.path(), PullPolicy::Never)).await.unwrap();
    assert_eq!(recorder.sources()[&here], ImageSource::Local);
    assert!(recorder.started().is_empty(), "never started a pull: {:?}", recorder.started());
    run_ok(&chain_here).await;

    let e = build(&engine, vec![sh(&absent, "true")], recorder.options(work.path(), PullPolicy::Never)).await.unwrap_err();
    let Error::ImagesUnavailable(failures) = &e else { panic!("expected ImagesUnavailable, got {e:?}") };
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0].image, absent);
    assert!(failures[0].reason.contains("never"), "{}", failures[0].reason);
    assert!(e.to_string().contains(&absent), "{e}");
    assert!(!present(&absent));

    let after = registry.requests();
    assert_eq!(after.len(), before, "pull policy never contacted the registry:\n{}", after[before..].join("\n"));

    // Control: the same measure sees a pull.
    build(&engine, vec![sh(&absent, "true")], recorder.options(work.path(), PullPolicy::Always)).await.unwrap();
    let control = registry.requests();
    assert!(control[before..].iter().any(|l| l.contains("/v2/team/never-absent/manifests/v1")), "{control:?}");
}

/// `if-missing` pulls the images the engine lacks and only those: the registry sees manifest
/// requests for the absent image and none for the present one.
#[tokio::test(flavor = "multi_thread")]
async fn if_missing_pulls_only_absent_images() {
    let registry = Registry::start();
    registry.push(BUSYBOX, "team/ifm-here:v1");
    registry.push(BUSYBOX, "team/ifm-absent:v1");
    let (here, absent) = (registry.image("team/ifm-here:v1"), registry.image("team/ifm-absent:v1"));
    let work = workdir();
    let engine = engine(&registry.cli_config_dir(), fixture::no_helpers()).await;
    let recorder = Recorder::default();
    build(&engine, vec![sh(&here, "true")], recorder.options(work.path(), PullPolicy::Always)).await.unwrap();

    let before = registry.requests().len();
    recorder.clear();
    let stages = vec![sh(&here, "true"), sh(&absent, "true"), sh(&here, "echo again")];
    let chain = build(&engine, stages, recorder.options(work.path(), PullPolicy::IfMissing)).await.unwrap();
    let sources = recorder.sources();
    assert_eq!(sources[&here], ImageSource::Local);
    assert_eq!(sources[&absent], ImageSource::Pulled);
    assert_eq!(recorder.started(), vec![absent.clone()]);
    run_ok(&chain).await;

    let requests = registry.requests();
    let new = &requests[before..];
    assert!(new.iter().any(|l| l.contains("/v2/team/ifm-absent/manifests/v1")), "{new:?}");
    assert!(!new.iter().any(|l| l.contains("/v2/team/ifm-here/")), "the present image was fetched: {new:?}");
}

/// `auths` entries with `username` and `password` fields, written by hand rather than by
/// `docker login`.
#[tokio::test(flavor = "multi_thread")]
async fn credentials_from_auths_username_and_password() {
    let registry = Registry::start();
    registry.push(BUSYBOX, "team/auths:v1");
    let image = registry.image("team/auths:v1");
    let config = config_dir(&format!(
        r#"{{"auths": {{"http://{host}/v1/": {{"username": "{USER}", "password": "{PASSWORD}"}}}}}}"#,
        host = registry.host()
    ));
    let work = workdir();
    let engine = engine(config.path(), fixture::no_helpers()).await;
    let recorder = Recorder::default();
    let chain = build(&engine, vec![sh(&image, "true")], recorder.options(work.path(), PullPolicy::Always)).await.unwrap();
    assert_eq!(recorder.sources()[&image], ImageSource::Pulled);
    run_ok(&chain).await;
    assert_no_secret(&recorder.text());
}

/// A credential helper named by `credsStore`, and one named by `credHelpers` for this registry
/// (which wins over a `credsStore` that is not installed): run with `get` and the registry key
/// on stdin, answering JSON.
#[tokio::test(flavor = "multi_thread")]
async fn credentials_from_credential_helpers() {
    let registry = Registry::start();
    registry.push(BUSYBOX, "team/helper-store:v1");
    registry.push(BUSYBOX, "team/helper-per-registry:v1");
    let bin = tempfile::Builder::new().prefix("chainlink-helpers-").tempdir().unwrap();
    let calls = bin.path().join("calls");
    let script = format!(
        "#!/bin/sh\nhost=$(cat)\necho \"$1 $host\" >> {calls}\n\
         if [ \"$1\" = get ] && [ \"$host\" = \"{host}\" ]; then\n\
           printf '%s' '{{\"ServerURL\":\"{host}\",\"Username\":\"{USER}\",\"Secret\":\"{PASSWORD}\"}}'; exit 0\n\
         fi\necho 'credentials not found in native keychain'; exit 1\n",
        calls = calls.display(),
        host = registry.host()
    );
    let helper = bin.path().join("docker-credential-chainlink-test");
    std::fs::write(&helper, script).unwrap();
    std::fs::set_permissions(&helper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let work = workdir();

    for (name, config) in [
        ("team/helper-store:v1", r#"{"credsStore": "chainlink-test"}"#.to_string()),
        (
            "team/helper-per-registry:v1",
            format!(r#"{{"credsStore": "not-installed", "credHelpers": {{"{}": "chainlink-test"}}}}"#, registry.host()),
        ),
    ] {
        let image = registry.image(name);
        let config = config_dir(&config);
        let engine = engine(config.path(), bin.path()).await;
        let recorder = Recorder::default();
        let chain = build(&engine, vec![sh(&image, "true")], recorder.options(work.path(), PullPolicy::Always))
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(recorder.sources()[&image], ImageSource::Pulled, "{name}");
        run_ok(&chain).await;
        assert_no_secret(&recorder.text());
    }
    let calls = std::fs::read_to_string(&calls).unwrap();
    let expected = format!("get {}\n", registry.host());
    assert_eq!(calls, expected.repeat(2), "the helper's calls");
}

/// A wrong password, no credentials, and a broken helper each fail with a message naming the
/// image and the registry and saying what was sent; no secret appears in any error or event.
#[tokio::test(flavor = "multi_thread")]
async fn wrong_or_missing_credentials_fail_clearly_without_leaking_secrets() {
    let registry = Registry::start();
    registry.push(BUSYBOX, "team/private:v1");
    let image = registry.image("team/private:v1");
    let host = registry.host();
    let work = workdir();
    let bin = tempfile::Builder::new().prefix("chainlink-helpers-").tempdir().unwrap();
    let helper = bin.path().join("docker-credential-broken");
    std::fs::write(&helper, "#!/bin/sh\necho 'the keyring is locked' >&2\nexit 2\n").unwrap();
    std::fs::set_permissions(&helper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();

    let wrong = config_dir(&format!(r#"{{"auths": {{"{host}": {{"auth": "{}"}}}}}}"#, base64(&format!("{USER}:wrong-{PASSWORD}"))));
    let none = config_dir("{}");
    let broken = config_dir(&format!(r#"{{"credHelpers": {{"{host}": "broken"}}}}"#));
    let cases: [(&str, &Path, &[&str]); 3] = [
        ("wrong password", wrong.path(), &[&format!("user \"{USER}\""), "config.json"]),
        ("no credentials", none.path(), &[&format!("no credentials for {host}"), "anonymous pull"]),
        ("broken helper", broken.path(), &["docker-credential-broken failed", "the keyring is locked"]),
    ];
    for (case, config, expected) in cases {
        let engine = engine(config, bin.path()).await;
        let recorder = Recorder::default();
        let e = build(&engine, vec![sh(&image, "true")], recorder.options(work.path(), PullPolicy::Always)).await.unwrap_err();
        let text = e.to_string();
        eprintln!("{case}: {text}");
        assert!(matches!(e, Error::ImagesUnavailable(_)), "{case}: {e:?}");
        assert!(text.contains(&image), "{case}: the image is not named: {text}");
        assert!(text.contains(&host), "{case}: the registry is not named: {text}");
        for part in expected {
            assert!(text.contains(part), "{case}: {part:?} missing from: {text}");
        }
        assert_no_secret(&format!("{text}\n{e:?}\n{}", recorder.text()));
    }
    assert!(!present(&image));
}

/// References: no tag means `latest`; a digest from `docker push` pulls that content; a tag the
/// registry lacks fails naming the image.
#[tokio::test(flavor = "multi_thread")]
async fn references_by_default_tag_and_by_digest() {
    let registry = Registry::start();
    let digest = registry.push(BUSYBOX, "team/refs:latest");
    assert!(digest.starts_with("sha256:") && digest.len() == 71, "{digest}");
    let work = workdir();
    let engine = engine(&registry.cli_config_dir(), fixture::no_helpers()).await;
    let recorder = Recorder::default();

    let untagged = registry.image("team/refs");
    let chain_latest = build(&engine, vec![sh(&untagged, "true")], recorder.options(work.path(), PullPolicy::Always)).await.unwrap();
    assert_eq!(recorder.sources()[&untagged], ImageSource::Pulled);
    assert!(present(&registry.image("team/refs:latest")));
    run_ok(&chain_latest).await;
    registry.remove_local_images();

    let pinned = format!("{}@{digest}", registry.image("team/refs"));
    let chain_pinned = build(&engine, vec![sh(&pinned, "true")], recorder.options(work.path(), PullPolicy::Always)).await.unwrap();
    assert_eq!(recorder.sources()[&pinned], ImageSource::Pulled);
    let repo_digests = docker(&["image", "inspect", "--format", "{{json .RepoDigests}}", &pinned]);
    assert!(repo_digests.contains(&pinned), "{repo_digests}");
    run_ok(&chain_pinned).await;

    let missing = registry.image("team/refs:no-such-tag");
    let e = build(&engine, vec![sh(&missing, "true")], recorder.options(work.path(), PullPolicy::Always)).await.unwrap_err();
    assert!(e.to_string().contains(&missing) && e.to_string().contains(&registry.host()), "{e}");
}

/// Short Docker Hub names are pulled as `docker.io/library/...` with the Hub's credential key
/// (no outside registry is reachable here, or the image does not exist there: either way the
/// pull fails, and the message shows the normalised name and key).
#[tokio::test(flavor = "multi_thread")]
async fn docker_hub_names_are_normalised_for_the_pull_and_the_credentials() {
    let empty = config_dir("{}");
    let work = workdir();
    let engine = engine(empty.path(), fixture::no_helpers()).await;
    let e = build(&engine, vec![Stage::new("chainlink-no-such-image-4f1c")], ChainOptions::default().workdir(work.path()))
        .await
        .unwrap_err();
    let text = e.to_string();
    assert!(text.contains("docker.io/library/chainlink-no-such-image-4f1c:latest from registry docker.io"), "{text}");
    assert!(text.contains("no credentials for https://index.docker.io/v1/"), "{text}");
}
