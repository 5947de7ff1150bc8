//! Tests of the BSON codec: one per type and edge case, then properties
//! (exact Decimal128 for any coefficient and exponent, DateTime text that
//! reads back to the same millisecond, Extended JSON that always parses).

use super::*;
use bson::oid::ObjectId;
use bson::{doc, DateTime, JavaScriptCodeWithScope, Regex, Timestamp};
use ferry_pipeline::calendar::days_from_civil;
use proptest::prelude::*;
use serde_json::json;

/// The largest Decimal128 coefficient, 10^34 - 1.
const MAX_COEFFICIENT: u128 = 9_999_999_999_999_999_999_999_999_999_999_999;

/// A Decimal128 built from its fields, bit by bit (IEEE 754-2008 BID,
/// coefficient below 2^113), independent of bson's string parser.
fn dec128(negative: bool, coefficient: u128, exponent: i16) -> Decimal128 {
    let biased = u128::try_from(exponent + 6176).expect("exponent in range");
    let bits = (u128::from(negative) << 127) | (biased << 113) | coefficient;
    // BSON stores the 128 bits little-endian.
    Decimal128::from_bytes(bits.to_le_bytes())
}

/// The exact plain text of `(-1)^negative * coefficient * 10^exponent`,
/// built from the digits alone, with the scale the value carries
/// (`max(0, -exponent)`), as [`Numeric`]'s Display prints it.
fn plain(negative: bool, coefficient: u128, exponent: i16) -> String {
    let digits = coefficient.to_string();
    let body = if coefficient == 0 && exponent >= 0 {
        "0".to_owned()
    } else if exponent >= 0 {
        format!("{digits}{}", "0".repeat(exponent as usize))
    } else {
        let scale = exponent.unsigned_abs() as usize;
        if digits.len() > scale {
            let (int, frac) = digits.split_at(digits.len() - scale);
            format!("{int}.{frac}")
        } else {
            format!("0.{}{digits}", "0".repeat(scale - digits.len()))
        }
    };
    let sign = if negative && coefficient != 0 {
        "-"
    } else {
        ""
    };
    format!("{sign}{body}")
}

fn num(d: Decimal128) -> Numeric {
    decimal128_to_numeric(d).expect("every Decimal128 converts")
}

fn finite(n: &Numeric) -> &ferry_pipeline::value::Decimal {
    match n {
        Numeric::Finite(d) => d,
        other => panic!("not finite: {other:?}"),
    }
}

fn conv(b: Bson) -> Value {
    bson_to_value(&b).expect("converts")
}

fn json_of(v: &Value) -> serde_json::Value {
    match v {
        Value::Json(s) => serde_json::from_str(s).expect("valid JSON"),
        other => panic!("not JSON: {other:?}"),
    }
}

// ---- Decimal128 ----

#[test]
fn decimal128_canonical_strings_convert_exactly() {
    // (input, bson's canonical Display, exact value). The Display column
    // pins the notation this codec has to read.
    let cases = [
        ("1E+2", "1E+2", "100"),
        ("100", "100", "100"),
        ("1.5E+3", "1.5E+3", "1500"),
        ("1.50", "1.50", "1.50"),
        ("1.000E-10", "1.000E-10", "0.0000000001000"),
        ("0.000001", "0.000001", "0.000001"),
        ("1E-7", "1E-7", "0.0000001"),
        ("-0", "-0", "0"),
        ("-0E+3", "-0E+3", "0"),
        ("0E+3", "0E+3", "0"),
        ("-0.00", "-0.00", "0.00"),
        (
            "1234567890123456789012345678901234",
            "1234567890123456789012345678901234",
            "1234567890123456789012345678901234",
        ),
        (
            "-1.234567890123456789012345678901234",
            "-1.234567890123456789012345678901234",
            "-1.234567890123456789012345678901234",
        ),
        (
            "9999999999999999999999999999999999E-6176",
            "9.999999999999999999999999999999999E-6143",
            // 6176 fraction digits: 6142 zeros, then the 34 nines.
            &format!("0.{}{}", "0".repeat(6142), "9".repeat(34)),
        ),
    ];
    for (input, canonical, exact) in cases {
        let d: Decimal128 = input.parse().unwrap();
        assert_eq!(d.to_string(), canonical, "{input}");
        assert_eq!(num(d).to_string(), exact, "{input}");
    }
}

