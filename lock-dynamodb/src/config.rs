//! Connection settings: table, region, endpoint, credentials, and the
//! store's own options.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use aws_config::SdkConfig;
use lock_core::url::{ConnectionUrl, redact};
use lock_core::{StoreError, StoreErrorKind};

use crate::clock::{SystemClock, WallClock};

/// The default [`DynamoConfig::renew_concurrency`].
pub const DEFAULT_RENEW_CONCURRENCY: usize = 64;

/// The URL schemes [`DynamoConfig::from_url`] reads.
const SCHEMES: &[&str] = &["dynamodb"];
const URL_OPTIONS: &str =
    "region, endpoint, create_table, max_clock_skew, idle_expiry, renew_concurrency, session_token";

/// How a [`DynamoStore`](crate::DynamoStore) reaches DynamoDB, and the
/// store's options.
///
/// Region and credentials come from the standard AWS chain (environment,
/// shared config and credentials files, web identity, ECS and EC2 instance
/// metadata) unless set here. `Debug` never shows a secret: credentials
/// show as `***`, a URL redacted through [`lock_core::url`].
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use lock_dynamodb::DynamoConfig;
///
/// let config = DynamoConfig::new("locks")
///     .region("eu-west-1")
///     .create_table(true)
///     .max_clock_skew(Duration::from_secs(2));
/// assert_eq!(config.table(), "locks");
///
/// let parsed = DynamoConfig::from_url(
///     "dynamodb://AKIDEXAMPLE:s3cret@locks?region=us-east-1&endpoint=http://127.0.0.1:5000",
/// )?;
/// assert_eq!(parsed.table(), "locks");
/// assert!(!format!("{parsed:?}").contains("s3cret"));
/// # Ok::<(), lock_core::StoreError>(())
/// ```
#[derive(Clone)]
pub struct DynamoConfig {
    pub(crate) table: String,
    pub(crate) region: Option<String>,
    pub(crate) endpoint: Option<String>,
    pub(crate) credentials: Option<StaticCredentials>,
    pub(crate) sdk_config: Option<SdkConfig>,
    pub(crate) create_table: bool,
    pub(crate) max_clock_skew: Option<Duration>,
    pub(crate) idle_expiry: Option<Duration>,
    pub(crate) renew_concurrency: usize,
    pub(crate) min_ttl: Option<Duration>,
    pub(crate) clock: Arc<dyn WallClock>,
    /// The URL the settings were read from, if any: shown redacted.
    pub(crate) url: Option<ConnectionUrl>,
}

/// An access key given in the URL or the builder.
#[derive(Clone)]
pub(crate) struct StaticCredentials {
    pub(crate) access_key_id: String,
    pub(crate) secret_access_key: String,
    pub(crate) session_token: Option<String>,
}

impl DynamoConfig {
    /// Settings for `table`, with region and credentials from the standard
    /// AWS chain, no table creation, the clock skew of each request
    /// ([`LockerOptions::max_clock_skew`](lock_core::LockerOptions::max_clock_skew)),
    /// no idle expiry, and 64 renewals in flight.
    pub fn new(table: impl Into<String>) -> Self {
        Self {
            table: table.into(),
            region: None,
            endpoint: None,
            credentials: None,
            sdk_config: None,
            create_table: false,
            max_clock_skew: None,
            idle_expiry: None,
            renew_concurrency: DEFAULT_RENEW_CONCURRENCY,
            min_ttl: None,
            clock: Arc::new(SystemClock),
            url: None,
        }
    }

