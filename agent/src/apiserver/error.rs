//! Errors as Kubernetes `Status` objects with the matching HTTP codes, so that
//! kubectl and kube-rs report them the way they report a real API server's.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::store::StoreError;

#[derive(Debug)]
pub struct ApiError {
    pub code: StatusCode,
    pub reason: &'static str,
    pub message: String,
    /// (field, message) causes for 422 Invalid.
    pub causes: Vec<(String, String)>,
    /// The object an Invalid error is about: (group, kind, name).
    pub subject: Option<Box<(String, String, String)>>,
}

impl ApiError {
    pub fn not_found(what: &str, name: &str) -> Self {
        ApiError {
            code: StatusCode::NOT_FOUND,
            reason: "NotFound",
            message: format!("{what} \"{name}\" not found"),
            causes: vec![],
            subject: None,
        }
    }

    pub fn already_exists(what: &str, name: &str) -> Self {
        let message = format!("{what} \"{name}\" already exists");
        ApiError { code: StatusCode::CONFLICT, reason: "AlreadyExists", message, causes: vec![], subject: None }
    }

    pub fn conflict(what: &str, name: &str) -> Self {
        let message = format!(
            "Operation cannot be fulfilled on {what} \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
        );
        ApiError { code: StatusCode::CONFLICT, reason: "Conflict", message, causes: vec![], subject: None }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError {
            code: StatusCode::BAD_REQUEST,
            reason: "BadRequest",
            message: message.into(),
            causes: vec![],
            subject: None,
        }
    }

    /// 422 Invalid, naming the fields, for a kind of the `kubevirt.io` group.
    pub fn invalid(kind: &str, name: &str, causes: Vec<(String, String)>) -> Self {
        ApiError::invalid_in("kubevirt.io", kind, name, causes)
    }

    /// 422 Invalid as kube-apiserver words it (`errors.NewInvalid`):
    /// `Kind.group "name" is invalid: field: body`, several causes in
    /// brackets; `causes` are (field, apimachinery's `ErrorBody()`).
    pub fn invalid_in(group: &str, kind: &str, name: &str, causes: Vec<(String, String)>) -> Self {
        let mut detail: Vec<String> = Vec::new();
        for (field, body) in &causes {
            let line = format!("{field}: {body}");
            if !detail.contains(&line) {
                detail.push(line);
            }
        }
        let aggregate = match detail.as_slice() {
            [one] => one.clone(),
            many => format!("[{}]", many.join(", ")),
        };
        let qualified_kind = if group.is_empty() { kind.to_string() } else { format!("{kind}.{group}") };
        let message = format!("{qualified_kind} \"{name}\" is invalid: {aggregate}");
        let subject = Some(Box::new((group.to_string(), kind.to_string(), name.to_string())));
        ApiError { code: StatusCode::UNPROCESSABLE_ENTITY, reason: "Invalid", message, causes, subject }
    }

    /// 413, as kube-apiserver answers a body over its limit.
    pub fn too_large(limit: usize) -> Self {
        ApiError {
            code: StatusCode::PAYLOAD_TOO_LARGE,
            reason: "RequestEntityTooLarge",
            message: format!("Request entity too large: limit is {limit}"),
            causes: vec![],
            subject: None,
        }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        ApiError {
            code: StatusCode::INTERNAL_SERVER_ERROR,
            reason: "InternalError",
            message: message.into(),
            causes: vec![],
            subject: None,
        }
    }

    pub fn from_store(error: StoreError, what: &str, name: &str) -> Self {
        match error {
            StoreError::AlreadyExists => ApiError::already_exists(what, name),
            StoreError::NotFound => ApiError::not_found(what, name),
            StoreError::Conflict { .. } => ApiError::conflict(what, name),
            StoreError::Expired { .. } => ApiError {
                code: StatusCode::GONE,
                reason: "Expired",
                message: error.to_string(),
                causes: vec![],
                subject: None,
            },
            other => ApiError::internal(other.to_string()),
        }
    }
}

/// A cause's reason, from the start of its `ErrorBody()` (apimachinery's `field.ErrorType`).
fn cause_reason(body: &str) -> &'static str {
    const REASONS: &[(&str, &str)] = &[
        ("Required value", "FieldValueRequired"),
        ("Too long", "FieldValueTooLong"),
        ("Too many", "FieldValueTooMany"),
        ("Unsupported value", "FieldValueNotSupported"),
        ("Forbidden", "FieldValueForbidden"),
        ("Duplicate value", "FieldValueDuplicate"),
        ("Not found", "FieldValueNotFound"),
    ];
    REASONS.iter().find(|(prefix, _)| body.starts_with(prefix)).map_or("FieldValueInvalid", |(_, reason)| reason)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let causes: Vec<_> = self
            .causes
            .iter()
            .map(|(field, message)| json!({"reason": cause_reason(message), "field": field, "message": message}))
            .collect();
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code.as_u16(),
        });
        if !causes.is_empty() || self.subject.is_some() {
            status["details"] = json!({"causes": causes});
        }
        if let Some((group, kind, name)) = self.subject.as_deref() {
            status["details"]["group"] = json!(group);
            status["details"]["kind"] = json!(kind);
            status["details"]["name"] = json!(name);
        }
        (self.code, Json(status)).into_response()
    }
}
