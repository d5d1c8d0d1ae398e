//! Dead events: outbox rows the relay parked (`dead_at`) and messages SQS moved to a consumer's
//! dead-letter queue. Both are listed and re-driven by `guildhall events`; once the cause is
//! fixed, a re-driven event is delivered as any other, and consumers that already handled it
//! skip it (`consumed_events`).

use anyhow::Context;
use aws_sdk_sqs::types::{MessageSystemAttributeName, MessageSystemAttributeNameForSends, MessageSystemAttributeValue};
use serde::Serialize;
use sqlx::Row;

use super::Queues;
use crate::db::Database;

/// An outbox row parked as dead.
#[derive(Debug, Clone, Serialize)]
pub struct DeadEvent {
    /// The event id.
    pub id: String,
    /// Its type.
    pub event_type: String,
    /// Failed attempts.
    pub attempts: i64,
    /// The last failure.
    pub last_error: Option<String>,
    /// When it was recorded (RFC 3339).
    pub created_at: String,
    /// When it was parked (RFC 3339).
    pub dead_at: String,
}

/// How many outbox rows are parked as dead.
pub async fn count(db: &Database) -> anyhow::Result<i64> {
    sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE dead_at IS NOT NULL").fetch_one(db.pool()).await.context("counting dead events")
}

/// Up to `limit` dead outbox rows, oldest first.
pub async fn list(db: &Database, limit: i64) -> anyhow::Result<Vec<DeadEvent>> {
    let rows = sqlx::query(
        "SELECT id, event_type, attempts, last_error, created_at, dead_at FROM outbox WHERE dead_at IS NOT NULL ORDER BY id LIMIT $1",
    )
    .bind(limit)
    .fetch_all(db.pool())
    .await
    .context("listing dead events")?;
    rows.iter()
        .map(|row| {
            Ok(DeadEvent {
                id: row.try_get("id")?,
                event_type: row.try_get("event_type")?,
                attempts: row.try_get("attempts")?,
                last_error: row.try_get("last_error")?,
                created_at: crate::time::rfc3339(row.try_get("created_at")?),
                dead_at: crate::time::rfc3339(row.try_get("dead_at")?),
            })
        })
        .collect()
}

/// Makes dead outbox rows due again with a fresh count of attempts: those of `ids`, or all of
/// them when `ids` is empty. Returns how many.
pub async fn redrive(db: &Database, ids: &[String]) -> anyhow::Result<u64> {
    const DUE: &str = "SET dead_at = NULL, attempts = 0, next_attempt_at = NULL, claimed_until = NULL";
    let mut redriven = 0;
    if ids.is_empty() {
        redriven = sqlx::query(&format!("UPDATE outbox {DUE} WHERE dead_at IS NOT NULL")).execute(db.pool()).await?.rows_affected();
    }
    for id in ids {
        let done = sqlx::query(&format!("UPDATE outbox {DUE} WHERE id = $1 AND dead_at IS NOT NULL")).bind(id).execute(db.pool()).await?;
        redriven += done.rows_affected();
    }
    tracing::info!(redriven, "dead events re-driven");
    Ok(redriven)
}

/// What a consumer's dead-letter queue holds.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetters {
    /// The consuming service.
    pub consumer: String,
    /// Its dead-letter queue.
    pub queue_url: String,
    /// SQS's approximate count of messages in it.
    pub approximate_count: i64,
    /// The ids and types of up to ten of them.
    pub sample: Vec<DeadLetter>,
}

/// One message in a dead-letter queue.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    /// The event id, when the message carries one.
    pub event_id: Option<String>,
    /// The event type, when the message carries one.
    pub event_type: Option<String>,
}

/// The dead-letter queue of `consumer`'s queue, from its redrive policy.
pub async fn dead_letter_url(queues: &Queues, consumer: &str) -> anyhow::Result<String> {
    let url = queues.url(consumer);
    let attributes = queues
        .client()
        .get_queue_attributes()
        .queue_url(&url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::RedrivePolicy)
        .send()
        .await
        .with_context(|| format!("SQS GetQueueAttributes of {url}"))?;
    let policy = attributes
        .attributes
        .and_then(|a| a.get(&aws_sdk_sqs::types::QueueAttributeName::RedrivePolicy).cloned())
        .with_context(|| format!("{url} has no redrive policy"))?;
    let policy: serde_json::Value = serde_json::from_str(&policy).context("reading the redrive policy")?;
    // arn:aws:sqs:REGION:ACCOUNT:NAME
    let arn = policy["deadLetterTargetArn"].as_str().context("the redrive policy names no dead-letter queue")?;
    let parts: Vec<&str> = arn.split(':').collect();
    let [_, _, _, _, account, name] = parts[..] else { anyhow::bail!("{arn} is not a queue ARN") };
    let found = queues
        .client()
        .get_queue_url()
        .queue_name(name)
        .queue_owner_aws_account_id(account)
        .send()
        .await
        .with_context(|| format!("SQS GetQueueUrl of {name}"))?;
    found.queue_url.with_context(|| format!("no URL for {name}"))
}

