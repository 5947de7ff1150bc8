//! The envelope codec's tests: round trips in both encodings, bounds on
//! hostile input, and apache-avro as the oracle for the binary format.

use std::sync::Arc;

use serde_json::Value as Json;

use super::canonical::*;
use super::decimal::*;
use super::schema::*;
use super::*;
use crate::event::{ChangeEvent, Column, Datum, Op, Position, Row, TableId, TableSchema};
use crate::value::{Decimal, Numeric, TemporalKind, Value};
use proptest::collection::vec;
use proptest::prelude::*;

// -- helpers ------------------------------------------------------------

fn col(name: &str, type_sql: &str, key: bool) -> Column {
    Column {
        name: name.into(),
        type_oid: 0,
        type_sql: type_sql.into(),
        nullable: !key,
        is_key: key,
        enum_labels: None,
        id_map: None,
    }
}

fn table_of(schema: &str, name: &str, columns: Vec<Column>) -> Arc<TableSchema> {
    let primary_key = columns
        .iter()
        .enumerate()
        .filter(|(_, c)| c.is_key)
        .map(|(i, _)| i)
        .collect();
    Arc::new(TableSchema {
        id: TableId::new(schema, name),
        columns,
        primary_key,
        child: None,
    })
}

fn event(table: &Arc<TableSchema>, op: Op, before: Option<Row>, after: Option<Row>) -> ChangeEvent {
    ChangeEvent {
        table: Arc::clone(table),
        op,
        before,
        after,
        position: Position {
            commit_lsn: 0x16B_3748,
            ordinal: 3,
        },
        xid: Some(750),
        commit_ts_micros: 1_717_000_000_123_456,
        resume_token: None,
    }
}

fn v(v: Value) -> Datum {
    Datum::Value(v)
}

fn num(s: &str) -> Value {
    Value::Numeric(s.parse().unwrap())
}

fn dec(s: &str) -> Decimal {
    s.parse().unwrap()
}

fn payments() -> Arc<TableSchema> {
    let mut columns = vec![
        col("id", "bigint", true),
        col("amount", "numeric(12,2)", false),
        col("note", "text", false),
    ];
    for (c, oid) in columns.iter_mut().zip([20, 1700, 25]) {
        c.type_oid = oid;
    }
    table_of("public", "payments", columns)
}

fn payment_row(id: i64, amount: &str, note: &str) -> Row {
    vec![
        v(Value::Int(id)),
        v(num(amount)),
        v(Value::Text(note.into())),
    ]
}

/// Values equal, floats compared by bits (NaN payloads included).
fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Float(x), Value::Float(y)) => x.to_bits() == y.to_bits(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same_value(a, b))
        }
        (Value::Document(x), Value::Document(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y)
                    .all(|((ka, a), (kb, b))| ka == kb && same_value(a, b))
        }
        _ => a == b,
    }
}

fn same_row(a: &Option<Row>, b: &Option<Row>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => {
            a.len() == b.len()
                && a.iter().zip(b).all(|(x, y)| match (x, y) {
                    (Datum::UnchangedToast, Datum::UnchangedToast) => true,
                    (Datum::Value(x), Datum::Value(y)) => same_value(x, y),
                    _ => false,
                })
        }
        _ => false,
    }
}

fn same_event(a: &ChangeEvent, b: &ChangeEvent) -> bool {
    *a.table == *b.table
        && a.op == b.op
        && same_row(&a.before, &b.before)
        && same_row(&a.after, &b.after)
        && a.position == b.position
        && a.xid == b.xid
        && a.commit_ts_micros == b.commit_ts_micros
        && a.resume_token == b.resume_token
}

/// What the Avro path gives back: a finite value in a `numeric(p,s)`
/// column that fits comes back at the column's scale (1.5 → 1.50).
fn expected_avro(ev: &ChangeEvent) -> ChangeEvent {
    let mut e = ev.clone();
    for row in [e.before.as_mut(), e.after.as_mut()].into_iter().flatten() {
        for (d, c) in row.iter_mut().zip(&ev.table.columns) {
            let AvroType::Decimal { precision, scale } = classify(&c.type_sql, false) else {
                continue;
            };
            let Datum::Value(Value::Numeric(Numeric::Finite(x))) = &*d else {
                continue;
            };
            let pad = scale.saturating_sub(x.scale()) as usize;
            let fits =
                x.scale() <= scale && (x.is_zero() || x.digits().len() + pad <= precision as usize);
            if fits {
                let mut t = x.to_string();
                if x.scale() == 0 && scale > 0 {
                    t.push('.');
                }
                t.extend(std::iter::repeat_n('0', pad));
                *d = v(num(&t));
            }
        }
    }
    e
}

fn round_trip(ev: &ChangeEvent, encoding: Encoding) -> ChangeEvent {
    let mut enc = Encoder::new(encoding, "main");
    let (bytes, new) = enc.encode(ev).unwrap();
    let mut dec = Decoder::new();
    if let Some(new) = new {
        assert_eq!(
            dec.add_schema(&new.avro_json, None).unwrap(),
            new.fingerprint
        );
    }
    dec.decode(&bytes).unwrap()
}

fn assert_round_trips(ev: &ChangeEvent) {
    let back = round_trip(ev, Encoding::Json);
    assert!(same_event(&back, ev), "JSON:\n{back:?}\n!=\n{ev:?}");
    let want = expected_avro(ev);
    let back = round_trip(ev, Encoding::Avro);
    assert!(same_event(&back, &want), "Avro:\n{back:?}\n!=\n{want:?}");
}

/// The Avro union branch each `after` field was written with, read
/// back by apache-avro (the oracle), after checking that apache-avro
/// writes the same bytes again.
fn apache_branches(ev: &ChangeEvent) -> Vec<u32> {
    use apache_avro::types::Value as A;
    let mut enc = Encoder::new(Encoding::Avro, "main");
    let (bytes, new) = enc.encode(ev).unwrap();
    let schema = apache_avro::Schema::parse_str(&new.unwrap().avro_json).unwrap();
    let mut datum: &[u8] = &bytes[10..];
    let value = apache_avro::from_avro_datum(&schema, &mut datum, None).unwrap();
    assert!(datum.is_empty(), "apache-avro left {} bytes", datum.len());
    let again = apache_avro::to_avro_datum(&schema, value.clone()).unwrap();
    assert_eq!(again, &bytes[10..], "apache-avro writes other bytes");
    let A::Record(fields) = value else {
        panic!("not a record")
    };
    let after = &fields.iter().find(|(n, _)| n == "after").unwrap().1;
    match after {
        A::Union(1, row) => match &**row {
            A::Record(cols) => cols
                .iter()
                .map(|(_, c)| match c {
                    A::Union(i, _) => *i,
                    other => panic!("not a union: {other:?}"),
                })
                .collect(),
            other => panic!("not a record: {other:?}"),
        },
        other => panic!("no after: {other:?}"),
    }
}

