//! Protobuf request bodies (`application/vnd.kubernetes.protobuf`), which
//! kubectl 1.32 on sends for built-in kinds (`kubectl create namespace`,
//! `kubectl create secret generic`, `kubectl create service`) without
//! falling back to JSON.
//!
//! The body is the `k8s\0` magic and a `runtime.Unknown` {typeMeta
//! {apiVersion = 1, kind = 2} = 1, raw = 2, contentEncoding = 3,
//! contentType = 4}; `raw` is the object in k8s.io/api's generated.proto
//! field numbers. Namespace, Secret and Service (`service`) are decoded
//! (into the JSON the rest of the server works on); any other kind, or a field not decoded here that
//! carries a value, is refused with a Status rather than dropped. Answers
//! are JSON, which kubectl accepts (it sends `Accept:
//! application/vnd.kubernetes.protobuf,application/json`).

use serde_json::{json, Map, Value};

mod service;

/// The media type of protobuf bodies.
pub const MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf";
const MAGIC: &[u8] = b"k8s\0";

/// Why a protobuf body was refused.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum ProtobufError {
    #[error("the protobuf body does not start with the k8s envelope")]
    NoEnvelope,
    #[error("the protobuf body is malformed: {0}")]
    Malformed(&'static str),
    #[error("protobuf bodies of {0} are not supported by this server; send JSON")]
    UnsupportedKind(String),
    #[error("protobuf field {field} of {message} is not supported by this server; send JSON")]
    UnsupportedField { message: &'static str, field: u64 },
    #[error("protobuf content encoding {0:?} is not supported")]
    UnsupportedEncoding(String),
}

/// One field as read from the wire.
enum Wire<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, ProtobufError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = self.bytes.split_first().ok_or(ProtobufError::Malformed("truncated varint"))?;
            self.bytes = rest;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(ProtobufError::Malformed("varint longer than 10 bytes"))
    }

    fn take(&mut self, length: usize) -> Result<&'a [u8], ProtobufError> {
        if length > self.bytes.len() {
            return Err(ProtobufError::Malformed("length beyond the end of the message"));
        }
        let (taken, rest) = self.bytes.split_at(length);
        self.bytes = rest;
        Ok(taken)
    }

    /// The next (field number, value), or `None` at the end.
    fn field(&mut self) -> Result<Option<(u64, Wire<'a>)>, ProtobufError> {
        if self.bytes.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let value = match key & 7 {
            0 => Wire::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Wire::Fixed
            }
            2 => {
                let length = usize::try_from(self.varint()?).map_err(|_| ProtobufError::Malformed("length"))?;
                Wire::Bytes(self.take(length)?)
            }
            5 => {
                self.take(4)?;
                Wire::Fixed
            }
            _ => return Err(ProtobufError::Malformed("unknown wire type")),
        };
        Ok(Some((key >> 3, value)))
    }
}

/// Visits every field of `message`.
fn fields<'a>(
    message: &'a [u8],
    mut visit: impl FnMut(u64, Wire<'a>) -> Result<(), ProtobufError>,
) -> Result<(), ProtobufError> {
    let mut reader = Reader { bytes: message };
    while let Some((number, value)) = reader.field()? {
        visit(number, value)?;
    }
    Ok(())
}

fn bytes<'a>(value: Wire<'a>) -> Result<&'a [u8], ProtobufError> {
    match value {
        Wire::Bytes(bytes) => Ok(bytes),
        _ => Err(ProtobufError::Malformed("expected a length-delimited field")),
    }
}

fn string(value: Wire<'_>) -> Result<String, ProtobufError> {
    String::from_utf8(bytes(value)?.to_vec()).map_err(|_| ProtobufError::Malformed("a string is not UTF-8"))
}

/// Whether a field carries nothing (Go's marshaller writes empty strings,
/// zero numbers and empty messages of optional fields).
fn is_empty(value: &Wire<'_>) -> bool {
    match value {
        Wire::Varint(v) => *v == 0,
        Wire::Bytes(b) => b.is_empty(),
        Wire::Fixed => false,
    }
}

fn unsupported(message: &'static str, field: u64, value: &Wire<'_>) -> Result<(), ProtobufError> {
    if is_empty(value) {
        Ok(())
    } else {
        Err(ProtobufError::UnsupportedField { message, field })
    }
}

