//! Kubernetes object metadata validation, with k8s.io/apimachinery's rules
//! and messages (`pkg/util/validation`, `pkg/api/validation/objectmeta.go`):
//! names are DNS-1123 subdomains (namespaces DNS-1123 labels, services
//! DNS-1035 labels), label keys qualified names, label values at most 63
//! characters, annotation keys qualified names and all annotations together
//! at most 256 KiB.

use serde_json::Value;

use super::resources::Resource;

const DNS1123_LABEL_FMT: &str = "[a-z0-9]([-a-z0-9]*[a-z0-9])?";
const DNS1123_LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character";
const DNS1123_LABEL_MAX: usize = 63;
const DNS1123_SUBDOMAIN_FMT: &str = "[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*";
const DNS1123_SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character";
const DNS1123_SUBDOMAIN_MAX: usize = 253;
const DNS1035_LABEL_FMT: &str = "[a-z]([-a-z0-9]*[a-z0-9])?";
const DNS1035_LABEL_MSG: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character";
const QUALIFIED_NAME_FMT: &str = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]";
const QUALIFIED_NAME_MSG: &str =
    "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";
const QUALIFIED_NAME_MAX: usize = 63;
const LABEL_VALUE_FMT: &str = "(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?";
const LABEL_VALUE_MSG: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";
const LABEL_VALUE_MAX: usize = 63;
/// All annotations of one object, keys and values (apimachinery's TotalAnnotationSizeLimitB).
pub const TOTAL_ANNOTATION_SIZE_LIMIT: usize = 256 * 1024;

/// One field error: the field and apimachinery's `ErrorBody()` (e.g.
/// `Invalid value: "Bad_Name": a lowercase RFC 1123 subdomain ...`).
pub type FieldError = (String, String);

fn max_len_error(length: usize) -> String {
    format!("must be no more than {length} characters")
}

fn regex_error(message: &str, format: &str, examples: &[&str]) -> String {
    let examples: Vec<String> = examples.iter().map(|e| format!("'{e}', ")).collect();
    format!("{message} (e.g. {}regex used for validation is '{format}')", examples.join(" or "))
}

fn alphanumeric(c: u8) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

fn is_dns1123_label_syntax(value: &str) -> bool {
    let bytes = value.as_bytes();
    match (bytes.first(), bytes.last()) {
        (Some(&first), Some(&last)) => {
            alphanumeric(first) && alphanumeric(last) && bytes.iter().all(|&c| alphanumeric(c) || c == b'-')
        }
        _ => false,
    }
}

fn is_dns1123_subdomain_syntax(value: &str) -> bool {
    value.split('.').all(is_dns1123_label_syntax)
}

fn is_dns1035_label_syntax(value: &str) -> bool {
    is_dns1123_label_syntax(value) && value.as_bytes()[0].is_ascii_lowercase()
}

fn is_qualified_name_syntax(value: &str) -> bool {
    let ends = |c: u8| c.is_ascii_alphanumeric();
    let bytes = value.as_bytes();
    match (bytes.first(), bytes.last()) {
        (Some(&first), Some(&last)) => {
            ends(first) && ends(last) && bytes.iter().all(|&c| ends(c) || matches!(c, b'-' | b'_' | b'.'))
        }
        _ => false,
    }
}

/// apimachinery's `IsDNS1123Label`.
pub fn dns1123_label(value: &str) -> Vec<String> {
    let mut errors = Vec::new();
    if value.len() > DNS1123_LABEL_MAX {
        errors.push(max_len_error(DNS1123_LABEL_MAX));
    }
    if !is_dns1123_label_syntax(value) {
        if is_dns1123_subdomain_syntax(value) {
            errors.push("must not contain dots".to_string());
        } else {
            errors.push(regex_error(DNS1123_LABEL_MSG, DNS1123_LABEL_FMT, &["my-name", "123-abc"]));
        }
    }
    errors
}

