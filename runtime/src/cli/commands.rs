//! The client commands: `topics`, `produce`, `tail` and `status`. Each talks to a running box
//! through [`Client`] and writes its output to the writer it is given.

use std::io::{BufRead, Write};
use std::time::Duration;

use hyper::Method;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::client::{Client, ClientError};
use super::CliError;
use crate::log::validate_topic_name;

/// Timeout of ordinary requests.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Long-poll duration `tail --follow` asks the server for (the server caps it further).
const FOLLOW_WAIT_MS: u64 = 20_000;
/// Records one `tail` request asks for.
const TAIL_PAGE: usize = 1000;

fn check_topic(topic: &str) -> Result<(), CliError> {
    validate_topic_name(topic).map_err(|e| CliError::Usage(e.to_string()))
}

fn field_u64(client: &Client, value: &Value, name: &str) -> Result<u64, CliError> {
    value.get(name).and_then(Value::as_u64).ok_or_else(|| {
        client
            .bad_answer(format!("no integer `{name}` in {value}"))
            .into()
    })
}

/// `outpost topics`: one line per topic.
pub async fn topics(client: &mut Client, out: &mut dyn Write) -> Result<(), CliError> {
    let answer = client.get_json("/topics", REQUEST_TIMEOUT).await?;
    let topics = answer
        .get("topics")
        .and_then(Value::as_array)
        .ok_or_else(|| client.bad_answer("no `topics` array"))?;
    let mut rows = vec![[
        "TOPIC".to_string(),
        "FIRST".into(),
        "NEXT".into(),
        "RECORDS".into(),
        "BYTES".into(),
        "SEGMENTS".into(),
        "REC/S".into(),
    ]];
    for t in topics {
        let first = field_u64(client, t, "first_offset")?;
        let next = field_u64(client, t, "next_offset")?;
        rows.push([
            t.get("name")
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_string(),
            first.to_string(),
            next.to_string(),
            next.saturating_sub(first).to_string(),
            field_u64(client, t, "bytes")?.to_string(),
            field_u64(client, t, "segments")?.to_string(),
            format!(
                "{:.1}",
                t.get("records_per_sec")
                    .and_then(Value::as_f64)
                    .unwrap_or(0.0)
            ),
        ]);
    }
    if topics.is_empty() {
        writeln!(out, "no topics yet on {}", client.server())?;
        return Ok(());
    }
    write_table(out, &rows)?;
    Ok(())
}

