//! The Avro specification's Parsing Canonical Form and its CRC-64-AVRO
//! (Rabin) fingerprint, computed here rather than by apache-avro (whose
//! canonical form keeps logical-type attributes; see the module above).

use std::collections::HashSet;
use std::fmt::Write as _;

use serde_json::Value as Json;

use super::{invalid, EnvelopeError};

pub(super) const PRIMITIVES: [&str; 8] = [
    "null", "boolean", "int", "long", "float", "double", "bytes", "string",
];

/// The Avro specification's Parsing Canonical Form: primitives as bare
/// names, full names everywhere, only `name`, `type`, `fields`, `symbols`,
/// `items`, `values`, `size` kept, in that order, no whitespace. Errors
/// (never panics) on JSON that is not a schema.
pub(super) fn canonical_form(schema: &Json) -> Result<String, EnvelopeError> {
    let mut out = String::new();
    write_canonical_form(schema, "", &mut HashSet::new(), &mut out, 0)?;
    Ok(out)
}

pub(super) fn full_name(name: &str, namespace: &str) -> String {
    if name.contains('.') || namespace.is_empty() {
        name.to_owned()
    } else {
        format!("{namespace}.{name}")
    }
}

/// Appends the Parsing Canonical Form of `schema` (names resolved in
/// namespace `ns`; `defined` holds the named types already written) to
/// `out`.
pub(super) fn write_canonical_form(
    schema: &Json,
    ns: &str,
    defined: &mut HashSet<String>,
    out: &mut String,
    depth: usize,
) -> Result<(), EnvelopeError> {
    if depth > 64 {
        return Err(invalid("schema nested too deeply"));
    }
    let bad = || invalid("not an Avro schema");
    match schema {
        Json::String(name) => {
            out.push('"');
            if PRIMITIVES.contains(&name.as_str()) {
                out.push_str(name);
            } else {
                out.push_str(&full_name(name, ns));
            }
            out.push('"');
        }
        Json::Array(branches) => {
            out.push('[');
            for (i, b) in branches.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical_form(b, ns, defined, out, depth + 1)?;
            }
            out.push(']');
        }
        Json::Object(m) => match m.get("type").ok_or_else(bad)? {
            Json::String(t) => match t.as_str() {
                "record" | "error" | "enum" | "fixed" => {
                    let name = m.get("name").and_then(Json::as_str).ok_or_else(bad)?;
                    let own_ns = m.get("namespace").and_then(Json::as_str).unwrap_or(ns);
                    let full = full_name(name, own_ns);
                    if !defined.insert(full.clone()) {
                        let _ = write!(out, "\"{full}\"");
                        return Ok(());
                    }
                    let inner_ns = full.rsplit_once('.').map_or("", |(n, _)| n);
                    let _ = write!(out, r#"{{"name":"{full}","type":"{t}""#);
                    match t.as_str() {
                        "enum" => {
                            out.push_str(r#","symbols":["#);
                            let symbols =
                                m.get("symbols").and_then(Json::as_array).ok_or_else(bad)?;
                            for (i, s) in symbols.iter().enumerate() {
                                if i > 0 {
                                    out.push(',');
                                }
                                let _ = write!(out, "\"{}\"", s.as_str().ok_or_else(bad)?);
                            }
                            out.push(']');
                        }
                        "fixed" => {
                            let size = m.get("size").ok_or_else(bad)?;
                            let size = size
                                .as_u64()
                                .or_else(|| size.as_str().and_then(|s| s.parse().ok()))
                                .ok_or_else(bad)?;
                            let _ = write!(out, r#","size":{size}"#);
                        }
                        _ => {
                            out.push_str(r#","fields":["#);
                            let fields =
                                m.get("fields").and_then(Json::as_array).ok_or_else(bad)?;
                            for (i, f) in fields.iter().enumerate() {
                                if i > 0 {
                                    out.push(',');
                                }
                                let fname = f.get("name").and_then(Json::as_str).ok_or_else(bad)?;
                                let _ = write!(out, r#"{{"name":"{fname}","type":"#);
                                write_canonical_form(
                                    f.get("type").ok_or_else(bad)?,
                                    inner_ns,
                                    defined,
                                    out,
                                    depth + 1,
                                )?;
                                out.push('}');
                            }
                            out.push(']');
                        }
                    }
                    out.push('}');
                }
                "array" => {
                    out.push_str(r#"{"type":"array","items":"#);
                    write_canonical_form(
                        m.get("items").ok_or_else(bad)?,
                        ns,
                        defined,
                        out,
                        depth + 1,
                    )?;
                    out.push('}');
                }
                "map" => {
                    out.push_str(r#"{"type":"map","values":"#);
                    write_canonical_form(
                        m.get("values").ok_or_else(bad)?,
                        ns,
                        defined,
                        out,
                        depth + 1,
                    )?;
                    out.push('}');
                }
                // A primitive with attributes (logical types, connect.name)
                // or a reference written as an object.
                _ => write_canonical_form(&Json::String(t.clone()), ns, defined, out, depth + 1)?,
            },
            nested @ (Json::Object(_) | Json::Array(_)) => {
                write_canonical_form(nested, ns, defined, out, depth + 1)?
            }
            _ => return Err(bad()),
        },
        _ => return Err(bad()),
    }
    Ok(())
}

pub(super) const RABIN_EMPTY: u64 = 0xc15d_213a_a4d7_a795;
pub(super) const RABIN_TABLE: [u64; 256] = rabin_table();

pub(super) const fn rabin_table() -> [u64; 256] {
    let mut table = [0u64; 256];
    let mut i = 0;
    while i < 256 {
        let mut fp = i as u64;
        let mut j = 0;
        while j < 8 {
            fp = (fp >> 1) ^ (RABIN_EMPTY & (fp & 1).wrapping_neg());
            j += 1;
        }
        table[i] = fp;
        i += 1;
    }
    table
}

/// CRC-64-AVRO (the Avro specification's Rabin fingerprint).
pub(super) fn rabin_fingerprint(bytes: &[u8]) -> u64 {
    let mut fp = RABIN_EMPTY;
    for &b in bytes {
        fp = (fp >> 8) ^ RABIN_TABLE[((fp ^ u64::from(b)) & 0xff) as usize];
    }
    fp
}