    /// Parses a URL of the form
    ///
    /// ```text
    /// dynamodb://[ACCESS_KEY_ID:SECRET_ACCESS_KEY@]TABLE[?option=value&...]
    /// ```
    ///
    /// Options: `region=R`; `endpoint=URL` (DynamoDB Local, moto, a VPC
    /// endpoint); `create_table=true` (create a missing table, on-demand
    /// capacity, and wait until it is active); `max_clock_skew=DURATION`
    /// (`500ms`, `10s`: see [`max_clock_skew`](Self::max_clock_skew));
    /// `idle_expiry=DURATION` (see [`idle_expiry`](Self::idle_expiry));
    /// `renew_concurrency=N`; `session_token=T` (with a key in the
    /// user-info part). Without a key in the URL, credentials come from the
    /// standard AWS chain, and so does the region without `region=`.
    ///
    /// # Errors
    ///
    /// A [`StoreError`] of kind [`Invalid`](StoreErrorKind::Invalid) naming
    /// what is wrong; a URL in the message is redacted.
    pub fn from_url(url: &str) -> Result<Self, StoreError> {
        let parsed = match ConnectionUrl::parse(url) {
            Ok(parsed) => parsed,
            Err(error) if has_dynamodb_scheme(url) => {
                return Err(invalid(format!(
                    "invalid DynamoDB URL {}: {}",
                    redact(url),
                    error.message()
                )));
            }
            Err(_) => return Err(not_dynamodb()),
        };
        if !SCHEMES.contains(&parsed.scheme()) || !parsed.is_hierarchical() {
            return Err(not_dynamodb());
        }
        let table = match parsed.hosts() {
            [table] => table.clone(),
            [] => {
                return Err(invalid(format!(
                    "the DynamoDB URL {} names no table (dynamodb://TABLE?region=R)",
                    parsed.redacted()
                )));
            }
            _ => {
                return Err(invalid(format!(
                    "the DynamoDB URL {} names several tables; name one",
                    parsed.redacted()
                )));
            }
        };
        if !matches!(parsed.path(), "" | "/") {
            return Err(invalid(format!(
                "the DynamoDB URL {} has a path; the table is the host part (dynamodb://TABLE?region=R)",
                parsed.redacted()
            )));
        }
        let mut config = Self::new(table);
        match (parsed.username(), parsed.password()) {
            (Some(key_id), Some(secret)) if !key_id.is_empty() => {
                config = config.credentials(key_id, secret, None);
            }
            (None, None) => {}
            _ => {
                return Err(invalid(
                    "the DynamoDB URL's user-info must be ACCESS_KEY_ID:SECRET_ACCESS_KEY",
                ));
            }
        }
        for (name, value) in parsed.query() {
            let name = name.as_str();
            match name {
                "region" => config = config.region(non_empty(name, value)?),
                "endpoint" => config = config.endpoint(non_empty(name, value)?),
                "create_table" => config = config.create_table(parse_bool(name, value)?),
                "max_clock_skew" => config = config.max_clock_skew(parse_duration(name, value)?),
                "idle_expiry" => config = config.idle_expiry(parse_duration(name, value)?),
                "renew_concurrency" => {
                    let concurrency =
                        value
                            .parse::<usize>()
                            .ok()
                            .filter(|n| *n > 0)
                            .ok_or_else(|| {
                                invalid(format!(
                                    "renew_concurrency must be a positive number, not {value:?}"
                                ))
                            })?;
                    config = config.renew_concurrency(concurrency);
                }
                "session_token" => match &mut config.credentials {
                    Some(credentials) => credentials.session_token = Some(value.clone()),
                    None => {
                        return Err(invalid(
                            "session_token needs an access key in the URL (dynamodb://ACCESS_KEY_ID:SECRET@TABLE)",
                        ));
                    }
                },
                other => {
                    return Err(invalid(format!(
                        "unknown DynamoDB URL option {:?}; known: {URL_OPTIONS}",
                        if lock_core::url::is_secret_parameter(other) {
                            "***"
                        } else {
                            other
                        }
                    )));
                }
            }
        }
        config.url = Some(parsed);
        Ok(config)
    }

