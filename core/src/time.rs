//! Timestamps as Kubernetes writes them (RFC 3339, seconds) and ages as kubectl prints them.

use jiff::Timestamp;

/// Now, truncated to whole seconds, in RFC 3339 (`2024-01-02T03:04:05Z`).
pub fn now_rfc3339() -> String {
    let now = Timestamp::now();
    match Timestamp::from_second(now.as_second()) {
        Ok(t) => t.to_string(),
        Err(_) => now.to_string(),
    }
}

/// kubectl's `HumanDuration`: `5s`, `3m20s`, `2h5m`, `4d`, `2y30d`.
pub fn human_duration(secs: i64) -> String {
    if secs < 0 {
        return "<invalid>".into();
    }
    let s = secs;
    if s < 60 * 2 {
        return format!("{s}s");
    }
    let m = s / 60;
    if m < 10 {
        let rem = s % 60;
        return if rem == 0 {
            format!("{m}m")
        } else {
            format!("{m}m{rem}s")
        };
    }
    if m < 60 * 3 {
        return format!("{m}m");
    }
    let h = m / 60;
    if h < 8 {
        let rem = m % 60;
        return if rem == 0 {
            format!("{h}h")
        } else {
            format!("{h}h{rem}m")
        };
    }
    if h < 48 {
        return format!("{h}h");
    }
    if h < 24 * 8 {
        let d = h / 24;
        let rem = h % 24;
        return if rem == 0 {
            format!("{d}d")
        } else {
            format!("{d}d{rem}h")
        };
    }
    if h < 24 * 365 * 2 {
        return format!("{}d", h / 24);
    }
    if h < 24 * 365 * 8 {
        let y = h / (24 * 365);
        let d = (h / 24) % 365;
        return if d == 0 {
            format!("{y}y")
        } else {
            format!("{y}y{d}d")
        };
    }
    format!("{}y", h / (24 * 365))
}

/// Age of an RFC 3339 timestamp as kubectl prints it; `<unknown>` if absent or unparsable.
pub fn age(ts: &str) -> String {
    match ts.parse::<Timestamp>() {
        Ok(t) => human_duration(Timestamp::now().as_second() - t.as_second()),
        Err(_) => "<unknown>".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_like_kubectl() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(119), "119s");
        assert_eq!(human_duration(200), "3m20s");
        assert_eq!(human_duration(600), "10m");
        assert_eq!(human_duration(3 * 3600 + 5 * 60), "3h5m");
        assert_eq!(human_duration(20 * 3600), "20h");
        assert_eq!(human_duration(3 * 86400 + 3600), "3d1h");
        assert_eq!(human_duration(30 * 86400), "30d");
    }

    #[test]
    fn rfc3339_now_parses() {
        let s = now_rfc3339();
        assert!(s.ends_with('Z'));
        assert!(s.parse::<Timestamp>().is_ok());
        assert_eq!(age(&s).chars().last(), Some('s'));
    }
}
