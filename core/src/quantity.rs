//! Kubernetes resource quantities (`128Mi`, `1.5G`, `250m`, `1e3`): parsed to bytes or to
//! millicores, rounding up as the API server does for integer views.

fn split(q: &str) -> Option<(f64, f64)> {
    let q = q.trim();
    if q.is_empty() {
        return None;
    }
    let (num, mult): (&str, f64) = if let Some(n) = q.strip_suffix("Ki") {
        (n, 1024f64)
    } else if let Some(n) = q.strip_suffix("Mi") {
        (n, 1024f64.powi(2))
    } else if let Some(n) = q.strip_suffix("Gi") {
        (n, 1024f64.powi(3))
    } else if let Some(n) = q.strip_suffix("Ti") {
        (n, 1024f64.powi(4))
    } else if let Some(n) = q.strip_suffix("Pi") {
        (n, 1024f64.powi(5))
    } else if let Some(n) = q.strip_suffix("Ei") {
        (n, 1024f64.powi(6))
    } else if let Some(n) = q.strip_suffix('n') {
        (n, 1e-9)
    } else if let Some(n) = q.strip_suffix('u') {
        (n, 1e-6)
    } else if let Some(n) = q.strip_suffix('m') {
        (n, 1e-3)
    } else if let Some(n) = q.strip_suffix('k') {
        (n, 1e3)
    } else if let Some(n) = q.strip_suffix('M') {
        (n, 1e6)
    } else if let Some(n) = q.strip_suffix('G') {
        (n, 1e9)
    } else if let Some(n) = q.strip_suffix('T') {
        (n, 1e12)
    } else if let Some(n) = q.strip_suffix('P') {
        (n, 1e15)
    } else if let Some(n) = q.strip_suffix('E') {
        (n, 1e18)
    } else {
        (q, 1.0)
    };
    let v: f64 = num.parse().ok()?;
    if !v.is_finite() || v < 0.0 {
        return None;
    }
    Some((v, mult))
}

/// A quantity as a whole number of units (bytes), rounded up.
pub fn parse_bytes(q: &str) -> Option<i64> {
    let (v, m) = split(q)?;
    Some((v * m).ceil() as i64)
}

/// A CPU quantity in millicores, rounded up (`1` → 1000, `250m` → 250).
pub fn parse_millicores(q: &str) -> Option<i64> {
    let (v, m) = split(q)?;
    Some((v * m * 1000.0).ceil() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        assert_eq!(parse_bytes("128Mi"), Some(128 * 1024 * 1024));
        assert_eq!(parse_bytes("1G"), Some(1_000_000_000));
        assert_eq!(parse_bytes("1.5Ki"), Some(1536));
        assert_eq!(parse_bytes("1e3"), Some(1000));
        assert_eq!(parse_bytes("100"), Some(100));
        assert_eq!(parse_millicores("250m"), Some(250));
        assert_eq!(parse_millicores("2"), Some(2000));
        assert_eq!(parse_millicores("0.5"), Some(500));
        assert_eq!(parse_bytes("abc"), None);
        assert_eq!(parse_bytes("-1"), None);
        assert_eq!(parse_bytes(""), None);
    }
}