    /// The table name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// Sets the region (default: the standard AWS chain's).
    #[must_use]
    pub fn region(mut self, region: impl Into<String>) -> Self {
        self.region = Some(region.into());
        self
    }

    /// Sends requests to `endpoint` (`http://127.0.0.1:8000`) instead of
    /// the region's DynamoDB endpoint: DynamoDB Local, moto, a proxy.
    #[must_use]
    pub fn endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.endpoint = Some(endpoint.into());
        self
    }

    /// Uses this access key instead of the standard AWS chain.
    #[must_use]
    pub fn credentials(
        mut self,
        access_key_id: impl Into<String>,
        secret_access_key: impl Into<String>,
        session_token: Option<String>,
    ) -> Self {
        self.credentials = Some(StaticCredentials {
            access_key_id: access_key_id.into(),
            secret_access_key: secret_access_key.into(),
            session_token,
        });
        self
    }

    /// Starts from an AWS configuration the application loaded itself
    /// (`aws_config::load_defaults`, with whatever credential providers its
    /// own `aws-config` features bring, SSO among them) instead of loading
    /// the standard chain. Region, endpoint and credentials set here still
    /// win. Its HTTP client and retry settings are replaced: the store
    /// sends each request once (the locker owns retries).
    #[must_use]
    pub fn sdk_config(mut self, sdk_config: SdkConfig) -> Self {
        self.sdk_config = Some(sdk_config);
        self
    }

    /// Whether to create the table when it is missing (on-demand capacity,
    /// partition key `lock_key` of type S), waiting until it is active.
    /// Default false: a missing table is an error naming the fix.
    #[must_use]
    pub fn create_table(mut self, create: bool) -> Self {
        self.create_table = create;
        self
    }

    /// The clock skew this store allows between clients, used instead of
    /// every request's
    /// ([`LockerOptions::max_clock_skew`](lock_core::LockerOptions::max_clock_skew),
    /// default 10 s). Every client of one table should use the same value:
    /// another client counts an entry as expired only once its own clock is
    /// past the entry's end plus the larger of this skew and the entry's.
    #[must_use]
    pub fn max_clock_skew(mut self, skew: Duration) -> Self {
        self.max_clock_skew = Some(skew);
        self
    }

    /// Lets DynamoDB's TTL delete a key item left alone for `idle` (every
    /// write sets the item's `idle_expiry` attribute to its clock plus
    /// `idle`). Deleting an item forgets its fencing counter, so a store
    /// with idle expiry mints no tokens: it reports no fencing in its
    /// capabilities and refuses fenced requests. `idle` must be at least
    /// an hour, and every request's ttl plus twice the clock skew must fit
    /// in it, so no live entry's item can expire.
    #[must_use]
    pub fn idle_expiry(mut self, idle: Duration) -> Self {
        self.idle_expiry = Some(idle);
        self
    }

    /// How many renewals of one store may be in flight at once (default
    /// 64). DynamoDB has no conditional batch write per item, so a renewal
    /// batch sends one conditional `UpdateItem` per entry, this many at a
    /// time.
    #[must_use]
    pub fn renew_concurrency(mut self, concurrency: usize) -> Self {
        self.renew_concurrency = concurrency.max(1);
        self
    }

    /// The shortest lease (and waiter ttl) a locker on this store may ask
    /// for, reported in the store's capabilities (default 100 ms). Raise it
    /// for a slow endpoint (an emulator, a far region), where a renewal
    /// round needs more time than a short lease leaves.
    #[must_use]
    pub fn min_ttl(mut self, min_ttl: Duration) -> Self {
        self.min_ttl = Some(min_ttl);
        self
    }

    /// Reads expiry times from `clock` instead of the machine's clock (for
    /// tests: see [`OffsetClock`](crate::OffsetClock)).
    #[must_use]
    pub fn wall_clock(mut self, clock: impl WallClock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Where requests go, for messages: the endpoint, or the region.
    pub(crate) fn place(&self) -> String {
        match (&self.endpoint, &self.region) {
            (Some(endpoint), _) => format!("at {}", redact(endpoint)),
            (None, Some(region)) => format!("in region {region}"),
            (None, None) => "in the default region".to_owned(),
        }
    }
}

