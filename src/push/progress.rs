//! Progress for people and for CI logs: bars on a terminal, a plain line every few seconds
//! when stderr is a log file, nothing when asked for quiet.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ProgressMode {
    /// Bars on a terminal, plain lines otherwise.
    Auto,
    /// Bars (needs a terminal).
    Bars,
    /// A plain line every few seconds, for CI logs.
    Plain,
    /// Only the final summary.
    None,
}

impl ProgressMode {
    fn resolve(self) -> Self {
        match self {
            ProgressMode::Auto if std::io::stderr().is_terminal() => ProgressMode::Bars,
            ProgressMode::Auto => ProgressMode::Plain,
            other => other,
        }
    }
}

/// Shared counters the upload workers bump; a ticker task turns them into output.
#[derive(Default)]
pub struct Counters {
    pub nar_bytes: AtomicU64,
    pub paths_done: AtomicU64,
}

pub struct Progress {
    counters: Arc<Counters>,
    ticker: Option<tokio::task::JoinHandle<()>>,
    bar: Option<ProgressBar>,
}

const PLAIN_EVERY: Duration = Duration::from_secs(5);

impl Progress {
    pub fn start(mode: ProgressMode, total_paths: u64, total_bytes: u64) -> Self {
        let counters = Arc::new(Counters::default());
        let started = Instant::now();
        let (bar, ticker) = match mode.resolve() {
            ProgressMode::Bars => {
                let bar =
                    ProgressBar::with_draw_target(Some(total_bytes), ProgressDrawTarget::stderr());
                bar.set_style(
                    ProgressStyle::with_template(
                        "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} {msg}",
                    )
                    .expect("the template is valid")
                    .progress_chars("=> "),
                );
                let (bar2, counters2) = (bar.clone(), counters.clone());
                let ticker = tokio::spawn(async move {
                    loop {
                        bar2.set_position(counters2.nar_bytes.load(Ordering::Relaxed));
                        bar2.set_message(format!(
                            "{}/{total_paths} paths",
                            counters2.paths_done.load(Ordering::Relaxed)
                        ));
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                });
                (Some(bar), Some(ticker))
            }
            ProgressMode::Plain => {
                let counters2 = counters.clone();
                let ticker = tokio::spawn(async move {
                    loop {
                        tokio::time::sleep(PLAIN_EVERY).await;
                        let bytes = counters2.nar_bytes.load(Ordering::Relaxed);
                        let secs = started.elapsed().as_secs_f64();
                        eprintln!(
                            "pushing: {}/{total_paths} paths, {} of {} NAR, {}/s",
                            counters2.paths_done.load(Ordering::Relaxed),
                            human_bytes(bytes),
                            human_bytes(total_bytes),
                            human_bytes((bytes as f64 / secs) as u64),
                        );
                    }
                });
                (None, Some(ticker))
            }
            _ => (None, None),
        };
        Progress {
            counters,
            ticker,
            bar,
        }
    }

    pub fn counters(&self) -> Arc<Counters> {
        self.counters.clone()
    }

    /// A line that must not be torn by the bar (a failure, a warning).
    pub fn println(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.suspend(|| eprintln!("{line}")),
            None => eprintln!("{line}"),
        }
    }

    pub fn finish(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(t) = self.ticker.take() {
            t.abort();
        }
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `1536` → `1.5 KiB`: binary units, one decimal, as people read sizes in logs.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::human_bytes;

    #[test]
    fn sizes_read_like_a_person_writes_them() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
    }
}