/// One `map<string, V>` entry {key = 1, value = 2}.
fn map_entry(entry: &[u8]) -> Result<(String, &[u8]), ProtobufError> {
    let (mut key, mut value) = (String::new(), &[][..]);
    fields(entry, |number, field| {
        match number {
            1 => key = string(field)?,
            2 => value = bytes(field)?,
            _ => {}
        }
        Ok(())
    })?;
    Ok((key, value))
}

fn utf8(bytes: &[u8]) -> Result<String, ProtobufError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| ProtobufError::Malformed("a string is not UTF-8"))
}

/// meta/v1 ObjectMeta: name = 1, generateName = 2, namespace = 3, labels =
/// 11, annotations = 12, finalizers = 14; what the server sets itself (uid,
/// resourceVersion, generation, timestamps) must be empty.
fn object_meta(message: &[u8]) -> Result<Value, ProtobufError> {
    let mut meta = Map::new();
    let (mut labels, mut annotations, mut finalizers) = (Map::new(), Map::new(), Vec::new());
    fields(message, |number, field| {
        match number {
            1 => drop(meta.insert("name".into(), json!(string(field)?))),
            2 => drop(meta.insert("generateName".into(), json!(string(field)?))),
            3 => drop(meta.insert("namespace".into(), json!(string(field)?))),
            11 | 12 => {
                let (key, value) = map_entry(bytes(field)?)?;
                let target = if number == 11 { &mut labels } else { &mut annotations };
                target.insert(key, json!(utf8(value)?));
            }
            14 => finalizers.push(json!(string(field)?)),
            // selfLink, uid, resourceVersion, generation, creationTimestamp, deletionTimestamp
            4..=9 => {}
            other => unsupported("ObjectMeta", other, &field)?,
        }
        Ok(())
    })?;
    meta.retain(|_, v| v.as_str() != Some(""));
    for (key, map) in [("labels", labels), ("annotations", annotations)] {
        if !map.is_empty() {
            meta.insert(key.into(), Value::Object(map));
        }
    }
    if !finalizers.is_empty() {
        meta.insert("finalizers".into(), Value::Array(finalizers));
    }
    Ok(Value::Object(meta))
}

/// core/v1 Namespace: metadata = 1, spec = 2 {finalizers = 1}, status = 3
/// (server-owned: ignored, as the JSON path ignores it on create).
fn namespace(raw: &[u8]) -> Result<Value, ProtobufError> {
    let mut object = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {}});
    fields(raw, |number, field| {
        match number {
            1 => object["metadata"] = object_meta(bytes(field)?)?,
            2 => {
                let mut finalizers = Vec::new();
                fields(bytes(field)?, |n, f| {
                    match n {
                        1 => finalizers.push(json!(string(f)?)),
                        other => unsupported("NamespaceSpec", other, &f)?,
                    }
                    Ok(())
                })?;
                if !finalizers.is_empty() {
                    object["spec"] = json!({"finalizers": finalizers});
                }
            }
            3 => {}
            other => unsupported("Namespace", other, &field)?,
        }
        Ok(())
    })?;
    Ok(object)
}

/// core/v1 Secret: metadata = 1, data = 2 (map<string, bytes>), type = 3,
/// stringData = 4 (map<string, string>), immutable = 5.
fn secret(raw: &[u8]) -> Result<Value, ProtobufError> {
    use base64::Engine;
    let mut object = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {}});
    let (mut data, mut string_data) = (Map::new(), Map::new());
    fields(raw, |number, field| {
        match number {
            1 => object["metadata"] = object_meta(bytes(field)?)?,
            2 => {
                let (key, value) = map_entry(bytes(field)?)?;
                data.insert(key, json!(base64::engine::general_purpose::STANDARD.encode(value)));
            }
            3 => {
                let kind = string(field)?;
                if !kind.is_empty() {
                    object["type"] = json!(kind);
                }
            }
            4 => {
                let (key, value) = map_entry(bytes(field)?)?;
                string_data.insert(key, json!(utf8(value)?));
            }
            5 => {
                if let Wire::Varint(v) = field {
                    object["immutable"] = json!(v != 0);
                }
            }
            other => unsupported("Secret", other, &field)?,
        }
        Ok(())
    })?;
    if !data.is_empty() {
        object["data"] = Value::Object(data);
    }
    if !string_data.is_empty() {
        object["stringData"] = Value::Object(string_data);
    }
    Ok(object)
}

