//! Progress of long uploads, installs and builds: a bar on standard error when it is a terminal
//! (an operator at `ssh device sideline update apply - < bundle` sees it move), plain log lines
//! otherwise (a journal or a CI log gets a line per file and per tenth, not a stream of `\r`).

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

const REDRAW: Duration = Duration::from_millis(100);
const WIDTH: usize = 30;

pub struct Progress {
    label: String,
    total: u64,
    done: u64,
    mode: Mode,
    started: Instant,
    last_draw: Option<Instant>,
    /// Next tenth to log in line mode.
    next_tenth: u64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Bar,
    Lines,
    Quiet,
}

impl Progress {
    /// `total`: bytes expected.
    pub fn new(label: impl Into<String>, total: u64) -> Self {
        let mode = if std::io::stderr().is_terminal() { Mode::Bar } else { Mode::Lines };
        Self::with_mode(label.into(), total, mode)
    }

    /// Reports nothing (tests, nested work).
    pub fn quiet() -> Self {
        Self::with_mode(String::new(), 0, Mode::Quiet)
    }

    fn with_mode(label: String, total: u64, mode: Mode) -> Self {
        Self { label, total, done: 0, mode, started: Instant::now(), last_draw: None, next_tenth: 1 }
    }

    pub fn advance(&mut self, n: u64) {
        self.done += n;
        match self.mode {
            Mode::Bar => {
                if self.last_draw.is_none_or(|t| t.elapsed() >= REDRAW) {
                    self.draw();
                }
            }
            Mode::Lines => {
                while self.total > 0 && self.next_tenth < 10 && self.done * 10 >= self.total * self.next_tenth
                {
                    tracing::info!("{}: {}0% ({})", self.label, self.next_tenth, self.amount());
                    self.next_tenth += 1;
                }
            }
            Mode::Quiet => {}
        }
    }

    pub fn file_done(&mut self, path: &str, size: u64) {
        if self.mode == Mode::Lines {
            tracing::info!("{}: {path} ({}) verified", self.label, mb(size));
        }
    }

    /// Ends the bar's line (or logs the total).
    pub fn finish(&mut self) {
        match self.mode {
            Mode::Bar => {
                self.draw();
                eprintln!();
            }
            Mode::Lines => tracing::info!("{}: done, {} in {:.1} s", self.label, mb(self.done), self.secs()),
            Mode::Quiet => {}
        }
        self.mode = Mode::Quiet;
    }

    fn secs(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    fn amount(&self) -> String {
        format!("{} of {}", mb(self.done), mb(self.total))
    }

    fn draw(&mut self) {
        self.last_draw = Some(Instant::now());
        let share = if self.total == 0 { 1.0 } else { (self.done as f64 / self.total as f64).min(1.0) };
        let filled = (share * WIDTH as f64) as usize;
        let rate = self.done as f64 / self.secs().max(1e-3);
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r{} [{}{}] {:3.0}% {} {}/s ",
            self.label,
            "#".repeat(filled),
            " ".repeat(WIDTH - filled),
            share * 100.0,
            self.amount(),
            mb(rate as u64)
        );
        let _ = err.flush();
    }
}

fn mb(bytes: u64) -> String {
    if bytes >= 1 << 20 {
        format!("{:.1} MB", bytes as f64 / 1e6)
    } else {
        format!("{:.1} kB", bytes as f64 / 1e3)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_mode_logs_each_tenth_once() {
        let mut p = Progress::with_mode("x".into(), 1000, Mode::Lines);
        p.advance(250);
        assert_eq!(p.next_tenth, 3);
        p.advance(750);
        assert_eq!(p.next_tenth, 10);
        p.advance(10);
        assert_eq!(p.next_tenth, 10);
    }
}