#[test]
fn decimal128_negative_zero_is_plain_zero() {
    for input in ["-0", "-0E+3", "-0E-5"] {
        let n = num(input.parse().unwrap());
        let d = finite(&n);
        assert!(d.is_zero() && !d.is_negative(), "{input}");
    }
}

#[test]
fn decimal128_extreme_exponents_are_expanded_exactly() {
    // Smallest exponent: zero keeps its scale of 6176.
    let n = num("0E-6176".parse().unwrap());
    assert_eq!(finite(&n).scale(), 6176);
    assert!(finite(&n).is_zero());
    assert_eq!(n.to_string(), format!("0.{}", "0".repeat(6176)));

    let n = num("-1E-6176".parse().unwrap());
    assert_eq!(n.to_string(), format!("-0.{}1", "0".repeat(6175)));

    // Largest adjusted exponent, via bson's parser (which pads the
    // coefficient to reach exponent 6111) and via the bits.
    let d: Decimal128 = "1E+6144".parse().unwrap();
    assert_eq!(
        d.to_string(),
        format!("1.{}E+6144", "0".repeat(33)),
        "bson's canonical text"
    );
    assert_eq!(num(d).to_string(), format!("1{}", "0".repeat(6144)));
    let max = num(dec128(false, MAX_COEFFICIENT, 6111));
    assert_eq!(
        max.to_string(),
        format!("{}{}", "9".repeat(34), "0".repeat(6111))
    );
    let min = num(dec128(true, MAX_COEFFICIENT, 6111));
    assert_eq!(
        min.to_string(),
        format!("-{}{}", "9".repeat(34), "0".repeat(6111))
    );
}

#[test]
fn decimal128_specials() {
    for (input, want) in [
        ("NaN", Numeric::NaN),
        ("-NaN", Numeric::NaN),
        ("sNaN", Numeric::NaN),
        ("Infinity", Numeric::PosInfinity),
        ("-Infinity", Numeric::NegInfinity),
    ] {
        assert_eq!(num(input.parse().unwrap()), want, "{input}");
    }
    assert_eq!(
        conv(Bson::Decimal128("NaN".parse().unwrap())),
        Value::Numeric(Numeric::NaN)
    );
}

#[test]
fn decimal128_non_canonical_coefficient_is_zero() {
    // Above 10^34 - 1 in the short form, and the long form (`11` after the
    // sign), whose coefficient always exceeds it: both zero per the spec.
    let over = dec128(false, MAX_COEFFICIENT + 1, -2);
    assert_eq!(num(over).to_string(), "0.00");
    let long_form = Decimal128::from_bytes((0b011u128 << 125 | 5).to_le_bytes());
    assert!(finite(&num(long_form)).is_zero());
}

// ---- DateTime ----

/// Reads timestamptz text back to milliseconds, strictly in the shape
/// PostgreSQL prints: `YYYY[Y…]-MM-DD HH:MM:SS[.f{1,3}]+00[ BC]`.
fn parse_back(text: &str) -> i64 {
    let (body, bc) = match text.strip_suffix(" BC") {
        Some(body) => (body, true),
        None => (text, false),
    };
    let body = body.strip_suffix("+00").expect("UTC offset");
    let (date, time) = body.split_once(' ').expect("date and time");
    let parts: Vec<&str> = date.split('-').collect();
    let [y, m, d] = parts[..] else {
        panic!("date {date}")
    };
    assert!(y.len() >= 4 && m.len() == 2 && d.len() == 2, "{text}");
    let shown: i64 = y.parse().unwrap();
    assert!(shown >= 1, "{text}");
    let year = if bc { 1 - shown } else { shown };
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    assert!(frac.len() <= 3 && !frac.ends_with('0'), "{text}");
    if !frac.is_empty() {
        assert!(frac.bytes().all(|b| b.is_ascii_digit()), "{text}");
    }
    let ms: i64 = format!("{frac:0<3}").parse().unwrap();
    let parts: Vec<i64> = hms.split(':').map(|p| p.parse().unwrap()).collect();
    let [hh, mi, ss] = parts[..] else {
        panic!("time {time}")
    };
    assert!(hh < 24 && mi < 60 && ss < 60, "{text}");
    let (m, d): (u32, u32) = (m.parse().unwrap(), d.parse().unwrap());
    assert!((1..=12).contains(&m) && (1..=31).contains(&d), "{text}");
    days_from_civil(year, m, d) * MILLIS_PER_DAY + ((hh * 60 + mi) * 60 + ss) * 1000 + ms
}