/// `consumer`'s dead-letter queue: its count and a sample.
pub async fn dead_letters(queues: &Queues, consumer: &str) -> anyhow::Result<DeadLetters> {
    let queue_url = dead_letter_url(queues, consumer).await?;
    let attributes = queues
        .client()
        .get_queue_attributes()
        .queue_url(&queue_url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages)
        .send()
        .await
        .context("SQS GetQueueAttributes")?;
    let approximate_count = attributes
        .attributes
        .and_then(|a| a.get(&aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages).and_then(|n| n.parse().ok()))
        .unwrap_or(0);
    let out = queues
        .client()
        .receive_message()
        .queue_url(&queue_url)
        .max_number_of_messages(10)
        .visibility_timeout(5)
        .message_attribute_names("All")
        .send()
        .await
        .context("SQS ReceiveMessage")?;
    let messages = out.messages.unwrap_or_default();
    let sample = messages
        .iter()
        .map(|m| DeadLetter { event_id: string_attribute(m, "event_id"), event_type: string_attribute(m, "event_type") })
        .collect();
    // Visible again at once, so that a re-drive right after this listing sees them.
    for receipt in messages.iter().filter_map(|m| m.receipt_handle.as_deref()) {
        queues.client().change_message_visibility().queue_url(&queue_url).receipt_handle(receipt).visibility_timeout(0).send().await.ok();
    }
    Ok(DeadLetters { consumer: consumer.to_owned(), queue_url, approximate_count, sample })
}

fn string_attribute(message: &aws_sdk_sqs::types::Message, name: &str) -> Option<String> {
    message.message_attributes.as_ref()?.get(name)?.string_value.clone()
}

/// Moves messages from `consumer`'s dead-letter queue back to its queue, as they were (body,
/// attributes, trace header): those whose event id is in `ids`, or all when `ids` is empty; at
/// most `max`. Each is sent before it is deleted, so a failure in between leaves a copy in both,
/// which the consumer's idempotency absorbs. Messages passed over stay hidden for a minute, so
/// one run sees each once. Returns how many moved.
pub async fn redrive_dead_letters(queues: &Queues, consumer: &str, ids: &[String], max: u64) -> anyhow::Result<u64> {
    let (source, dead) = (queues.url(consumer), dead_letter_url(queues, consumer).await?);
    let mut moved = 0;
    while moved < max {
        let out = queues
            .client()
            .receive_message()
            .queue_url(&dead)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .visibility_timeout(60)
            .message_attribute_names("All")
            .message_system_attribute_names(MessageSystemAttributeName::AwsTraceHeader)
            .send()
            .await
            .context("SQS ReceiveMessage from the dead-letter queue")?;
        let messages = out.messages.unwrap_or_default();
        if messages.is_empty() {
            break;
        }
        for message in messages {
            let wanted = ids.is_empty() || string_attribute(&message, "event_id").is_some_and(|id| ids.contains(&id));
            if !wanted || moved >= max {
                continue;
            }
            let mut send = queues.client().send_message().queue_url(&source).message_body(message.body.clone().unwrap_or_default());
            // Rebuilt rather than passed on: a received attribute carries empty list fields
            // that SendMessage does not take back.
            for (name, value) in message.message_attributes.iter().flatten() {
                let copy = aws_sdk_sqs::types::MessageAttributeValue::builder()
                    .data_type(value.data_type())
                    .set_string_value(value.string_value.clone())
                    .set_binary_value(value.binary_value.clone())
                    .build()?;
                send = send.message_attributes(name, copy);
            }
            if let Some(trace) = message.attributes.as_ref().and_then(|a| a.get(&MessageSystemAttributeName::AwsTraceHeader)) {
                let value = MessageSystemAttributeValue::builder().data_type("String").string_value(trace).build()?;
                send = send.message_system_attributes(MessageSystemAttributeNameForSends::AwsTraceHeader, value);
            }
            send.send().await.context("SQS SendMessage back to the queue")?;
            if let Some(receipt) = &message.receipt_handle {
                queues.client().delete_message().queue_url(&dead).receipt_handle(receipt).send().await.context("SQS DeleteMessage")?;
            }
            moved += 1;
        }
    }
    Ok(moved)
}