fn nested_array(depth: usize) -> Value {
    (0..depth).fold(Value::Int(1), |v, _| Value::Array(vec![v]))
}

fn nested_doc(depth: usize) -> Value {
    (0..depth).fold(Value::Text("leaf".into()), |v, i| {
        Value::Document(vec![(format!("k{i}"), v), ("x".into(), Value::Null)])
    })
}

// -- schema generation --------------------------------------------------

#[test]
fn classifies_column_types() {
    let cases: &[(&str, AvroType)] = &[
        ("boolean", AvroType::Boolean),
        ("smallint", AvroType::Int),
        ("integer", AvroType::Int),
        ("int4", AvroType::Int),
        ("bigint", AvroType::Long),
        ("oid", AvroType::Long),
        ("real", AvroType::Double),
        ("double precision", AvroType::Double),
        ("numeric", AvroType::NumericText),
        (
            "numeric(12,2)",
            AvroType::Decimal {
                precision: 12,
                scale: 2,
            },
        ),
        (
            " NUMERIC(12, 2) ",
            AvroType::Decimal {
                precision: 12,
                scale: 2,
            },
        ),
        (
            "numeric(5)",
            AvroType::Decimal {
                precision: 5,
                scale: 0,
            },
        ),
        ("numeric(2,-3)", AvroType::NumericText),
        ("numeric(3,5)", AvroType::NumericText),
        ("numeric(1001,0)", AvroType::NumericText),
        ("numeric(12,2)[]", AvroType::Generic),
        ("numericx", AvroType::Text),
        ("text", AvroType::Text),
        ("character varying(10)", AvroType::Text),
        ("\"char\"", AvroType::Text),
        ("citext", AvroType::Text),
        ("\"mood\"", AvroType::Text),
        ("uuid", AvroType::Uuid),
        ("bytea", AvroType::Bytes),
        ("date", AvroType::Temporal(TemporalKind::Date)),
        (
            "time without time zone",
            AvroType::Temporal(TemporalKind::Time),
        ),
        (
            "time(3) with time zone",
            AvroType::Temporal(TemporalKind::TimeTz),
        ),
        (
            "timestamp without time zone",
            AvroType::Temporal(TemporalKind::Timestamp),
        ),
        (
            "timestamp(6) with time zone",
            AvroType::Temporal(TemporalKind::Timestamptz),
        ),
        ("timestamptz", AvroType::Temporal(TemporalKind::Timestamptz)),
        ("interval", AvroType::Temporal(TemporalKind::Interval)),
        (
            "interval day to second(3)",
            AvroType::Temporal(TemporalKind::Interval),
        ),
        ("json", AvroType::Json),
        ("jsonb", AvroType::Json),
        ("text[]", AvroType::Generic),
        ("integer[]", AvroType::Generic),
        ("myschema.date", AvroType::Text),
    ];
    for (t, want) in cases {
        assert_eq!(classify(t, false), *want, "{t}");
    }
    assert_eq!(classify("date", true), AvroType::Text, "an enum is text");
}

