//! Container logs: the CRI-format files the shims write, read back as `kubectl logs` expects
//! (`tailLines`, `sinceSeconds`, `timestamps`, `previous`, `limitBytes`, `follow`).

use std::path::{Path, PathBuf};

/// One CRI log record: `<RFC3339Nano> <stream> <P|F> <message>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record<'a> {
    pub time: &'a str,
    pub stream: &'a str,
    pub partial: bool,
    pub message: &'a str,
}

pub fn parse(line: &str) -> Option<Record<'_>> {
    let mut it = line.splitn(4, ' ');
    let time = it.next()?;
    let stream = it.next()?;
    let tag = it.next()?;
    let message = it.next().unwrap_or("");
    Some(Record {
        time,
        stream,
        partial: tag == "P",
        message,
    })
}

#[derive(Debug, Clone, Default)]
pub struct Options {
    pub tail_lines: Option<usize>,
    pub since_seconds: Option<i64>,
    pub timestamps: bool,
    pub limit_bytes: Option<usize>,
}

/// Renders the records of one log file as the API returns them.
pub fn render(text: &str, o: &Options, now_s: i64) -> String {
    let mut lines: Vec<String> = Vec::new();
    for l in text.lines() {
        let Some(r) = parse(l) else { continue };
        if let Some(s) = o.since_seconds {
            let t = r
                .time
                .parse::<jiff::Timestamp>()
                .map(|t| t.as_second())
                .unwrap_or(0);
            if t < now_s - s {
                continue;
            }
        }
        let end = if r.partial { "" } else { "\n" };
        lines.push(if o.timestamps {
            format!("{} {}{end}", r.time, r.message)
        } else {
            format!("{}{end}", r.message)
        });
    }
    if let Some(n) = o.tail_lines {
        let skip = lines.len().saturating_sub(n);
        lines.drain(..skip);
    }
    let mut out = lines.concat();
    if let Some(l) = o.limit_bytes {
        out.truncate(l);
    }
    out
}

/// The log directory of a pod's container: `<ns>_<name>_<uid>/<container>`, newest pod first.
pub fn container_dir(
    logs_root: &Path,
    ns: &str,
    pod: &str,
    uid: Option<&str>,
    container: &str,
) -> Option<PathBuf> {
    if let Some(uid) = uid {
        let d = logs_root.join(format!("{ns}_{pod}_{uid}")).join(container);
        return d.exists().then_some(d);
    }
    let prefix = format!("{ns}_{pod}_");
    let mut dirs: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(logs_root)
        .ok()?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .filter_map(|e| {
            Some((
                e.metadata().ok()?.modified().ok()?,
                e.path().join(container),
            ))
        })
        .filter(|(_, p)| p.exists())
        .collect();
    dirs.sort();
    dirs.pop().map(|(_, p)| p)
}

/// The log file of the current run of a container, or of its previous (terminated) run: the
/// one before the current if it is running, else the last one.
pub fn log_file(dir: &Path, previous: bool, running: bool) -> Option<PathBuf> {
    let mut runs: Vec<u32> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_string_lossy()
                .strip_suffix(".log")?
                .parse()
                .ok()
        })
        .collect();
    runs.sort_unstable();
    let n = if previous && running {
        runs.len().checked_sub(2).map(|i| runs[i])?
    } else {
        *runs.last()?
    };
    Some(dir.join(format!("{n}.log")))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "2026-01-01T00:00:01.000000001Z stdout F one\n2026-01-01T00:00:02.5Z stderr F two\n2026-01-01T00:00:03Z stdout P thr\n2026-01-01T00:00:03Z stdout F ee\n";

    #[test]
    fn render_options() {
        let now = "2026-01-01T00:00:03Z"
            .parse::<jiff::Timestamp>()
            .unwrap()
            .as_second();
        assert_eq!(render(LOG, &Options::default(), now), "one\ntwo\nthree\n");
        assert_eq!(
            render(
                LOG,
                &Options {
                    tail_lines: Some(1),
                    ..Default::default()
                },
                now
            ),
            "ee\n"
        );
        assert_eq!(
            render(
                LOG,
                &Options {
                    timestamps: true,
                    tail_lines: Some(2),
                    ..Default::default()
                },
                now
            ),
            "2026-01-01T00:00:03Z thr2026-01-01T00:00:03Z ee\n"
        );
        assert_eq!(
            render(
                LOG,
                &Options {
                    since_seconds: Some(1),
                    ..Default::default()
                },
                now
            ),
            "two\nthree\n"
        );
        assert_eq!(
            render(
                LOG,
                &Options {
                    limit_bytes: Some(5),
                    ..Default::default()
                },
                now
            ),
            "one\nt"
        );
    }

    #[test]
    fn files_by_run() {
        let d = tempfile::tempdir().unwrap();
        let c = d.path().join("default_web_u1").join("main");
        std::fs::create_dir_all(&c).unwrap();
        for n in [0, 1, 2] {
            std::fs::write(c.join(format!("{n}.log")), "").unwrap();
        }
        assert_eq!(
            container_dir(d.path(), "default", "web", None, "main"),
            Some(c.clone())
        );
        assert_eq!(log_file(&c, false, true), Some(c.join("2.log")));
        assert_eq!(log_file(&c, true, true), Some(c.join("1.log")));
        assert_eq!(log_file(&c, true, false), Some(c.join("2.log")));
        assert!(container_dir(d.path(), "default", "other", None, "main").is_none());
    }
}
