//! Conversions shared by the gRPC handlers of every service.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::error::ServiceError;

/// Parses an id field, failing with `invalid_argument` naming `field`.
pub fn parse_id(field: &str, value: &str) -> Result<Uuid, ServiceError> {
    if value.is_empty() {
        return Err(ServiceError::invalid_field(field, "is required"));
    }
    Uuid::parse_str(value).map_err(|_| ServiceError::invalid_field(field, "is not a valid id"))
}

/// Converts a UTC time to a protobuf timestamp.
pub fn to_timestamp(at: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: at.timestamp(), nanos: at.timestamp_subsec_nanos() as i32 }
}

/// Converts a protobuf timestamp to a UTC time, failing with `invalid_argument` naming `field`.
pub fn from_timestamp(field: &str, ts: &prost_types::Timestamp) -> Result<DateTime<Utc>, ServiceError> {
    let nanos = u32::try_from(ts.nanos).map_err(|_| ServiceError::invalid_field(field, "has negative nanos"))?;
    DateTime::<Utc>::from_timestamp(ts.seconds, nanos)
        .ok_or_else(|| ServiceError::invalid_field(field, "is out of range"))
}

/// Returns the endpoint every Carnet gRPC client uses (no Nagle delay, like the servers).
pub fn endpoint(uri: &str) -> Result<tonic::transport::Endpoint, tonic::transport::Error> {
    Ok(tonic::transport::Endpoint::from_shared(uri.to_string())?.tcp_nodelay(true))
}

/// The cutoff of a retention `PurgeExpired` request (docs/retention.md): required, and not in
/// the future (a purge never reaches records younger than now).
pub fn purge_cutoff(req: &carnet_proto::common::v1::PurgeExpiredRequest) -> Result<DateTime<Utc>, ServiceError> {
    let before = req
        .before
        .as_ref()
        .ok_or_else(|| ServiceError::invalid_field("before", "is required"))
        .and_then(|t| from_timestamp("before", t))?;
    if before > Utc::now() {
        return Err(ServiceError::invalid_field("before", "is in the future"));
    }
    Ok(before)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_parse_id_names_the_field() {
        let err = parse_id("other_id", "nope").unwrap_err();
        assert_eq!(err.field_opt.as_deref(), Some("other_id"));
        let err = parse_id("id", "").unwrap_err();
        assert!(err.message.contains("required"));
        assert!(parse_id("id", &Uuid::now_v7().to_string()).is_ok());
    }

    #[test]
    fn test_timestamp_round_trip() {
        let now = Utc::now();
        assert_eq!(from_timestamp("at", &to_timestamp(now)).unwrap(), now);
        let bad = prost_types::Timestamp { seconds: i64::MAX, nanos: 0 };
        assert!(from_timestamp("at", &bad).is_err());
    }
}