fn ts(millis: i64) -> String {
    timestamptz_text(millis).expect("in range")
}

#[test]
fn datetime_text() {
    assert_eq!(ts(0), "1970-01-01 00:00:00+00");
    assert_eq!(ts(1_704_164_645_678), "2024-01-02 03:04:05.678+00");
    assert_eq!(ts(1_704_164_645_500), "2024-01-02 03:04:05.5+00");
    assert_eq!(ts(1_704_164_645_010), "2024-01-02 03:04:05.01+00");
    assert_eq!(ts(-1), "1969-12-31 23:59:59.999+00");
    assert_eq!(ts(951_782_400_000), "2000-02-29 00:00:00+00");
    // Year 1 AD, then its day before: 1 BC, which is year 0.
    let jan1_ad1 = days_from_civil(1, 1, 1) * MILLIS_PER_DAY;
    assert_eq!(ts(jan1_ad1), "0001-01-01 00:00:00+00");
    assert_eq!(ts(jan1_ad1 - 1), "0001-12-31 23:59:59.999+00 BC");
    // Year 0 (1 BC) is a leap year in the proleptic Gregorian calendar.
    assert_eq!(
        ts(days_from_civil(0, 2, 29) * MILLIS_PER_DAY),
        "0001-02-29 00:00:00+00 BC"
    );
    assert_eq!(
        ts(days_from_civil(10_000, 3, 1) * MILLIS_PER_DAY),
        "10000-03-01 00:00:00+00"
    );
    assert_eq!(
        ts(days_from_civil(290_000, 6, 15) * MILLIS_PER_DAY),
        "290000-06-15 00:00:00+00"
    );
    assert_eq!(
        conv(Bson::DateTime(DateTime::from_millis(1_704_164_645_678))),
        Value::Temporal(
            TemporalKind::Timestamptz,
            "2024-01-02 03:04:05.678+00".into()
        )
    );
}

#[test]
fn datetime_range_is_postgresql_timestamptz_range() {
    // The bounds are PostgreSQL's Julian day 0 and 294277-01-01.
    assert_eq!(
        days_from_civil(-4713, 11, 24) * MILLIS_PER_DAY,
        PG_TIMESTAMPTZ_MIN_MILLIS
    );
    assert_eq!(
        days_from_civil(294_277, 1, 1) * MILLIS_PER_DAY,
        PG_TIMESTAMPTZ_END_MILLIS
    );
    assert_eq!(ts(PG_TIMESTAMPTZ_MIN_MILLIS), "4714-11-24 00:00:00+00 BC");
    assert_eq!(
        ts(PG_TIMESTAMPTZ_END_MILLIS - 1),
        "294276-12-31 23:59:59.999+00"
    );
    for millis in [
        PG_TIMESTAMPTZ_MIN_MILLIS - 1,
        PG_TIMESTAMPTZ_END_MILLIS,
        i64::MIN,
        i64::MAX,
        days_from_civil(-200_000, 1, 1) * MILLIS_PER_DAY,
        days_from_civil(300_000, 1, 1) * MILLIS_PER_DAY,
    ] {
        assert_eq!(
            timestamptz_text(millis),
            Err(BsonError::new(BsonErrorKind::DateTimeOutOfRange { millis })),
        );
    }
    let err = bson_to_value(&Bson::DateTime(DateTime::from_millis(i64::MIN))).unwrap_err();
    assert!(
        err.to_string()
            .contains("outside PostgreSQL's timestamptz range"),
        "{err}"
    );
}

#[test]
fn civil_from_days_inverts_days_from_civil_at_the_extremes() {
    for days in [
        i64::MIN.div_euclid(MILLIS_PER_DAY),
        i64::MAX.div_euclid(MILLIS_PER_DAY),
        -719_468,
        -719_469,
        0,
    ] {
        let (y, m, d) = civil_from_days(days);
        assert_eq!(days_from_civil(y, m, d), days);
    }
}

// ---- Other types ----