/// apimachinery's `IsDNS1123Subdomain`.
pub fn dns1123_subdomain(value: &str) -> Vec<String> {
    let mut errors = Vec::new();
    if value.len() > DNS1123_SUBDOMAIN_MAX {
        errors.push(max_len_error(DNS1123_SUBDOMAIN_MAX));
    }
    if !is_dns1123_subdomain_syntax(value) {
        errors.push(regex_error(DNS1123_SUBDOMAIN_MSG, DNS1123_SUBDOMAIN_FMT, &["example.com"]));
    }
    errors
}

/// apimachinery's `IsDNS1035Label`.
pub fn dns1035_label(value: &str) -> Vec<String> {
    let mut errors = Vec::new();
    if value.len() > DNS1123_LABEL_MAX {
        errors.push(max_len_error(DNS1123_LABEL_MAX));
    }
    if !is_dns1035_label_syntax(value) {
        errors.push(regex_error(DNS1035_LABEL_MSG, DNS1035_LABEL_FMT, &["my-name", "abc-123"]));
    }
    errors
}

/// apimachinery's `IsQualifiedName`: `[prefix/]name`, the prefix a DNS-1123
/// subdomain, the name at most 63 characters.
pub fn qualified_name(value: &str) -> Vec<String> {
    let mut errors = Vec::new();
    let parts: Vec<&str> = value.split('/').collect();
    let name = match parts.as_slice() {
        [name] => *name,
        [prefix, name] => {
            if prefix.is_empty() {
                errors.push("prefix part must be non-empty".to_string());
            } else {
                errors.extend(dns1123_subdomain(prefix).into_iter().map(|m| format!("prefix part {m}")));
            }
            *name
        }
        _ => {
            errors.push(format!(
                "a qualified name {} with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')",
                regex_error(QUALIFIED_NAME_MSG, QUALIFIED_NAME_FMT, &["MyName", "my.name", "123-abc"])
            ));
            return errors;
        }
    };
    if name.is_empty() {
        errors.push("name part must be non-empty".to_string());
    } else if name.len() > QUALIFIED_NAME_MAX {
        errors.push(format!("name part {}", max_len_error(QUALIFIED_NAME_MAX)));
    }
    if !is_qualified_name_syntax(name) {
        errors.push(format!(
            "name part {}",
            regex_error(QUALIFIED_NAME_MSG, QUALIFIED_NAME_FMT, &["MyName", "my.name", "123-abc"])
        ));
    }
    errors
}

/// apimachinery's `IsValidLabelValue`.
pub fn label_value(value: &str) -> Vec<String> {
    let mut errors = Vec::new();
    if value.len() > LABEL_VALUE_MAX {
        errors.push(max_len_error(LABEL_VALUE_MAX));
    }
    if !value.is_empty() && !is_qualified_name_syntax(value) {
        errors.push(regex_error(LABEL_VALUE_MSG, LABEL_VALUE_FMT, &["MyValue", "my_value", "12345"]));
    }
    errors
}

/// A value as Go's `%q` shows it (the form kube-apiserver's messages use).
pub fn go_quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn invalid(field: &str, value: &str, message: &str) -> FieldError {
    (field.to_string(), format!("Invalid value: {}: {message}", go_quote(value)))
}

/// Which rule a resource's names follow (apimachinery's `ValidateNameFunc`s).
fn name_rule(resource: &Resource) -> fn(&str) -> Vec<String> {
    match (resource.group, resource.plural) {
        ("", "namespaces") => dns1123_label,
        ("", "services") => dns1035_label,
        _ => dns1123_subdomain,
    }
}

/// What is wrong with a name taken from a request path, `None` when it is
/// fine: `.`, `..` and names with `/` or `%` are never valid path segments
/// (apimachinery's `IsValidPathSegmentName`). The name rules themselves are
/// not applied here, so objects stored under names those rules refuse stay
/// reachable (read, finalizers removed, deleted).
pub fn path_name(name: &str) -> Option<String> {
    if name == "." || name == ".." {
        return Some(format!("may not be '{name}'"));
    }
    for forbidden in ["/", "%"] {
        if name.contains(forbidden) {
            return Some(format!("may not contain '{forbidden}'"));
        }
    }
    None
}

