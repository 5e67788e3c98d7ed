//! Progress of a long run (an export, an import, a verify, a rebuild), on stderr: a bar with the rate and the
//! time left on a terminal, a plain line every few seconds otherwise (a log, a CI job).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// How often the plain form prints a line.
const PLAIN_EVERY: Duration = Duration::from_secs(5);

/// A run's progress, in events.
pub struct Progress {
    label: &'static str,
    form: Form,
}

enum Form {
    Bar(indicatif::ProgressBar),
    Plain { started: Instant, last: Instant, done: u64, total: u64 },
}

impl Progress {
    /// Progress of `label` over `total` events, in the form stderr calls for.
    pub fn new(label: &'static str, total: u64) -> Self {
        let form = if std::io::stderr().is_terminal() {
            let bar = indicatif::ProgressBar::new(total);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{prefix} [{bar:32}] {human_pos}/{human_len} events, {per_sec}, {eta} left",
                )
                .expect("a valid template")
                .progress_chars("=> "),
            );
            bar.set_prefix(label);
            Form::Bar(bar)
        } else {
            let now = Instant::now();
            Form::Plain { started: now, last: now, done: 0, total }
        };
        Self { label, form }
    }

    /// `done` of `total` events are done (the total may grow: a live log).
    pub fn update(&mut self, done: u64, total: u64) {
        match &mut self.form {
            Form::Bar(bar) => {
                bar.set_length(total.max(done));
                bar.set_position(done);
            }
            Form::Plain { started, last, done: d, total: t } => {
                (*d, *t) = (done, total.max(done));
                if last.elapsed() >= PLAIN_EVERY {
                    *last = Instant::now();
                    eprintln!("{}", plain_line(self.label, done, total.max(done), started.elapsed()));
                }
            }
        }
    }

    /// The run is over: the bar is cleared, the plain form prints its last line.
    pub fn finish(self) {
        match self.form {
            Form::Bar(bar) => bar.finish_and_clear(),
            Form::Plain { started, done, total, .. } => {
                eprintln!("{}", plain_line(self.label, done, total, started.elapsed()));
            }
        }
    }
}

fn plain_line(label: &str, done: u64, total: u64, elapsed: Duration) -> String {
    let rate = done as f64 / elapsed.as_secs_f64().max(1e-3);
    let percent = if total == 0 { 100.0 } else { done as f64 * 100.0 / total as f64 };
    let left = if rate > 0.0 { (total - done.min(total)) as f64 / rate } else { 0.0 };
    format!("{label}: {done}/{total} events ({percent:.0}%), {rate:.0} events/s, {left:.0} s left")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_line_has_the_count_the_rate_and_the_time_left() {
        assert_eq!(
            plain_line("export", 500, 2000, Duration::from_secs(1)),
            "export: 500/2000 events (25%), 500 events/s, 3 s left"
        );
        assert_eq!(plain_line("verify", 0, 0, Duration::ZERO), "verify: 0/0 events (100%), 0 events/s, 0 s left");
    }
}