impl fmt::Debug for DynamoConfig {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("DynamoConfig")
            .field("url", &self.url.as_ref().map(ConnectionUrl::redacted))
            .field("table", &self.table)
            .field("region", &self.region)
            .field("endpoint", &self.endpoint.as_deref().map(redact))
            .field("credentials", &self.credentials.as_ref().map(|_| "***"))
            .field("sdk_config", &self.sdk_config.as_ref().map(|_| ".."))
            .field("create_table", &self.create_table)
            .field("max_clock_skew", &self.max_clock_skew)
            .field("idle_expiry", &self.idle_expiry)
            .field("renew_concurrency", &self.renew_concurrency)
            .field("clock", &self.clock)
            .finish()
    }
}

fn has_dynamodb_scheme(url: &str) -> bool {
    url.split_once(':').is_some_and(|(scheme, _)| {
        SCHEMES
            .iter()
            .any(|known| scheme.eq_ignore_ascii_case(known))
    })
}

fn not_dynamodb() -> StoreError {
    invalid("not a DynamoDB URL (expected dynamodb://TABLE?region=R)")
}

fn invalid(message: impl Into<String>) -> StoreError {
    StoreError::new(StoreErrorKind::Invalid, message)
}

fn non_empty(name: &str, value: &str) -> Result<String, StoreError> {
    if value.trim().is_empty() {
        return Err(invalid(format!("the DynamoDB URL option {name} is empty")));
    }
    Ok(value.trim().to_owned())
}

fn parse_bool(name: &str, value: &str) -> Result<bool, StoreError> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err(invalid(format!(
            "{name} must be true or false, not {value:?}"
        ))),
    }
}

fn parse_duration(name: &str, value: &str) -> Result<Duration, StoreError> {
    humantime::parse_duration(value.trim()).map_err(|error| {
        invalid(format!(
            "{name} must be a duration such as 500ms or 10s, not {value:?}: {error}"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_every_option() {
        let config = DynamoConfig::from_url(
            "dynamodb://AKID:pw@my_table.v1?region=eu-west-1&endpoint=http://127.0.0.1:5000&create_table=true&max_clock_skew=500ms&idle_expiry=2h&renew_concurrency=8&session_token=tok",
        )
        .unwrap();
        assert_eq!(config.table(), "my_table.v1");
        assert_eq!(config.region.as_deref(), Some("eu-west-1"));
        assert_eq!(config.endpoint.as_deref(), Some("http://127.0.0.1:5000"));
        assert!(config.create_table);
        assert_eq!(config.max_clock_skew, Some(Duration::from_millis(500)));
        assert_eq!(config.idle_expiry, Some(Duration::from_secs(7200)));
        assert_eq!(config.renew_concurrency, 8);
        let credentials = config.credentials.as_ref().unwrap();
        assert_eq!(credentials.access_key_id, "AKID");
        assert_eq!(credentials.session_token.as_deref(), Some("tok"));
    }

    #[test]
    fn refuses_what_it_cannot_use() {
        for url in [
            "postgres://h/db",
            "dynamodb://",
            "dynamodb://a,b",
            "dynamodb://t/extra",
            "dynamodb://t?colour=blue",
            "dynamodb://t?create_table=maybe",
            "dynamodb://t?max_clock_skew=soon",
            "dynamodb://t?renew_concurrency=0",
            "dynamodb://t?session_token=x",
            "dynamodb://AKID@t",
            "dynamodb:t",
        ] {
            let error = DynamoConfig::from_url(url).expect_err(url);
            assert_eq!(error.kind(), StoreErrorKind::Invalid, "{url}: {error}");
        }
    }
}
