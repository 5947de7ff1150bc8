//! Unit tests of the transform stage: mappings compiled against a
//! hand-made target catalog, then applied to MongoDB-shaped (`_id` +
//! `document`) and PostgreSQL-shaped (plain columns) source changes.

use super::coerce::{base_type, epoch_millis_text, raw};
use super::*;
use crate::calendar::civil_from_days;
use crate::event::{Column, Datum, Op, Position, Row};
use crate::id_map::{IdKind, IdRef, OnMissing};
use crate::value::TemporalKind;

// ---------------------------------------------------------------------------
// Building blocks

fn col(name: &str, type_sql: &str) -> TargetColumn {
    TargetColumn {
        name: name.into(),
        type_sql: type_sql.into(),
        nullable: true,
        has_default: false,
    }
}

fn not_null(mut c: TargetColumn) -> TargetColumn {
    c.nullable = false;
    c
}

fn defaulted(mut c: TargetColumn) -> TargetColumn {
    c.has_default = true;
    c
}

fn table(id: &str, columns: Vec<TargetColumn>, pk: &[&str]) -> TargetTable {
    TargetTable {
        id: TableId::parse(id).unwrap(),
        columns,
        primary_key: pk.iter().map(|s| s.to_string()).collect(),
    }
}

fn catalog(tables: Vec<TargetTable>) -> HashMap<TableId, TargetTable> {
    tables.into_iter().map(|t| (t.id.clone(), t)).collect()
}

fn compile(toml: &str, cat: &HashMap<TableId, TargetTable>) -> Transformer {
    let m = Mappings::from_toml(toml).unwrap();
    match Transformer::compile(&m, cat) {
        Ok(t) => t,
        Err(f) => panic!("unexpected findings: {f:#?}"),
    }
}

fn findings(toml: &str, cat: &HashMap<TableId, TargetTable>) -> Vec<Finding> {
    let m = Mappings::from_toml(toml).unwrap();
    match Transformer::compile(&m, cat) {
        Ok(_) => panic!("expected findings, the mapping compiled"),
        Err(f) => f,
    }
}

/// Whether some finding has this key and a message containing `needle`.
fn has_finding(fs: &[Finding], key: &str, needle: &str) -> bool {
    fs.iter()
        .any(|f| f.key == key && f.message.contains(needle))
}

fn oid(n: u8) -> [u8; 12] {
    [
        0x64, 0xb7, 0xf0, 0xc2, 0xa1, 0xb2, 0xc3, 0xd4, 0xe5, 0xf6, 0x07, n,
    ]
}

fn hex(n: u8) -> String {
    crate::value::object_id_hex(&oid(n))
}

fn text(s: &str) -> Value {
    Value::Text(s.into())
}

fn num(s: &str) -> Value {
    Value::Numeric(s.parse().unwrap())
}

fn doc(fields: Vec<(&str, Value)>) -> Value {
    Value::Document(
        fields
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
    )
}

fn jcol(name: &str, key: bool) -> Column {
    Column {
        name: name.into(),
        type_oid: 0,
        type_sql: "jsonb".into(),
        nullable: !key && name != "document",
        is_key: key,
        enum_labels: None,
        id_map: None,
    }
}

/// A MongoDB source collection's shape: `_id` (key) + `document`.
fn mongo_schema(source: &str) -> Arc<TableSchema> {
    Arc::new(TableSchema {
        id: TableId::parse(source).unwrap(),
        columns: vec![jcol("_id", true), jcol("document", false)],
        primary_key: vec![0],
        child: None,
    })
}

fn event(table: Arc<TableSchema>, op: Op, before: Option<Row>, after: Option<Row>) -> ChangeEvent {
    ChangeEvent {
        table,
        op,
        before,
        after,
        position: Position::default(),
        xid: None,
        commit_ts_micros: 0,
        resume_token: Some(Arc::from("token")),
    }
}

/// A MongoDB change with a full document; the `_id` column holds the
/// document's `_id` as (relaxed) Extended JSON, like the source writes it.
fn mongo(source: &str, op: Op, fields: Vec<(&str, Value)>) -> ChangeEvent {
    let id = fields
        .iter()
        .find(|(n, _)| *n == "_id")
        .map(|(_, v)| Value::Json(crate::json::json_text(v)))
        .unwrap_or(Value::Null);
    let row = vec![Datum::Value(id), Datum::Value(doc(fields))];
    event(mongo_schema(source), op, None, Some(row))
}

fn mongo_insert(source: &str, fields: Vec<(&str, Value)>) -> ChangeEvent {
    mongo(source, Op::Insert, fields)
}

/// A MongoDB delete: only the `_id` (Extended JSON), the document gone.
fn mongo_delete(source: &str, id_json: &str) -> ChangeEvent {
    let row = vec![
        Datum::Value(Value::Json(id_json.into())),
        Datum::Value(Value::Null),
    ];
    event(mongo_schema(source), Op::Delete, Some(row), None)
}

fn oid_json(n: u8) -> String {
    format!(r#"{{"$oid":"{}"}}"#, hex(n))
}

fn apply_ok(t: &Transformer, ev: &ChangeEvent) -> Vec<Output> {
    match t.apply(ev) {
        Some(Ok(out)) => out,
        Some(Err(r)) => panic!("rejected: {r:?}"),
        None => panic!("table {} is not mapped", ev.table.id),
    }
}

fn apply_err(t: &Transformer, ev: &ChangeEvent) -> Rejected {
    match t.apply(ev) {
        Some(Err(r)) => r,
        Some(Ok(out)) => panic!("expected a rejection, got {out:#?}"),
        None => panic!("table {} is not mapped", ev.table.id),
    }
}

fn changes(out: &[Output]) -> Vec<&ChangeEvent> {
    out.iter()
        .filter_map(|o| match o {
            Output::Change(c) => Some(c),
            Output::Prune { .. } => None,
        })
        .collect()
}

fn prunes(out: &[Output]) -> Vec<(TableId, Vec<Value>, i64)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Prune {
                table,
                parent_key,
                keep_below,
            } => Some((table.id.clone(), parent_key.clone(), *keep_below)),
            Output::Change(_) => None,
        })
        .collect()
}

/// The only change of a table, out of `out`.
fn only_change<'a>(out: &'a [Output], table: &str) -> &'a ChangeEvent {
    let id = TableId::parse(table).unwrap();
    let cs: Vec<_> = changes(out)
        .into_iter()
        .filter(|c| c.table.id == id)
        .collect();
    assert_eq!(cs.len(), 1, "changes of {table}: {cs:#?}");
    cs[0]
}

fn col_index(ev: &ChangeEvent, name: &str) -> usize {
    ev.table
        .columns
        .iter()
        .position(|c| c.name == name)
        .unwrap_or_else(|| panic!("{} has no column {name}", ev.table.id))
}

/// A column's datum in the change's row (`after`, or `before` for deletes).
fn datum<'a>(ev: &'a ChangeEvent, name: &str) -> &'a Datum {
    let row = ev.after.as_ref().or(ev.before.as_ref()).expect("a row");
    &row[col_index(ev, name)]
}

fn val<'a>(ev: &'a ChangeEvent, name: &str) -> &'a Value {
    match datum(ev, name) {
        Datum::Value(v) => v,
        Datum::UnchangedToast => panic!("{name} is unchanged TOAST"),
    }
}

/// A value's text, for compact assertions on numerics.
fn val_text(ev: &ChangeEvent, name: &str) -> String {
    match val(ev, name) {
        Value::Numeric(n) => n.to_string(),
        Value::Text(s) | Value::Json(s) | Value::Temporal(_, s) => s.clone(),
        Value::Int(i) => i.to_string(),
        other => format!("{other:?}"),
    }
}

fn id_ref(ev: &ChangeEvent, name: &str) -> Option<IdRef> {
    ev.table.columns[col_index(ev, name)].id_map.clone()
}

// ---------------------------------------------------------------------------
// The payments fixture: MongoDB payments with items, like the docs' example.

const PAYMENTS: &str = r#"
[id_maps.users]
kind = "uuid_v7"

[id_maps.offers]
kind = "uuid_v5"
namespace_uuid = "1b671a64-40d5-491e-99b0-da01ff1f3341"

[id_maps.payments]
kind = "bigint"
start = 1000

[[tables]]
source = "app.payments"
target = "public.payments"
snake_case = true
rest = "extra"
drop = ["__v", "card.cvc"]

[tables.columns]
id         = { from = "_id", id_map = "payments" }
user_id    = { from = "userId", id_map = "users", on_missing = "dead_letter" }
amount     = { from = "amount" }
fee        = { from = "fee", round = "half_even" }
raw_amount = { from = "rawAmount" }
city       = "delivery.address.city"
status     = { from = "status", default = "pending" }
currency   = { default = "EUR" }

[[tables.children]]
from = "items"
target = "public.payment_items"
parent_key = ["payment_id"]
position = "position"
snake_case = true
unmapped = "drop"

[tables.children.columns]
sku        = "sku"
unit_price = { from = "price" }
offer_id   = { from = "offerId", id_map = "offers" }
"#;

fn payments_catalog() -> HashMap<TableId, TargetTable> {
    catalog(vec![
        table(
            "public.payments",
            vec![
                not_null(col("id", "bigint")),
                col("user_id", "uuid"),
                not_null(col("amount", "numeric(12,2)")),
                col("fee", "numeric(12,2)"),
                col("raw_amount", "numeric"),
                col("city", "text"),
                col("status", "text"),
                not_null(col("currency", "text")),
                col("buyer_id", "text"),
                col("http_status", "integer"),
                col("created_at", "timestamp with time zone"),
                col("extra", "jsonb"),
                defaulted(col("migrated_note", "text")),
            ],
            &["id"],
        ),
        table(
            "public.payment_items",
            vec![
                not_null(col("payment_id", "bigint")),
                not_null(col("position", "integer")),
                col("sku", "text"),
                col("qty", "integer"),
                col("unit_price", "numeric(12,2)"),
                col("offer_id", "uuid"),
            ],
            &["payment_id", "position"],
        ),
    ])
}

fn payments() -> Transformer {
    compile(PAYMENTS, &payments_catalog())
}

fn item(sku: &str, qty: i64, price: &str, offer: u8) -> Value {
    doc(vec![
        ("sku", text(sku)),
        ("qty", Value::Int(qty)),
        ("price", num(price)),
        ("offerId", Value::ObjectId(oid(offer))),
        ("note", text("dropped on purpose")),
    ])
}

/// A realistic payment document; `with` replaces or adds fields.
fn payment(with: Vec<(&str, Value)>) -> Vec<(String, Value)> {
    let mut fields: Vec<(String, Value)> = vec![
        ("_id".into(), Value::ObjectId(oid(1))),
        ("userId".into(), Value::ObjectId(oid(2))),
        ("amount".into(), num("1E+2")),
        ("fee".into(), num("1.5")),
        ("status".into(), text("paid")),
        (
            "delivery".into(),
            doc(vec![
                (
                    "address",
                    doc(vec![("city", text("Paris")), ("zip", text("75001"))]),
                ),
                ("express", Value::Bool(true)),
            ]),
        ),
        ("buyerId".into(), text("b-7")),
        ("HTTPStatus".into(), text("201")),
        ("items".into(), Value::Array(vec![])),
        ("__v".into(), Value::Int(3)),
    ];
    for (k, v) in with {
        match fields.iter_mut().find(|(n, _)| n == k) {
            Some(slot) => slot.1 = v,
            None => fields.push((k.to_string(), v)),
        }
    }
    fields
}

