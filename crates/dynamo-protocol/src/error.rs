//! DynamoDB's error shapes. Clients match on the `__type` name, so each kind maps to the exact
//! name and HTTP status DynamoDB uses; the message is for people and says how to fix the request.

use serde::Serialize;
use serde_json::Value;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    Validation,
    Serialization,
    ResourceNotFound,
    ResourceInUse,
    ConditionalCheckFailed,
    /// PartiQL: an INSERT of an item whose key exists.
    DuplicateItem,
    TransactionCanceled,
    TransactionConflict,
    TransactionInProgress,
    IdempotentParameterMismatch,
    UnknownOperation,
    UnrecognizedClient,
    InvalidSignature,
    MissingAuthenticationToken,
    IncompleteSignature,
    AccessDenied,
    LimitExceeded,
    ProvisionedThroughputExceeded,
    RequestLimitExceeded,
    ItemCollectionSizeLimitExceeded,
    GlobalTableNotFound,
    ReplicaAlreadyExists,
    ReplicaNotFound,
    TableNotFound,
    /// DynamoDB Streams: a shard iterator older than its 15 minutes.
    ExpiredIterator,
    /// DynamoDB Streams: a position before the stream's trim horizon (retention passed).
    TrimmedDataAccess,
    TableAlreadyExists,
    TableInUse,
    BackupNotFound,
    BackupInUse,
    ContinuousBackupsUnavailable,
    PointInTimeRecoveryUnavailable,
    /// RestoreTableToPointInTime: a time outside EarliestRestorable..LatestRestorableDateTime.
    InvalidRestoreTime,
    InternalServerError,
    ServiceUnavailable,
}

impl ErrorKind {
    /// The short name clients see after the `#` in `__type`.
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::Validation => "ValidationException",
            ErrorKind::Serialization => "SerializationException",
            ErrorKind::ResourceNotFound => "ResourceNotFoundException",
            ErrorKind::ResourceInUse => "ResourceInUseException",
            ErrorKind::ConditionalCheckFailed => "ConditionalCheckFailedException",
            ErrorKind::DuplicateItem => "DuplicateItemException",
            ErrorKind::TransactionCanceled => "TransactionCanceledException",
            ErrorKind::TransactionConflict => "TransactionConflictException",
            ErrorKind::TransactionInProgress => "TransactionInProgressException",
            ErrorKind::IdempotentParameterMismatch => "IdempotentParameterMismatchException",
            ErrorKind::UnknownOperation => "UnknownOperationException",
            ErrorKind::UnrecognizedClient => "UnrecognizedClientException",
            ErrorKind::InvalidSignature => "InvalidSignatureException",
            ErrorKind::MissingAuthenticationToken => "MissingAuthenticationTokenException",
            ErrorKind::IncompleteSignature => "IncompleteSignatureException",
            ErrorKind::AccessDenied => "AccessDeniedException",
            ErrorKind::LimitExceeded => "LimitExceededException",
            ErrorKind::ProvisionedThroughputExceeded => "ProvisionedThroughputExceededException",
            ErrorKind::RequestLimitExceeded => "RequestLimitExceeded",
            ErrorKind::ItemCollectionSizeLimitExceeded => "ItemCollectionSizeLimitExceededException",
            ErrorKind::GlobalTableNotFound => "GlobalTableNotFoundException",
            ErrorKind::ReplicaAlreadyExists => "ReplicaAlreadyExistsException",
            ErrorKind::ReplicaNotFound => "ReplicaNotFoundException",
            ErrorKind::TableNotFound => "TableNotFoundException",
            ErrorKind::ExpiredIterator => "ExpiredIteratorException",
            ErrorKind::TrimmedDataAccess => "TrimmedDataAccessException",
            ErrorKind::TableAlreadyExists => "TableAlreadyExistsException",
            ErrorKind::TableInUse => "TableInUseException",
            ErrorKind::BackupNotFound => "BackupNotFoundException",
            ErrorKind::BackupInUse => "BackupInUseException",
            ErrorKind::ContinuousBackupsUnavailable => "ContinuousBackupsUnavailableException",
            ErrorKind::PointInTimeRecoveryUnavailable => "PointInTimeRecoveryUnavailableException",
            ErrorKind::InvalidRestoreTime => "InvalidRestoreTimeException",
            ErrorKind::InternalServerError => "InternalServerError",
            ErrorKind::ServiceUnavailable => "ServiceUnavailable",
        }
    }

    /// The namespace DynamoDB puts before the name: authentication errors come from the
    /// generic AWS front end, everything else from the DynamoDB service.
    pub fn namespace(self) -> &'static str {
        match self {
            ErrorKind::UnrecognizedClient
            | ErrorKind::InvalidSignature
            | ErrorKind::MissingAuthenticationToken
            | ErrorKind::IncompleteSignature
            | ErrorKind::Serialization
            | ErrorKind::UnknownOperation => "com.amazon.coral.service",
            ErrorKind::Validation => "com.amazon.coral.validate",
            _ => "com.amazonaws.dynamodb.v20120810",
        }
    }

    pub fn http_status(self) -> u16 {
        match self {
            ErrorKind::InternalServerError => 500,
            ErrorKind::ServiceUnavailable => 503,
            ErrorKind::MissingAuthenticationToken | ErrorKind::InvalidSignature => 400,
            _ => 400,
        }
    }

    /// Whether the fault is the server's (and may be retried) rather than the caller's.
    pub fn is_server_fault(self) -> bool {
        matches!(self, ErrorKind::InternalServerError | ErrorKind::ServiceUnavailable)
    }
}

