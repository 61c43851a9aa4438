//! Request bodies: the size limit, and protobuf bodies turned into JSON.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use serde_json::Value;

use crate::apiserver::error::ApiError;
use crate::apiserver::protobuf;
use crate::apiserver::resources::Resource;

/// Largest request body, as kube-apiserver's `--max-request-body-bytes` default (3 MiB).
pub const MAX_REQUEST_BODY: usize = 3 * 1024 * 1024;

/// The request body, or the Status kube-apiserver answers when it could not be read.
pub(super) fn request_body(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::too_large(MAX_REQUEST_BODY),
        _ => ApiError::bad_request(rejection.body_text()),
    })
}

/// A protobuf request body as JSON; 400 when it is malformed, 415 when it
/// holds what the decoder does not understand.
pub(super) fn decode_protobuf(body: &Bytes, resource: &Resource) -> Result<Value, ApiError> {
    let object = protobuf::decode(body).map_err(|error| match error {
        protobuf::ProtobufError::NoEnvelope | protobuf::ProtobufError::Malformed(_) => {
            ApiError::bad_request(error.to_string())
        }
        _ => ApiError {
            code: StatusCode::UNSUPPORTED_MEDIA_TYPE,
            reason: "UnsupportedMediaType",
            message: error.to_string(),
            causes: vec![],
            subject: None,
        },
    })?;
    if object["kind"] != resource.kind {
        return Err(ApiError::bad_request(format!(
            "the body holds a {}, not a {}",
            object["kind"].as_str().unwrap_or_default(),
            resource.kind
        )));
    }
    Ok(object)
}