#[test]
fn scalars() {
    assert_eq!(conv(Bson::Int32(-7)), Value::Int(-7));
    assert_eq!(conv(Bson::Int32(i32::MIN)), Value::Int(i64::from(i32::MIN)));
    // Exact beyond 2^53, where a double would round.
    assert_eq!(
        conv(Bson::Int64((1 << 53) + 1)),
        Value::Int(9_007_199_254_740_993)
    );
    assert_eq!(conv(Bson::Int64(i64::MIN)), Value::Int(i64::MIN));
    assert_eq!(conv(Bson::Double(0.1)), Value::Float(0.1));
    let Value::Float(z) = conv(Bson::Double(-0.0)) else {
        panic!()
    };
    assert_eq!(z.to_bits(), (-0.0f64).to_bits());
    let Value::Float(n) = conv(Bson::Double(f64::NAN)) else {
        panic!()
    };
    assert!(n.is_nan());
    assert_eq!(
        conv(Bson::Double(f64::NEG_INFINITY)),
        Value::Float(f64::NEG_INFINITY)
    );
    assert_eq!(
        conv(Bson::String("é\0\"".into())),
        Value::Text("é\0\"".into())
    );
    assert_eq!(conv(Bson::Boolean(true)), Value::Bool(true));
    assert_eq!(conv(Bson::Null), Value::Null);
}

#[test]
fn object_id_stays_typed() {
    let id = ObjectId::parse_str("650aff00010203040506abcd").unwrap();
    assert_eq!(
        conv(Bson::ObjectId(id)),
        Value::ObjectId([0x65, 0x0a, 0xff, 0, 1, 2, 3, 4, 5, 6, 0xab, 0xcd])
    );
}

#[test]
fn binary_uuid_subtypes_and_bytes() {
    let bytes: Vec<u8> = (0u8..16).collect();
    for subtype in [BinarySubtype::Uuid, BinarySubtype::UuidOld] {
        let Value::Uuid(u) = conv(Bson::Binary(Binary {
            subtype,
            bytes: bytes.clone(),
        })) else {
            panic!("{subtype:?}")
        };
        assert_eq!(u.to_string(), "00010203-0405-0607-0809-0a0b0c0d0e0f");
    }
    for (subtype, bytes) in [
        (BinarySubtype::Generic, bytes.clone()),
        (BinarySubtype::Md5, bytes.clone()),
        (BinarySubtype::UserDefined(0x80), vec![1, 2]),
        // A UUID subtype of the wrong length is not a UUID.
        (BinarySubtype::Uuid, bytes[..15].to_vec()),
        (BinarySubtype::Generic, vec![]),
    ] {
        assert_eq!(
            conv(Bson::Binary(Binary {
                subtype,
                bytes: bytes.clone()
            })),
            Value::Bytes(bytes)
        );
    }
}