/// The object a protobuf request body carries, as JSON.
pub fn decode(body: &[u8]) -> Result<Value, ProtobufError> {
    let unknown = body.strip_prefix(MAGIC).ok_or(ProtobufError::NoEnvelope)?;
    let (mut api_version, mut kind, mut raw, mut encoding) = (String::new(), String::new(), &[][..], String::new());
    fields(unknown, |number, field| {
        match number {
            1 => fields(bytes(field)?, |n, f| {
                match n {
                    1 => api_version = string(f)?,
                    2 => kind = string(f)?,
                    _ => {}
                }
                Ok(())
            })?,
            2 => raw = bytes(field)?,
            3 => encoding = string(field)?,
            _ => {}
        }
        Ok(())
    })?;
    if !encoding.is_empty() {
        return Err(ProtobufError::UnsupportedEncoding(encoding));
    }
    match (api_version.as_str(), kind.as_str()) {
        ("v1", "Namespace") => namespace(raw),
        ("v1", "Secret") => secret(raw),
        ("v1", "Service") => service::service(raw),
        _ => Err(ProtobufError::UnsupportedKind(format!("{kind} ({api_version})"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What kubectl 1.33 sent for `kubectl create secret generic s --from-literal=a=b --type=Opaque`.
    const KUBECTL_SECRET: &[u8] = &[
        0x6b, 0x38, 0x73, 0x00, 0x0a, 0x0c, 0x0a, 0x02, 0x76, 0x31, 0x12, 0x06, 0x53, 0x65, 0x63, 0x72, 0x65, 0x74,
        0x12, 0x23, 0x0a, 0x11, 0x0a, 0x01, 0x73, 0x12, 0x00, 0x1a, 0x00, 0x22, 0x00, 0x2a, 0x00, 0x32, 0x00, 0x38,
        0x00, 0x42, 0x00, 0x12, 0x06, 0x0a, 0x01, 0x61, 0x12, 0x01, 0x62, 0x1a, 0x06, 0x4f, 0x70, 0x61, 0x71, 0x75,
        0x65, 0x1a, 0x00, 0x22, 0x00,
    ];

    fn field(number: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![number << 3 | 2, payload.len() as u8];
        out.extend_from_slice(payload);
        out
    }

    fn envelope(kind: &str, raw: &[u8]) -> Vec<u8> {
        let type_meta = [field(1, b"v1"), field(2, kind.as_bytes())].concat();
        [MAGIC.to_vec(), field(1, &type_meta), field(2, raw), field(3, b""), field(4, b"")].concat()
    }

    #[test]
    fn kubectls_secret_decodes() {
        let secret = decode(KUBECTL_SECRET).unwrap();
        assert_eq!(
            secret,
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "data": {"a": "Yg=="}, "type": "Opaque"})
        );
    }

    #[test]
    fn namespaces_with_labels_annotations_and_finalizers() {
        let labels = field(11, &[field(1, b"team"), field(2, b"a")].concat());
        let annotations = field(12, &[field(1, b"note"), field(2, b"hi")].concat());
        let meta = [field(1, b"prod"), labels, annotations].concat();
        let spec = field(1, b"kubernetes");
        let raw = [field(1, &meta), field(2, &spec)].concat();
        assert_eq!(
            decode(&envelope("Namespace", &raw)).unwrap(),
            json!({"apiVersion": "v1", "kind": "Namespace",
                   "metadata": {"name": "prod", "labels": {"team": "a"}, "annotations": {"note": "hi"}},
                   "spec": {"finalizers": ["kubernetes"]}})
        );
    }

    #[test]
    fn what_is_not_understood_is_refused() {
        assert_eq!(decode(b"{\"kind\":\"Secret\"}"), Err(ProtobufError::NoEnvelope));
        assert!(matches!(decode(&envelope("Pod", b"")), Err(ProtobufError::UnsupportedKind(k)) if k == "Pod (v1)"));
        let owner = field(1, &field(13, b"x"));
        assert_eq!(
            decode(&envelope("Secret", &owner)),
            Err(ProtobufError::UnsupportedField { message: "ObjectMeta", field: 13 })
        );
        let truncated = &KUBECTL_SECRET[..KUBECTL_SECRET.len() - 10];
        assert!(matches!(decode(truncated), Err(ProtobufError::Malformed(_))));
        let mut long = MAGIC.to_vec();
        long.extend([0x0a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
        assert!(matches!(decode(&long), Err(ProtobufError::Malformed(_))));
    }
}
