//! Errors as people read them: a condition, an event, a 422, a log line.
//! Error types keep their cause as `source()`, not in their message, so the
//! whole story is told once, here.

/// An error and its causes, one after the other, for a message a user reads
/// (a condition, an event, a 422).
pub fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        text.push_str(": ");
        text.push_str(&e.to_string());
        cause = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    #[derive(Debug, thiserror::Error)]
    #[error("cannot prepare the disks")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn each_cause_is_told_once_in_order() {
        let e = Outer(std::io::Error::new(std::io::ErrorKind::NotFound, "disk.img: gone"));
        assert_eq!(crate::errors::with_causes(&e), "cannot prepare the disks: disk.img: gone");
    }
}
