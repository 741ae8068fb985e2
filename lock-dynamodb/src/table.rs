//! The table: its name, its key schema, creating it, and turning on TTL.

use std::time::{Duration, Instant};

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::describe_table::DescribeTableError;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
    TableDescription, TableStatus, TimeToLiveSpecification,
};
use lock_core::{StoreError, StoreErrorKind};

use crate::error::{Context, store_error};
use crate::item::{IDLE_EXPIRY, KEY};

/// How long [`ensure`] waits for a new table to become active.
const ACTIVE_TIMEOUT: Duration = Duration::from_secs(120);
/// How often it looks.
const ACTIVE_POLL: Duration = Duration::from_millis(250);

/// Checks a table name against DynamoDB's rules: 3 to 255 characters of
/// `a-z A-Z 0-9 _ - .`.
pub(crate) fn check_name(table: &str) -> Result<(), StoreError> {
    let valid_chars = table
        .bytes()
        .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'-' | b'.'));
    if (3..=255).contains(&table.len()) && valid_chars {
        Ok(())
    } else {
        Err(StoreError::new(
            StoreErrorKind::Invalid,
            format!(
                "{table:?} is not a DynamoDB table name: 3 to 255 characters of a-z, A-Z, 0-9, '_', '-' and '.'"
            ),
        ))
    }
}

/// Makes sure the table exists with dlock's key schema: creates it when
/// `create` is set (and turns on TTL on `idle_expiry` when `idle_expiry`
/// is set), else fails naming the fix. A caller without permission to
/// describe tables is let through: its first lock operation will tell.
pub(crate) async fn ensure(
    client: &Client,
    context: &Context,
    create: bool,
    idle_expiry: bool,
) -> Result<(), StoreError> {
    let described = describe(client, context).await;
    let description = match described {
        Ok(Some(description)) => description,
        Ok(None) if create => {
            create_table(client, context).await?;
            wait_until_active(client, context).await?
        }
        Ok(None) => {
            return Err(StoreError::new(
                StoreErrorKind::Invalid,
                format!(
                    "table {} does not exist {}: create it with partition key {KEY} of type S (string) and no sort key, or add create_table=true to the URL (DynamoConfig::create_table)",
                    context.table, context.place
                ),
            ));
        }
        Err(error) if error.kind() == StoreErrorKind::Auth => {
            tracing::debug!(table = %context.table, %error, "cannot describe the table; not checking it");
            return Ok(());
        }
        Err(error) => return Err(error),
    };
    check_schema(context, &description)?;
    if create && idle_expiry {
        enable_ttl(client, context).await?;
    }
    Ok(())
}

async fn describe(
    client: &Client,
    context: &Context,
) -> Result<Option<TableDescription>, StoreError> {
    match client
        .describe_table()
        .table_name(&context.table)
        .send()
        .await
    {
        Ok(output) => Ok(output.table),
        Err(SdkError::ServiceError(service))
            if matches!(
                service.err(),
                DescribeTableError::ResourceNotFoundException(_)
            ) =>
        {
            Ok(None)
        }
        Err(error) => Err(store_error("DescribeTable", context, error)),
    }
}

fn check_schema(context: &Context, description: &TableDescription) -> Result<(), StoreError> {
    let keys: Vec<(&str, &KeyType)> = description
        .key_schema()
        .iter()
        .map(|element| (element.attribute_name(), element.key_type()))
        .collect();
    let key_type = description
        .attribute_definitions()
        .iter()
        .find(|definition| definition.attribute_name() == KEY)
        .map(AttributeDefinition::attribute_type);
    if keys == [(KEY, &KeyType::Hash)] && key_type == Some(&ScalarAttributeType::S) {
        return Ok(());
    }
    let found: Vec<String> = keys
        .iter()
        .map(|(name, kind)| format!("{name} ({})", kind.as_str()))
        .collect();
    Err(StoreError::new(
        StoreErrorKind::Invalid,
        format!(
            "table {} {} has key schema [{}], not dlock's (partition key {KEY} of type S, no sort key): use another table name, or let create_table=true make one",
            context.table,
            context.place,
            found.join(", ")
        ),
    ))
}

async fn create_table(client: &Client, context: &Context) -> Result<(), StoreError> {
    let build_error = |error: aws_sdk_dynamodb::error::BuildError| {
        StoreError::new(StoreErrorKind::Other, error.to_string())
    };
    let result = client
        .create_table()
        .table_name(&context.table)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name(KEY)
                .attribute_type(ScalarAttributeType::S)
                .build()
                .map_err(build_error)?,
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name(KEY)
                .key_type(KeyType::Hash)
                .build()
                .map_err(build_error)?,
        )
        .send()
        .await;
    match result {
        Ok(_) => {
            tracing::info!(table = %context.table, "created the lock table");
            Ok(())
        }
        // Another client created it meanwhile.
        Err(error) if error.code() == Some("ResourceInUseException") => Ok(()),
        Err(error) => Err(store_error("CreateTable", context, error)),
    }
}

async fn wait_until_active(
    client: &Client,
    context: &Context,
) -> Result<TableDescription, StoreError> {
    let started = Instant::now();
    loop {
        if let Some(description) = describe(client, context).await?
            && description.table_status() == Some(&TableStatus::Active)
        {
            return Ok(description);
        }
        if started.elapsed() > ACTIVE_TIMEOUT {
            return Err(StoreError::timeout(format!(
                "table {} {} did not become active within {ACTIVE_TIMEOUT:?}",
                context.table, context.place
            )));
        }
        tokio::time::sleep(ACTIVE_POLL).await;
    }
}

async fn enable_ttl(client: &Client, context: &Context) -> Result<(), StoreError> {
    let specification = TimeToLiveSpecification::builder()
        .enabled(true)
        .attribute_name(IDLE_EXPIRY)
        .build()
        .map_err(|error| StoreError::new(StoreErrorKind::Other, error.to_string()))?;
    let result = client
        .update_time_to_live()
        .table_name(&context.table)
        .time_to_live_specification(specification)
        .send()
        .await;
    match result {
        Ok(_) => Ok(()),
        // Already enabled (DynamoDB refuses to enable it twice).
        Err(error)
            if error.code() == Some("ValidationException")
                && error
                    .message()
                    .is_some_and(|message| message.contains("already enabled")) =>
        {
            Ok(())
        }
        Err(error) => Err(store_error("UpdateTimeToLive", context, error)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_follow_dynamodb_rules() {
        for good in ["locks", "dlock_locks-v1.2", &"x".repeat(255)] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in ["", "ab", "has space", "émoji", &"x".repeat(256), "a/b"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
