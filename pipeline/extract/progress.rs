//! Progress bars on stderr (hidden unless asked for).

use crate::ingest::InputFile;

pub(super) struct Progress {
    enabled: bool,
}

impl Progress {
    pub(super) fn new(enabled: bool) -> Self {
        Progress { enabled }
    }

    pub(super) fn bar(&self, input: &InputFile, label: &str) -> indicatif::ProgressBar {
        if !self.enabled {
            return indicatif::ProgressBar::hidden();
        }
        let len = std::fs::metadata(input.path()).map_or(0, |m| m.len());
        let bar = indicatif::ProgressBar::with_draw_target(
            Some(len),
            indicatif::ProgressDrawTarget::stderr(),
        );
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{msg:28} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(label.to_string());
        bar
    }
}
