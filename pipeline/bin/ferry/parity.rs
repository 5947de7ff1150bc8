//! Row-by-row comparison of a source table and its mirror: the core of
//! `ferry parity` and `ferry demo`'s check.
//!
//! It lives with the binary's verification commands, not in the source
//! connector; the e2e tests compile this same file into their support
//! module (`#[path]` in tests/support/mod.rs), so they check with the very
//! code the command runs, and no production crate exports it for them.
//!
//! Both sides are read with `COPY (SELECT cols ORDER BY key) TO STDOUT`
//! under the same session settings, so equal values have equal text and the
//! comparison is exact for every type. An error on either side is an error,
//! never a pass.

use ferry_pipeline::error::{PipelineError, Stage};
use ferry_pipeline::event::{quote_ident, TableId};
use futures_util::{pin_mut, StreamExt};
use tokio_postgres::Client;

use ferry_postgres_source::snapshot::SESSION_SETTINGS;
use ferry_postgres_source::{catalog, pg_err};

/// The result of comparing one table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TableParity {
    pub(crate) table: TableId,
    pub(crate) source_rows: u64,
    pub(crate) target_rows: u64,
    /// Rows that differ or exist on one side only.
    pub(crate) mismatches: u64,
    /// The first few differing lines, `-` source / `+` target.
    pub(crate) examples: Vec<String>,
}

impl TableParity {
    pub(crate) fn is_equal(&self) -> bool {
        self.mismatches == 0 && self.source_rows == self.target_rows
    }
}

/// Compares `source_table` in `source` with `target_table` in `target`.
pub(crate) async fn compare(
    source: &Client,
    target: &Client,
    source_table: &TableId,
    target_table: &TableId,
) -> Result<TableParity, PipelineError> {
    let t = catalog::describe(source, source_table)
        .await?
        .ok_or_else(|| {
            PipelineError::fatal(
                Stage::Source,
                format!("source table {source_table} does not exist"),
            )
        })?;
    let cols: Vec<String> = t
        .schema
        .columns
        .iter()
        .map(|c| quote_ident(&c.name))
        .collect();
    let order: Vec<String> = if t.schema.primary_key.is_empty() {
        cols.clone()
    } else {
        t.schema
            .key_columns()
            .map(|c| quote_ident(&c.name))
            .collect()
    };
    let query = |table: &TableId| {
        format!(
            "COPY (SELECT {} FROM {} ORDER BY {}) TO STDOUT",
            cols.join(", "),
            table.quoted(),
            order.join(", ")
        )
    };
    for c in [source, target] {
        c.batch_execute(SESSION_SETTINGS)
            .await
            .map_err(|e| pg_err(Stage::Sink, "session settings", e))?;
    }
    let src = source
        .copy_out(&query(source_table))
        .await
        .map_err(|e| pg_err(Stage::Source, &format!("read {source_table}"), e))?;
    let dst = target
        .copy_out(&query(target_table))
        .await
        .map_err(|e| pg_err(Stage::Sink, &format!("read {target_table}"), e))?;
    pin_mut!(src);
    pin_mut!(dst);
    let mut src_lines = Lines::default();
    let mut dst_lines = Lines::default();
    let mut out = TableParity {
        table: source_table.clone(),
        source_rows: 0,
        target_rows: 0,
        mismatches: 0,
        examples: Vec::new(),
    };
    let key_fields: Vec<usize> = if t.schema.primary_key.is_empty() {
        (0..cols.len()).collect()
    } else {
        t.schema.primary_key.clone()
    };
    // Fast path: both sides ordered by key and equal line by line, which
    // needs no memory. At the first difference, the rest of the source is
    // indexed by key and the rest of the target is matched against it, so a
    // missing row does not make every following row differ.
    let mut a = src_lines.next(&mut src).await?;
    let mut b = dst_lines.next(&mut dst).await?;
    while let (Some(x), Some(y)) = (&a, &b) {
        if x != y {
            break;
        }
        out.source_rows += 1;
        out.target_rows += 1;
        a = src_lines.next(&mut src).await?;
        b = dst_lines.next(&mut dst).await?;
    }
    let mut rest: std::collections::HashMap<String, String> = std::collections::HashMap::new();
    while let Some(x) = a {
        out.source_rows += 1;
        rest.insert(key_of(&x, &key_fields), x);
        a = src_lines.next(&mut src).await?;
    }
    while let Some(y) = b {
        out.target_rows += 1;
        match rest.remove(&key_of(&y, &key_fields)) {
            Some(x) if x == y => {}
            Some(x) => {
                note(&mut out, format!("- {x}"));
                note(&mut out, format!("+ {y}"));
            }
            None => note(&mut out, format!("+ {y}")),
        }
        b = dst_lines.next(&mut dst).await?;
    }
    let mut missing: Vec<String> = rest.into_values().collect();
    missing.sort();
    for x in missing {
        note(&mut out, format!("- {x}"));
    }
    Ok(out)
}

fn note(out: &mut TableParity, line: String) {
    out.mismatches += 1;
    if out.examples.len() < 10 {
        out.examples.push(line);
    }
}

fn key_of(line: &str, fields: &[usize]) -> String {
    let parts: Vec<&str> = line.split('\t').collect();
    let key: Vec<&str> = fields
        .iter()
        .map(|&i| parts.get(i).copied().unwrap_or(""))
        .collect();
    key.join("\t")
}

/// Reassembles COPY chunks into lines (also `ferry verify`'s reader).
#[derive(Default)]
pub(crate) struct Lines {
    buf: Vec<u8>,
    /// Start of the first unread byte of `buf`.
    pos: usize,
    done: bool,
}

impl Lines {
    pub(crate) async fn next<S>(
        &mut self,
        stream: &mut std::pin::Pin<&mut S>,
    ) -> Result<Option<String>, PipelineError>
    where
        S: futures_util::Stream<Item = Result<bytes::Bytes, tokio_postgres::Error>>,
    {
        loop {
            if let Some(nl) = self.buf[self.pos..].iter().position(|&b| b == b'\n') {
                let line = String::from_utf8_lossy(&self.buf[self.pos..self.pos + nl]).into_owned();
                self.pos += nl + 1;
                return Ok(Some(line));
            }
            // Only a partial line is left: drop what was read.
            self.buf.drain(..self.pos);
            self.pos = 0;
            if self.done {
                return Ok(None);
            }
            match stream.next().await {
                Some(chunk) => {
                    let chunk = chunk.map_err(|e| pg_err(Stage::Sink, "parity read", e))?;
                    self.buf.extend_from_slice(&chunk);
                }
                None => self.done = true,
            }
        }
    }
}