fn without(mut fields: Vec<(String, Value)>, name: &str) -> Vec<(String, Value)> {
    fields.retain(|(n, _)| n != name);
    fields
}

fn payment_event(op: Op, fields: Vec<(String, Value)>) -> ChangeEvent {
    let borrowed: Vec<(&str, Value)> = fields
        .iter()
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    mongo("app.payments", op, borrowed)
}

// ---------------------------------------------------------------------------
// Field matching

#[test]
fn snake_case_names() {
    assert_eq!(snake_case("buyerId"), "buyer_id");
    assert_eq!(snake_case("HTTPStatus"), "http_status");
    assert_eq!(snake_case("userID"), "user_id");
    assert_eq!(snake_case("createdAt"), "created_at");
    assert_eq!(snake_case("already_snake"), "already_snake");
    assert_eq!(snake_case("item2Name"), "item2_name");
    assert_eq!(snake_case("ABC"), "abc");
    assert_eq!(snake_case("Name"), "name");
    assert_eq!(snake_case("with-dash and space"), "with_dash_and_space");
}

#[test]
fn renames_nested_paths_snake_case_defaults_and_rest() {
    let t = payments();
    let out = apply_ok(&t, &payment_event(Op::Insert, payment(vec![])));
    let p = only_change(&out, "public.payments");
    assert_eq!(p.op, Op::Insert);
    assert!(p.before.is_none());
    // The row's own id and a reference: legacy text, translated by the sink.
    assert_eq!(val(p, "id"), &text(&hex(1)));
    assert_eq!(val(p, "user_id"), &text(&hex(2)));
    // Money: 1E+2 into numeric(12,2).
    assert_eq!(val_text(p, "amount"), "100.00");
    assert_eq!(val_text(p, "fee"), "1.50");
    // Missing rawAmount, nullable: null.
    assert_eq!(val(p, "raw_amount"), &Value::Null);
    // A nested path.
    assert_eq!(val(p, "city"), &text("Paris"));
    assert_eq!(val(p, "status"), &text("paid"));
    // A constant.
    assert_eq!(val(p, "currency"), &text("EUR"));
    // snake_case: buyerId → buyer_id, HTTPStatus → http_status (coerced).
    assert_eq!(val(p, "buyer_id"), &text("b-7"));
    assert_eq!(val(p, "http_status"), &Value::Int(201));
    // No field for created_at: null.
    assert_eq!(val(p, "created_at"), &Value::Null);
    // Rest: the leftovers with the taken paths removed; `__v` dropped,
    // `items` taken by the child table, delivery.address.city mapped, so
    // delivery.address.zip and delivery.express stay.
    assert_eq!(
        val(p, "extra"),
        &Value::Json(r#"{"delivery":{"address":{"zip":"75001"},"express":true}}"#.into())
    );
    // A column with a target default that no rule names is not written.
    assert!(!p.table.columns.iter().any(|c| c.name == "migrated_note"));
}

#[test]
fn rest_is_null_when_nothing_is_left() {
    let t = payments();
    let fields = payment(vec![(
        "delivery",
        doc(vec![("address", doc(vec![("city", text("Lyon"))]))]),
    )]);
    let out = apply_ok(&t, &payment_event(Op::Insert, fields));
    let p = only_change(&out, "public.payments");
    assert_eq!(val(p, "city"), &text("Lyon"));
    // delivery.address emptied by the mapped city, then delivery: nothing left.
    assert_eq!(val(p, "extra"), &Value::Null);
}

#[test]
fn rest_keeps_unknown_fields_and_drop_removes_nested_paths() {
    let t = payments();
    let fields = payment(vec![
        (
            "card",
            doc(vec![("last4", text("4242")), ("cvc", text("123"))]),
        ),
        ("tags", Value::Array(vec![text("a"), text("b")])),
        ("score", num("12345678901234567890123456789.5")),
    ]);
    let out = apply_ok(&t, &payment_event(Op::Insert, fields));
    let p = only_change(&out, "public.payments");
    let Value::Json(extra) = val(p, "extra") else {
        panic!("extra is {:?}", val(p, "extra"));
    };
    assert!(!extra.contains("cvc"), "{extra}");
    assert!(!extra.contains("__v"), "{extra}");
    assert!(extra.contains(r#""card":{"last4":"4242"}"#), "{extra}");
    assert!(extra.contains(r#""tags":["a","b"]"#), "{extra}");
    // Numbers exact in jsonb, never through f64.
    assert!(
        extra.contains(r#""score":12345678901234567890123456789.5"#),
        "{extra}"
    );
    // JSON that parses.
    let _: serde_json::Value = serde_json::from_str(extra).unwrap();
}

#[test]
fn present_null_stays_null_and_missing_takes_the_default() {
    let t = payments();
    // Missing: the default.
    let out = apply_ok(
        &t,
        &payment_event(Op::Insert, without(payment(vec![]), "status")),
    );
    assert_eq!(
        val(only_change(&out, "public.payments"), "status"),
        &text("pending")
    );
    // Present and null: null.
    let out = apply_ok(
        &t,
        &payment_event(Op::Insert, payment(vec![("status", Value::Null)])),
    );
    assert_eq!(
        val(only_change(&out, "public.payments"), "status"),
        &Value::Null
    );
}

#[test]
fn defaults_are_coerced_to_the_column_type() {
    let cat = catalog(vec![table(
        "public.t",
        vec![
            not_null(col("id", "text")),
            col("price", "numeric(8,2)"),
            col("n", "integer"),
            col("flag", "boolean"),
            col("at", "timestamp with time zone"),
        ],
        &["id"],
    )]);
    let t = compile(
        r#"
[[tables]]
source = "app.t"
target = "public.t"
[tables.columns]
id = "_id"
price = { from = "price", default = "0" }
n = { from = "n", default = 7 }
flag = { from = "flag", default = true }
at = { from = "at", default = 1979-05-27T07:32:00Z }
"#,
        &cat,
    );
    let out = apply_ok(&t, &mongo_insert("app.t", vec![("_id", text("k"))]));
    let c = only_change(&out, "public.t");
    assert_eq!(val_text(c, "price"), "0.00");
    assert_eq!(val(c, "n"), &Value::Int(7));
    assert_eq!(val(c, "flag"), &Value::Bool(true));
    assert_eq!(
        val(c, "at"),
        &Value::Temporal(TemporalKind::Timestamptz, "1979-05-27T07:32:00Z".into())
    );
}

const THINGS: &str = r#"
[[tables]]
source = "app.things"
target = "public.things"
[tables.columns]
id = "_id"
"#;

fn things_catalog() -> HashMap<TableId, TargetTable> {
    catalog(vec![table(
        "public.things",
        vec![not_null(col("id", "text")), col("name", "text")],
        &["id"],
    )])
}

#[test]
fn unmapped_fields_reject_by_default() {
    let t = compile(THINGS, &things_catalog());
    let ev = mongo_insert(
        "app.things",
        vec![
            ("_id", text("k1")),
            ("name", text("n")),
            ("colour", text("red")),
        ],
    );
    let r = apply_err(&t, &ev);
    assert_eq!(r.rule, "unmapped_field");
    assert!(r.message.contains("app.things"), "{}", r.message);
    assert!(r.message.contains("k1"), "{}", r.message);
    assert!(r.message.contains("colour"), "{}", r.message);
    assert!(r.message.contains("unmapped_field"), "{}", r.message);
    // A field of the column's exact name is mapped without snake_case.
    let ok = mongo_insert("app.things", vec![("_id", text("k1")), ("name", text("n"))]);
    let out = apply_ok(&t, &ok);
    assert_eq!(val(only_change(&out, "public.things"), "name"), &text("n"));
}

#[test]
fn unmapped_fields_are_dropped_when_asked() {
    let toml = THINGS.replace(
        "target = \"public.things\"",
        "target = \"public.things\"\nunmapped = \"drop\"",
    );
    let t = compile(&toml, &things_catalog());
    let ev = mongo_insert(
        "app.things",
        vec![
            ("_id", text("k1")),
            ("colour", text("red")),
            ("nested", doc(vec![("a", Value::Int(1))])),
        ],
    );
    let out = apply_ok(&t, &ev);
    let c = only_change(&out, "public.things");
    assert_eq!(c.table.columns.len(), 2);
    assert_eq!(val(c, "id"), &text("k1"));
    assert_eq!(val(c, "name"), &Value::Null);
}

#[test]
fn without_snake_case_a_camel_case_field_is_unmapped() {
    let cat = catalog(vec![table(
        "public.t",
        vec![not_null(col("id", "text")), col("buyer_id", "text")],
        &["id"],
    )]);
    let t = compile(
        r#"
[[tables]]
source = "app.t"
target = "public.t"
[tables.columns]
id = "_id"
"#,
        &cat,
    );
    let r = apply_err(
        &t,
        &mongo_insert("app.t", vec![("_id", text("k")), ("buyerId", text("b"))]),
    );
    assert_eq!(r.rule, "unmapped_field");
    assert!(r.message.contains("buyerId"), "{}", r.message);
}

#[test]
fn nested_leftovers_reject_without_rest() {
    let cat = catalog(vec![table(
        "public.t",
        vec![not_null(col("id", "text")), col("city", "text")],
        &["id"],
    )]);
    let t = compile(
        r#"
[[tables]]
source = "app.t"
target = "public.t"
[tables.columns]
id = "_id"
city = "delivery.address.city"
"#,
        &cat,
    );
    let addr = |zip: Option<&str>| {
        let mut a = vec![("city", text("Paris"))];
        if let Some(z) = zip {
            a.push(("zip", text(z)));
        }
        doc(vec![("address", doc(a))])
    };
    // Only the mapped path: nothing left.
    let out = apply_ok(
        &t,
        &mongo_insert("app.t", vec![("_id", text("k")), ("delivery", addr(None))]),
    );
    assert_eq!(val(only_change(&out, "public.t"), "city"), &text("Paris"));
    // delivery.address.zip is left over: the record is refused.
    let r = apply_err(
        &t,
        &mongo_insert(
            "app.t",
            vec![("_id", text("k")), ("delivery", addr(Some("75001")))],
        ),
    );
    assert_eq!(r.rule, "unmapped_field");
    assert!(r.message.contains("delivery"), "{}", r.message);
}

// ---------------------------------------------------------------------------
// Coercions, one column at a time

/// Maps `{ _id, v }` into `public.c(id text, v <type_sql>)` and returns
/// what `v` becomes.
fn coerce_into(type_sql: &str, v: Value) -> Result<Value, Rejected> {
    let cat = catalog(vec![table(
        "public.c",
        vec![not_null(col("id", "text")), col("v", type_sql)],
        &["id"],
    )]);
    let t = compile(
        r#"
[[tables]]
source = "app.c"
target = "public.c"
[tables.columns]
id = "_id"
v = "v"
"#,
        &cat,
    );
    let ev = mongo_insert("app.c", vec![("_id", text("k")), ("v", v)]);
    t.apply(&ev)
        .expect("mapped")
        .map(|out| val(only_change(&out, "public.c"), "v").clone())
}

fn rule_of(r: Result<Value, Rejected>) -> String {
    match r {
        Ok(v) => panic!("expected a rejection, got {v:?}"),
        Err(r) => r.rule,
    }
}

#[test]
fn integers() {
    assert_eq!(
        coerce_into("integer", Value::Int(5)).unwrap(),
        Value::Int(5)
    );
    assert_eq!(coerce_into("bigint", text("42")).unwrap(), Value::Int(42));
    assert_eq!(
        coerce_into("bigint", text(" -42 ")).unwrap(),
        Value::Int(-42)
    );
    assert_eq!(
        coerce_into("integer", num("12.00")).unwrap(),
        Value::Int(12)
    );
    assert_eq!(
        coerce_into("integer", num("1E+2")).unwrap(),
        Value::Int(100)
    );
    assert_eq!(coerce_into("integer", num("-0.0")).unwrap(), Value::Int(0));
    assert_eq!(
        coerce_into("integer", text("12.0")).unwrap(),
        Value::Int(12)
    );
    assert_eq!(
        coerce_into("integer", Value::Float(3.0)).unwrap(),
        Value::Int(3)
    );
    assert_eq!(
        coerce_into("smallint", Value::Int(-32768)).unwrap(),
        Value::Int(-32768)
    );
    assert_eq!(
        coerce_into("bigint", num("9223372036854775807")).unwrap(),
        Value::Int(i64::MAX)
    );
    for bad in [
        num("12.5"),
        text("abc"),
        text("1.01"),
        Value::Float(2.5),
        Value::Bool(true),
    ] {
        assert_eq!(rule_of(coerce_into("integer", bad)), "not_coercible");
    }
    let r = coerce_into("smallint", Value::Int(40_000)).unwrap_err();
    assert_eq!(r.rule, "not_coercible");
    assert!(
        r.message.contains("40000") && r.message.contains("range"),
        "{}",
        r.message
    );
    assert_eq!(
        rule_of(coerce_into("integer", Value::Int(1 << 31))),
        "not_coercible"
    );
    assert_eq!(
        rule_of(coerce_into("bigint", num("9223372036854775808"))),
        "not_coercible"
    );
}

#[test]

fn bigint_minimum_from_text() {
    assert_eq!(
        coerce_into("bigint", text("-9223372036854775808")).unwrap(),
        Value::Int(i64::MIN)
    );
}

#[test]
fn texts() {
    assert_eq!(coerce_into("text", Value::Int(7)).unwrap(), text("7"));
    assert_eq!(coerce_into("text", num("1.50")).unwrap(), text("1.50"));
    assert_eq!(
        coerce_into("text", Value::Bool(false)).unwrap(),
        text("false")
    );
    assert_eq!(
        coerce_into("character varying(24)", Value::ObjectId(oid(9))).unwrap(),
        text(&hex(9))
    );
    let u = uuid::Uuid::parse_str("1b671a64-40d5-491e-99b0-da01ff1f3341").unwrap();
    assert_eq!(
        coerce_into("text", Value::Uuid(u)).unwrap(),
        text("1b671a64-40d5-491e-99b0-da01ff1f3341")
    );
    assert_eq!(
        coerce_into(
            "text",
            Value::Temporal(TemporalKind::Timestamptz, "2024-01-02 03:04:05+00".into())
        )
        .unwrap(),
        text("2024-01-02 03:04:05+00")
    );
    assert_eq!(coerce_into("text", Value::Float(0.1)).unwrap(), text("0.1"));
    assert_eq!(coerce_into("text", text("as is")).unwrap(), text("as is"));
    let r = coerce_into("text", doc(vec![("a", Value::Int(1))])).unwrap_err();
    assert_eq!(r.rule, "not_coercible");
    assert!(r.message.contains(r#"{"a":1}"#), "{}", r.message);
    assert_eq!(
        rule_of(coerce_into("text", Value::Array(vec![]))),
        "not_coercible"
    );
}

#[test]
fn booleans_and_uuids() {
    assert_eq!(
        coerce_into("boolean", Value::Bool(true)).unwrap(),
        Value::Bool(true)
    );
    assert_eq!(
        coerce_into("boolean", text("TRUE")).unwrap(),
        Value::Bool(true)
    );
    assert_eq!(
        coerce_into("boolean", text("false")).unwrap(),
        Value::Bool(false)
    );
    assert_eq!(
        rule_of(coerce_into("boolean", Value::Int(1))),
        "not_coercible"
    );
    assert_eq!(
        rule_of(coerce_into("boolean", text("yes please"))),
        "not_coercible"
    );

    let s = "1b671a64-40d5-491e-99b0-da01ff1f3341";
    let u = uuid::Uuid::parse_str(s).unwrap();
    assert_eq!(coerce_into("uuid", text(s)).unwrap(), Value::Uuid(u));
    assert_eq!(coerce_into("uuid", Value::Uuid(u)).unwrap(), Value::Uuid(u));
    let r = coerce_into("uuid", text("abc")).unwrap_err();
    assert_eq!(r.rule, "not_coercible");
    assert!(r.message.contains("\"abc\""), "{}", r.message);
    assert_eq!(
        rule_of(coerce_into("uuid", Value::ObjectId(oid(1)))),
        "not_coercible"
    );
}

#[test]
fn epoch_milliseconds_become_timestamps() {
    let tz = |v: Value| coerce_into("timestamp with time zone", v).unwrap();
    let ts = |s: &str| Value::Temporal(TemporalKind::Timestamptz, s.into());
    assert_eq!(tz(Value::Int(0)), ts("1970-01-01 00:00:00.000000+00"));
    assert_eq!(
        tz(Value::Int(1_700_000_000_000)),
        ts("2023-11-14 22:13:20.000000+00")
    );
    // A leap day.
    assert_eq!(
        tz(Value::Int(951_782_400_000)),
        ts("2000-02-29 00:00:00.000000+00")
    );
    // Before the epoch.
    assert_eq!(tz(Value::Int(-1)), ts("1969-12-31 23:59:59.999000+00"));
    // Fractions of a millisecond, exactly, down to the microsecond.
    assert_eq!(tz(num("1.5")), ts("1970-01-01 00:00:00.001500+00"));
    assert_eq!(tz(num("86400000.001")), ts("1970-01-02 00:00:00.000001+00"));
    assert_eq!(
        tz(Value::Float(1500.0)),
        ts("1970-01-01 00:00:01.500000+00")
    );
    // Text and dates pass through for PostgreSQL to read.
    assert_eq!(tz(text("2024-05-01T10:00:00Z")), ts("2024-05-01T10:00:00Z"));
    assert_eq!(
        tz(Value::Temporal(
            TemporalKind::Timestamptz,
            "2024-05-01 10:00:00+00".into()
        )),
        ts("2024-05-01 10:00:00+00")
    );
    // The column's kind decides.
    assert_eq!(
        coerce_into("timestamp without time zone", Value::Int(0)).unwrap(),
        Value::Temporal(
            TemporalKind::Timestamp,
            "1970-01-01 00:00:00.000000+00".into()
        )
    );
    assert_eq!(
        coerce_into("date", Value::Int(86_400_000)).unwrap(),
        Value::Temporal(TemporalKind::Date, "1970-01-02 00:00:00.000000+00".into())
    );
    // Finer than a microsecond, out of range, or not a time at all.
    let tzr = |v: Value| rule_of(coerce_into("timestamp with time zone", v));
    assert_eq!(tzr(num("0.0001")), "not_coercible");
    assert_eq!(tzr(Value::Int(i64::MAX)), "not_coercible");
    assert_eq!(tzr(Value::Int(-62_200_000_000_000)), "not_coercible");
    assert_eq!(tzr(Value::Bool(true)), "not_coercible");
    assert_eq!(tzr(doc(vec![])), "not_coercible");
}

#[test]
fn epoch_millis_text_and_civil_days() {
    assert_eq!(civil_from_days(0), (1970, 1, 1));
    assert_eq!(civil_from_days(-1), (1969, 12, 31));
    assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    assert_eq!(civil_from_days(19_675), (2023, 11, 14));
    assert_eq!(
        epoch_millis_text("-86400000").as_deref(),
        Some("1969-12-31 00:00:00.000000+00")
    );
    assert_eq!(
        epoch_millis_text("1.2340").as_deref(),
        Some("1970-01-01 00:00:00.001234+00")
    );
    assert_eq!(epoch_millis_text("abc"), None);
}

#[test]
fn json_and_other_types() {
    assert_eq!(
        coerce_into("jsonb", doc(vec![("a", Value::Int(1)), ("b", num("1.10"))])).unwrap(),
        Value::Json(r#"{"a":1,"b":1.10}"#.into())
    );
    assert_eq!(
        coerce_into("json", Value::Int(5)).unwrap(),
        Value::Json("5".into())
    );
    assert_eq!(
        coerce_into("jsonb", text("s")).unwrap(),
        Value::Json(r#""s""#.into())
    );
    assert_eq!(
        coerce_into("jsonb", Value::ObjectId(oid(3))).unwrap(),
        Value::Json(format!(r#"{{"$oid":"{}"}}"#, hex(3)))
    );
    // Types Ferry does not model: the value as is, for PostgreSQL to read.
    assert_eq!(
        coerce_into("inet", text("10.0.0.1")).unwrap(),
        text("10.0.0.1")
    );
    assert_eq!(
        coerce_into("text[]", Value::Array(vec![text("a")])).unwrap(),
        Value::Array(vec![text("a")])
    );
    // Null is null for every type of a nullable column.
    for ty in [
        "integer",
        "text",
        "uuid",
        "boolean",
        "jsonb",
        "date",
        "numeric(5,2)",
    ] {
        assert_eq!(coerce_into(ty, Value::Null).unwrap(), Value::Null, "{ty}");
    }
}

#[test]
fn base_types() {
    assert_eq!(base_type("numeric(12,2)"), "numeric");
    assert_eq!(base_type("character varying(24)"), "character varying");
    assert_eq!(
        base_type("TIMESTAMP WITH TIME ZONE"),
        "timestamp with time zone"
    );
    assert_eq!(
        base_type("timestamp(3) with time zone"),
        "timestamp with time zone"
    );
    assert_eq!(base_type("text[]"), "text[]");
}

// ---------------------------------------------------------------------------
// Money

#[test]
fn decimals_are_exact_or_rejected() {
    let t = payments();
    let amount = |v: Value| -> Result<String, Rejected> {
        let ev = payment_event(Op::Insert, payment(vec![("amount", v)]));
        t.apply(&ev)
            .unwrap()
            .map(|out| val_text(only_change(&out, "public.payments"), "amount"))
    };
    assert_eq!(amount(num("1E+2")).unwrap(), "100.00");
    assert_eq!(amount(num("-0")).unwrap(), "0.00");
    assert_eq!(amount(Value::Int(5)).unwrap(), "5.00");
    assert_eq!(amount(Value::Float(199.9)).unwrap(), "199.90");
    assert_eq!(amount(text("12.30")).unwrap(), "12.30");
    assert_eq!(amount(num("10.000")).unwrap(), "10.00");
    assert_eq!(amount(num("9999999999.99")).unwrap(), "9999999999.99");
    let rule = |v: Value| amount(v).unwrap_err().rule;
    assert_eq!(rule(num("10.005")), "needs_rounding");
    assert_eq!(rule(num("12345678901")), "too_large");
    assert_eq!(rule(num("NaN")), "not_a_number");
    assert_eq!(rule(num("Infinity")), "infinite");
    assert_eq!(rule(Value::Null), "null_in_not_null");
    assert_eq!(rule(text("abc")), "unparseable");
    assert_eq!(rule(Value::Bool(true)), "not_numeric");
    // Missing in a NOT NULL numeric column with no default: rejected too.
    let ev = payment_event(Op::Insert, without(payment(vec![]), "amount"));
    assert_eq!(apply_err(&t, &ev).rule, "null_in_not_null");
}

#[test]
fn rounding_only_where_asked() {
    let t = payments();
    let fee = |v: &str| {
        let ev = payment_event(Op::Insert, payment(vec![("fee", num(v))]));
        val_text(only_change(&apply_ok(&t, &ev), "public.payments"), "fee")
    };
    assert_eq!(fee("10.005"), "10.00");
    assert_eq!(fee("10.015"), "10.02");
    assert_eq!(fee("-10.005"), "-10.00");
    assert_eq!(fee("10.0051"), "10.01");
    // Rounding that overflows the precision is still too large.
    let ev = payment_event(Op::Insert, payment(vec![("fee", num("9999999999.999"))]));
    assert_eq!(apply_err(&t, &ev).rule, "too_large");
}

#[test]
fn unconstrained_numeric_keeps_every_digit() {
    let t = payments();
    let big = "123456789012345678901234567890.123456789";
    let ev = payment_event(Op::Insert, payment(vec![("rawAmount", num(big))]));
    let out = apply_ok(&t, &ev);
    assert_eq!(
        val_text(only_change(&out, "public.payments"), "raw_amount"),
        big
    );
    let ev = payment_event(Op::Insert, payment(vec![("rawAmount", num("1.50"))]));
    let out = apply_ok(&t, &ev);
    assert_eq!(
        val_text(only_change(&out, "public.payments"), "raw_amount"),
        "1.50"
    );
}

#[test]
fn rejections_name_table_key_field_value_and_rule() {
    let t = payments();
    let ev = payment_event(Op::Insert, payment(vec![("amount", num("10.005"))]));
    let r = apply_err(&t, &ev);
    assert_eq!(r.rule, "needs_rounding");
    for part in [
        "app.payments",
        &hex(1),
        "\"amount\"",
        "10.005",
        "needs_rounding",
    ] {
        assert!(r.message.contains(part), "{part:?} not in {}", r.message);
    }
    // The key is the source change's key (the `_id` column).
    assert!(r.message.contains(&source_key(&ev)), "{}", r.message);

    let ev = payment_event(
        Op::Insert,
        payment(vec![("HTTPStatus", text("two hundred"))]),
    );
    let r = apply_err(&t, &ev);
    assert_eq!(r.rule, "not_coercible");
    for part in [
        "app.payments",
        &hex(1),
        "HTTPStatus",
        "two hundred",
        "not_coercible",
    ] {
        assert!(r.message.contains(part), "{part:?} not in {}", r.message);
    }

    let ev = payment_event(Op::Insert, payment(vec![("amount", Value::Null)]));
    let r = apply_err(&t, &ev);
    assert_eq!(r.rule, "null_in_not_null");
    assert!(
        r.message.contains("amount") && r.message.contains(&hex(1)),
        "{}",
        r.message
    );
}

#[test]
fn long_raw_values_are_cut_in_messages() {
    let long = "x".repeat(1000);
    assert!(raw(&text(&long)).chars().count() <= 202);
    assert!(raw(&text(&long)).ends_with('…'));
    assert_eq!(raw(&Value::Null), "null");
    assert_eq!(raw(&num("1.50")), "1.50");
    let multi = "é".repeat(300);
    // Never cut inside a character.
    assert!(raw(&text(&multi)).ends_with('…'));
}

// ---------------------------------------------------------------------------
// Id maps

#[test]
fn id_map_columns_carry_their_namespace() {
    let t = payments();
    let out = apply_ok(
        &t,
        &payment_event(
            Op::Insert,
            payment(vec![("items", Value::Array(vec![item("a", 1, "1", 5)]))]),
        ),
    );
    let p = only_change(&out, "public.payments");
    assert_eq!(
        id_ref(p, "id"),
        Some(IdRef {
            namespace: "payments".into(),
            kind: IdKind::Bigint { start: 1000 },
            on_missing: OnMissing::Allocate,
            field: "_id".into(),
            sequence: None,
        })
    );
    assert_eq!(
        id_ref(p, "user_id"),
        Some(IdRef {
            namespace: "users".into(),
            kind: IdKind::UuidV7,
            on_missing: OnMissing::DeadLetter,
            field: "userId".into(),
            sequence: None,
        })
    );
    for plain in ["amount", "status", "buyer_id", "extra"] {
        assert_eq!(id_ref(p, plain), None, "{plain}");
    }
    assert!(p.table.columns[col_index(p, "id")].is_key);
    assert_eq!(p.table.primary_key, vec![col_index(p, "id")]);

    let c = only_change(&out, "public.payment_items");
    // The child's parent key: the parent's legacy id, same namespace, always
    // allocated.
    assert_eq!(val(c, "payment_id"), &text(&hex(1)));
    assert_eq!(
        id_ref(c, "payment_id"),
        Some(IdRef {
            namespace: "payments".into(),
            kind: IdKind::Bigint { start: 1000 },
            on_missing: OnMissing::Allocate,
            field: "_id".into(),
            sequence: None,
        })
    );
    assert_eq!(val(c, "offer_id"), &text(&hex(5)));
    let ns = uuid::Uuid::parse_str("1b671a64-40d5-491e-99b0-da01ff1f3341").unwrap();
    assert_eq!(
        id_ref(c, "offer_id"),
        Some(IdRef {
            namespace: "offers".into(),
            kind: IdKind::UuidV5 { namespace_uuid: ns },
            on_missing: OnMissing::Allocate,
            field: "offerId".into(),
            sequence: None,
        })
    );
}

#[test]
fn the_key_column_is_always_allocated() {
    let cat = catalog(vec![table(
        "public.t",
        vec![not_null(col("id", "uuid")), col("ref", "uuid")],
        &["id"],
    )]);
    let toml = r#"
[id_maps.t]
kind = "uuid_v7"
[[tables]]
source = "app.t"
target = "public.t"
[tables.columns]
id = { from = "_id", id_map = "t" }
ref = { from = "ref", id_map = "t" }
"#;
    let t = compile(toml, &cat);
    let out = apply_ok(
        &t,
        &mongo_insert(
            "app.t",
            vec![("_id", Value::ObjectId(oid(1))), ("ref", text("legacy-7"))],
        ),
    );
    let c = only_change(&out, "public.t");
    assert_eq!(id_ref(c, "id").unwrap().on_missing, OnMissing::Allocate);
    assert_eq!(id_ref(c, "ref").unwrap().on_missing, OnMissing::Allocate);
    assert_eq!(val(c, "ref"), &text("legacy-7"));
    // Legacy ids of every kind have one text.
    let out = apply_ok(
        &t,
        &mongo_insert("app.t", vec![("_id", Value::Int(42)), ("ref", num("7"))]),
    );
    let c = only_change(&out, "public.t");
    assert_eq!(val(c, "id"), &text("42"));
    assert_eq!(val(c, "ref"), &text("7"));
    // A missing reference is null, not an id.
    let out = apply_ok(&t, &mongo_insert("app.t", vec![("_id", Value::Int(43))]));
    assert_eq!(val(only_change(&out, "public.t"), "ref"), &Value::Null);
    // A value that cannot be an id.
    let r = apply_err(
        &t,
        &mongo_insert(
            "app.t",
            vec![("_id", Value::Int(44)), ("ref", Value::Bool(true))],
        ),
    );
    assert_eq!(r.rule, "bad_id");
    assert!(r.message.contains("ref"), "{}", r.message);
    // on_missing on the key itself is a finding.
    let fs = findings(
        &toml.replace(
            "id_map = \"t\" }\nref",
            "id_map = \"t\", on_missing = \"dead_letter\" }\nref",
        ),
        &cat,
    );
    assert!(
        has_finding(
            &fs,
            "mappings.tables[0].columns.id.on_missing",
            "always allocated"
        ),
        "{fs:#?}"
    );
}

#[test]
fn a_missing_key_is_refused() {
    let t = payments();
    let ev = payment_event(Op::Insert, without(payment(vec![]), "_id"));
    let r = apply_err(&t, &ev);
    assert_eq!(r.rule, "missing_key");
    assert!(r.message.contains("_id"), "{}", r.message);
}

// ---------------------------------------------------------------------------
// Deletes, updates, truncates

#[test]
fn a_delete_deletes_the_key_and_prunes_every_child() {
    let t = payments();
    let out = apply_ok(&t, &mongo_delete("app.payments", &oid_json(1)));
    assert_eq!(
        prunes(&out),
        vec![(
            TableId::new("public", "payment_items"),
            vec![text(&hex(1))],
            0
        )]
    );
    // Children are pruned before the parent goes.
    assert!(matches!(out[0], Output::Prune { .. }));
    let d = only_change(&out, "public.payments");
    assert_eq!(d.op, Op::Delete);
    assert!(d.after.is_none());
    assert_eq!(val(d, "id"), &text(&hex(1)));
    assert_eq!(
        crate::batch::key_values(&d.table, d.before.as_ref().unwrap()),
        vec![text(&hex(1))]
    );
    // Only the key is known: nothing else is filled (not even defaults).
    assert_eq!(val(d, "amount"), &Value::Null);
    assert_eq!(val(d, "currency"), &Value::Null);
    assert_eq!(val(d, "status"), &Value::Null);
    assert_eq!(id_ref(d, "id").unwrap().namespace, "payments");
    // The source change's metadata travels with it.
    assert_eq!(d.resume_token.as_deref(), Some("token"));
}

#[test]
fn a_delete_key_matches_the_insert_key_for_every_id_kind() {
    let t = payments();
    // The `_id` column holds relaxed Extended JSON, as the source writes it.
    for (id, ext) in [
        (Value::ObjectId(oid(1)), oid_json(1)),
        (text("legacy-key"), r#""legacy-key""#.to_string()),
        (Value::Int(77), "77".to_string()),
        (num("12.50"), r#"{"$numberDecimal":"12.50"}"#.to_string()),
    ] {
        let ins = apply_ok(
            &t,
            &payment_event(Op::Insert, payment(vec![("_id", id.clone())])),
        );
        let del = apply_ok(&t, &mongo_delete("app.payments", &ext));
        let ik = val(only_change(&ins, "public.payments"), "id").clone();
        let dk = val(only_change(&del, "public.payments"), "id").clone();
        assert_eq!(ik, dk, "{id:?}");
    }
}

#[test]
fn delete_keys_without_an_id_map() {
    // `_id` into a plain text column and into a jsonb column.
    let cat = catalog(vec![
        table("public.a", vec![not_null(col("id", "text"))], &["id"]),
        table("public.b", vec![not_null(col("id", "jsonb"))], &["id"]),
    ]);
    let t = compile(
        r#"
[[tables]]
source = "app.a"
target = "public.a"
[tables.columns]
id = "_id"
[[tables]]
source = "app.b"
target = "public.b"
[tables.columns]
id = "_id"
"#,
        &cat,
    );
    for (source, target) in [("app.a", "public.a"), ("app.b", "public.b")] {
        let ins = apply_ok(
            &t,
            &mongo_insert(source, vec![("_id", Value::ObjectId(oid(4)))]),
        );
        let del = apply_ok(&t, &mongo_delete(source, &oid_json(4)));
        assert!(prunes(&del).is_empty());
        assert_eq!(
            val(only_change(&ins, target), "id"),
            val(only_change(&del, target), "id"),
            "{target}"
        );
    }
}

#[test]

fn a_delete_with_a_compound_id_is_refused_not_a_crash() {
    let t = payments();
    let r = apply_err(&t, &mongo_delete("app.payments", r#"{"a":1,"b":2}"#));
    assert_eq!(r.rule, "bad_id");
}

#[test]
fn updates_rewrite_the_children() {
    let t = payments();
    let ev = payment_event(
        Op::Update,
        payment(vec![("items", Value::Array(vec![item("a", 1, "2.50", 5)]))]),
    );
    let out = apply_ok(&t, &ev);
    let p = only_change(&out, "public.payments");
    assert_eq!(p.op, Op::Update);
    let c = only_change(&out, "public.payment_items");
    assert_eq!(c.op, Op::Update);
    // Rows past the array's end go.
    assert_eq!(
        prunes(&out),
        vec![(
            TableId::new("public", "payment_items"),
            vec![text(&hex(1))],
            1
        )]
    );
}

#[test]
fn snapshot_reads_stay_reads() {
    let t = payments();
    let out = apply_ok(
        &t,
        &payment_event(
            Op::Read,
            payment(vec![("items", Value::Array(vec![item("a", 1, "1", 5)]))]),
        ),
    );
    assert!(changes(&out).iter().all(|c| c.op == Op::Read));
}

#[test]
fn a_truncate_truncates_children_first() {
    let t = payments();
    let ev = event(mongo_schema("app.payments"), Op::Truncate, None, None);
    let out = apply_ok(&t, &ev);
    let cs = changes(&out);
    assert_eq!(cs.len(), 2);
    assert_eq!(cs[0].table.id, TableId::new("public", "payment_items"));
    assert_eq!(cs[1].table.id, TableId::new("public", "payments"));
    assert!(cs
        .iter()
        .all(|c| c.op == Op::Truncate && c.after.is_none() && c.before.is_none()));
}

#[test]
fn unmapped_tables_are_left_alone() {
    let t = payments();
    let ev = mongo_insert("app.other", vec![("_id", Value::Int(1))]);
    assert!(t.apply(&ev).is_none());
    assert!(!t.maps(&TableId::new("app", "other")));
    assert!(t.maps(&TableId::new("app", "payments")));
    let schemas = t.target_schemas(&TableId::new("app", "payments")).unwrap();
    let ids: Vec<String> = schemas.iter().map(|s| s.id.to_string()).collect();
    assert_eq!(ids, ["public.payments", "public.payment_items"]);
    assert!(schemas[0].child.is_none());
    assert!(t.target_schemas(&TableId::new("app", "other")).is_none());
    let m = Mappings::from_toml(PAYMENTS).unwrap();
    assert_eq!(
        Transformer::targets(&m),
        vec![
            TableId::new("public", "payments"),
            TableId::new("public", "payment_items")
        ]
    );
}

// ---------------------------------------------------------------------------
// Child tables

#[test]
fn arrays_explode_into_child_rows() {
    let t = payments();
    let items = vec![
        item("a", 1, "1E+1", 5),
        item("b", 2, "2.5", 6),
        item("c", 3, "0.99", 7),
    ];
    let out = apply_ok(
        &t,
        &payment_event(Op::Insert, payment(vec![("items", Value::Array(items))])),
    );
    // Parent, then the children in order, then the prune.
    assert!(matches!(&out[0], Output::Change(c) if c.table.id.name == "payments"));
    assert!(matches!(out.last(), Some(Output::Prune { .. })));
    let kids: Vec<&ChangeEvent> = changes(&out)
        .into_iter()
        .filter(|c| c.table.id.name == "payment_items")
        .collect();
    assert_eq!(kids.len(), 3);
    for (i, (k, (sku, qty, price, offer))) in kids
        .iter()
        .zip([
            ("a", 1, "10.00", 5),
            ("b", 2, "2.50", 6),
            ("c", 3, "0.99", 7),
        ])
        .enumerate()
    {
        assert_eq!(k.op, Op::Insert);
        assert_eq!(val(k, "payment_id"), &text(&hex(1)));
        assert_eq!(val(k, "position"), &Value::Int(i as i64));
        assert_eq!(val(k, "sku"), &text(sku));
        assert_eq!(val(k, "qty"), &Value::Int(qty));
        assert_eq!(val_text(k, "unit_price"), price);
        assert_eq!(val(k, "offer_id"), &text(&hex(offer)));
        // `note` is dropped (unmapped = "drop"), the row is fully keyed.
        assert_eq!(
            crate::batch::key_values(&k.table, k.after.as_ref().unwrap()),
            vec![text(&hex(1)), Value::Int(i as i64)]
        );
    }
    let link = kids[0].table.child.clone().unwrap();
    assert_eq!(link.parent_key, vec![col_index(kids[0], "payment_id")]);
    assert_eq!(link.position, col_index(kids[0], "position"));
    assert_eq!(
        prunes(&out),
        vec![(
            TableId::new("public", "payment_items"),
            vec![text(&hex(1))],
            3
        )]
    );
    // The parent's rest does not hold the array.
    let p = only_change(&out, "public.payments");
    let Value::Json(extra) = val(p, "extra") else {
        panic!()
    };
    assert!(!extra.contains("items"), "{extra}");
}

#[test]
fn a_missing_or_null_array_means_no_children() {
    let t = payments();
    for fields in [
        without(payment(vec![]), "items"),
        payment(vec![("items", Value::Null)]),
        payment(vec![("items", Value::Array(vec![]))]),
    ] {
        let out = apply_ok(&t, &payment_event(Op::Insert, fields));
        assert_eq!(changes(&out).len(), 1);
        assert_eq!(
            prunes(&out),
            vec![(
                TableId::new("public", "payment_items"),
                vec![text(&hex(1))],
                0
            )]
        );
    }
}

#[test]
fn a_non_array_is_refused() {
    let t = payments();
    let ev = payment_event(Op::Insert, payment(vec![("items", text("not a list"))]));
    let r = apply_err(&t, &ev);
    assert_eq!(r.rule, "not_an_array");
    for part in [
        "app.payments",
        &hex(1),
        "\"items\"",
        "not a list",
        "not_an_array",
    ] {
        assert!(r.message.contains(part), "{part:?} not in {}", r.message);
    }
    let ev = payment_event(
        Op::Insert,
        payment(vec![("items", doc(vec![("sku", text("a"))]))]),
    );
    assert_eq!(apply_err(&t, &ev).rule, "not_an_array");
}

#[test]
fn a_non_document_element_is_refused() {
    let t = payments();
    let ev = payment_event(
        Op::Insert,
        payment(vec![(
            "items",
            Value::Array(vec![item("a", 1, "1", 5), Value::Int(5)]),
        )]),
    );
    let r = apply_err(&t, &ev);
    assert_eq!(r.rule, "not_a_document");
    assert!(r.message.contains("items[1]"), "{}", r.message);
    assert!(r.message.contains(&hex(1)), "{}", r.message);
    assert!(
        r.message.contains("5 is not a subdocument"),
        "{}",
        r.message
    );
}

#[test]
fn a_bad_element_refuses_the_whole_record() {
    let t = payments();
    let ev = payment_event(
        Op::Insert,
        payment(vec![(
            "items",
            Value::Array(vec![item("a", 1, "1", 5), item("b", 1, "1.005", 6)]),
        )]),
    );
    let r = apply_err(&t, &ev);
    assert_eq!(r.rule, "needs_rounding");
    for part in ["app.payments", &hex(1), "price", "1.005", "(in items[1])"] {
        assert!(r.message.contains(part), "{part:?} not in {}", r.message);
    }
}

#[test]
fn child_rules_reject_unmapped_fields_and_use_rest() {
    let cat = catalog(vec![
        table("public.orders", vec![not_null(col("id", "text"))], &["id"]),
        table(
            "public.lines",
            vec![
                not_null(col("order_id", "text")),
                not_null(col("pos", "smallint")),
                col("sku", "text"),
                col("extra", "jsonb"),
            ],
            &["order_id", "pos"],
        ),
    ]);
    let toml = r#"
[[tables]]
source = "app.orders"
target = "public.orders"
[tables.columns]
id = "_id"
[[tables.children]]
from = "lines"
target = "public.lines"
parent_key = ["order_id"]
position = "pos"
"#;
    let t = compile(toml, &cat);
    let ev = mongo_insert(
        "app.orders",
        vec![
            ("_id", text("o1")),
            (
                "lines",
                Value::Array(vec![doc(vec![("sku", text("a")), ("colour", text("red"))])]),
            ),
        ],
    );
    let r = apply_err(&t, &ev);
    assert_eq!(r.rule, "unmapped_field");
    assert!(
        r.message.contains("colour") && r.message.contains("(in lines[0])"),
        "{}",
        r.message
    );

    // With rest, the leftovers land there; the parent's key is not id-mapped
    // and goes as is.
    let t = compile(
        &toml.replace("position = \"pos\"", "position = \"pos\"\nrest = \"extra\""),
        &cat,
    );
    let out = apply_ok(&t, &ev);
    let l = only_change(&out, "public.lines");
    assert_eq!(val(l, "order_id"), &text("o1"));
    assert_eq!(id_ref(l, "order_id"), None);
    assert_eq!(val(l, "pos"), &Value::Int(0));
    assert_eq!(val(l, "sku"), &text("a"));
    assert_eq!(val(l, "extra"), &Value::Json(r#"{"colour":"red"}"#.into()));
}

#[test]
fn nested_child_arrays_and_composite_parent_keys() {
    // A PostgreSQL-shaped source (plain columns) with a two-column key and
    // a jsonb column holding the array.
    let cat = catalog(vec![
        table(
            "public.carts",
            vec![not_null(col("shop", "text")), not_null(col("id", "bigint"))],
            &["shop", "id"],
        ),
        table(
            "public.cart_lines",
            vec![
                not_null(col("cart_shop", "text")),
                not_null(col("cart_id", "bigint")),
                not_null(col("n", "integer")),
                col("sku", "text"),
            ],
            &["cart_shop", "cart_id", "n"],
        ),
    ]);
    let t = compile(
        r#"
[[tables]]
source = "shop.carts"
target = "public.carts"
unmapped = "drop"
[tables.columns]
shop = "shop"
id = "id"
[[tables.children]]
from = "data.lines"
target = "public.cart_lines"
parent_key = ["cart_shop", "cart_id"]
position = "n"
"#,
        &cat,
    );
    let schema = pg_schema(
        "shop.carts",
        &[
            ("shop", "text", true),
            ("id", "bigint", true),
            ("data", "jsonb", false),
        ],
    );
    let ev = event(
        schema,
        Op::Insert,
        None,
        Some(vec![
            Datum::Value(text("s1")),
            Datum::Value(Value::Int(9)),
            Datum::Value(Value::Json(r#"{"lines":[{"sku":"x"},{"sku":"y"}]}"#.into())),
        ]),
    );
    let out = apply_ok(&t, &ev);
    let lines: Vec<_> = changes(&out)
        .into_iter()
        .filter(|c| c.table.id.name == "cart_lines")
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(val(lines[1], "cart_shop"), &text("s1"));
    assert_eq!(val(lines[1], "cart_id"), &Value::Int(9));
    assert_eq!(val(lines[1], "n"), &Value::Int(1));
    assert_eq!(val(lines[1], "sku"), &text("y"));
    assert_eq!(
        prunes(&out),
        vec![(
            TableId::new("public", "cart_lines"),
            vec![text("s1"), Value::Int(9)],
            2
        )]
    );
}

// ---------------------------------------------------------------------------
// PostgreSQL-shaped sources

fn pg_schema(source: &str, cols: &[(&str, &str, bool)]) -> Arc<TableSchema> {
    Arc::new(TableSchema {
        id: TableId::parse(source).unwrap(),
        columns: cols
            .iter()
            .map(|(n, ty, key)| Column {
                name: n.to_string(),
                type_oid: 0,
                type_sql: ty.to_string(),
                nullable: !key,
                is_key: *key,
                enum_labels: None,
                id_map: None,
            })
            .collect(),
        primary_key: cols
            .iter()
            .enumerate()
            .filter(|(_, c)| c.2)
            .map(|(i, _)| i)
            .collect(),
        child: None,
    })
}

const ORDERS: &str = r#"
[[tables]]
source = "shop.orders"
target = "public.orders"
snake_case = true
rest = "extra"
[tables.columns]
id = "order_id"
customer = "customer_name"
total = { from = "total" }
city = "meta.address.city"
"#;

fn orders_catalog() -> HashMap<TableId, TargetTable> {
    catalog(vec![table(
        "public.orders",
        vec![
            not_null(col("id", "bigint")),
            col("customer", "text"),
            not_null(col("total", "numeric(10,2)")),
            col("city", "text"),
            col("note", "text"),
            col("extra", "jsonb"),
        ],
        &["id"],
    )])
}

fn orders() -> (Transformer, Arc<TableSchema>) {
    let schema = pg_schema(
        "shop.orders",
        &[
            ("order_id", "integer", true),
            ("customer_name", "text", false),
            ("total", "numeric", false),
            ("meta", "jsonb", false),
            ("note", "text", false),
            ("legacyFlag", "boolean", false),
        ],
    );
    (compile(ORDERS, &orders_catalog()), schema)
}

fn order_row(id: i64, note: Datum) -> Row {
    vec![
        Datum::Value(Value::Int(id)),
        Datum::Value(text("Ada")),
        Datum::Value(num("12.5")),
        Datum::Value(Value::Json(
            r#"{"address":{"city":"Oslo","zip":"0150"}}"#.into(),
        )),
        note,
        Datum::Value(Value::Bool(false)),
    ]
}

#[test]
fn postgres_rows_map_by_column_name() {
    let (t, schema) = orders();
    let ev = event(
        schema,
        Op::Insert,
        None,
        Some(order_row(7, Datum::Value(text("hi")))),
    );
    let out = apply_ok(&t, &ev);
    assert!(prunes(&out).is_empty());
    let o = only_change(&out, "public.orders");
    assert_eq!(val(o, "id"), &Value::Int(7));
    assert_eq!(val(o, "customer"), &text("Ada"));
    assert_eq!(val_text(o, "total"), "12.50");
    // A path into a jsonb column.
    assert_eq!(val(o, "city"), &text("Oslo"));
    assert_eq!(val(o, "note"), &text("hi"));
    // The unmapped boolean and the rest of the jsonb column are leftovers.
    let Value::Json(extra) = val(o, "extra") else {
        panic!()
    };
    assert!(extra.contains(r#""legacyFlag":false"#), "{extra}");
    assert!(extra.contains("0150"), "{extra}");
}

#[test]
fn paths_into_a_jsonb_source_column_leave_rest() {
    let (_, schema) = orders();
    let cat = orders_catalog();
    let t = compile(
        &ORDERS.replace(
            "rest = \"extra\"",
            "rest = \"extra\"\ndrop = [\"meta.secret\"]",
        ),
        &cat,
    );
    let mut row = order_row(7, Datum::Value(text("hi")));
    row[3] = Datum::Value(Value::Json(
        r#"{"address":{"city":"Oslo","zip":"0150"},"secret":"s3cr3t"}"#.into(),
    ));
    let out = apply_ok(&t, &event(schema, Op::Insert, None, Some(row)));
    let o = only_change(&out, "public.orders");
    assert_eq!(val(o, "city"), &text("Oslo"));
    let Value::Json(extra) = val(o, "extra") else {
        panic!()
    };
    assert!(!extra.contains("s3cr3t"), "dropped path written: {extra}");
    assert!(!extra.contains("Oslo"), "mapped path left in rest: {extra}");
    assert_eq!(
        extra,
        r#"{"meta":{"address":{"zip":"0150"}},"legacyFlag":false}"#
    );
}

#[test]

fn jsonb_numbers_left_for_rest_stay_exact() {
    let (t, schema) = orders();
    let mut row = order_row(7, Datum::Value(text("hi")));
    row[3] = Datum::Value(Value::Json(
        r#"{"address":{"city":"Oslo"},"big":12345678901234567890.123456789,"price":1.10}"#.into(),
    ));
    let out = apply_ok(&t, &event(schema, Op::Insert, None, Some(row)));
    let Value::Json(extra) = val(only_change(&out, "public.orders"), "extra") else {
        panic!()
    };
    assert!(
        extra.contains("12345678901234567890.123456789"),
        "digits lost: {extra}"
    );
    assert!(extra.contains(r#""price":1.10"#), "{extra}");
}

#[test]

fn jsonb_paths_read_numbers_exactly() {
    let cat = catalog(vec![table(
        "public.j",
        vec![not_null(col("id", "bigint")), col("amt", "numeric")],
        &["id"],
    )]);
    let t = compile(
        "[[tables]]\nsource = \"shop.j\"\ntarget = \"public.j\"\nunmapped = \"drop\"\n[tables.columns]\nid = \"id\"\namt = \"meta.amount\"\n",
        &cat,
    );
    let schema = pg_schema(
        "shop.j",
        &[("id", "integer", true), ("meta", "jsonb", false)],
    );
    let row = |amount: &str| {
        vec![
            Datum::Value(Value::Int(1)),
            Datum::Value(Value::Json(format!(r#"{{"amount":{amount}}}"#))),
        ]
    };
    let amt = |amount: &str| {
        let out = apply_ok(
            &t,
            &event(Arc::clone(&schema), Op::Insert, None, Some(row(amount))),
        );
        val_text(only_change(&out, "public.j"), "amt")
    };
    assert_eq!(amt("12345678901234567890.12"), "12345678901234567890.12");
    assert_eq!(amt("12.50"), "12.50");
}

#[test]
fn postgres_deletes_and_key_changes() {
    let (t, schema) = orders();
    let null = || Datum::Value(Value::Null);
    let key_only = |id: i64| {
        vec![
            Datum::Value(Value::Int(id)),
            null(),
            null(),
            null(),
            null(),
            null(),
        ]
    };
    let out = apply_ok(
        &t,
        &event(Arc::clone(&schema), Op::Delete, Some(key_only(7)), None),
    );
    let d = only_change(&out, "public.orders");
    assert_eq!(d.op, Op::Delete);
    assert_eq!(val(d, "id"), &Value::Int(7));
    // The NOT NULL numeric is not checked for a delete.
    assert_eq!(val(d, "total"), &Value::Null);

    // A key-changing update: the old row goes, then the new one.
    let ev = event(
        Arc::clone(&schema),
        Op::Update,
        Some(key_only(7)),
        Some(order_row(8, Datum::Value(text("hi")))),
    );
    let out = apply_ok(&t, &ev);
    let cs = changes(&out);
    assert_eq!(cs.len(), 2);
    assert_eq!(cs[0].op, Op::Delete);
    assert_eq!(val(cs[0], "id"), &Value::Int(7));
    assert_eq!(cs[1].op, Op::Update);
    assert_eq!(val(cs[1], "id"), &Value::Int(8));

    // Same key in `before` (REPLICA IDENTITY FULL): just the update.
    let ev = event(
        schema,
        Op::Update,
        Some(order_row(8, Datum::Value(text("old")))),
        Some(order_row(8, Datum::Value(text("new")))),
    );
    let out = apply_ok(&t, &ev);
    assert_eq!(changes(&out).len(), 1);
}

#[test]
fn unchanged_toast_stays_unchanged_or_is_refused_for_rest() {
    let (t, schema) = orders();
    // An unchanged large value of an automatically mapped column: unchanged.
    let ev = event(
        Arc::clone(&schema),
        Op::Update,
        None,
        Some(order_row(7, Datum::UnchangedToast)),
    );
    let out = apply_ok(&t, &ev);
    assert!(matches!(
        datum(only_change(&out, "public.orders"), "note"),
        Datum::UnchangedToast
    ));

    // An unchanged value under an explicit rule: unchanged too.
    let mut row = order_row(7, Datum::Value(text("x")));
    row[1] = Datum::UnchangedToast;
    let out = apply_ok(&t, &event(Arc::clone(&schema), Op::Update, None, Some(row)));
    assert!(matches!(
        datum(only_change(&out, "public.orders"), "customer"),
        Datum::UnchangedToast
    ));

    // An unchanged value that would go to `rest` cannot be rebuilt.
    let mut row = order_row(7, Datum::Value(text("x")));
    row[3] = Datum::UnchangedToast;
    let r = apply_err(&t, &event(Arc::clone(&schema), Op::Update, None, Some(row)));
    assert_eq!(r.rule, "unchanged_toast");
    assert!(
        r.message.contains("(rest)") && r.message.contains("shop.orders"),
        "{}",
        r.message
    );
}

// ---------------------------------------------------------------------------
// Compile findings

#[test]
fn the_payments_mapping_compiles_and_every_problem_is_reported() {
    // Several problems in one mapping: all of them come back.
    let mut cat = payments_catalog();
    let p = cat.get_mut(&TableId::new("public", "payments")).unwrap();
    p.columns.retain(|c| c.name != "city");
    for c in &mut p.columns {
        if c.name == "extra" {
            c.type_sql = "text".into();
        }
        if c.name == "id" {
            c.type_sql = "uuid".into();
        }
    }
    let fs = findings(PAYMENTS, &cat);
    assert!(
        has_finding(&fs, "mappings.tables[0].columns.city", "no column \"city\""),
        "{fs:#?}"
    );
    assert!(
        has_finding(&fs, "mappings.tables[0].rest", "not jsonb"),
        "{fs:#?}"
    );
    assert!(
        has_finding(&fs, "mappings.tables[0].columns.id.id_map", "bigint"),
        "{fs:#?}"
    );
    // Findings display as `key: message`.
    let shown = fs[0].to_string();
    assert!(shown.starts_with("mappings.tables[0]"), "{shown}");
}

#[test]
fn a_missing_target_table_is_a_finding() {
    let mut cat = payments_catalog();
    cat.remove(&TableId::new("public", "payment_items"));
    let fs = findings(PAYMENTS, &cat);
    assert!(
        has_finding(
            &fs,
            "mappings.tables[0].children[0].target",
            "public.payment_items does not exist"
        ),
        "{fs:#?}"
    );
    let mut cat = payments_catalog();
    cat.remove(&TableId::new("public", "payments"));
    let fs = findings(PAYMENTS, &cat);
    assert!(
        has_finding(
            &fs,
            "mappings.tables[0].target",
            "public.payments does not exist"
        ),
        "{fs:#?}"
    );
}

#[test]
fn id_maps_must_fit_the_column_type() {
    let cat = |ty: &str| {
        catalog(vec![table(
            "public.t",
            vec![not_null(col("id", ty)), col("r", "uuid")],
            &["id"],
        )])
    };
    let toml = |kind: &str| {
        format!(
            r#"
[id_maps.n]
kind = "{kind}"
[[tables]]
source = "app.t"
target = "public.t"
[tables.columns]
id = {{ from = "_id", id_map = "n" }}
"#
        )
    };
    // uuid ids into a bigint column; bigint ids into a uuid column.
    let fs = findings(&toml("uuid_v7"), &cat("bigint"));
    assert!(
        has_finding(
            &fs,
            "mappings.tables[0].columns.id.id_map",
            "makes uuid ids"
        ),
        "{fs:#?}"
    );
    let fs = findings(&toml("bigint"), &cat("uuid"));
    assert!(
        has_finding(
            &fs,
            "mappings.tables[0].columns.id.id_map",
            "makes bigint ids"
        ),
        "{fs:#?}"
    );
    let fs = findings(&toml("uuid_v5"), &cat("integer"));
    assert!(
        has_finding(&fs, "mappings.tables[0].columns.id.id_map", "integer"),
        "{fs:#?}"
    );
    // A text column too short for the id's text (36 characters for a
    // UUID, 20 for a bigint).
    let fs = findings(&toml("uuid_v7"), &cat("character varying(24)"));
    assert!(
        has_finding(
            &fs,
            "mappings.tables[0].columns.id.id_map",
            "character varying(24)"
        ),
        "{fs:#?}"
    );
    let fs = findings(&toml("bigint"), &cat("character varying(12)"));
    assert!(
        has_finding(
            &fs,
            "mappings.tables[0].columns.id.id_map",
            "makes bigint ids"
        ),
        "{fs:#?}"
    );
    // What fits.
    compile(&toml("uuid_v7"), &cat("uuid"));
    compile(&toml("uuid_v5"), &cat("text"));
    compile(&toml("uuid_v5"), &cat("character varying(36)"));
    compile(&toml("uuid_v5"), &cat("character varying"));
    compile(&toml("bigint"), &cat("bigint"));
    compile(&toml("bigint"), &cat("numeric"));
    compile(&toml("bigint"), &cat("character varying(20)"));
}

#[test]
fn round_on_a_non_numeric_column_is_a_finding() {
    let cat = catalog(vec![table(
        "public.t",
        vec![not_null(col("id", "text")), col("label", "text")],
        &["id"],
    )]);
    let fs = findings(
        r#"
[[tables]]
source = "app.t"
target = "public.t"
[tables.columns]
id = "_id"
label = { from = "label", round = "half_up" }
"#,
        &cat,
    );
    assert!(
        has_finding(&fs, "mappings.tables[0].columns.label.round", "not numeric"),
        "{fs:#?}"
    );
}

#[test]
fn a_default_the_type_cannot_read_is_a_finding() {
    let cat = catalog(vec![table(
        "public.t",
        vec![
            not_null(col("id", "text")),
            col("n", "integer"),
            col("price", "numeric(5,2)"),
        ],
        &["id"],
    )]);
    let fs = findings(
        r#"
[[tables]]
source = "app.t"
target = "public.t"
[tables.columns]
id = "_id"
n = { from = "n", default = "abc" }
price = { from = "price", default = "0.001" }
"#,
        &cat,
    );
    assert!(
        has_finding(&fs, "mappings.tables[0].columns.n.default", "integer"),
        "{fs:#?}"
    );
    assert!(
        has_finding(&fs, "mappings.tables[0].columns.price.default", "0.001"),
        "{fs:#?}"
    );
}

#[test]
fn rest_must_be_an_existing_jsonb_column() {
    let cat = catalog(vec![table(
        "public.t",
        vec![
            not_null(col("id", "text")),
            col("extra", "text"),
            col("j", "json"),
        ],
        &["id"],
    )]);
    let toml = |rest: &str| {
        format!(
            "[[tables]]\nsource = \"app.t\"\ntarget = \"public.t\"\nrest = \"{rest}\"\n[tables.columns]\nid = \"_id\"\n"
        )
    };
    let fs = findings(&toml("extra"), &cat);
    assert!(
        has_finding(
            &fs,
            "mappings.tables[0].rest",
            "public.t.extra is text, not jsonb"
        ),
        "{fs:#?}"
    );
    let fs = findings(&toml("nope"), &cat);
    assert!(
        has_finding(&fs, "mappings.tables[0].rest", "no column \"nope\""),
        "{fs:#?}"
    );
    // json is fine too.
    compile(&toml("j"), &cat);
}

#[test]
fn key_columns_need_a_rule_and_tables_need_a_key() {
    // An identity key (it has a default) that no rule names.
    let cat = catalog(vec![table(
        "public.t",
        vec![
            not_null(defaulted(col("id", "bigint"))),
            col("name", "text"),
        ],
        &["id"],
    )]);
    let toml = "[[tables]]\nsource = \"app.t\"\ntarget = \"public.t\"\n[tables.columns]\nname = \"name\"\n";
    let fs = findings(toml, &cat);
    assert!(
        has_finding(
            &fs,
            "mappings.tables[0].columns",
            "key column public.t.id has no rule"
        ),
        "{fs:#?}"
    );

    let cat = catalog(vec![table("public.t", vec![col("name", "text")], &[])]);
    let fs = findings(toml, &cat);
    assert!(
        has_finding(&fs, "mappings.tables[0].target", "no primary key"),
        "{fs:#?}"
    );
}

#[test]
fn a_not_null_column_that_cannot_be_filled_is_a_finding() {
    // A NOT NULL column without a default that the mapping cannot fill: its
    // type is unreadable, so even the automatic mapping by name skips it.
    let cat = catalog(vec![table(
        "public.t",
        vec![
            not_null(col("id", "text")),
            not_null(col("weird", "numeric(x)")),
        ],
        &["id"],
    )]);
    let fs = findings(
        "[[tables]]\nsource = \"app.t\"\ntarget = \"public.t\"\n[tables.columns]\nid = \"_id\"\n",
        &cat,
    );
    assert!(
        has_finding(
            &fs,
            "mappings.tables[0].columns",
            "public.t.weird is NOT NULL, has no default and no rule fills it"
        ),
        "{fs:#?}"
    );
}

#[test]
fn a_not_null_column_without_a_rule_is_a_finding() {
    let cat = catalog(vec![table(
        "public.users",
        vec![not_null(col("id", "text")), not_null(col("email", "text"))],
        &["id"],
    )]);
    let fs = findings(
        "[[tables]]\nsource = \"app.users\"\ntarget = \"public.users\"\nsnake_case = true\n[tables.columns]\nid = \"_id\"\n",
        &cat,
    );
    assert!(
        has_finding(
            &fs,
            "mappings.tables[0].columns",
            "public.users.email is NOT NULL"
        ),
        "{fs:#?}"
    );
}

#[test]
fn an_auto_mapped_not_null_column_needs_a_rule() {
    // Matching by name cannot prove a NOT NULL column filled: a rule must.
    let cat = catalog(vec![table(
        "public.t",
        vec![
            not_null(col("id", "text")),
            not_null(col("total_amount", "numeric(12,2)")),
            col("note", "numeric(12,2)"),
        ],
        &["id"],
    )]);
    let toml = "[[tables]]\nsource = \"app.t\"\ntarget = \"public.t\"\nsnake_case = true\n[tables.columns]\nid = \"_id\"\n";
    let fs = findings(toml, &cat);
    assert!(
        has_finding(
            &fs,
            "mappings.tables[0].columns",
            "public.t.total_amount is NOT NULL"
        ),
        "{fs:#?}"
    );
    // The nullable one is fine without a rule.
    assert_eq!(fs.len(), 1, "{fs:#?}");
    // Named, a missing field is null_in_not_null; present, it is normalized.
    let t = compile(&format!("{toml}total_amount = \"totalAmount\"\n"), &cat);
    let out = apply_ok(
        &t,
        &mongo_insert(
            "app.t",
            vec![
                ("_id", text("k")),
                ("totalAmount", num("1")),
                ("note", num("2")),
            ],
        ),
    );
    let c = only_change(&out, "public.t");
    assert_eq!(val_text(c, "total_amount"), "1.00");
    // Automatically mapped by name.
    assert_eq!(val_text(c, "note"), "2.00");
    let r = apply_err(&t, &mongo_insert("app.t", vec![("_id", text("k"))]));
    assert_eq!(r.rule, "null_in_not_null");
    assert!(r.message.contains("totalAmount"), "{}", r.message);
    // A missing field of a nullable auto-mapped column is null.
    let out = apply_ok(
        &t,
        &mongo_insert("app.t", vec![("_id", text("k")), ("totalAmount", num("1"))]),
    );
    assert_eq!(val(only_change(&out, "public.t"), "note"), &Value::Null);
}

#[test]

fn dropped_paths_are_never_written() {
    let cat = catalog(vec![table(
        "public.t",
        vec![not_null(col("id", "text")), col("card", "jsonb")],
        &["id"],
    )]);
    let t = compile(
        "[[tables]]\nsource = \"app.t\"\ntarget = \"public.t\"\ndrop = [\"card.cvc\"]\n[tables.columns]\nid = \"_id\"\ncard = \"card\"\n",
        &cat,
    );
    let out = apply_ok(
        &t,
        &mongo_insert(
            "app.t",
            vec![
                ("_id", text("k")),
                (
                    "card",
                    doc(vec![("last4", text("4242")), ("cvc", text("123"))]),
                ),
            ],
        ),
    );
    assert_eq!(
        val(only_change(&out, "public.t"), "card"),
        &Value::Json(r#"{"last4":"4242"}"#.into())
    );
}

#[test]
fn dropped_paths_stay_out_of_automatic_mappings() {
    // The automatic mapping by name sees the document after `drop`.
    let cat = catalog(vec![table(
        "public.t",
        vec![not_null(col("id", "text")), col("card", "jsonb")],
        &["id"],
    )]);
    let t = compile(
        "[[tables]]\nsource = \"app.t\"\ntarget = \"public.t\"\ndrop = [\"card.cvc\"]\n[tables.columns]\nid = \"_id\"\n",
        &cat,
    );
    let out = apply_ok(
        &t,
        &mongo_insert(
            "app.t",
            vec![
                ("_id", text("k")),
                (
                    "card",
                    doc(vec![("last4", text("4242")), ("cvc", text("123"))]),
                ),
            ],
        ),
    );
    assert_eq!(
        val(only_change(&out, "public.t"), "card"),
        &Value::Json(r#"{"last4":"4242"}"#.into())
    );
}

fn child_catalog(items: Vec<TargetColumn>, pk: &[&str]) -> HashMap<TableId, TargetTable> {
    catalog(vec![
        table("public.p", vec![not_null(col("id", "bigint"))], &["id"]),
        table("public.c", items, pk),
    ])
}

const CHILD: &str = r#"
[[tables]]
source = "app.p"
target = "public.p"
[tables.columns]
id = "_id"
[[tables.children]]
from = "items"
target = "public.c"
parent_key = ["p_id"]
position = "pos"
unmapped = "drop"
"#;

#[test]
fn a_child_key_must_be_parent_key_and_position() {
    let good = vec![
        not_null(col("p_id", "bigint")),
        not_null(col("pos", "integer")),
        col("sku", "text"),
    ];
    compile(CHILD, &child_catalog(good.clone(), &["p_id", "pos"]));
    // Key order does not matter.
    compile(CHILD, &child_catalog(good.clone(), &["pos", "p_id"]));
    // Only the parent key: not enough.
    let fs = findings(CHILD, &child_catalog(good.clone(), &["p_id"]));
    assert!(
        has_finding(
            &fs,
            "mappings.tables[0].children[0].target",
            "must be parent_key + position"
        ),
        "{fs:#?}"
    );
    // An extra key column.
    let fs = findings(CHILD, &child_catalog(good.clone(), &["p_id", "pos", "sku"]));
    assert!(
        has_finding(
            &fs,
            "mappings.tables[0].children[0].target",
            "must be parent_key + position"
        ),
        "{fs:#?}"
    );
}

#[test]
fn child_link_columns_are_checked() {
    // The position is not an integer.
    let fs = findings(
        CHILD,
        &child_catalog(
            vec![
                not_null(col("p_id", "bigint")),
                not_null(col("pos", "text")),
            ],
            &["p_id", "pos"],
        ),
    );
    assert!(
        has_finding(
            &fs,
            "mappings.tables[0].children[0].position",
            "not an integer type"
        ),
        "{fs:#?}"
    );
    // The parent-key column is missing, and so is the position.
    let fs = findings(
        CHILD,
        &child_catalog(vec![not_null(col("other", "bigint"))], &["other"]),
    );
    assert!(
        has_finding(
            &fs,
            "mappings.tables[0].children[0].parent_key",
            "no column \"p_id\""
        ),
        "{fs:#?}"
    );
    assert!(
        has_finding(
            &fs,
            "mappings.tables[0].children[0].position",
            "no column \"pos\""
        ),
        "{fs:#?}"
    );
    // The parent-key column's type differs from the parent's key.
    let fs = findings(
        CHILD,
        &child_catalog(
            vec![
                not_null(col("p_id", "text")),
                not_null(col("pos", "integer")),
            ],
            &["p_id", "pos"],
        ),
    );
    assert!(
        has_finding(
            &fs,
            "mappings.tables[0].children[0].parent_key",
            "public.c.p_id is text"
        ),
        "{fs:#?}"
    );
    // Too many parent-key columns for a one-column parent key.
    let fs = findings(
        &CHILD.replace("[\"p_id\"]", "[\"p_id\", \"pos2\"]"),
        &child_catalog(
            vec![
                not_null(col("p_id", "bigint")),
                not_null(col("pos2", "bigint")),
                not_null(col("pos", "integer")),
            ],
            &["p_id", "pos2", "pos"],
        ),
    );
    assert!(
        has_finding(
            &fs,
            "mappings.tables[0].children[0].parent_key",
            "names 2 column(s)"
        ),
        "{fs:#?}"
    );
}

#[test]

fn a_child_parent_key_column_must_fit_the_parents_id_map() {
    let cat = catalog(vec![
        table("public.p", vec![not_null(col("id", "uuid"))], &["id"]),
        table(
            "public.c",
            vec![
                not_null(col("p_id", "bigint")),
                not_null(col("pos", "integer")),
            ],
            &["p_id", "pos"],
        ),
    ]);
    let toml = CHILD
        .replace("id = \"_id\"", "id = { from = \"_id\", id_map = \"p\" }")
        .replace(
            "[[tables]]",
            "[id_maps.p]\nkind = \"uuid_v7\"\n\n[[tables]]",
        );
    let fs = findings(&toml, &cat);
    assert!(
        has_finding(&fs, "mappings.tables[0].children[0].parent_key", "p_id"),
        "{fs:#?}"
    );
}

#[test]

fn child_findings_are_reported_with_parent_findings() {
    let cat = child_catalog(
        vec![
            not_null(col("p_id", "bigint")),
            not_null(col("pos", "integer")),
        ],
        &["p_id"],
    );
    let toml = CHILD.replace("id = \"_id\"", "id = \"_id\"\nnope = \"x\"");
    let fs = findings(&toml, &cat);
    assert!(
        has_finding(&fs, "mappings.tables[0].columns.nope", "no column"),
        "{fs:#?}"
    );
    assert!(
        has_finding(
            &fs,
            "mappings.tables[0].children[0].target",
            "parent_key + position"
        ),
        "{fs:#?}"
    );
}

// ---------------------------------------------------------------------------
// Arrays of scalars into child tables (`value`).

const REQUESTS: &str = r#"
[id_maps.users]
kind = "uuid_v7"

[[tables]]
source = "app.requests"
target = "public.requests"
unmapped = "drop"
[tables.columns]
id = "_id"

[[tables.children]]
from = "tags"
target = "public.request_tags"
parent_key = ["request_id"]
position = "position"
value = "tag"

[[tables.children]]
from = "preferredSellers"
target = "public.request_sellers"
parent_key = ["request_id"]
position = "position"
value = "seller_id"
[tables.children.columns]
seller_id = { from = "seller_id", id_map = "users", on_missing = "allocate" }
"#;

fn requests_catalog() -> HashMap<TableId, TargetTable> {
    catalog(vec![
        table(
            "public.requests",
            vec![not_null(col("id", "text"))],
            &["id"],
        ),
        table(
            "public.request_tags",
            vec![
                not_null(col("request_id", "text")),
                not_null(col("position", "integer")),
                col("tag", "text"),
            ],
            &["request_id", "position"],
        ),
        table(
            "public.request_sellers",
            vec![
                not_null(col("request_id", "text")),
                not_null(col("position", "integer")),
                col("seller_id", "uuid"),
            ],
            &["request_id", "position"],
        ),
    ])
}

#[test]
fn arrays_of_scalars_and_of_references_become_child_rows() {
    let t = compile(REQUESTS, &requests_catalog());
    let ev = mongo_insert(
        "app.requests",
        vec![
            ("_id", text("r1")),
            ("tags", Value::Array(vec![text("x"), text("y")])),
            (
                "preferredSellers",
                Value::Array(vec![Value::ObjectId(oid(1)), Value::ObjectId(oid(2))]),
            ),
        ],
    );
    let out = apply_ok(&t, &ev);
    let tags: Vec<&ChangeEvent> = changes(&out)
        .into_iter()
        .filter(|c| c.table.id.name == "request_tags")
        .collect();
    assert_eq!(tags.len(), 2);
    assert_eq!(val_text(tags[1], "tag"), "y");
    assert_eq!(val_text(tags[1], "position"), "1");
    assert_eq!(val_text(tags[1], "request_id"), "r1");
    let sellers: Vec<&ChangeEvent> = changes(&out)
        .into_iter()
        .filter(|c| c.table.id.name == "request_sellers")
        .collect();
    assert_eq!(sellers.len(), 2);
    // The legacy id, for the sink to translate (allocating ahead).
    assert_eq!(val_text(sellers[0], "seller_id"), hex(1));
    let r = id_ref(sellers[0], "seller_id").expect("an id-mapped column");
    assert_eq!(r.namespace, "users");
    assert_eq!(r.on_missing, OnMissing::Allocate);
    // Both arrays are pruned past their last element (a shrink).
    let p = prunes(&out);
    assert!(
        p.iter()
            .any(|(t, _, n)| t.name == "request_tags" && *n == 2),
        "{p:?}"
    );

    // A subdocument in an array of scalars is refused with its rule.
    let bad = mongo_insert(
        "app.requests",
        vec![
            ("_id", text("r2")),
            ("tags", Value::Array(vec![doc(vec![("a", text("b"))])])),
        ],
    );
    let r = apply_err(&t, &bad);
    assert_eq!(r.rule, "not_a_scalar");
    assert!(r.message.contains("tags[0]"), "{r:?}");

    // Scalars without `value`: refused, saying what to set.
    let no_value = REQUESTS.replace("value = \"tag\"\n", "");
    let t = Transformer::compile(
        &Mappings::from_toml(&no_value).unwrap(),
        &requests_catalog(),
    );
    // (`tag` is then an ordinary column of a subdocument table.)
    let t = t.expect("compiles");
    let r = apply_err(&t, &ev);
    assert_eq!(r.rule, "not_a_document");
    assert!(r.message.contains("`value`"), "{}", r.message);
}

#[test]
fn a_value_column_the_child_lacks_is_a_finding() {
    let toml = REQUESTS.replace("value = \"tag\"", "value = \"label\"");
    let fs = findings(&toml, &requests_catalog());
    assert!(
        has_finding(
            &fs,
            "mappings.tables[0].children[0].value",
            "no column \"label\""
        ),
        "{fs:#?}"
    );
}

/// An id map into an array column or jsonb takes the whole array: each
/// element's legacy id text (NULL elements kept), translated by the sink;
/// a scalar where an array belongs is refused as `bad_id`; the element
/// type must hold the ids.
#[test]
fn id_map_into_array_and_jsonb_columns() {
    let cat = catalog(vec![table(
        "public.requests",
        vec![
            col("id", "text"),
            col("seller_ids", "uuid[]"),
            col("seller_json", "jsonb"),
        ],
        &["id"],
    )]);
    let toml = r#"
[id_maps.users]
kind = "uuid_v7"
[[tables]]
source = "app.requests"
target = "public.requests"
[tables.columns]
id = "_id"
seller_ids = { from = "sellers", id_map = "users" }
seller_json = { from = "sellers", id_map = "users" }
"#;
    let t = compile(toml, &cat);
    let ev = mongo_insert(
        "app.requests",
        vec![
            ("_id", text("r1")),
            (
                "sellers",
                Value::Array(vec![Value::ObjectId(oid(1)), Value::Null, text("legacy-7")]),
            ),
        ],
    );
    let out = apply_ok(&t, &ev);
    let row = only_change(&out, "public.requests");
    let want = Value::Array(vec![text(&hex(1)), Value::Null, text("legacy-7")]);
    assert_eq!(val(row, "seller_ids"), &want);
    assert_eq!(val(row, "seller_json"), &want);
    assert_eq!(id_ref(row, "seller_ids").unwrap().namespace, "users");

    let scalar = mongo_insert(
        "app.requests",
        vec![("_id", text("r2")), ("sellers", Value::ObjectId(oid(2)))],
    );
    assert_eq!(apply_err(&t, &scalar).rule, "bad_id");

    let bigints = catalog(vec![table(
        "public.requests",
        vec![
            col("id", "text"),
            col("seller_ids", "bigint[]"),
            col("seller_json", "jsonb"),
        ],
        &["id"],
    )]);
    assert!(has_finding(
        &findings(toml, &bigints),
        "mappings.tables[0].columns.seller_ids.id_map",
        "bigint[]"
    ));
}
