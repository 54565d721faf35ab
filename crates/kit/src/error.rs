//! The error-code table shared by every service and the gateway.
//!
//! Each service's own error enum maps into a [`ServiceError`]; the same fault therefore answers
//! the same `code` over gRPC (status + [`ErrorDetail`] in the status details) and over HTTP.
//! Messages carry ids and field names, never personal data.

use carnet_proto::common::v1::ErrorDetail;
use prost::Message;

/// Stable, machine-readable error codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    InvalidArgument,
    NotFound,
    AlreadyExists,
    /// The record changed since the caller read it (optimistic concurrency).
    Conflict,
    /// The request is well-formed but the record's state forbids it.
    FailedPrecondition,
    /// The person has not agreed (or another lawful basis is missing) for what was asked:
    /// a mail for a purpose, a call recording.
    ConsentRequired,
    PermissionDenied,
    Unauthenticated,
    ResourceExhausted,
    PayloadTooLarge,
    DeadlineExceeded,
    Unavailable,
    Internal,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 13] = [
        ErrorCode::InvalidArgument,
        ErrorCode::NotFound,
        ErrorCode::AlreadyExists,
        ErrorCode::Conflict,
        ErrorCode::FailedPrecondition,
        ErrorCode::ConsentRequired,
        ErrorCode::PermissionDenied,
        ErrorCode::Unauthenticated,
        ErrorCode::ResourceExhausted,
        ErrorCode::PayloadTooLarge,
        ErrorCode::DeadlineExceeded,
        ErrorCode::Unavailable,
        ErrorCode::Internal,
    ];

    /// Returns the stable string form used in APIs (`invalid_argument`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidArgument => "invalid_argument",
            ErrorCode::NotFound => "not_found",
            ErrorCode::AlreadyExists => "already_exists",
            ErrorCode::Conflict => "conflict",
            ErrorCode::FailedPrecondition => "failed_precondition",
            ErrorCode::ConsentRequired => "consent_required",
            ErrorCode::PermissionDenied => "permission_denied",
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::ResourceExhausted => "resource_exhausted",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::DeadlineExceeded => "deadline_exceeded",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
        }
    }

    /// Returns the gRPC status code for this error.
    pub fn grpc_status_code(self) -> tonic::Code {
        match self {
            ErrorCode::InvalidArgument => tonic::Code::InvalidArgument,
            ErrorCode::NotFound => tonic::Code::NotFound,
            ErrorCode::AlreadyExists => tonic::Code::AlreadyExists,
            ErrorCode::Conflict => tonic::Code::Aborted,
            ErrorCode::FailedPrecondition | ErrorCode::ConsentRequired => tonic::Code::FailedPrecondition,
            ErrorCode::PermissionDenied => tonic::Code::PermissionDenied,
            ErrorCode::Unauthenticated => tonic::Code::Unauthenticated,
            ErrorCode::ResourceExhausted => tonic::Code::ResourceExhausted,
            ErrorCode::PayloadTooLarge => tonic::Code::OutOfRange,
            ErrorCode::DeadlineExceeded => tonic::Code::DeadlineExceeded,
            ErrorCode::Unavailable => tonic::Code::Unavailable,
            ErrorCode::Internal => tonic::Code::Internal,
        }
    }

    /// Returns the HTTP status code the gateway answers for this error.
    pub fn http_status_code(self) -> u16 {
        match self {
            ErrorCode::InvalidArgument => 400,
            ErrorCode::Unauthenticated => 401,
            ErrorCode::PermissionDenied => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::AlreadyExists | ErrorCode::Conflict | ErrorCode::FailedPrecondition => 409,
            ErrorCode::ConsentRequired => 422,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::ResourceExhausted => 429,
            ErrorCode::Internal => 500,
            ErrorCode::Unavailable => 503,
            ErrorCode::DeadlineExceeded => 504,
        }
    }

    /// Parses the string form; `None` for an unknown code.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }

    fn from_grpc(code: tonic::Code) -> Self {
        match code {
            tonic::Code::InvalidArgument => ErrorCode::InvalidArgument,
            tonic::Code::NotFound => ErrorCode::NotFound,
            tonic::Code::AlreadyExists => ErrorCode::AlreadyExists,
            tonic::Code::Aborted => ErrorCode::Conflict,
            tonic::Code::FailedPrecondition => ErrorCode::FailedPrecondition,
            tonic::Code::PermissionDenied => ErrorCode::PermissionDenied,
            tonic::Code::Unauthenticated => ErrorCode::Unauthenticated,
            tonic::Code::ResourceExhausted => ErrorCode::ResourceExhausted,
            tonic::Code::OutOfRange => ErrorCode::PayloadTooLarge,
            tonic::Code::DeadlineExceeded => ErrorCode::DeadlineExceeded,
            tonic::Code::Unavailable => ErrorCode::Unavailable,
            _ => ErrorCode::Internal,
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error as services report it: a code, a message (ids only), the field at fault and, for
/// duplicates, the id of the existing record.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ServiceError {
    pub code: ErrorCode,
    pub message: String,
    pub field_opt: Option<String>,
    pub existing_id_opt: Option<String>,
}

impl ServiceError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ServiceError { code, message: message.into(), field_opt: None, existing_id_opt: None }
    }

    /// An `invalid_argument` error naming `field`.
    pub fn invalid_field(field: impl Into<String>, message: impl Into<String>) -> Self {
        let field = field.into();
        let message = format!("{field}: {}", message.into());
        ServiceError { code: ErrorCode::InvalidArgument, message, field_opt: Some(field), existing_id_opt: None }
    }

    pub fn not_found(what: &str, id: impl std::fmt::Display) -> Self {
        ServiceError::new(ErrorCode::NotFound, format!("{what} {id} not found"))
    }

    pub fn internal(message: impl Into<String>) -> Self {
        ServiceError::new(ErrorCode::Internal, message)
    }

    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field_opt = Some(field.into());
        self
    }

    pub fn with_existing_id(mut self, id: impl Into<String>) -> Self {
        self.existing_id_opt = Some(id.into());
        self
    }

    /// Rebuilds the error a server sent, from a gRPC status and its [`ErrorDetail`].
    pub fn from_status(status: &tonic::Status) -> Self {
        let detail_opt = ErrorDetail::decode(status.details()).ok().filter(|d| !d.code.is_empty());
        match detail_opt {
            Some(detail) => ServiceError {
                code: ErrorCode::parse(&detail.code).unwrap_or_else(|| ErrorCode::from_grpc(status.code())),
                message: status.message().to_string(),
                field_opt: Some(detail.field).filter(|f| !f.is_empty()),
                existing_id_opt: Some(detail.existing_id).filter(|i| !i.is_empty()),
            },
            None => ServiceError::new(ErrorCode::from_grpc(status.code()), status.message()),
        }
    }
}