#[test]
fn bson_timestamp_is_lossless_json() {
    let v = conv(Bson::Timestamp(Timestamp {
        time: u32::MAX,
        increment: 7,
    }));
    assert_eq!(
        v,
        Value::Json(r#"{"$timestamp":{"t":4294967295,"i":7}}"#.into())
    );
    assert_eq!(
        json_of(&v),
        json!({"$timestamp": {"t": 4_294_967_295u32, "i": 7}})
    );
}

#[test]
fn types_without_a_counterpart_are_canonical_extended_json() {
    let oid = "650aff00010203040506abcd";
    let db_pointer = Bson::try_from(json!({
        "$dbPointer": {"$ref": "db.things", "$id": {"$oid": oid}}
    }))
    .unwrap();
    assert!(matches!(db_pointer, Bson::DbPointer(_)));
    let cases = [
        (
            Bson::RegularExpression(Regex {
                pattern: "^a\"b.*$".into(),
                options: "im".into(),
            }),
            json!({"$regularExpression": {"pattern": "^a\"b.*$", "options": "im"}}),
        ),
        (
            Bson::JavaScriptCode("function () { return 1; }".into()),
            json!({"$code": "function () { return 1; }"}),
        ),
        (
            Bson::JavaScriptCodeWithScope(JavaScriptCodeWithScope {
                code: "x + y".into(),
                scope: doc! {"x": 1, "y": 2.5},
            }),
            json!({"$code": "x + y", "$scope": {
                "x": {"$numberInt": "1"}, "y": {"$numberDouble": "2.5"}
            }}),
        ),
        (Bson::Symbol("sym".into()), json!({"$symbol": "sym"})),
        (Bson::Undefined, json!({"$undefined": true})),
        (Bson::MinKey, json!({"$minKey": 1})),
        (Bson::MaxKey, json!({"$maxKey": 1})),
        (
            db_pointer,
            json!({"$dbPointer": {"$ref": "db.things", "$id": {"$oid": oid}}}),
        ),
    ];
    for (b, want) in cases {
        let v = conv(b.clone());
        assert_eq!(json_of(&v), want, "{b:?}");
        // Lossless: canonical Extended JSON reads back to the same BSON.
        assert_eq!(Bson::try_from(json_of(&v)).unwrap(), b);
    }
}

#[test]
fn documents_keep_field_order_and_nest() {
    let d = doc! {
        "z": 1,
        "a": {"inner": [1i64, "two", null, {"deep": true}], "m": Bson::Decimal128("1E+2".parse().unwrap())},
        "m": [],
    };
    assert_eq!(
        document_to_row(&d).unwrap(),
        vec![
            ("z".into(), Value::Int(1)),
            (
                "a".into(),
                Value::Document(vec![
                    (
                        "inner".into(),
                        Value::Array(vec![
                            Value::Int(1),
                            Value::Text("two".into()),
                            Value::Null,
                            Value::Document(vec![("deep".into(), Value::Bool(true))]),
                        ])
                    ),
                    ("m".into(), Value::Numeric("100".parse().unwrap())),
                ])
            ),
            ("m".into(), Value::Array(vec![])),
        ]
    );
    // A DBRef is an ordinary document.
    let oid = ObjectId::parse_str("650aff00010203040506abcd").unwrap();
    let dbref = doc! {"$ref": "things", "$id": oid};
    assert_eq!(
        conv(Bson::Document(dbref)),
        Value::Document(vec![
            ("$ref".into(), Value::Text("things".into())),
            ("$id".into(), Value::ObjectId(oid.bytes())),
        ])
    );
}

#[test]
fn missing_field_is_not_null() {
    let d = doc! {"a": null, "b": 5};
    assert_eq!(field(&d, "a"), Ok(Some(Value::Null)));
    assert_eq!(field(&d, "b"), Ok(Some(Value::Int(5))));
    assert_eq!(field(&d, "c"), Ok(None));
    let bad = doc! {"when": DateTime::from_millis(i64::MAX)};
    assert_eq!(
        field(&bad, "when").unwrap_err().path,
        vec!["when".to_owned()]
    );
}

#[test]
fn errors_name_the_path() {
    let d = doc! {"ok": 1, "items": [{"x": 1}, {"when": DateTime::from_millis(i64::MIN)}]};
    let err = document_to_row(&d).unwrap_err();
    assert_eq!(err.path, ["items", "1", "when"]);
    assert_eq!(
        err.kind,
        BsonErrorKind::DateTimeOutOfRange { millis: i64::MIN }
    );
    assert!(
        err.to_string().starts_with("field \"items.1.when\": "),
        "{err}"
    );
}

// ---- Properties ----

/// A coefficient of 1 to 34 digits, spread over the lengths rather than
/// crowded at 34 as a uniform u128 would be.
fn coefficient() -> impl Strategy<Value = u128> {
    (1u32..=34).prop_flat_map(|n| 0..10u128.pow(n))
}

fn exponent() -> impl Strategy<Value = i16> {
    prop_oneof![-40i16..=40, -6176i16..=6111]
}

/// Any BSON value, nested up to a few levels, every type included.
fn any_bson() -> impl Strategy<Value = Bson> {
    let leaf = prop_oneof![
        any::<f64>().prop_map(Bson::Double),
        ".{0,8}".prop_map(Bson::String),
        any::<bool>().prop_map(Bson::Boolean),
        Just(Bson::Null),
        any::<i32>().prop_map(Bson::Int32),
        any::<i64>().prop_map(Bson::Int64),
        (any::<u32>(), any::<u32>())
            .prop_map(|(time, increment)| Bson::Timestamp(Timestamp { time, increment })),
        (any::<u8>(), proptest::collection::vec(any::<u8>(), 0..20)).prop_map(|(t, bytes)| {
            Bson::Binary(Binary {
                subtype: BinarySubtype::from(t),
                bytes,
            })
        }),
        any::<[u8; 12]>().prop_map(|b| Bson::ObjectId(ObjectId::from_bytes(b))),
        (PG_TIMESTAMPTZ_MIN_MILLIS..PG_TIMESTAMPTZ_END_MILLIS)
            .prop_map(|ms| Bson::DateTime(DateTime::from_millis(ms))),
        any::<[u8; 16]>().prop_map(|b| Bson::Decimal128(Decimal128::from_bytes(b))),
        (".{0,6}", "[imsux]{0,3}")
            .prop_map(|(pattern, options)| { Bson::RegularExpression(Regex { pattern, options }) }),
        ".{0,8}".prop_map(Bson::JavaScriptCode),
        ".{0,8}".prop_map(Bson::Symbol),
        Just(Bson::Undefined),
        Just(Bson::MinKey),
        Just(Bson::MaxKey),
    ];
    leaf.prop_recursive(3, 32, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Bson::Array),
            proptest::collection::vec(("[a-z$.]{0,4}", inner.clone()), 0..4)
                .prop_map(|fields| Bson::Document(fields.into_iter().collect())),
            (
                ".{0,6}",
                proptest::collection::vec(("[a-z]{1,3}", inner), 0..3)
            )
                .prop_map(|(code, fields)| {
                    Bson::JavaScriptCodeWithScope(JavaScriptCodeWithScope {
                        code,
                        scope: fields.into_iter().collect(),
                    })
                }),
        ]
    })
}

