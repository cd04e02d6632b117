//! What a run shows on standard error while it goes: the library's events as lines, a spinner
//! with the elapsed time when standard error is a terminal, and stage output with `--follow`.

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use chainlink::engine::PullProgress;
use chainlink::{Event, EventSink, ImageSource, Outcome, Stage, SweepReport};

const FRAMES: [&str; 10] = ["⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏"];
const TICK: Duration = Duration::from_millis(100);
/// Without a terminal, pull progress is printed at most this often per image.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// How the renderer shows things.
#[derive(Debug, Clone, Copy)]
pub struct Style {
    /// Only errors are printed (by the caller).
    pub quiet: bool,
    /// Stage output lines are printed as they come.
    pub follow: bool,
    /// Standard error is a terminal: draw a spinner line.
    pub terminal: bool,
}

/// What a stage's lines need that the events do not carry.
struct StageInfo {
    image: String,
    timeout: Duration,
}

/// The line under the printed ones, redrawn by the spinner.
enum Status {
    Pulling { image: String, progress: PullProgress },
    Running { index: usize, total: usize, image: String, since: Instant },
}

#[derive(Default)]
struct State {
    status: Option<Status>,
    /// The status line is on the screen (and must be erased before a line is printed).
    drawn: bool,
    frame: usize,
    done: bool,
    progress_printed: HashMap<String, Instant>,
}

struct Shared {
    style: Style,
    stages: Vec<StageInfo>,
    state: Mutex<State>,
    wake: Condvar,
}

/// Renders a run's events on standard error.
pub struct Renderer {
    shared: Arc<Shared>,
    spinner: Mutex<Option<JoinHandle<()>>>,
}

impl Renderer {
    pub fn new(style: Style, stages: &[Stage]) -> Renderer {
        let shared = Arc::new(Shared {
            style,
            stages: stages.iter().map(|s| StageInfo { image: s.image.clone(), timeout: s.timeout }).collect(),
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
        });
        let spinner = (style.terminal && !style.quiet).then(|| {
            let shared = shared.clone();
            std::thread::spawn(move || spin(&shared))
        });
        Renderer { shared, spinner: Mutex::new(spinner) }
    }

    /// The event sink to give the library.
    pub fn sink(self: &Arc<Self>) -> EventSink {
        let renderer = self.clone();
        Arc::new(move |event: &Event| renderer.event(event))
    }

    fn event(&self, event: &Event) {
        let style = self.shared.style;
        if style.quiet {
            return;
        }
        match event {
            Event::PullStarted { image } => {
                self.set_status(Some(Status::Pulling { image: image.clone(), progress: PullProgress::default() }));
            }
            Event::PullProgress { image, progress } => self.pull_progress(image, *progress),
            Event::PullFinished { image, source, duration } => {
                let how = match source {
                    ImageSource::Pulled => format!("pulled in {}", seconds(*duration)),
                    ImageSource::Local => "local".to_string(),
                    ImageSource::LocalAfterFailedPull(reason) => {
                        format!("using local copy after failed pull: {}", one_line(reason))
                    }
                };
                let mut state = self.lock();
                if matches!(&state.status, Some(Status::Pulling { image: pulling, .. }) if pulling == image) {
                    state.status = None;
                }
                self.print(&mut state, &format!("image {image}: {how}"));
            }
            Event::StageStarted { index, total, image } => {
                let mut state = self.lock();
                state.status =
                    Some(Status::Running { index: *index, total: *total, image: image.clone(), since: Instant::now() });
                self.print(&mut state, &format!("[{}/{total}] {image}: started", index + 1));
            }
            Event::Output { index, stream, bytes } if style.follow => {
                let total = self.shared.stages.len();
                let text = String::from_utf8_lossy(bytes);
                let text = text.strip_suffix('\n').unwrap_or(&text);
                let mut state = self.lock();
                for line in text.split('\n') {
                    self.print(&mut state, &format!("[{}/{total} {}] {line}", index + 1, stream.as_str()));
                }
            }
            Event::Output { .. } => {}
            Event::StageFinished { index, total, outcome, duration } => {
                let what = match outcome {
                    Outcome::Exited(0) => "ok".to_string(),
                    Outcome::Exited(code) => format!("exit {code}"),
                    Outcome::TimedOut => format!("killed after {} (timeout)", self.timeout_of(*index)),
                    Outcome::OomKilled => "OOM".to_string(),
                    Outcome::DiskLimit => "killed (disk_limit)".to_string(),
                    Outcome::StartFailed(code) => format!("could not start (exit {code})"),
                    Outcome::Skipped => "skipped".to_string(),
                };
                let mut state = self.lock();
                state.status = None;
                let image = self.image_of(*index);
                self.print(&mut state, &format!("[{}/{total}] {image}: {what}, {}", index + 1, seconds(*duration)));
            }
            Event::StageSkipped { index, total } => {
                let image = self.image_of(*index);
                let mut state = self.lock();
                self.print(&mut state, &format!("[{}/{total}] {image}: skipped", index + 1));
            }
        }
    }

