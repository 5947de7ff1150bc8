//! Cost of the transform stage per event.
//!
//! A realistic MongoDB payment document (nested delivery address, Decimal128
//! money, ObjectId references through the id map, an array of three items
//! exploded into a child table, leftovers into a `rest` jsonb column) run
//! through [`Transformer::apply`], next to the least any stage pays for an
//! event: cloning the `ChangeEvent`.
//!
//! ```sh
//! cargo bench -p ferry-pipeline --bench transform -- --quick
//! ```

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ferry_pipeline::event::{ChangeEvent, Column, Datum, Op, Position, TableId, TableSchema};
use ferry_pipeline::mapping::Mappings;
use ferry_pipeline::transform::{Output, TargetColumn, TargetTable, Transformer};
use ferry_pipeline::value::{TemporalKind, Value};

const MAPPING: &str = r#"
[id_maps.users]
kind = "uuid_v7"

[id_maps.offers]
kind = "uuid_v5"
namespace_uuid = "1b671a64-40d5-491e-99b0-da01ff1f3341"

[id_maps.payments]
kind = "bigint"
start = 1000000

[[tables]]
source = "shop.payments"
target = "public.payments"
snake_case = true
rest = "extra"
drop = ["__v", "card.cvc"]

[tables.columns]
id         = { from = "_id", id_map = "payments" }
user_id    = { from = "userId", id_map = "users" }
amount     = { from = "amount" }
fee        = { from = "fee", round = "half_even" }
city       = "delivery.address.city"
zip        = "delivery.address.zip"
status     = { from = "status", default = "pending" }
currency   = { from = "currency", default = "EUR" }

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

fn col(name: &str, type_sql: &str, nullable: bool) -> TargetColumn {
    TargetColumn {
        name: name.into(),
        type_sql: type_sql.into(),
        nullable,
        has_default: false,
    }
}

fn catalog() -> HashMap<TableId, TargetTable> {
    let payments = TargetTable {
        id: TableId::new("public", "payments"),
        columns: vec![
            col("id", "bigint", false),
            col("user_id", "uuid", true),
            col("amount", "numeric(12,2)", false),
            col("fee", "numeric(12,2)", true),
            col("city", "text", true),
            col("zip", "text", true),
            col("status", "text", false),
            col("currency", "text", false),
            col("created_at", "timestamp with time zone", true),
            col("paid_at", "timestamp with time zone", true),
            col("extra", "jsonb", true),
        ],
        primary_key: vec!["id".into()],
    };
    let items = TargetTable {
        id: TableId::new("public", "payment_items"),
        columns: vec![
            col("payment_id", "bigint", false),
            col("position", "integer", false),
            col("sku", "text", true),
            col("qty", "integer", true),
            col("unit_price", "numeric(12,2)", true),
            col("offer_id", "uuid", true),
        ],
        primary_key: vec!["payment_id".into(), "position".into()],
    };
    [payments, items]
        .into_iter()
        .map(|t| (t.id.clone(), t))
        .collect()
}

fn oid(n: u8) -> [u8; 12] {
    [
        0x65, 0x0a, 0xf3, 0x1c, 0x9e, 0x42, 0x7b, 0x10, 0x00, 0x00, 0x00, n,
    ]
}

fn num(s: &str) -> Value {
    Value::Numeric(s.parse().expect("a decimal"))
}

fn text(s: &str) -> Value {
    Value::Text(s.into())
}

fn doc(fields: Vec<(&str, Value)>) -> Value {
    Value::Document(
        fields
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
    )
}

fn item(sku: &str, qty: i64, price: &str, offer: u8) -> Value {
    doc(vec![
        ("sku", text(sku)),
        ("qty", Value::Int(qty)),
        ("price", num(price)),
        ("offerId", Value::ObjectId(oid(offer))),
        ("note", text("gift wrap")),
    ])
}