/// Every `Value::Json` inside `v` is valid JSON.
fn assert_json_parses(v: &Value) {
    match v {
        Value::Json(s) => {
            serde_json::from_str::<serde_json::Value>(s).expect("valid JSON");
        }
        Value::Array(items) => items.iter().for_each(assert_json_parses),
        Value::Document(fields) => fields.iter().for_each(|(_, v)| assert_json_parses(v)),
        _ => {}
    }
}

proptest! {
    #[test]
    fn finite_decimal128_is_exact(
        negative in any::<bool>(),
        coefficient in coefficient(),
        exponent in exponent(),
    ) {
        let n = num(dec128(negative, coefficient, exponent));
        let d = finite(&n);
        prop_assert_eq!(d.to_string(), plain(negative, coefficient, exponent));
        prop_assert_eq!(d.scale(), u32::from((-exponent).max(0).unsigned_abs()));
        prop_assert_eq!(d.is_negative(), negative && coefficient != 0);
    }

    #[test]
    fn any_decimal128_bits_convert(bits in any::<[u8; 16]>()) {
        // Specials, non-canonical encodings, anything: never an error.
        prop_assert!(decimal128_to_numeric(Decimal128::from_bytes(bits)).is_ok());
    }

    #[test]
    fn datetime_reads_back_or_is_out_of_range(
        millis in prop_oneof![
            any::<i64>(),
            PG_TIMESTAMPTZ_MIN_MILLIS - 1000..PG_TIMESTAMPTZ_END_MILLIS + 1000,
            -100_000_000_000_000i64..100_000_000_000_000,
        ]
    ) {
        let in_range = (PG_TIMESTAMPTZ_MIN_MILLIS..PG_TIMESTAMPTZ_END_MILLIS).contains(&millis);
        match timestamptz_text(millis) {
            Ok(text) => {
                prop_assert!(in_range, "{} accepted as {}", millis, text);
                prop_assert_eq!(parse_back(&text), millis, "{}", text);
            }
            Err(e) => {
                prop_assert!(!in_range, "{} refused: {}", millis, e);
                prop_assert_eq!(e.kind, BsonErrorKind::DateTimeOutOfRange { millis });
            }
        }
    }

    #[test]
    fn civil_from_days_inverts_for_any_i64_millis(millis in any::<i64>()) {
        let days = millis.div_euclid(MILLIS_PER_DAY);
        let (y, m, d) = civil_from_days(days);
        prop_assert!((1..=12).contains(&m) && (1..=31).contains(&d));
        prop_assert_eq!(days_from_civil(y, m, d), days);
    }

    #[test]
    fn any_document_converts_with_valid_json(fields in proptest::collection::vec(("[a-z]{1,4}", any_bson()), 0..6)) {
        let d: Document = fields.into_iter().collect();
        let row = document_to_row(&d).expect("in-range values always convert");
        prop_assert_eq!(row.len(), d.len());
        for ((name, v), (want, _)) in row.iter().zip(d.iter()) {
            prop_assert_eq!(name, want);
            assert_json_parses(v);
        }
    }
}