#[test]
fn column_names_are_sanitized_and_unique() {
    let t = table_of(
        "my-schema",
        "2024 orders",
        vec![
            col("id", "bigint", true),
            col("a b", "text", false),
            col("a_b", "text", false),
            col("1st", "text", false),
            col("", "text", false),
            col("prix€", "text", false),
            col("a_b_2", "text", false),
        ],
    );
    let (plan, _) = SchemaPlan::build(Arc::clone(&t), None).unwrap();
    let names: Vec<&str> = plan.columns.iter().map(|c| c.field.as_str()).collect();
    assert_eq!(
        names,
        ["id", "a_b", "a_b_2", "_1st", "_", "prix_", "a_b_2_2"]
    );
    assert!(plan
        .avro_json
        .contains(r#""namespace":"ferry.my_schema._2024_orders""#));
    apache_avro::Schema::parse_str(&plan.avro_json).unwrap();
    let row: Row = (0..7).map(|i| v(Value::Text(format!("v{i}")))).collect();
    let mut row = row;
    row[0] = v(Value::Int(1));
    assert_round_trips(&event(&t, Op::Insert, None, Some(row)));
}

#[test]
fn rabin_and_canonical_form_match_apache_avro_without_logical_types() {
    // apache-avro's documented test vector.
    assert_eq!(
        rabin_fingerprint(b"hello world").to_le_bytes(),
        [0x60, 0x33, 0x5b, 0xa6, 0xd0, 0x41, 0x55, 0x28]
    );
    let t = table_of(
        "public",
        "t",
        vec![
            col("id", "bigint", true),
            col("note", "text", false),
            col("doc", "jsonb", false),
            col("tags", "text[]", false),
        ],
    );
    let (plan, canonical) = SchemaPlan::build(t, None).unwrap();
    let schema = apache_avro::Schema::parse_str(&plan.avro_json).unwrap();
    assert_eq!(schema.canonical_form(), canonical);
    let theirs = schema.fingerprint::<apache_avro::rabin::Rabin>();
    assert_eq!(theirs.bytes, plan.fingerprint.to_le_bytes());
}

#[test]
fn canonical_form_follows_the_specification() {
    let canonical = |s: &str| canonical_form(&serde_json::from_str(s).unwrap()).unwrap();
    assert_eq!(canonical(r#"{"type":"int"}"#), r#""int""#);
    // Logical types and their attributes are stripped (apache-avro 0.21
    // keeps precision and scale here).
    assert_eq!(
        canonical(r#"{"type":"bytes","logicalType":"decimal","precision":12,"scale":2}"#),
        r#""bytes""#
    );
    assert_eq!(
        canonical(r#"{"type":"string","logicalType":"uuid"}"#),
        r#""string""#
    );
    assert_eq!(
        canonical(
            r#"{"namespace":"a.b","name":"R","type":"record","doc":"x","fields":[
                {"name":"f","type":{"type":"fixed","name":"F","size":"016"},"default":"x"},
                {"name":"g","type":"F"},
                {"name":"h","type":{"type":"enum","name":"c.E","symbols":["X","Y"]}},
                {"name":"i","type":{"type":"map","values":{"type":"array","items":"long"}}}]}"#
        ),
        concat!(
            r#"{"name":"a.b.R","type":"record","fields":["#,
            r#"{"name":"f","type":{"name":"a.b.F","type":"fixed","size":16}},"#,
            r#"{"name":"g","type":"a.b.F"},"#,
            r#"{"name":"h","type":{"name":"c.E","type":"enum","symbols":["X","Y"]}},"#,
            r#"{"name":"i","type":{"type":"map","values":{"type":"array","items":"long"}}}]}"#
        )
    );
    for bad in ["1", "{}", r#"{"type":"record"}"#, r#"{"type":7}"#, "null"] {
        assert!(
            canonical_form(&serde_json::from_str(bad).unwrap()).is_err(),
            "{bad}"
        );
    }
}

#[test]
fn the_schema_carries_the_table_schema() {
    let t = payments();
    let (plan, _) = SchemaPlan::build(Arc::clone(&t), None).unwrap();
    let json: Json = serde_json::from_str(&plan.avro_json).unwrap();
    let back: TableSchema = serde_json::from_value(json[TABLE_ATTRIBUTE].clone()).unwrap();
    assert_eq!(back, *t);
    assert_eq!(json["name"], "Envelope");
    assert_eq!(json["namespace"], "ferry.public.payments");
    let names: Vec<&str> = json["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names[..6],
        ["before", "after", "unchanged", "op", "source", "ts_ms"]
    );
    assert!(names[6].starts_with(MARKER_PREFIX));
}

// -- types ----------------------------------------------------------------

fn all_types() -> Arc<TableSchema> {
    table_of(
        "public",
        "all_types",
        vec![
            col("id", "bigint", true),
            col("b", "boolean", false),
            col("i2", "smallint", false),
            col("i4", "integer", false),
            col("f4", "real", false),
            col("f8", "double precision", false),
            col("n", "numeric", false),
            col("n12", "numeric(12,2)", false),
            col("t", "text", false),
            col("vc", "character varying(10)", false),
            col("u", "uuid", false),
            col("by", "bytea", false),
            col("d", "date", false),
            col("tm", "time without time zone", false),
            col("ttz", "time with time zone", false),
            col("ts", "timestamp without time zone", false),
            col("tstz", "timestamp with time zone", false),
            col("iv", "interval", false),
            col("j", "json", false),
            col("jb", "jsonb", false),
            col("arr", "integer[]", false),
            col("mood", "\"mood\"", false),
        ],
    )
}

fn natural_row() -> Row {
    let u = uuid::Uuid::parse_str("0f5f1b8c-8d7e-4b21-9c1e-2a3b4c5d6e7f").unwrap();
    vec![
        v(Value::Int(i64::MAX)),
        v(Value::Bool(true)),
        v(Value::Int(-32768)),
        v(Value::Int(i64::from(i32::MIN))),
        v(Value::Float(1.5)),
        v(Value::Float(-0.0)),
        v(num("-123456789012345678901234567890.000000000012")),
        v(num("-1234567890.12")),
        v(Value::Text("héllo\n\"wörld\"\u{0}".into())),
        v(Value::Text("short".into())),
        v(Value::Uuid(u)),
        v(Value::Bytes(vec![0, 1, 0xff, b'\\'])),
        v(Value::Temporal(TemporalKind::Date, "0044-03-15 BC".into())),
        v(Value::Temporal(TemporalKind::Time, "24:00:00".into())),
        v(Value::Temporal(
            TemporalKind::TimeTz,
            "12:00:00.123456+05:30".into(),
        )),
        v(Value::Temporal(TemporalKind::Timestamp, "infinity".into())),
        v(Value::Temporal(
            TemporalKind::Timestamptz,
            "2024-02-29 23:59:59.999999+00".into(),
        )),
        v(Value::Temporal(
            TemporalKind::Interval,
            "1 year 2 mons -3 days 04:05:06.7".into(),
        )),
        v(Value::Json(r#"{"a": [1, 2.50, "x"]}"#.into())),
        v(Value::Json(r#"{"a": 1}"#.into())),
        v(Value::Array(vec![
            Value::Int(1),
            Value::Null,
            Value::Array(vec![]),
        ])),
        v(Value::Text("happy".into())),
    ]
}

#[test]
fn every_type_round_trips_in_its_natural_branch() {
    let t = all_types();
    let ev = event(&t, Op::Insert, None, Some(natural_row()));
    assert_round_trips(&ev);
    let branches = apache_branches(&ev);
    // Every column in its natural branch (1), the array column in
    // ferry.Value (its only non-null branch, 1).
    assert_eq!(branches, vec![1; t.columns.len()]);
    // Nulls everywhere.
    let nulls = vec![v(Value::Null); t.columns.len()];
    let ev = event(&t, Op::Update, Some(nulls.clone()), Some(nulls));
    assert_round_trips(&ev);
    assert_eq!(apache_branches(&ev), vec![0; t.columns.len()]);
}

#[test]
fn mismatched_values_use_the_generic_branch() {
    let t = all_types();
    let mut row = vec![v(Value::Null); t.columns.len()];
    let oid = [0x65, 0x0a, 0xff, 0, 1, 2, 3, 4, 5, 6, 0xab, 0xcd];
    row[1] = v(Value::Text("t".into())); // text in boolean
    row[3] = v(Value::Int(i64::from(i32::MAX) + 1)); // beyond int4
    row[6] = v(Value::Numeric(Numeric::NaN)); // NaN in numeric
    row[7] = v(Value::Numeric(Numeric::PosInfinity)); // Infinity in numeric(12,2)
    row[8] = v(Value::ObjectId(oid)); // ObjectId in text
    row[10] = v(Value::Text("not-a-uuid".into()));
    row[14] = v(Value::Temporal(TemporalKind::Time, "12:00".into())); // kind mismatch
    row[19] = v(Value::Document(vec![("a".into(), Value::Int(1))])); // document in jsonb
    row[20] = v(Value::Text("{1,2}".into())); // text in an array column
    let ev = event(&t, Op::Insert, None, Some(row));
    assert_round_trips(&ev);
    let branches = apache_branches(&ev);
    for i in [1, 3, 6, 7, 8, 10, 14, 19] {
        assert_eq!(branches[i], 2, "column {i}");
    }
    assert_eq!(branches[20], 1);
    assert_eq!(branches[0], 0);
}

#[test]
fn numeric_specials_and_large_values() {
    let t = table_of(
        "public",
        "n",
        vec![
            col("id", "integer", true),
            col("free", "numeric", false),
            col("fixed", "numeric(45,5)", false),
            col("money", "numeric(12,2)", false),
        ],
    );
    let forty = "1234567890123456789012345678901234567890";
    let cases = [
        ("NaN", "NaN", "NaN"),
        ("Infinity", "-Infinity", "Infinity"),
        ("-Infinity", "Infinity", "-Infinity"),
        (forty, &format!("-{forty}") as &str, "-0.01"),
        (
            &format!("{forty}.{forty}") as &str,
            &format!("{forty}.12345"),
            "9999999999.99",
        ),
        (
            "-0.000000000000000000000000000000000000001",
            "0.00000",
            "-9999999999.99",
        ),
        ("0", "-1", "0.00"),
    ];
    for (free, fixed, money) in cases {
        let row = vec![v(Value::Int(1)), v(num(free)), v(num(fixed)), v(num(money))];
        assert_round_trips(&event(&t, Op::Insert, None, Some(row)));
    }
    // Too many digits for numeric(45,5) after rescaling: exact through
    // the generic branch.
    let row = vec![
        v(Value::Int(1)),
        v(Value::Null),
        v(num(&format!("{forty}1"))),
        v(num("12345678901.5")),
    ];
    let ev = event(&t, Op::Insert, None, Some(row));
    assert_round_trips(&ev);
    assert_eq!(apache_branches(&ev), [1, 0, 2, 2]);
}

#[test]
fn a_shorter_scale_is_padded_in_numeric_p_s() {
    let t = payments();
    let ev = event(&t, Op::Insert, None, Some(payment_row(1, "1.5", "x")));
    let back = round_trip(&ev, Encoding::Avro);
    assert_eq!(back.after.unwrap()[1], v(num("1.50")));
    let back = round_trip(&ev, Encoding::Json);
    assert_eq!(back.after.unwrap()[1], v(num("1.5")));
    // More fractional digits than the scale: kept exactly (generic).
    let ev = event(&t, Op::Insert, None, Some(payment_row(1, "1.555", "x")));
    let back = round_trip(&ev, Encoding::Avro);
    assert_eq!(back.after.unwrap()[1], v(num("1.555")));
}

#[test]
fn twos_complement_edge_cases() {
    let cases: &[(&str, &[u8])] = &[
        ("0", &[0x00]),
        ("1", &[0x01]),
        ("-1", &[0xFF]),
        ("127", &[0x7F]),
        ("-128", &[0x80]),
        ("128", &[0x00, 0x80]),
        ("-129", &[0xFF, 0x7F]),
        ("255", &[0x00, 0xFF]),
        ("-255", &[0xFF, 0x01]),
        ("256", &[0x01, 0x00]),
        ("-256", &[0xFF, 0x00]),
        ("-32768", &[0x80, 0x00]),
        ("32768", &[0x00, 0x80, 0x00]),
        (
            "100000000000000000000000000000000000000",
            &[
                0x4B, 0x3B, 0x4C, 0xA8, 0x5A, 0x86, 0xC4, 0x7A, 0x09, 0x8A, 0x22, 0x40, 0x00, 0x00,
                0x00, 0x00,
            ],
        ),
        (
            "-100000000000000000000000000000000000000",
            &[
                0xB4, 0xC4, 0xB3, 0x57, 0xA5, 0x79, 0x3B, 0x85, 0xF6, 0x75, 0xDD, 0xC0, 0x00, 0x00,
                0x00, 0x00,
            ],
        ),
    ];
    for (text, want) in cases {
        let d = dec(text);
        let got = decimal_to_avro(&d, 39, 0).unwrap();
        assert_eq!(got, *want, "{text}");
        assert_eq!(got, oracle_bytes(text), "{text} (oracle)");
        assert_eq!(decimal_from_avro(&got, 39, 0).unwrap(), d, "{text} back");
    }
    // With a scale: -1.28 in numeric(5,2) is the unscaled -128.
    assert_eq!(decimal_to_avro(&dec("-1.28"), 5, 2).unwrap(), [0x80]);
    assert_eq!(decimal_from_avro(&[0x80], 5, 2).unwrap(), dec("-1.28"));
    assert_eq!(decimal_from_avro(&[0x01], 5, 3).unwrap(), dec("0.001"));
    // Wider than the precision allows: refused, whatever the bytes.
    assert!(decimal_from_avro(&[0x00, 0xFF, 0xFF], 2, 0).is_err());
    assert!(decimal_from_avro(&[0x27, 0x10], 4, 0).is_err()); // 10000
    assert!(decimal_from_avro(&[], 4, 0).is_err());
    assert!(decimal_from_avro(&[1; 600], 1000, 0).is_err());
}

/// Minimal two's complement from apache-avro's own bignum, as the
/// oracle (the codec itself uses none).
fn oracle_bytes(integer: &str) -> Vec<u8> {
    let bd: apache_avro::BigDecimal = integer.parse().unwrap();
    let (unscaled, exponent) = bd.as_bigint_and_exponent();
    assert_eq!(exponent, 0);
    unscaled.to_signed_bytes_be()
}

// -- TOAST, nesting, events ------------------------------------------------

#[test]
fn unchanged_toast_is_restored() {
    let t = table_of(
        "public",
        "docs",
        vec![
            col("id", "bigint", true),
            col("body", "text", false),
            col("meta", "jsonb", false),
            col("n", "integer", false),
        ],
    );
    let after = vec![
        v(Value::Int(7)),
        Datum::UnchangedToast,
        Datum::UnchangedToast,
        v(Value::Int(1)),
    ];
    let ev = event(&t, Op::Update, None, Some(after));
    assert_round_trips(&ev);
    let mut enc = Encoder::new(Encoding::Json, "main");
    let json = String::from_utf8(enc.encode(&ev).unwrap().0).unwrap();
    assert!(
        json.contains(r#""after":{"id":7,"body":null,"meta":null,"n":1}"#),
        "{json}"
    );
    assert!(json.contains(r#""unchanged":["body","meta"]"#), "{json}");
    // Not representable in `before`.
    let before = vec![
        v(Value::Int(7)),
        Datum::UnchangedToast,
        v(Value::Null),
        v(Value::Null),
    ];
    let ev = event(&t, Op::Update, Some(before), None);
    for e in [Encoding::Avro, Encoding::Json] {
        let err = Encoder::new(e, "main").encode(&ev).unwrap_err();
        assert!(matches!(err, EnvelopeError::Unencodable(_)), "{err}");
    }
}

#[test]
fn nested_documents_arrays_and_object_ids() {
    let t = table_of(
        "app",
        "users",
        vec![col("_id", "text", true), col("document", "jsonb", false)],
    );
    let oid = [0x65, 0x0a, 0xff, 0, 1, 2, 3, 4, 5, 6, 0xab, 0xcd];
    let doc = Value::Document(vec![
        ("name".into(), Value::Text("Ada".into())),
        ("dup".into(), Value::Int(1)),
        ("dup".into(), Value::Int(2)),
        (
            "tags".into(),
            Value::Array(vec![
                Value::ObjectId(oid),
                Value::Null,
                Value::Float(f64::NAN),
            ]),
        ),
        (
            "inner".into(),
            Value::Document(vec![
                (
                    "at".into(),
                    Value::Temporal(TemporalKind::Timestamptz, "2024-01-01 00:00:00+00".into()),
                ),
                ("price".into(), num("19.990")),
                ("id".into(), Value::Uuid(uuid::Uuid::from_bytes([7; 16]))),
                ("bin".into(), Value::Bytes(vec![1, 2, 3])),
                ("empty".into(), Value::Document(vec![])),
                ("raw".into(), Value::Json("[1]".into())),
                (
                    "odd nan".into(),
                    Value::Float(f64::from_bits(0xfff8_0000_0000_0001)),
                ),
            ]),
        ),
    ]);
    let ev = event(
        &t,
        Op::Insert,
        None,
        Some(vec![v(Value::ObjectId(oid)), v(doc)]),
    );
    assert_round_trips(&ev);
    assert_eq!(apache_branches(&ev), [2, 2]);
}

#[test]
fn nesting_limits() {
    let t = table_of(
        "public",
        "deep",
        vec![col("id", "integer", true), col("j", "jsonb", false)],
    );
    let row = |value: Value| Some(vec![v(Value::Int(1)), v(value)]);
    for deep in [nested_array(MAX_JSON_DEPTH), nested_doc(MAX_JSON_DEPTH)] {
        assert_round_trips(&event(&t, Op::Insert, None, row(deep)));
    }
    for deep in [nested_array(MAX_DEPTH), nested_doc(MAX_DEPTH)] {
        let ev = event(&t, Op::Insert, None, row(deep.clone()));
        assert!(same_event(&round_trip(&ev, Encoding::Avro), &ev));
        let err = Encoder::new(Encoding::Json, "m").encode(&ev).unwrap_err();
        assert!(matches!(err, EnvelopeError::Unencodable(_)));
        let ev = event(&t, Op::Insert, None, row(Value::Array(vec![deep])));
        let err = Encoder::new(Encoding::Avro, "m").encode(&ev).unwrap_err();
        assert!(matches!(err, EnvelopeError::Unencodable(_)));
    }
}

#[test]
fn ops_positions_and_source_fields_round_trip() {
    let t = payments();
    let row = payment_row(42, "12.50", "coffee");
    for op in Op::ALL {
        let (before, after) = match op {
            Op::Insert | Op::Read => (None, Some(row.clone())),
            Op::Update => (Some(row.clone()), Some(payment_row(42, "13.00", "tea"))),
            Op::Delete => (Some(row.clone()), None),
            Op::Truncate => (None, None),
        };
        let mut ev = event(&t, op, before, after);
        ev.position = Position {
            commit_lsn: u64::MAX,
            ordinal: u64::MAX - 1,
        };
        ev.xid = if op == Op::Read { None } else { Some(u32::MAX) };
        ev.commit_ts_micros = -1_234_567;
        ev.resume_token = Some(Arc::from(r#"{"_data":"8265A1"}"#));
        assert_round_trips(&ev);
    }
}

#[test]
fn a_row_that_does_not_match_its_table_is_refused() {
    let t = payments();
    let ev = event(&t, Op::Insert, None, Some(vec![v(Value::Int(1))]));
    for e in [Encoding::Avro, Encoding::Json] {
        let err = Encoder::new(e, "main").encode(&ev).unwrap_err();
        assert!(matches!(err, EnvelopeError::Unencodable(_)), "{err}");
    }
}

// -- schemas, framing ---------------------------------------------------

#[test]
fn a_schema_change_brings_a_new_fingerprint_and_new_schema() {
    let t1 = payments();
    let mut enc = Encoder::new(Encoding::Avro, "main");
    let ev = event(&t1, Op::Insert, None, Some(payment_row(1, "1.00", "a")));
    let (_, new1) = enc.encode(&ev).unwrap();
    let new1 = new1.expect("first use announces the schema");
    assert_eq!(new1.subject_table, t1.id);
    assert!(enc.encode(&ev).unwrap().1.is_none());
    // An equal schema in another Arc is the same schema.
    let copy = Arc::new((*t1).clone());
    let ev_copy = event(&copy, Op::Insert, None, Some(payment_row(1, "1.00", "a")));
    assert!(enc.encode(&ev_copy).unwrap().1.is_none());

    // A new column.
    let mut t2 = (*t1).clone();
    t2.columns.push(col("fee", "numeric(12,2)", false));
    let t2 = Arc::new(t2);
    let mut row = payment_row(1, "1.00", "a");
    row.push(v(num("0.10")));
    let (bytes2, new2) = enc
        .encode(&event(&t2, Op::Insert, None, Some(row)))
        .unwrap();
    let new2 = new2.unwrap();
    assert_ne!(new2.fingerprint, new1.fingerprint);
    assert_eq!(
        Decoder::schema_ref(&bytes2).unwrap(),
        Some(SchemaRef::Fingerprint(new2.fingerprint))
    );

    // Same Avro shape, other table schema: varchar(10) → varchar(20),
    // and NOT NULL.
    let mut t3 = (*t1).clone();
    t3.columns[2].type_sql = "character varying(20)".into();
    let mut t4 = t3.clone();
    t4.columns[2].nullable = false;
    let mut seen = vec![new1.fingerprint, new2.fingerprint];
    for t in [t3, t4] {
        let t = Arc::new(t);
        let ev = event(&t, Op::Insert, None, Some(payment_row(1, "1.00", "a")));
        let (bytes, new) = enc.encode(&ev).unwrap();
        let new = new.unwrap();
        assert!(!seen.contains(&new.fingerprint));
        seen.push(new.fingerprint);
        // The decoder rebuilds exactly that table schema.
        let mut dec = Decoder::new();
        dec.add_schema(&new.avro_json, None).unwrap();
        assert_eq!(*dec.decode(&bytes).unwrap().table, *t);
    }
    // The old schema is still known to the encoder.
    assert!(enc.encode(&ev).unwrap().1.is_none());
}

#[test]
fn a_failed_first_encode_does_not_lose_the_announcement() {
    let t = payments();
    let mut enc = Encoder::new(Encoding::Avro, "main");
    let bad = event(&t, Op::Insert, None, Some(vec![]));
    assert!(enc.encode(&bad).is_err());
    let ok = event(&t, Op::Insert, None, Some(payment_row(1, "1.00", "a")));
    assert!(enc.encode(&ok).unwrap().1.is_some());
}

#[test]
fn single_object_then_confluent_wire_format() {
    let t = payments();
    let ev = event(&t, Op::Insert, None, Some(payment_row(1, "2.50", "x")));
    let mut enc = Encoder::new(Encoding::Avro, "main");
    let (first, new) = enc.encode(&ev).unwrap();
    let new = new.unwrap();
    assert_eq!(first[..2], [0xC3, 0x01]);
    assert_eq!(first[2..10], new.fingerprint.to_le_bytes());

    enc.set_registry_id(new.fingerprint, 0x0102_0304);
    let (framed, again) = enc.encode(&ev).unwrap();
    assert!(again.is_none());
    assert_eq!(framed[..5], [0x00, 0x01, 0x02, 0x03, 0x04]);
    assert_eq!(framed[5..].len(), first[10..].len());
    assert_eq!(
        Decoder::schema_ref(&framed).unwrap(),
        Some(SchemaRef::Registry(0x0102_0304))
    );

    // A decoder that only knows the schema by fingerprint asks for the
    // registry id; once added with the id it decodes both framings.
    let mut dec = Decoder::new();
    dec.add_schema(&new.avro_json, None).unwrap();
    assert!(matches!(
        dec.decode(&framed),
        Err(EnvelopeError::UnknownSchema(SchemaRef::Registry(
            0x0102_0304
        )))
    ));
    dec.add_schema(&new.avro_json, Some(0x0102_0304)).unwrap();
    assert!(same_event(&dec.decode(&framed).unwrap(), &ev));
    assert!(same_event(&dec.decode(&first).unwrap(), &ev));
}

#[test]
fn unknown_schemas_and_foreign_schemas() {
    let t = payments();
    let ev = event(&t, Op::Insert, None, Some(payment_row(1, "2.50", "x")));
    let mut enc = Encoder::new(Encoding::Avro, "main");
    let (bytes, new) = enc.encode(&ev).unwrap();
    let new = new.unwrap();
    let mut dec = Decoder::new();
    match dec.decode(&bytes) {
        Err(EnvelopeError::UnknownSchema(SchemaRef::Fingerprint(fp))) => {
            assert_eq!(fp, new.fingerprint)
        }
        other => panic!("{other:?}"),
    }
    // Reformatted (as a registry may return it): still accepted.
    let pretty = pretty_json(&new.avro_json);
    assert_eq!(dec.add_schema(&pretty, None).unwrap(), new.fingerprint);
    assert!(same_event(
        &dec.decode(&bytes).unwrap(),
        &expected_avro(&ev)
    ));

    let tampered = new.avro_json.replace(
        r#""name":"id","type":["null","long""#,
        r#""name":"id","type":["null","int""#,
    );
    assert_ne!(tampered, new.avro_json);
    let foreign = r#"{"type":"record","name":"R","fields":[{"name":"a","type":"int"}]}"#;
    for bad in [tampered.as_str(), foreign, "not json", "[]", "{}"] {
        let err = Decoder::new().add_schema(bad, None).unwrap_err();
        assert!(matches!(err, EnvelopeError::Invalid(_)), "{err}");
    }
    for bad in [
        &[][..],
        &[0xC3, 0x01, 1, 2][..],
        &[0x00, 1][..],
        &[0x7F, 1, 2][..],
        b"{oops",
    ] {
        assert!(Decoder::new().decode(bad).is_err());
    }
}

// -- keys -----------------------------------------------------------------

#[test]
fn keys_are_json_objects_of_exact_text() {
    let enc = Encoder::new(Encoding::Avro, "main");
    let key = |ev: &ChangeEvent| String::from_utf8(enc.key(ev)).unwrap();
    let t = payments();
    let ins = event(&t, Op::Insert, None, Some(payment_row(42, "1.00", "a")));
    assert_eq!(key(&ins), r#"{"id":"42"}"#);
    let del = event(&t, Op::Delete, Some(payment_row(42, "9.00", "b")), None);
    assert_eq!(key(&del), r#"{"id":"42"}"#);
    assert_eq!(key(&event(&t, Op::Truncate, None, None)), "{}");

    // Stable across a schema change that leaves the key alone.
    let mut t2 = (*t).clone();
    t2.columns.push(col("fee", "numeric(12,2)", false));
    let t2 = Arc::new(t2);
    let mut row = payment_row(42, "1.00", "a");
    row.push(v(Value::Null));
    assert_eq!(
        key(&event(&t2, Op::Insert, None, Some(row))),
        r#"{"id":"42"}"#
    );

    // Composite keys in key order, exact forms.
    let mut t3 = (*table_of(
        "public",
        "k",
        vec![
            col("a", "numeric", true),
            col("b", "text", true),
            col("c", "uuid", true),
            col("d", "bytea", true),
            col("e", "boolean", true),
        ],
    ))
    .clone();
    t3.primary_key = vec![1, 0, 2, 3, 4];
    let t3 = Arc::new(t3);
    let row = vec![
        v(num("1.50")),
        v(Value::Text("x\"y".into())),
        v(Value::Uuid(uuid::Uuid::from_bytes([0xab; 16]))),
        v(Value::Bytes(vec![0, 0xff])),
        v(Value::Null),
    ];
    assert_eq!(
        key(&event(&t3, Op::Insert, None, Some(row))),
        r#"{"b":"x\"y","a":"1.50","c":"abababab-abab-abab-abab-abababababab","d":"\\x00ff","e":null}"#
    );

    // MongoDB: an ObjectId or a document _id.
    let tm = table_of("db", "users", vec![col("_id", "text", true)]);
    let oid = [0x65, 0x0a, 0xff, 0, 1, 2, 3, 4, 5, 6, 0xab, 0xcd];
    let ev = event(&tm, Op::Insert, None, Some(vec![v(Value::ObjectId(oid))]));
    assert_eq!(key(&ev), r#"{"_id":"650aff00010203040506abcd"}"#);
    let doc = Value::Document(vec![
        ("a".into(), Value::Int(1)),
        ("b".into(), Value::Array(vec![Value::Text("x".into())])),
    ]);
    let ev = event(&tm, Op::Insert, None, Some(vec![v(doc)]));
    assert_eq!(key(&ev), r#"{"_id":{"a":"1","b":["x"]}}"#);
}

// -- JSON form, sizes, example file -----------------------------------------

#[test]
fn json_form_is_readable() {
    let t = payments();
    let mut ev = event(
        &t,
        Op::Insert,
        None,
        Some(payment_row(42, "12.50", "coffee")),
    );
    ev.resume_token = Some(Arc::from("tok"));
    let mut enc = Encoder::new(Encoding::Json, "main");
    let (bytes, new) = enc.encode(&ev).unwrap();
    assert!(new.is_none());
    let text = String::from_utf8(bytes).unwrap();
    assert!(
        text.starts_with(r#"{"schema":{"id":{"schema":"public","name":"payments"}"#),
        "{text}"
    );
    assert!(
            text.contains(r#""payload":{"before":null,"after":{"id":42,"amount":{"numeric":"12.50"},"note":"coffee"},"unchanged":[],"op":"c","source":{"connector":"ferry","name":"main","schema":"public","table":"payments","commit_lsn":23803720,"ordinal":3,"xid":750,"resume_token":"tok","ts_ms":1717000000123,"ts_us":1717000000123456,"snapshot":false},"ts_ms":"#),
            "{text}"
        );
    assert_eq!(Decoder::schema_ref(text.as_bytes()).unwrap(), None);
}

#[test]
fn typical_row_sizes() {
    let t = payments();
    let ev = event(
        &t,
        Op::Insert,
        None,
        Some(payment_row(1_048_576, "1234.50", "coffee beans")),
    );
    let avro = Encoder::new(Encoding::Avro, "main")
        .encode(&ev)
        .unwrap()
        .0
        .len();
    let json = Encoder::new(Encoding::Json, "main")
        .encode(&ev)
        .unwrap()
        .0
        .len();
    let key = Encoder::new(Encoding::Avro, "main").key(&ev).len();
    eprintln!("payments row: key {key} B, Avro value {avro} B, JSON value {json} B");
    assert!(avro < 120, "{avro}");
    assert!(json < 900, "{json}");
}

/// Re-indents compact JSON, keeping key order; short containers stay on
/// one line.
fn pretty_json(compact: &str) -> String {
    enum Node {
        Atom(String),
        List(char, Vec<(Option<String>, Node)>),
    }
    fn atom_end(s: &[u8], mut i: usize) -> usize {
        if s[i] == b'"' {
            i += 1;
            while s[i] != b'"' {
                i += if s[i] == b'\\' { 2 } else { 1 };
            }
            return i + 1;
        }
        while !matches!(s[i], b',' | b']' | b'}') {
            i += 1;
        }
        i
    }
    fn parse(s: &[u8], i: usize) -> (Node, usize) {
        let open = s[i];
        if open != b'{' && open != b'[' {
            let end = atom_end(s, i);
            return (
                Node::Atom(String::from_utf8(s[i..end].to_vec()).unwrap()),
                end,
            );
        }
        let close = if open == b'{' { b'}' } else { b']' };
        let mut items = Vec::new();
        let mut i = i + 1;
        while s[i] != close {
            let mut key = None;
            if open == b'{' {
                let end = atom_end(s, i);
                key = Some(String::from_utf8(s[i..end].to_vec()).unwrap());
                i = end + 1; // ':'
            }
            let (node, end) = parse(s, i);
            items.push((key, node));
            i = if s[end] == b',' { end + 1 } else { end };
        }
        (Node::List(open as char, items), i + 1)
    }
    fn flat(n: &Node) -> String {
        match n {
            Node::Atom(a) => a.clone(),
            Node::List(open, items) => {
                let inner: Vec<String> = items
                    .iter()
                    .map(|(k, v)| match k {
                        Some(k) => format!("{k}: {}", flat(v)),
                        None => flat(v),
                    })
                    .collect();
                let close = if *open == '{' { '}' } else { ']' };
                format!("{open}{}{close}", inner.join(", "))
            }
        }
    }
    fn render(n: &Node, indent: usize, out: &mut String) {
        let one_line = flat(n);
        let Node::List(open, items) = n else {
            out.push_str(&one_line);
            return;
        };
        if one_line.len() + indent <= 76 {
            out.push_str(&one_line);
            return;
        }
        out.push(*open);
        for (i, (k, v)) in items.iter().enumerate() {
            out.push_str(if i > 0 { ",\n" } else { "\n" });
            out.push_str(&" ".repeat(indent + 2));
            if let Some(k) = k {
                out.push_str(k);
                out.push_str(": ");
            }
            render(v, indent + 2, out);
        }
        out.push('\n');
        out.push_str(&" ".repeat(indent));
        out.push(if *open == '{' { '}' } else { ']' });
    }
    let (node, _) = parse(compact.as_bytes(), 0);
    let mut out = String::new();
    render(&node, 0, &mut out);
    out.push('\n');
    out
}

#[test]
fn example_schema_file_is_current() {
    let (plan, _) = SchemaPlan::build(payments(), None).unwrap();
    let pretty = pretty_json(&plan.avro_json);
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../schemas/envelope.avsc");
    if std::env::var_os("FERRY_BLESS").is_some() {
        std::fs::write(path, &pretty).unwrap();
    }
    let on_disk = std::fs::read_to_string(path).unwrap();
    assert!(
        on_disk == pretty,
        "schemas/envelope.avsc is stale: rerun this test with FERRY_BLESS=1"
    );
    assert_eq!(
        Decoder::new().add_schema(&on_disk, None).unwrap(),
        plan.fingerprint
    );
}

// -- properties -----------------------------------------------------------

const TYPES: &[&str] = &[
    "boolean",
    "smallint",
    "integer",
    "bigint",
    "oid",
    "real",
    "double precision",
    "numeric",
    "numeric(12,2)",
    "numeric(5)",
    "numeric(45,10)",
    "numeric(3,5)",
    "numeric(2,-3)",
    "text",
    "character varying(10)",
    "\"mood\"",
    "uuid",
    "bytea",
    "date",
    "time without time zone",
    "time with time zone",
    "timestamp without time zone",
    "timestamp(3) with time zone",
    "interval",
    "json",
    "jsonb",
    "text[]",
    "integer[]",
];

fn arb_kind() -> impl Strategy<Value = TemporalKind> {
    prop::sample::select(TEMPORAL_KINDS.iter().map(|(k, _)| *k).collect::<Vec<_>>())
}

fn arb_decimal(max_digits: u32, max_scale: u32) -> BoxedStrategy<Decimal> {
    (
        any::<bool>(),
        proptest::string::string_regex(&format!("[0-9]{{1,{max_digits}}}")).unwrap(),
        0..=max_scale,
    )
        .prop_map(|(neg, digits, scale)| {
            format!("{}{digits}E-{scale}", if neg { "-" } else { "" })
                .parse()
                .unwrap()
        })
        .boxed()
}

fn arb_scalar() -> BoxedStrategy<Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::Int),
        any::<u64>().prop_map(|b| Value::Float(f64::from_bits(b))),
        prop_oneof![
            4 => arb_decimal(45, 20).prop_map(Numeric::Finite),
            1 => Just(Numeric::NaN),
            1 => Just(Numeric::PosInfinity),
            1 => Just(Numeric::NegInfinity),
        ]
        .prop_map(Value::Numeric),
        any::<String>().prop_map(Value::Text),
        any::<String>().prop_map(Value::Json),
        any::<[u8; 16]>().prop_map(|b| Value::Uuid(uuid::Uuid::from_bytes(b))),
        vec(any::<u8>(), 0..12).prop_map(Value::Bytes),
        (arb_kind(), any::<String>()).prop_map(|(k, s)| Value::Temporal(k, s)),
        any::<[u8; 12]>().prop_map(Value::ObjectId),
    ]
    .boxed()
}

fn arb_value() -> BoxedStrategy<Value> {
    arb_scalar()
        .prop_recursive(4, 24, 4, |inner| {
            prop_oneof![
                vec(inner.clone(), 0..4).prop_map(Value::Array),
                vec((any::<String>(), inner), 0..4).prop_map(Value::Document),
            ]
        })
        .boxed()
}

/// Values of the column type's own variant (the natural branch), with
/// some that do not fit it.
fn natural(type_sql: &str) -> BoxedStrategy<Value> {
    match classify(type_sql, false) {
        AvroType::Boolean => any::<bool>().prop_map(Value::Bool).boxed(),
        AvroType::Int => any::<i32>().prop_map(|i| Value::Int(i.into())).boxed(),
        AvroType::Long => any::<i64>().prop_map(Value::Int).boxed(),
        AvroType::Double => any::<u64>()
            .prop_map(|b| Value::Float(f64::from_bits(b)))
            .boxed(),
        AvroType::Decimal { precision, scale } => arb_decimal(precision, scale)
            .prop_map(|d| Value::Numeric(Numeric::Finite(d)))
            .boxed(),
        AvroType::NumericText => arb_decimal(60, 30)
            .prop_map(|d| Value::Numeric(Numeric::Finite(d)))
            .boxed(),
        AvroType::Text => any::<String>().prop_map(Value::Text).boxed(),
        AvroType::Json => any::<String>().prop_map(Value::Json).boxed(),
        AvroType::Uuid => any::<[u8; 16]>()
            .prop_map(|b| Value::Uuid(uuid::Uuid::from_bytes(b)))
            .boxed(),
        AvroType::Bytes => vec(any::<u8>(), 0..12).prop_map(Value::Bytes).boxed(),
        AvroType::Temporal(k) => any::<String>()
            .prop_map(move |s| Value::Temporal(k, s))
            .boxed(),
        AvroType::Generic => vec(arb_scalar(), 0..4).prop_map(Value::Array).boxed(),
    }
}

fn arb_table() -> impl Strategy<Value = Arc<TableSchema>> {
    (
        vec(
            (0..TYPES.len(), "[a-zA-Z_0-9 é-]{0,5}", any::<bool>()),
            0..7,
        ),
        "[a-z_]{1,6}",
        "[a-zA-Z0-9 -]{1,8}",
    )
        .prop_map(|(cols, schema, name)| {
            let columns = cols
                .into_iter()
                .map(|(t, n, key)| col(&n, TYPES[t], key))
                .collect();
            table_of(&schema, &name, columns)
        })
}

fn arb_row(table: &TableSchema, toast: bool) -> BoxedStrategy<Row> {
    let datums: Vec<BoxedStrategy<Datum>> = table
        .columns
        .iter()
        .map(|c| {
            let value = prop_oneof![
                5 => natural(&c.type_sql),
                1 => Just(Value::Null),
                2 => arb_value(),
            ]
            .prop_map(Datum::Value);
            if toast {
                prop_oneof![6 => value, 1 => Just(Datum::UnchangedToast)].boxed()
            } else {
                value.boxed()
            }
        })
        .collect();
    datums.boxed()
}

fn arb_event() -> impl Strategy<Value = ChangeEvent> {
    arb_table()
        .prop_flat_map(|t| {
            (
                Just(Arc::clone(&t)),
                prop::sample::select(Op::ALL.to_vec()),
                prop::option::of(arb_row(&t, false)),
                prop::option::of(arb_row(&t, true)),
                (any::<u64>(), any::<u64>()),
                prop::option::of(any::<u32>()),
                any::<i64>(),
                prop::option::of(any::<String>()),
            )
        })
        .prop_map(
            |(table, op, before, after, (lsn, ordinal), xid, ts, token)| ChangeEvent {
                table,
                op,
                before,
                after,
                position: Position {
                    commit_lsn: lsn,
                    ordinal,
                },
                xid,
                commit_ts_micros: ts,
                resume_token: token.map(Arc::from),
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn events_round_trip_through_both_encodings(ev in arb_event()) {
        for encoding in [Encoding::Avro, Encoding::Json] {
            let mut enc = Encoder::new(encoding, "main");
            let (bytes, new) = enc.encode(&ev).unwrap();
            let mut dec = Decoder::new();
            if let Some(new) = &new {
                dec.add_schema(&new.avro_json, None).unwrap();
            }
            let back = dec.decode(&bytes).unwrap();
            let want = if encoding == Encoding::Avro { expected_avro(&ev) } else { ev.clone() };
            prop_assert!(same_event(&back, &want), "{:?}:\n{:?}\n!=\n{:?}", encoding, back, want);
            // The decoder shares one Arc per schema.
            let again = dec.decode(&bytes).unwrap();
            prop_assert!(Arc::ptr_eq(&back.table, &again.table));
        }
    }

    #[test]
    fn apache_avro_agrees_on_the_bytes(ev in arb_event()) {
        let mut enc = Encoder::new(Encoding::Avro, "main");
        let (bytes, new) = enc.encode(&ev).unwrap();
        let schema = apache_avro::Schema::parse_str(&new.unwrap().avro_json).unwrap();
        let mut datum: &[u8] = &bytes[10..];
        let value = apache_avro::from_avro_datum(&schema, &mut datum, None).unwrap();
        prop_assert!(datum.is_empty());
        prop_assert_eq!(apache_avro::to_avro_datum(&schema, value).unwrap(), &bytes[10..]);
    }

    #[test]
    fn decimal_bytes_match_the_oracle(neg in any::<bool>(), digits in "[1-9][0-9]{0,70}|0") {
        let negative = neg && digits != "0";
        let ours = to_twos_complement(negative, digits_to_magnitude(digits.as_bytes()));
        let text = format!("{}{digits}", if negative { "-" } else { "" });
        prop_assert_eq!(&ours, &oracle_bytes(&text));
        let (back_neg, mag) = from_twos_complement(&ours);
        prop_assert_eq!(back_neg, negative);
        prop_assert_eq!(magnitude_to_digits(&mag), digits);
    }

    #[test]
    fn garbage_is_an_error_never_a_panic(
        bytes in vec(any::<u8>(), 0..300),
        framing in 0..4u8,
    ) {
        let t = all_types();
        let (plan, _) = SchemaPlan::build(t, None).unwrap();
        let mut dec = Decoder::new();
        dec.add_schema(&plan.avro_json, Some(7)).unwrap();
        let mut value = match framing {
            0 => vec![],
            1 => [&[0xC3, 0x01][..], &plan.fingerprint.to_le_bytes()].concat(),
            2 => vec![0, 0, 0, 0, 7],
            _ => b"{".to_vec(),
        };
        value.extend(bytes);
        let _ = Decoder::schema_ref(&value);
        let _ = dec.decode(&value);
    }

    #[test]
    fn corrupted_messages_never_panic(
        ev in arb_event(),
        json in any::<bool>(),
        edits in vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in prop::option::of(any::<prop::sample::Index>()),
    ) {
        let encoding = if json { Encoding::Json } else { Encoding::Avro };
        let (mut bytes, new) = Encoder::new(encoding, "main").encode(&ev).unwrap();
        let mut dec = Decoder::new();
        if let Some(new) = &new {
            dec.add_schema(&new.avro_json, None).unwrap();
            // A corrupted schema text is refused or accepted, never a panic.
            let mut text = new.avro_json.clone().into_bytes();
            for (i, b) in &edits {
                let at = i.index(text.len());
                text[at] = *b;
            }
            let _ = Decoder::new().add_schema(&String::from_utf8_lossy(&text), None);
        }
        for (i, b) in &edits {
            let at = i.index(bytes.len());
            bytes[at] = *b;
        }
        if let Some(cut) = cut {
            bytes.truncate(cut.index(bytes.len()));
        }
        let _ = dec.decode(&bytes);
    }
}
