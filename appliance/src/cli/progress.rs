//! Progress for long operations: a spinner with the current step on a terminal, plain
//! lines otherwise (logs, pipes, CI), and a summary at the end either way.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

pub struct Progress {
    bar: Option<ProgressBar>,
    started: Instant,
}

impl Progress {
    pub fn start(what: &str) -> Self {
        let bar = std::io::stdout().is_terminal().then(|| {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template("{spinner} [{elapsed}] {msg}")
                    .expect("a valid template"),
            );
            bar.enable_steady_tick(Duration::from_millis(120));
            bar.set_message(what.to_owned());
            bar
        });
        if bar.is_none() {
            println!("{what}");
        }
        Self {
            bar,
            started: Instant::now(),
        }
    }

    /// One step done: kept above the spinner, or printed as a line.
    pub fn step(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(format!("  {line}")),
            None => println!("  {line}"),
        }
    }

    pub fn finish(&self, summary: &str) {
        let line = format!("{summary} ({:.1}s)", self.started.elapsed().as_secs_f64());
        match &self.bar {
            Some(bar) => bar.finish_with_message(line),
            None => println!("{line}"),
        }
    }

    pub fn abandon(&self) {
        if let Some(bar) = &self.bar {
            bar.abandon();
        }
    }
}
