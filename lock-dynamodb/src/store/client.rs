//! The SDK client: HTTP, TLS, retries and credentials from the config.

use super::*;

pub(super) async fn build_client(config: &DynamoConfig) -> Result<Client, StoreError> {
    let http_client = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let sdk_config: SdkConfig = match &config.sdk_config {
        Some(sdk_config) => sdk_config.clone(),
        None => {
            let mut loader =
                aws_config::defaults(BehaviorVersion::latest()).http_client(http_client.clone());
            if let Some(region) = &config.region {
                loader = loader.region(Region::new(region.clone()));
            }
            if config.credentials.is_some() {
                // Skip the chain's lookups: the key is given.
                loader = loader.credentials_provider(static_credentials(config));
            }
            loader.load().await
        }
    };
    let mut builder = aws_sdk_dynamodb::config::Builder::from(&sdk_config)
        .http_client(http_client)
        // One request per call: the locker owns retries and their timing.
        .retry_config(RetryConfig::disabled());
    if let Some(region) = &config.region {
        builder = builder.region(Region::new(region.clone()));
    } else if sdk_config.region().is_none() {
        if config.endpoint.is_some() {
            // A local endpoint ignores the region, but signing needs one.
            builder = builder.region(Region::from_static("us-east-1"));
        } else {
            return Err(StoreError::new(
                StoreErrorKind::Invalid,
                format!(
                    "no AWS region for table {}: add region=R to the URL, or set AWS_REGION (or a region in ~/.aws/config)",
                    config.table
                ),
            ));
        }
    }
    if let Some(endpoint) = &config.endpoint {
        builder = builder.endpoint_url(endpoint.clone());
    }
    if config.credentials.is_some() {
        builder = builder.credentials_provider(static_credentials(config));
    }
    Ok(Client::from_conf(builder.build()))
}

pub(super) fn static_credentials(config: &DynamoConfig) -> Credentials {
    let credentials = config.credentials.as_ref();
    Credentials::new(
        credentials.map_or("", |c| c.access_key_id.as_str()),
        credentials.map_or("", |c| c.secret_access_key.as_str()),
        credentials.and_then(|c| c.session_token.clone()),
        None,
        "dlock-url",
    )
}