/// One reason in a `TransactionCanceledException`, in the order of the request's items.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CancellationReason {
    #[serde(rename = "Code")]
    pub code: String,
    #[serde(rename = "Message", skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(rename = "Item", skip_serializing_if = "Option::is_none")]
    pub item: Option<Value>,
}

impl CancellationReason {
    pub fn none() -> CancellationReason {
        CancellationReason {
            code: "None".into(),
            message: None,
            item: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct ApiError {
    pub kind: ErrorKind,
    pub message: String,
    /// `Item` of a `ConditionalCheckFailedException` when ReturnValuesOnConditionCheckFailure asks.
    pub item: Option<Value>,
    pub cancellation_reasons: Vec<CancellationReason>,
}

impl ApiError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> ApiError {
        ApiError {
            kind,
            message: message.into(),
            item: None,
            cancellation_reasons: Vec::new(),
        }
    }

    pub fn validation(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorKind::Validation, message)
    }

    pub fn serialization(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorKind::Serialization, message)
    }

    pub fn resource_not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorKind::ResourceNotFound, message)
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorKind::InternalServerError, message)
    }

    pub fn conditional_check_failed() -> ApiError {
        ApiError::new(ErrorKind::ConditionalCheckFailed, "The conditional request failed")
    }

    pub fn transaction_canceled(reasons: Vec<CancellationReason>) -> ApiError {
        let codes: Vec<&str> = reasons.iter().map(|r| r.code.as_str()).collect();
        let mut error = ApiError::new(
            ErrorKind::TransactionCanceled,
            format!(
                "Transaction cancelled, please refer cancellation reasons for specific reasons [{}]",
                codes.join(", ")
            ),
        );
        error.cancellation_reasons = reasons;
        error
    }

    /// `__type` as DynamoDB writes it, e.g. `com.amazonaws.dynamodb.v20120810#ResourceNotFoundException`.
    pub fn type_name(&self) -> String {
        format!("{}#{}", self.kind.namespace(), self.kind.name())
    }

    /// The JSON body of the error response.
    pub fn to_json(&self) -> Value {
        let mut body = serde_json::Map::new();
        body.insert("__type".into(), Value::String(self.type_name()));
        // DynamoDB spells the key "message" for most errors and "Message" for a
        // SerializationException and a TransactionCanceledException (beside its
        // CancellationReasons); botocore and the JS SDK read both. A body that is not JSON at
        // all gets DynamoDB's bare `{"__type": "...#SerializationException"}`: no message.
        match self.kind {
            ErrorKind::Serialization if self.message.is_empty() => {}
            ErrorKind::Serialization | ErrorKind::TransactionCanceled => {
                body.insert("Message".into(), Value::String(self.message.clone()));
            }
            _ => {
                body.insert("message".into(), Value::String(self.message.clone()));
            }
        }
        if let Some(item) = &self.item {
            body.insert("Item".into(), item.clone());
        }
        if !self.cancellation_reasons.is_empty() {
            body.insert(
                "CancellationReasons".into(),
                serde_json::to_value(&self.cancellation_reasons).unwrap_or(Value::Null),
            );
        }
        Value::Object(body)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind.name(), self.message)
    }
}

impl std::error::Error for ApiError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_names_match_dynamodb() {
        let error = ApiError::resource_not_found("Requested resource not found");
        assert_eq!(
            error.type_name(),
            "com.amazonaws.dynamodb.v20120810#ResourceNotFoundException"
        );
        assert_eq!(
            ApiError::validation("x").type_name(),
            "com.amazon.coral.validate#ValidationException"
        );
        let body = ApiError::transaction_canceled(vec![CancellationReason::none()]).to_json();
        assert_eq!(body["CancellationReasons"][0]["Code"], "None");
        // As DynamoDB sends it: "Message" beside the reasons.
        assert!(body["Message"].as_str().unwrap_or_default().contains("[None]"));
        assert!(body.get("message").is_none(), "{body}");
    }

    #[test]
    fn serialization_errors_are_shaped_as_dynamodb_sends_them() {
        // A value of the wrong type: the message under "Message".
        let body = ApiError::serialization("NUMBER_VALUE cannot be converted to String").to_json();
        assert_eq!(
            body,
            serde_json::json!({
                "__type": "com.amazon.coral.service#SerializationException",
                "Message": "NUMBER_VALUE cannot be converted to String",
            })
        );
        // A body that is not JSON: the type alone.
        assert_eq!(
            ApiError::serialization("").to_json(),
            serde_json::json!({"__type": "com.amazon.coral.service#SerializationException"})
        );
    }
}
