//! `/openapi/v2` in the only form kubectl 1.27 and 1.28 read: a protobuf
//! `openapi.v2.Document` (gnostic's `OpenAPIv2.proto`).
//!
//! Those kubectl versions fetch it before every `create`/`apply`/`patch` and
//! look, for the object's group/version/kind, for a PATCH operation that takes
//! the `fieldValidation` query parameter. Finding it, they leave validation to
//! the server (`fieldValidation=Strict`), which rejects unknown fields with
//! their paths just as for newer kubectl that read OpenAPI v3. So the
//! document carries exactly that: one path per served resource with its
//! operations, each tagged with `x-kubernetes-group-version-kind` and taking
//! `fieldValidation`. It has no definitions, so kubectl's client-side schema
//! validation finds nothing to check and defers to the server.
//!
//! The encoding is written by hand (a few length-delimited fields) rather
//! than pulling in a protobuf code generator for one read-only document.

use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::resources::{Resource, RESOURCES};

/// What kube-openapi answers with: kubectl asks for `...spec.v2@v1.0+protobuf`,
/// but Go's media-type parser rejects the `@` in a response's Content-Type.
pub const CONTENT_TYPE: &str = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf";

/// Field numbers of the gnostic messages used here.
mod field {
    pub const DOCUMENT_SWAGGER: u32 = 1;
    pub const DOCUMENT_INFO: u32 = 2;
    pub const DOCUMENT_PATHS: u32 = 8;
    pub const INFO_TITLE: u32 = 1;
    pub const INFO_VERSION: u32 = 2;
    pub const PATHS_PATH: u32 = 2;
    pub const NAMED_NAME: u32 = 1;
    pub const NAMED_VALUE: u32 = 2;
    pub const PATH_ITEM_PUT: u32 = 3;
    pub const PATH_ITEM_POST: u32 = 4;
    pub const PATH_ITEM_PATCH: u32 = 8;
    pub const OPERATION_ID: u32 = 5;
    pub const OPERATION_PARAMETERS: u32 = 8;
    pub const OPERATION_VENDOR_EXTENSION: u32 = 13;
    pub const PARAMETERS_ITEM_PARAMETER: u32 = 1;
    pub const PARAMETER_NON_BODY: u32 = 2;
    pub const NON_BODY_QUERY: u32 = 3;
    pub const QUERY_IN: u32 = 2;
    pub const QUERY_NAME: u32 = 4;
    pub const QUERY_TYPE: u32 = 6;
    pub const ANY_YAML: u32 = 2;
}

