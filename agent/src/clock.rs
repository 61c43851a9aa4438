//! Kubernetes timestamps: RFC 3339 in UTC to the second, as the API server
//! writes `creationTimestamp` (jiff, the clock k8s-openapi uses).

use k8s_openapi::jiff::Timestamp;

/// Now, e.g. `2026-12-04T17:15:12Z`.
pub fn now_rfc3339() -> String {
    let now = Timestamp::now();
    Timestamp::from_second(now.as_second()).unwrap_or(now).to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn whole_seconds_in_utc() {
        let now = super::now_rfc3339();
        assert_eq!(now.len(), "2026-12-04T17:15:12Z".len(), "{now}");
        assert!(now.ends_with('Z'), "{now}");
    }
}