    fn pull_progress(&self, image: &str, progress: PullProgress) {
        let mut state = self.lock();
        if self.shared.style.terminal {
            state.status = Some(Status::Pulling { image: image.to_string(), progress });
            return;
        }
        let now = Instant::now();
        let due = state.progress_printed.get(image).map_or(true, |last| now - *last >= PROGRESS_EVERY);
        if due && progress.current > 0 {
            state.progress_printed.insert(image.to_string(), now);
            self.print(&mut state, &format!("image {image}: pulling, {}", bytes_done(progress)));
        }
    }

    /// What a sweep at the start of a run removed.
    pub fn swept(&self, report: &SweepReport) {
        if self.shared.style.quiet {
            return;
        }
        let mut state = self.lock();
        for id in &report.containers {
            self.print(&mut state, &format!("removed container {} left by a dead run", short_id(id)));
        }
        for dir in &report.directories {
            self.print(&mut state, &format!("removed directory {} left by a dead run", dir.display()));
        }
    }

    /// A line of chainlink's own (unless quiet).
    pub fn note(&self, text: &str) {
        if !self.shared.style.quiet {
            let mut state = self.lock();
            self.print(&mut state, text);
        }
    }

    /// Erases the status line and stops the spinner; the caller prints after this.
    pub fn finish(&self) {
        {
            let mut state = self.lock();
            state.done = true;
            state.status = None;
            if state.drawn {
                erase(&mut state);
            }
        }
        self.shared.wake.notify_all();
        if let Some(handle) = self.spinner.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = handle.join();
        }
    }

    fn set_status(&self, status: Option<Status>) {
        self.lock().status = status;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Prints a line above the status line, which is redrawn at once.
    fn print(&self, state: &mut State, line: &str) {
        let mut err = std::io::stderr().lock();
        if state.drawn {
            let _ = err.write_all(b"\r\x1b[2K");
            state.drawn = false;
        }
        let _ = writeln!(err, "{line}");
        drop(err);
        if self.shared.style.terminal && !state.done {
            draw(state);
        }
    }

    fn image_of(&self, index: usize) -> &str {
        self.shared.stages.get(index).map_or("?", |s| s.image.as_str())
    }

    fn timeout_of(&self, index: usize) -> String {
        self.shared.stages.get(index).map_or_else(|| "?".to_string(), |s| format!("{} s", s.timeout.as_secs_f64()))
    }
}

impl Drop for Renderer {
    fn drop(&mut self) {
        self.finish();
    }
}

/// The spinner thread: redraws the status line every tick until the renderer finishes.
fn spin(shared: &Shared) {
    let mut state = shared.state.lock().unwrap_or_else(|p| p.into_inner());
    while !state.done {
        state.frame = (state.frame + 1) % FRAMES.len();
        draw(&mut state);
        state = shared.wake.wait_timeout(state, TICK).unwrap_or_else(|p| p.into_inner()).0;
    }
}

fn draw(state: &mut State) {
    let text = match &state.status {
        None => {
            if state.drawn {
                erase(state);
            }
            return;
        }
        Some(Status::Running { index, total, image, since }) => {
            format!("[{}/{total}] {image}: running {:.1} s", index + 1, since.elapsed().as_secs_f64())
        }
        Some(Status::Pulling { image, progress }) if progress.total > 0 || progress.current > 0 => {
            format!("image {image}: pulling, {}", bytes_done(*progress))
        }
        Some(Status::Pulling { image, .. }) => format!("image {image}: pulling"),
    };
    let mut err = std::io::stderr().lock();
    let _ = write!(err, "\r\x1b[2K{} {text}", FRAMES[state.frame]);
    let _ = err.flush();
    state.drawn = true;
}

fn erase(state: &mut State) {
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(b"\r\x1b[2K");
    let _ = err.flush();
    state.drawn = false;
}

fn seconds(duration: Duration) -> String {
    format!("{:.1} s", duration.as_secs_f64())
}

fn bytes_done(progress: PullProgress) -> String {
    if progress.total > 0 {
        format!("{} / {}", human_bytes(progress.current), human_bytes(progress.total))
    } else {
        human_bytes(progress.current)
    }
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

fn short_id(id: &str) -> &str {
    if id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        &id[..12]
    } else {
        id
    }
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations_read_well() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 << 20), "3.0 MiB");
        assert_eq!(bytes_done(PullProgress { current: 1 << 20, total: 4 << 20 }), "1.0 MiB / 4.0 MiB");
        assert_eq!(seconds(Duration::from_millis(2345)), "2.3 s");
        assert_eq!(one_line("a\n  b"), "a b");
    }
}