/// The MongoDB source's shape of a collection: `_id` (key) + `document`.
fn source_schema() -> Arc<TableSchema> {
    let jsonb = |name: &str, key: bool| Column {
        name: name.into(),
        type_oid: 0,
        type_sql: "jsonb".into(),
        nullable: !key && name != "document",
        is_key: key,
        enum_labels: None,
        id_map: None,
    };
    Arc::new(TableSchema {
        id: TableId::new("shop", "payments"),
        columns: vec![jsonb("_id", true), jsonb("document", false)],
        primary_key: vec![0],
        child: None,
    })
}

fn event(op: Op, before: Option<Vec<Datum>>, after: Option<Vec<Datum>>) -> ChangeEvent {
    ChangeEvent {
        table: source_schema(),
        op,
        before,
        after,
        position: Position::default(),
        xid: None,
        commit_ts_micros: 1_700_000_000_000_000,
        resume_token: Some(Arc::from(
            r#"{"_data":"8265F0C2A1000000012B022C0100296E5A1004"}"#,
        )),
    }
}

/// A payment as the MongoDB source emits it: 13 top-level fields.
fn payment_insert() -> ChangeEvent {
    let id = oid(1);
    let document = doc(vec![
        ("_id", Value::ObjectId(id)),
        ("userId", Value::ObjectId(oid(2))),
        ("amount", num("1234.50")),
        ("fee", num("2.345")),
        ("currency", text("EUR")),
        ("status", text("paid")),
        (
            "createdAt",
            Value::Temporal(
                TemporalKind::Timestamptz,
                "2024-03-01 10:15:30.123+00".into(),
            ),
        ),
        ("paidAt", Value::Int(1_709_288_130_123)),
        (
            "delivery",
            doc(vec![
                (
                    "address",
                    doc(vec![
                        ("street", text("12 rue de la Paix")),
                        ("city", text("Paris")),
                        ("zip", text("75002")),
                    ]),
                ),
                ("express", Value::Bool(true)),
            ]),
        ),
        (
            "items",
            Value::Array(vec![
                item("SKU-1", 1, "999.00", 11),
                item("SKU-2", 2, "100.25", 12),
                item("SKU-3", 1, "35.00", 13),
            ]),
        ),
        (
            "card",
            doc(vec![
                ("brand", text("visa")),
                ("last4", text("4242")),
                ("cvc", text("123")),
            ]),
        ),
        ("tags", Value::Array(vec![text("web"), text("promo")])),
        ("__v", Value::Int(0)),
    ]);
    let id_json = Value::Json(format!(r#"{{"$oid":"{}"}}"#, hex(&id)));
    event(
        Op::Insert,
        None,
        Some(vec![Datum::Value(id_json), Datum::Value(document)]),
    )
}

fn payment_delete() -> ChangeEvent {
    let id_json = Value::Json(format!(r#"{{"$oid":"{}"}}"#, hex(&oid(1))));
    event(
        Op::Delete,
        Some(vec![Datum::Value(id_json), Datum::Value(Value::Null)]),
        None,
    )
}

fn hex(id: &[u8; 12]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

fn bench(c: &mut Criterion) {
    let mappings = Mappings::from_toml(MAPPING).expect("mapping");
    let transformer = Transformer::compile(&mappings, &catalog()).expect("compiles");
    let insert = payment_insert();
    let delete = payment_delete();

    // Measure the real path, not a rejection: parent + 3 items + prune.
    let out = transformer
        .apply(&insert)
        .expect("mapped")
        .expect("accepted");
    assert_eq!(out.len(), 5, "{out:#?}");
    assert_eq!(
        out.iter()
            .filter(|o| matches!(o, Output::Change(c) if c.table.id.name == "payment_items"))
            .count(),
        3
    );
    let out = transformer
        .apply(&delete)
        .expect("mapped")
        .expect("accepted");
    assert_eq!(out.len(), 2, "{out:#?}");

    let mut g = c.benchmark_group("transform");
    g.throughput(Throughput::Elements(1));
    g.bench_function("clone_event_baseline", |b| {
        b.iter(|| black_box(black_box(&insert).clone()))
    });
    g.bench_function("payment_insert_apply", |b| {
        b.iter(|| black_box(transformer.apply(black_box(&insert))))
    });
    g.bench_function("payment_delete_apply", |b| {
        b.iter(|| black_box(transformer.apply(black_box(&delete))))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