/// Writes rows as a table: the first column left-aligned, the others right-aligned.
fn write_table<const N: usize>(out: &mut dyn Write, rows: &[[String; N]]) -> std::io::Result<()> {
    let mut widths = [0usize; N];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in rows {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
            if i == 0 {
                line.push_str(&format!("{cell:<w$}"));
            } else {
                line.push_str(&format!("  {cell:>w$}"));
            }
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}

/// Options of `outpost produce`.
#[derive(Debug, Clone)]
pub struct ProduceOptions {
    /// The topic to append to.
    pub topic: String,
    /// Key of every record.
    pub key: Option<String>,
    /// Most records per request.
    pub batch_records: usize,
    /// About how many bytes per request.
    pub batch_bytes: usize,
}

/// `outpost produce`: every non-empty input line is one record, a JSON line as JSON and any
/// other line as a JSON string. Lines are sent in batches: whatever has arrived when the
/// previous request finishes (up to the batch limits), so piped input goes in large requests
/// and typed lines go out at once. Prints one summary line.
pub async fn produce(
    client: &mut Client,
    options: &ProduceOptions,
    input: Box<dyn BufRead + Send>,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    check_topic(&options.topic)?;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<String, CliError>>(4096);
    std::thread::Builder::new()
        .name("outpost-stdin".into())
        .spawn(move || {
            for (n, line) in input.lines().enumerate() {
                let item = line.map_err(|e| CliError::Input(format!("line {}: {e}", n + 1)));
                let stop = item.is_err();
                if tx.blocking_send(item).is_err() || stop {
                    return;
                }
            }
        })
        .map_err(|e| CliError::Input(format!("cannot start the input reader: {e}")))?;

    let path = format!("/topics/{}", options.topic);
    let mut produced = 0u64;
    let mut offsets: Option<(u64, u64)> = None;
    // Wait for one line, then take whatever else has already arrived, up to the batch limits.
    while let Some(first) = rx.recv().await {
        let mut records = Vec::new();
        let mut bytes = 0usize;
        let mut next = Some(first);
        while let Some(item) = next.take() {
            let line = item?;
            let line = line.trim_end_matches('\r');
            if !line.trim().is_empty() {
                let value = serde_json::from_str::<Value>(line)
                    .unwrap_or_else(|_| Value::String(line.to_string()));
                let mut record = json!({ "value": value });
                if let Some(key) = &options.key {
                    record["key"] = json!(key);
                }
                bytes += line.len() + 16;
                records.push(record);
            }
            if records.len() >= options.batch_records || bytes >= options.batch_bytes {
                break;
            }
            match rx.try_recv() {
                Ok(item) => next = Some(item),
                Err(_) => break,
            }
        }
        if records.is_empty() {
            continue;
        }
        let count = records.len() as u64;
        let body = serde_json::to_vec(&json!({ "records": records }))
            .map_err(|e| CliError::Input(e.to_string()))?;
        let answer = client
            .json(
                Method::POST,
                &path,
                Some("application/vnd.kafka.json.v2+json"),
                body,
                REQUEST_TIMEOUT,
            )
            .await
            .map_err(|e| CliError::Partial {
                done: format!("{produced} records were produced before the error"),
                source: Box::new(e.into()),
            })?;
        let listed = answer
            .get("offsets")
            .and_then(Value::as_array)
            .ok_or_else(|| client.bad_answer("no `offsets` array"))?;
        let first_offset = listed
            .first()
            .and_then(|o| o.get("offset"))
            .and_then(Value::as_u64);
        let last_offset = listed
            .last()
            .and_then(|o| o.get("offset"))
            .and_then(Value::as_u64);
        if let (Some(a), Some(b)) = (first_offset, last_offset) {
            offsets = Some((offsets.map_or(a, |(first, _)| first), b));
        }
        produced += count;
    }
    match offsets {
        Some((first, last)) => writeln!(
            out,
            "produced {produced} records to {} at offsets {first}..={last}",
            options.topic
        )?,
        None => writeln!(out, "no input lines: nothing produced to {}", options.topic)?,
    }
    Ok(())
}

/// Options of `outpost tail`.
#[derive(Debug, Clone)]
pub struct TailOptions {
    /// The topic to read.
    pub topic: String,
    /// First offset to read; `None` = the first stored record.
    pub from: Option<u64>,
    /// Keep waiting for new records instead of stopping at the end.
    pub follow: bool,
    /// Stop after this many records.
    pub limit: Option<u64>,
}

/// A page of a fetch answer as `tail` reads it: each record kept as the server's text, so a
/// value's numbers are printed exactly as stored, never re-serialized.
#[derive(Deserialize)]
struct TailPage {
    records: Vec<Box<RawValue>>,
    next_offset: u64,
}

/// `outpost tail`: prints one JSON record per line (the fetch answer's record objects). Without
/// `--follow` it stops at the end of the topic; with it, it long-polls for new records. A range
/// the box's log lost or found damaged (HTTP 410 with the next readable offset) is named in a
/// warning on stderr and skipped; the box records it in `outpost.gaps`.
pub async fn tail(
    client: &mut Client,
    options: &TailOptions,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    check_topic(&options.topic)?;
    let mut offset = options.from;
    let mut printed = 0u64;
    loop {
        let want = match options.limit {
            Some(limit) => limit.saturating_sub(printed).min(TAIL_PAGE as u64),
            None => TAIL_PAGE as u64,
        };
        if want == 0 {
            break;
        }
        let mut query = format!("/topics/{}/records?limit={want}", options.topic);
        if let Some(offset) = offset {
            query.push_str(&format!("&offset={offset}"));
        }
        let mut timeout = REQUEST_TIMEOUT;
        if options.follow {
            query.push_str(&format!("&wait_ms={FOLLOW_WAIT_MS}"));
            timeout += Duration::from_millis(FOLLOW_WAIT_MS);
        }
        let page: TailPage = match client
            .json_as(Method::GET, &query, None, Vec::new(), timeout)
            .await
        {
            Ok(page) => page,
            Err(ClientError::Server {
                status: 410,
                message,
                next_offset: Some(next),
                ..
            }) if offset.is_none_or(|o| next > o) => {
                tracing::warn!(topic = %options.topic, next_offset = next, "{message}; tail goes on at the next readable offset.");
                offset = Some(next);
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        for record in &page.records {
            writeln!(out, "{}", record.get())?;
            printed += 1;
        }
        out.flush()?;
        offset = Some(page.next_offset);
        if page.records.is_empty() && !options.follow {
            break;
        }
    }
    Ok(())
}

/// The box's readiness in words: `yes`, `no (waiting for plugins)`, or `unknown` from a box
/// without `GET /ready`.
async fn readiness(client: &mut Client) -> Result<String, CliError> {
    let (_, body) = client
        .send(Method::GET, "/ready", None, Vec::new(), REQUEST_TIMEOUT)
        .await?;
    let answer: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    Ok(match answer.get("ready").and_then(Value::as_bool) {
        Some(true) => "yes".to_string(),
        Some(false) => {
            let waiting: Vec<&str> = answer
                .get("waiting_for")
                .and_then(Value::as_array)
                .map(|list| list.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            format!("no (waiting for {})", waiting.join(", "))
        }
        None => "unknown".to_string(),
    })
}

/// `outpost status`: health, readiness and a summary of the topics.
pub async fn status(client: &mut Client, out: &mut dyn Write) -> Result<(), CliError> {
    let health = client.get_json("/health", REQUEST_TIMEOUT).await?;
    let listing = client.get_json("/topics", REQUEST_TIMEOUT).await?;
    let topics = listing
        .get("topics")
        .and_then(Value::as_array)
        .ok_or_else(|| client.bad_answer("no `topics` array"))?;
    let (mut records, mut bytes, mut rate) = (0u64, 0u64, 0f64);
    for t in topics {
        records += field_u64(client, t, "next_offset")?.saturating_sub(field_u64(
            client,
            t,
            "first_offset",
        )?);
        bytes += field_u64(client, t, "bytes")?;
        rate += t
            .get("records_per_sec")
            .and_then(Value::as_f64)
            .unwrap_or(0.0);
    }
    let text = |name: &str| {
        health
            .get(name)
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_string()
    };
    let uptime = field_u64(client, &health, "uptime_s")?;
    writeln!(out, "server:   {}", client.server())?;
    writeln!(out, "status:   {}", text("status"))?;
    writeln!(out, "ready:    {}", readiness(client).await?)?;
    writeln!(out, "edge id:  {}", text("edge_id"))?;
    writeln!(out, "store id: {}", text("store_id"))?;
    writeln!(out, "version:  {}", text("version"))?;
    writeln!(
        out,
        "uptime:   {}h {:02}m {:02}s",
        uptime / 3600,
        uptime / 60 % 60,
        uptime % 60
    )?;
    writeln!(
        out,
        "topics:   {} ({records} records stored, {bytes} bytes, {rate:.1} records/s)",
        topics.len()
    )?;
    for (list, counted) in [("sources", "stored"), ("sinks", "delivered")] {
        let Some(items) = listing.get(list).and_then(Value::as_array) else {
            continue;
        };
        writeln!(out, "{:<9} {}", format!("{list}:"), items.len())?;
        for item in items {
            writeln!(out, "  {}", describe_status(item, counted))?;
        }
    }
    if let Some(forward) = listing.get("forward") {
        for line in describe_forward(forward) {
            writeln!(out, "{line}")?;
        }
    }
    Ok(())
}

/// The forwarding lines of `outpost status`: the uplink state and the data debt per class,
/// most urgent class first.
fn describe_forward(forward: &Value) -> Vec<String> {
    let text = |k: &str| forward.get(k).and_then(Value::as_str).unwrap_or("?");
    if forward.get("enabled").and_then(Value::as_bool) != Some(true) {
        return vec!["forward:  off (no cloud configured; everything is kept for later)".into()];
    }
    if let Some(error) = forward.get("error").and_then(Value::as_str) {
        return vec![format!("forward:  status unavailable: {error}")];
    }
    let online = forward.get("online").and_then(Value::as_bool) == Some(true);
    let mut state = if online {
        "online".to_string()
    } else {
        "offline".to_string()
    };
    if let Some(e) = forward.get("last_error").and_then(Value::as_str) {
        if !online {
            state.push_str(&format!(" (last error: {e})"));
        }
    }
    let mut lines = vec![format!(
        "forward:  {state} to {} ({}); bulk {}",
        text("cluster"),
        text("brokers"),
        if forward.get("bulk_enabled").and_then(Value::as_bool) == Some(true) {
            "enabled"
        } else {
            "per schedule"
        }
    )];
    let classes = forward.get("classes").and_then(Value::as_object);
    for class in ["critical", "normal", "bulk"] {
        let Some(c) = classes.and_then(|m| m.get(class)) else {
            continue;
        };
        let n = |k: &str| c.get(k).and_then(Value::as_u64).unwrap_or(0);
        let age = c.get("oldest_age_s").and_then(Value::as_f64).unwrap_or(0.0);
        lines.push(format!(
            "  debt {class:<8} {} records, {} bytes, oldest {age:.0} s",
            n("debt_records"),
            n("debt_bytes")
        ));
    }
    lines
}

/// One line of `outpost status` for a source or sink: name, kind, link state, counters.
fn describe_status(item: &Value, counted: &str) -> String {
    let text = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or("?").to_string();
    let number = |k: &str| item.get(k).and_then(Value::as_u64).unwrap_or(0);
    let link = item.get("link").cloned().unwrap_or(Value::Null);
    let state = match text(&link, "state").as_str() {
        "retrying" => format!(
            "retrying (attempt {}: {})",
            link.get("attempts").and_then(Value::as_u64).unwrap_or(0),
            text(&link, "last_error")
        ),
        "backpressured" => format!("backpressured ({})", text(&link, "reason")),
        other => other.to_string(),
    };
    let mut line = format!(
        "{} ({}) {state}: {} {counted}, {} errors, {} gaps",
        text(item, "name"),
        text(item, "kind"),
        number("records_stored"),
        number("errors"),
        number("gaps")
    );
    if let Some(gap) = item.get("last_gap").and_then(Value::as_str) {
        line.push_str(&format!("; last gap: {gap}"));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::write_table;

    #[test]
    fn a_status_line_shows_state_and_counters() {
        let item = serde_json::json!({
            "name": "mqtt:store", "kind": "mqtt",
            "link": {"state": "retrying", "last_error": "connection refused", "attempts": 3},
            "records_stored": 12, "errors": 1, "gaps": 2, "last_gap": "down for 5 s",
        });
        assert_eq!(
            super::describe_status(&item, "stored"),
            "mqtt:store (mqtt) retrying (attempt 3: connection refused): 12 stored, 1 errors, 2 gaps; last gap: down for 5 s"
        );
    }

    #[test]
    fn status_shows_the_uplink_and_the_debt_per_class_most_urgent_first() {
        let forward = serde_json::json!({
            "enabled": true, "cluster": "cloud", "brokers": "k:9092", "online": false,
            "last_error": "broker down", "bulk_enabled": false,
            "classes": {
                "bulk": {"debt_records": 9, "debt_bytes": 900, "oldest_age_s": 60.4},
                "critical": {"debt_records": 1, "debt_bytes": 100, "oldest_age_s": 2.0},
            },
        });
        assert_eq!(
            super::describe_forward(&forward),
            [
                "forward:  offline (last error: broker down) to cloud (k:9092); bulk per schedule",
                "  debt critical 1 records, 100 bytes, oldest 2 s",
                "  debt bulk     9 records, 900 bytes, oldest 60 s",
            ]
        );
        assert_eq!(
            super::describe_forward(&serde_json::json!({"enabled": false})),
            ["forward:  off (no cloud configured; everything is kept for later)"]
        );
    }

    #[test]
    fn tables_align_the_first_column_left_and_the_rest_right() {
        let rows = [
            ["TOPIC".to_string(), "NEXT".to_string()],
            ["pos.payments".to_string(), "7".to_string()],
            ["a".to_string(), "12345".to_string()],
        ];
        let mut out = Vec::new();
        write_table(&mut out, &rows).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "TOPIC          NEXT\npos.payments      7\na             12345\n"
        );
    }
}
