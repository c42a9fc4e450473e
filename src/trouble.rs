//! What librdkafka reports, as the framework acts on it: most errors librdkafka retries by
//! itself (a broker down, a timeout), and the framework only logs them; refusals (credentials,
//! TLS, ACLs) and records that cannot be read never heal by retrying, so they fail the start or
//! stop the system with a reason that names them, instead of a silent stall.

use rdkafka::error::{KafkaError, RDKafkaErrorCode};

/// An error, as the framework acts on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Trouble {
    /// librdkafka retries: logged, nothing else.
    Transient,
    /// The brokers refused the credentials.
    Authentication,
    /// A TLS connection could not be made.
    Tls,
    /// An ACL refused an operation on a resource of this kind.
    NotAuthorized(Resource),
    /// Records cannot be read: a codec this build lacks, a batch that cannot be decompressed,
    /// a corrupt one.
    Unreadable,
}

/// The kind of resource an ACL refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Resource {
    Topic,
    Group,
    Cluster,
}

impl Trouble {
    pub(crate) fn of_code(code: RDKafkaErrorCode) -> Trouble {
        match code {
            RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SaslAuthenticationFailed => {
                Trouble::Authentication
            }
            RDKafkaErrorCode::SSL => Trouble::Tls,
            RDKafkaErrorCode::TopicAuthorizationFailed => Trouble::NotAuthorized(Resource::Topic),
            RDKafkaErrorCode::GroupAuthorizationFailed => Trouble::NotAuthorized(Resource::Group),
            RDKafkaErrorCode::ClusterAuthorizationFailed => {
                Trouble::NotAuthorized(Resource::Cluster)
            }
            RDKafkaErrorCode::NotImplemented
            | RDKafkaErrorCode::BadCompression
            | RDKafkaErrorCode::BadMessage
            | RDKafkaErrorCode::InvalidRecord => Trouble::Unreadable,
            _ => Trouble::Transient,
        }
    }

    /// Whether librdkafka retries it by itself (a record error of this kind is logged and
    /// reading goes on); the rest stop the system.
    pub(crate) fn is_retried(self) -> bool {
        matches!(self, Trouble::Transient | Trouble::Tls)
    }

    pub(crate) fn of(error: &KafkaError) -> Trouble {
        error
            .rdkafka_error_code()
            .map_or(Trouble::Transient, Trouble::of_code)
    }
}

/// An error librdkafka reported with its explanation, as the consumer's context records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reported {
    pub(crate) trouble: Trouble,
    pub(crate) reason: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_and_unreadable_records_are_told_from_what_librdkafka_retries() {
        assert_eq!(
            Trouble::of_code(RDKafkaErrorCode::Authentication),
            Trouble::Authentication
        );
        assert_eq!(Trouble::of_code(RDKafkaErrorCode::SSL), Trouble::Tls);
        assert_eq!(
            Trouble::of_code(RDKafkaErrorCode::GroupAuthorizationFailed),
            Trouble::NotAuthorized(Resource::Group)
        );
        assert_eq!(
            Trouble::of_code(RDKafkaErrorCode::NotImplemented),
            Trouble::Unreadable,
            "a codec this build lacks"
        );
        for transient in [
            RDKafkaErrorCode::BrokerTransportFailure,
            RDKafkaErrorCode::AllBrokersDown,
            RDKafkaErrorCode::OperationTimedOut,
            RDKafkaErrorCode::NotCoordinator,
        ] {
            assert_eq!(
                Trouble::of_code(transient),
                Trouble::Transient,
                "{transient:?}"
            );
        }
        assert_eq!(
            Trouble::of(&KafkaError::MessageConsumption(
                RDKafkaErrorCode::TopicAuthorizationFailed
            )),
            Trouble::NotAuthorized(Resource::Topic)
        );
    }
}