impl From<ServiceError> for tonic::Status {
    fn from(err: ServiceError) -> Self {
        let detail = ErrorDetail {
            code: err.code.as_str().to_string(),
            field: err.field_opt.unwrap_or_default(),
            existing_id: err.existing_id_opt.unwrap_or_default(),
        };
        tonic::Status::with_details(err.code.grpc_status_code(), err.message, detail.encode_to_vec().into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_error_code_round_trips_through_grpc_status() {
        for code in ErrorCode::ALL {
            let err = ServiceError::invalid_field("email", "is not an e-mail address");
            let err = ServiceError { code, ..err };
            let status: tonic::Status = err.clone().into();
            assert_eq!(status.code(), code.grpc_status_code());
            let back = ServiceError::from_status(&status);
            assert_eq!(back, err);
        }
    }

    #[test]
    fn test_error_code_strings_are_unique_and_parse() {
        let mut seen = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            assert!(seen.insert(code.as_str()));
            assert_eq!(ErrorCode::parse(code.as_str()), Some(code));
        }
        assert_eq!(ErrorCode::parse("nope"), None);
    }

    #[test]
    fn test_invalid_field_names_the_field() {
        let err = ServiceError::invalid_field("fields.shoe_size", "is not in the field policy");
        assert_eq!(err.field_opt.as_deref(), Some("fields.shoe_size"));
        assert!(err.message.starts_with("fields.shoe_size:"));
        assert_eq!(err.code.http_status_code(), 400);
    }
}