/// Appends a base-128 varint.
fn varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Appends a length-delimited field (wire type 2): strings and messages.
fn bytes_field(out: &mut Vec<u8>, number: u32, bytes: &[u8]) {
    varint(out, (u64::from(number) << 3) | 2);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn message(fields: &[(u32, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (number, bytes) in fields {
        bytes_field(&mut out, *number, bytes);
    }
    out
}

fn text(value: &str) -> Vec<u8> {
    value.as_bytes().to_vec()
}

/// `ParametersItem` for the `fieldValidation` query parameter.
fn field_validation_parameter() -> Vec<u8> {
    let query = message(&[
        (field::QUERY_IN, text("query")),
        (field::QUERY_NAME, text("fieldValidation")),
        (field::QUERY_TYPE, text("string")),
    ]);
    let non_body = message(&[(field::NON_BODY_QUERY, query)]);
    let parameter = message(&[(field::PARAMETER_NON_BODY, non_body)]);
    message(&[(field::PARAMETERS_ITEM_PARAMETER, parameter)])
}

/// `NamedAny` `x-kubernetes-group-version-kind` with the YAML kubectl parses.
fn gvk_extension(resource: &Resource) -> Vec<u8> {
    let yaml = format!("group: \"{}\"\nkind: {}\nversion: {}\n", resource.group, resource.kind, resource.version);
    let any = message(&[(field::ANY_YAML, text(&yaml))]);
    message(&[(field::NAMED_NAME, text("x-kubernetes-group-version-kind")), (field::NAMED_VALUE, any)])
}

fn operation(id: String, resource: &Resource) -> Vec<u8> {
    message(&[
        (field::OPERATION_ID, text(&id)),
        (field::OPERATION_PARAMETERS, field_validation_parameter()),
        (field::OPERATION_VENDOR_EXTENSION, gvk_extension(resource)),
    ])
}

fn named_path(name: String, item: Vec<u8>) -> Vec<u8> {
    message(&[(field::NAMED_NAME, text(&name)), (field::NAMED_VALUE, item)])
}

/// The collection and item paths of one resource, as Kubernetes names them.
fn resource_paths(resource: &Resource) -> Vec<Vec<u8>> {
    let prefix = if resource.group.is_empty() {
        format!("/api/{}", resource.version)
    } else {
        format!("/apis/{}/{}", resource.group, resource.version)
    };
    let scope = if resource.namespaced { "/namespaces/{namespace}" } else { "" };
    let collection = format!("{prefix}{scope}/{}", resource.plural);
    let item = format!("{collection}/{{name}}");
    let id = |verb: &str| format!("{verb}{}", resource.kind);
    vec![
        named_path(collection, message(&[(field::PATH_ITEM_POST, operation(id("create"), resource))])),
        named_path(
            item,
            message(&[
                (field::PATH_ITEM_PUT, operation(id("replace"), resource)),
                (field::PATH_ITEM_PATCH, operation(id("patch"), resource)),
            ]),
        ),
    ]
}

/// The encoded `openapi.v2.Document`.
pub fn document() -> Vec<u8> {
    let info = message(&[(field::INFO_TITLE, text("kvmlet")), (field::INFO_VERSION, text("v1.33.0"))]);
    let paths: Vec<(u32, Vec<u8>)> =
        RESOURCES.iter().flat_map(resource_paths).map(|path| (field::PATHS_PATH, path)).collect();
    message(&[
        (field::DOCUMENT_SWAGGER, text("2.0")),
        (field::DOCUMENT_INFO, info),
        (field::DOCUMENT_PATHS, message(&paths)),
    ])
}

pub async fn serve() -> Response {
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], document()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads one length-delimited field at `at`: (field number, payload, next offset).
    fn read_field(bytes: &[u8], at: usize) -> (u32, &[u8], usize) {
        let (key, at) = read_varint(bytes, at);
        assert_eq!(key & 7, 2, "only length-delimited fields are written");
        let (len, at) = read_varint(bytes, at);
        let end = at + len as usize;
        ((key >> 3) as u32, &bytes[at..end], end)
    }

    fn read_varint(bytes: &[u8], mut at: usize) -> (u64, usize) {
        let (mut value, mut shift) = (0u64, 0);
        loop {
            let byte = bytes[at];
            at += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return (value, at);
            }
            shift += 7;
        }
    }

    fn fields(bytes: &[u8]) -> Vec<(u32, &[u8])> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let (number, payload, next) = read_field(bytes, at);
            out.push((number, payload));
            at = next;
        }
        out
    }

    #[test]
    fn varints_use_seven_bits_per_byte() {
        let mut out = Vec::new();
        varint(&mut out, 300);
        assert_eq!(out, [0xac, 0x02]);
        assert_eq!(read_varint(&out, 0), (300, 2));
    }

    #[test]
    fn every_resource_has_a_patch_operation_taking_field_validation() {
        let document = document();
        let top = fields(&document);
        assert_eq!(top[0], (1, b"2.0".as_slice()));
        let paths = top.iter().find(|(n, _)| *n == field::DOCUMENT_PATHS).unwrap().1;
        let mut patched_kinds = Vec::new();
        for (_, named) in fields(paths) {
            let named = fields(named);
            let name = std::str::from_utf8(named[0].1).unwrap();
            for (verb, operation) in fields(named[1].1) {
                if verb != field::PATH_ITEM_PATCH {
                    continue;
                }
                assert!(name.ends_with("/{name}"), "{name}");
                let operation = fields(operation);
                let parameter = operation.iter().find(|(n, _)| *n == field::OPERATION_PARAMETERS).unwrap().1;
                assert!(parameter.windows(15).any(|w| w == b"fieldValidation"));
                let extension = operation.iter().find(|(n, _)| *n == field::OPERATION_VENDOR_EXTENSION).unwrap().1;
                let yaml = fields(fields(extension)[1].1)[0].1;
                patched_kinds.push(std::str::from_utf8(yaml).unwrap().to_string());
            }
        }
        assert_eq!(patched_kinds.len(), RESOURCES.len());
        assert!(patched_kinds.contains(&"group: \"kubevirt.io\"\nkind: VirtualMachine\nversion: v1\n".to_string()));
    }
}
