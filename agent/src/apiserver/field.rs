//! apimachinery's field errors (`k8s.io/apimachinery/pkg/util/validation/field`)
//! as (field, `ErrorBody()`) pairs, worded as kube-apiserver words them:
//! `Required value`, `Invalid value: "x": why`, `Unsupported value: "x":
//! supported values: "a", "b"`, `Duplicate value: "x"`, `Forbidden: why`,
//! `Too many: 101: must have at most 100 items`.

use super::validation::{go_quote, FieldError};

/// A bad value as Go's `%v` / `%q` / `%#v` prints it in `Invalid value: ...`.
pub enum Shown<'a> {
    Text(&'a str),
    Number(i64),
    /// A `[]string`, printed `[]string{"a", "b"}` (`[]string(nil)` when empty).
    Strings(&'a [String]),
    /// Printed as given (a Go struct's `%#v`).
    Raw(&'a str),
}

impl Shown<'_> {
    fn render(&self) -> String {
        match self {
            Shown::Text(text) => go_quote(text),
            Shown::Number(number) => number.to_string(),
            Shown::Strings([]) => "[]string(nil)".into(),
            Shown::Strings(items) => {
                let quoted: Vec<String> = items.iter().map(|s| go_quote(s)).collect();
                format!("[]string{{{}}}", quoted.join(", "))
            }
            Shown::Raw(raw) => raw.to_string(),
        }
    }
}

pub fn required(field: &str, detail: &str) -> FieldError {
    let body = if detail.is_empty() { "Required value".to_string() } else { format!("Required value: {detail}") };
    (field.to_string(), body)
}

pub fn invalid(field: &str, value: Shown<'_>, detail: &str) -> FieldError {
    (field.to_string(), format!("Invalid value: {}: {detail}", value.render()))
}

pub fn unsupported(field: &str, value: &str, supported: &[&str]) -> FieldError {
    let supported: Vec<String> = supported.iter().map(|s| go_quote(s)).collect();
    (field.to_string(), format!("Unsupported value: {}: supported values: {}", go_quote(value), supported.join(", ")))
}

pub fn duplicate(field: &str, value: Shown<'_>) -> FieldError {
    (field.to_string(), format!("Duplicate value: {}", value.render()))
}

pub fn forbidden(field: &str, detail: &str) -> FieldError {
    (field.to_string(), format!("Forbidden: {detail}"))
}

pub fn too_many(field: &str, actual: usize, max: usize) -> FieldError {
    (field.to_string(), format!("Too many: {actual}: must have at most {max} items"))
}

/// apimachinery's `IsValidPortNum` message.
pub const PORT_RANGE: &str = "must be between 1 and 65535, inclusive";

/// apimachinery's `IsValidIP` message.
pub const NOT_AN_IP: &str = "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)";

pub fn valid_port(number: i64) -> bool {
    (1..=65535).contains(&number)
}

/// apimachinery's `IsValidPortName`: an IANA service name (at most 15
/// characters, lower case letters, digits and single inner hyphens, at
/// least one letter).
pub fn port_name(name: &str) -> Vec<&'static str> {
    let mut errors = Vec::new();
    if name.len() > 15 {
        errors.push("must be no more than 15 characters");
    }
    if name.is_empty() || !name.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-') {
        errors.push("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)");
    } else if !name.bytes().any(|c| c.is_ascii_lowercase()) {
        errors.push("must contain at least one letter (a-z)");
    }
    if name.contains("--") {
        errors.push("must not contain consecutive hyphens (-)");
    }
    if name.starts_with('-') || name.ends_with('-') {
        errors.push("must not begin or end with a hyphen (-)");
    }
    errors
}

/// Kubernetes' `ValidateNonSpecialIP`: addresses traffic must not be sent to.
pub fn special_ip(field: &str, address: std::net::IpAddr) -> Vec<FieldError> {
    let text = address.to_string();
    let shown = || Shown::Text(&text);
    let mut errors = Vec::new();
    if address.is_unspecified() {
        errors.push(invalid(field, shown(), &format!("may not be unspecified ({text})")));
    }
    if address.is_loopback() {
        errors.push(invalid(field, shown(), "may not be in the loopback range (127.0.0.0/8, ::1/128)"));
    }
    let link_local = match address {
        std::net::IpAddr::V4(v4) => v4.is_link_local(),
        std::net::IpAddr::V6(v6) => v6.segments()[0] & 0xffc0 == 0xfe80,
    };
    if link_local {
        errors.push(invalid(field, shown(), "may not be in the link-local range (169.254.0.0/16, fe80::/10)"));
    }
    let link_local_multicast = match address {
        std::net::IpAddr::V4(v4) => v4.octets()[..3] == [224, 0, 0],
        std::net::IpAddr::V6(v6) => v6.segments()[0] & 0xff0f == 0xff02,
    };
    if link_local_multicast {
        errors.push(invalid(field, shown(), "may not be in the link-local multicast range (224.0.0.0/24, ff02::/10)"));
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_worded_as_apimachinery() {
        assert_eq!(required("spec.ports", "").1, "Required value");
        assert_eq!(
            invalid("f", Shown::Number(0), PORT_RANGE).1,
            "Invalid value: 0: must be between 1 and 65535, inclusive"
        );
        let ips = ["1.2.3.4".to_string()];
        assert_eq!(invalid("f", Shown::Strings(&ips), "x").1, "Invalid value: []string{\"1.2.3.4\"}: x");
        assert_eq!(invalid("f", Shown::Strings(&[]), "x").1, "Invalid value: []string(nil): x");
        assert_eq!(
            unsupported("f", "ICMP", &["SCTP", "TCP", "UDP"]).1,
            "Unsupported value: \"ICMP\": supported values: \"SCTP\", \"TCP\", \"UDP\""
        );
        assert_eq!(duplicate("f", Shown::Text("x")).1, "Duplicate value: \"x\"");
        assert_eq!(too_many("f", 101, 100).1, "Too many: 101: must have at most 100 items");
    }

    #[test]
    fn iana_port_names() {
        assert!(port_name("http").is_empty());
        assert!(port_name("h2c-8080").is_empty());
        assert_eq!(port_name("8080"), ["must contain at least one letter (a-z)"]);
        assert_eq!(port_name("a-very-long-port-name"), ["must be no more than 15 characters"]);
        assert_eq!(port_name("HTTP"), ["must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)"]);
        assert_eq!(port_name("a--b"), ["must not contain consecutive hyphens (-)"]);
        assert_eq!(port_name("-a"), ["must not begin or end with a hyphen (-)"]);
    }
}