/// A generateName prefix is checked as a name whose trailing dash is
/// replaced by a letter (apimachinery's `maskTrailingDash`).
fn mask_trailing_dash(prefix: &str) -> String {
    match prefix.strip_suffix('-') {
        Some(rest) if !rest.is_empty() => format!("{rest}a"),
        _ => prefix.to_string(),
    }
}

fn string_map<'a>(object: &'a Value, field: &str) -> Vec<(&'a str, Option<&'a str>)> {
    object["metadata"][field]
        .as_object()
        .map(|m| m.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect())
        .unwrap_or_default()
}

/// The metadata errors of an object about to be stored, as kube-apiserver's
/// `ValidateObjectMeta` finds them (name, generateName, namespace, labels,
/// annotations), in its order.
pub fn object_meta(resource: &Resource, object: &Value) -> Vec<FieldError> {
    let rule = name_rule(resource);
    let meta = &object["metadata"];
    let mut errors = Vec::new();
    if let Some(prefix) = meta["generateName"].as_str().filter(|p| !p.is_empty()) {
        for message in rule(&mask_trailing_dash(prefix)) {
            errors.push(invalid("metadata.generateName", prefix, &message));
        }
    }
    match meta["name"].as_str().filter(|n| !n.is_empty()) {
        None => errors.push(("metadata.name".into(), "Required value: name or generateName is required".into())),
        Some(name) => {
            for message in rule(name) {
                errors.push(invalid("metadata.name", name, &message));
            }
        }
    }
    if resource.namespaced {
        if let Some(namespace) = meta["namespace"].as_str() {
            for message in dns1123_label(namespace) {
                errors.push(invalid("metadata.namespace", namespace, &message));
            }
        }
    }
    for (key, value) in string_map(object, "labels") {
        for message in qualified_name(key) {
            errors.push(invalid("metadata.labels", key, &message));
        }
        match value {
            Some(value) => {
                for message in label_value(value) {
                    errors.push(invalid("metadata.labels", value, &message));
                }
            }
            None => errors.push(invalid("metadata.labels", key, "label values must be strings")),
        }
    }
    let annotations = string_map(object, "annotations");
    for (key, value) in &annotations {
        for message in qualified_name(&key.to_lowercase()) {
            errors.push(invalid("metadata.annotations", key, &message));
        }
        if value.is_none() {
            errors.push(invalid("metadata.annotations", key, "annotation values must be strings"));
        }
    }
    let size: usize = annotations.iter().map(|(k, v)| k.len() + v.map_or(0, str::len)).sum();
    if size > TOTAL_ANNOTATION_SIZE_LIMIT {
        errors.push((
            "metadata.annotations".into(),
            format!("Too long: may not be more than {TOTAL_ANNOTATION_SIZE_LIMIT} bytes"),
        ));
    }
    errors
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn resource(group: &str, plural: &str) -> &'static Resource {
        let version = "v1";
        Resource::find(group, version, plural).unwrap()
    }

    #[test]
    fn names_follow_apimachinery_with_its_messages() {
        assert!(dns1123_subdomain("vm-cirros.example").is_empty());
        assert_eq!(
            dns1123_subdomain("Bad_Name"),
            ["a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"]
        );
        for bad in ["..", ".", "a/b", "a\0b", "-a", "a-", "a..b", "", "ä"] {
            assert!(!dns1123_subdomain(bad).is_empty(), "{bad:?}");
        }
        let long = "a".repeat(254);
        assert_eq!(dns1123_subdomain(&long), ["must be no more than 253 characters"]);
        assert!(dns1123_subdomain(&"a".repeat(253)).is_empty());
        assert_eq!(dns1123_label("a.b"), ["must not contain dots"]);
        assert!(dns1123_label("Ab")[0].starts_with("a lowercase RFC 1123 label must consist"));
        // apimachinery's double space before "or", as kubectl shows it.
        assert!(dns1123_label("Ab")[0].ends_with(
            "(e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
        ));
        assert!(dns1035_label("1abc")[0].starts_with("a DNS-1035 label"));
        assert!(dns1035_label("abc-1").is_empty());
    }

    #[test]
    fn label_keys_and_values() {
        assert!(qualified_name("kubevirt.io/domain").is_empty());
        assert!(qualified_name("app").is_empty());
        assert_eq!(
            qualified_name("a/b/c!!"),
            ["a qualified name must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]') with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"]
        );
        assert_eq!(qualified_name("/x"), ["prefix part must be non-empty"]);
        assert_eq!(qualified_name(&"x".repeat(64)), ["name part must be no more than 63 characters"]);
        assert!(qualified_name("Bad_Prefix/x")[0].starts_with("prefix part a lowercase RFC 1123 subdomain"));
        assert!(label_value("").is_empty());
        assert!(label_value("My_value.1").is_empty());
        assert_eq!(label_value(&"v".repeat(64)), ["must be no more than 63 characters"]);
        assert_eq!(label_value(&"v".repeat(100_000)).len(), 1);
        assert!(label_value("a b")[0].starts_with("a valid label must be an empty string"));
    }

    #[test]
    fn object_meta_reports_every_field_as_kube_apiserver() {
        let vms = resource("kubevirt.io", "virtualmachines");
        let object = json!({"metadata": {"name": "Bad_Name", "labels": {"a/b/c!!": "ok", "k": "x y"}}});
        let errors = object_meta(vms, &object);
        let fields: Vec<&str> = errors.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(fields, ["metadata.name", "metadata.labels", "metadata.labels"]);
        assert!(
            errors[0].1.starts_with("Invalid value: \"Bad_Name\": a lowercase RFC 1123 subdomain"),
            "{}",
            errors[0].1
        );
        assert!(errors[2].1.starts_with("Invalid value: \"x y\": a valid label"), "{}", errors[2].1);

        let nul = json!({"metadata": {"name": "a\u{0}b"}});
        assert!(object_meta(vms, &nul)[0].1.starts_with("Invalid value: \"a\\x00b\": "));

        let generated = json!({"metadata": {"generateName": "vm-"}});
        assert_eq!(
            object_meta(vms, &generated),
            [("metadata.name".to_string(), "Required value: name or generateName is required".to_string())]
        );
        let bad_prefix = json!({"metadata": {"generateName": "Vm-", "name": "Vm-abcde"}});
        assert_eq!(object_meta(vms, &bad_prefix)[0].0, "metadata.generateName");

        let namespaces = resource("", "namespaces");
        let dotted = json!({"metadata": {"name": "a.b"}});
        assert_eq!(object_meta(namespaces, &dotted)[0].1, "Invalid value: \"a.b\": must not contain dots");
        assert!(object_meta(vms, &dotted).is_empty());

        let big = json!({"metadata": {"name": "a", "annotations": {"x": "y".repeat(TOTAL_ANNOTATION_SIZE_LIMIT)}}});
        assert_eq!(
            object_meta(vms, &big),
            [("metadata.annotations".to_string(), "Too long: may not be more than 262144 bytes".to_string())]
        );
        let case = json!({"metadata": {"name": "a", "annotations": {"Example.COM/Key": "v", "a/b/c": "v"}}});
        assert_eq!(object_meta(vms, &case).len(), 1, "annotation keys are case-insensitive, but still qualified names");
    }

    #[test]
    fn path_names() {
        assert_eq!(path_name("..").as_deref(), Some("may not be '..'"));
        assert_eq!(path_name("a%2Fb").as_deref(), Some("may not contain '%'"));
        assert_eq!(path_name("Legacy_Name"), None, "stored objects with old names stay reachable");
    }
}
