//! The exact SQL of every apply statement: upserts, deletes, patches, rekeys,
//! prunes, with composite keys, quoted identifiers and id-mapped columns.

use ferry_pipeline::event::{ChildLink, Column, Datum, TableId, TableSchema};
use ferry_pipeline::id_map::{IdKind, IdRef, OnMissing};
use ferry_pipeline::value::Value;

use super::*;
use crate::target::{TargetColumn, TargetTable};

fn column(name: &str, type_sql: &str, is_key: bool) -> Column {
    Column {
        name: name.into(),
        type_oid: 0,
        type_sql: type_sql.into(),
        nullable: !is_key,
        is_key,
        enum_labels: None,
        id_map: None,
    }
}

/// A schema and the target table it is written to (same columns, each
/// cast to the given bare type).
fn table(id: TableId, cols: &[(&str, &str)], key: &[usize]) -> (TableSchema, TargetTable) {
    let schema = TableSchema {
        id: id.clone(),
        columns: cols
            .iter()
            .enumerate()
            .map(|(i, (n, t))| column(n, t, key.contains(&i)))
            .collect(),
        primary_key: key.to_vec(),
        child: None,
    };
    let target = TargetTable {
        id,
        columns: cols
            .iter()
            .map(|(n, t)| TargetColumn {
                name: (*n).into(),
                type_sql: (*t).into(),
                cast_sql: (*t).into(),
            })
            .collect(),
    };
    (schema, target)
}

fn accounts() -> (TableSchema, TargetTable) {
    table(
        TableId::new("public", "accounts"),
        &[("id", "bigint"), ("owner", "text"), ("balance", "numeric")],
        &[0],
    )
}

#[test]
fn upsert_sets_every_non_key_column_on_conflict() {
    let (schema, target) = accounts();
    assert_eq!(
        upsert(&target, &schema),
        "INSERT INTO \"public\".\"accounts\" (\"id\", \"owner\", \"balance\") \
         SELECT u.c0::bigint, u.c1::text, u.c2::numeric \
         FROM unnest($1::text[], $2::text[], $3::text[]) AS u(c0, c1, c2) \
         ON CONFLICT (\"id\") DO UPDATE SET \"owner\" = EXCLUDED.\"owner\", \"balance\" = EXCLUDED.\"balance\""
    );
}

#[test]
fn upsert_of_a_key_only_table_does_nothing_on_conflict() {
    let (schema, target) = table(
        TableId::new("public", "tags"),
        &[("tag", "text"), ("item", "bigint")],
        &[0, 1],
    );
    assert_eq!(
        upsert(&target, &schema),
        "INSERT INTO \"public\".\"tags\" (\"tag\", \"item\") \
         SELECT u.c0::text, u.c1::bigint FROM unnest($1::text[], $2::text[]) AS u(c0, c1) \
         ON CONFLICT (\"tag\", \"item\") DO NOTHING"
    );
}

#[test]
fn delete_matches_the_key() {
    let (schema, target) = accounts();
    assert_eq!(
        delete(&target, &schema),
        "DELETE FROM \"public\".\"accounts\" AS t USING unnest($1::text[]) AS u(k0) \
         WHERE t.\"id\" = u.k0::bigint"
    );
}

#[test]
fn composite_keys_follow_key_order_not_column_order() {
    // Key (id, tenant) over columns (tenant, id, note).
    let (schema, target) = table(
        TableId::new("app", "orders"),
        &[("tenant", "text"), ("id", "bigint"), ("note", "text")],
        &[1, 0],
    );
    assert_eq!(
        delete(&target, &schema),
        "DELETE FROM \"app\".\"orders\" AS t USING unnest($1::text[], $2::text[]) AS u(k0, k1) \
         WHERE t.\"id\" = u.k0::bigint AND t.\"tenant\" = u.k1::text"
    );
    assert_eq!(
        upsert(&target, &schema),
        "INSERT INTO \"app\".\"orders\" (\"tenant\", \"id\", \"note\") \
         SELECT u.c0::text, u.c1::bigint, u.c2::text \
         FROM unnest($1::text[], $2::text[], $3::text[]) AS u(c0, c1, c2) \
         ON CONFLICT (\"id\", \"tenant\") DO UPDATE SET \"note\" = EXCLUDED.\"note\""
    );
}

#[test]
fn patch_sets_only_the_columns_the_update_carries() {
    let (schema, target) = accounts();
    // `owner` was left untouched (a TOAST value the update did not change).
    assert_eq!(
        patch(&target, &schema, &[true, false, true]).as_deref(),
        Some(
            "UPDATE \"public\".\"accounts\" AS t SET \"balance\" = u.c1::numeric \
             FROM unnest($1::text[], $2::text[]) AS u(c0, c1) WHERE t.\"id\" = u.c0::bigint"
        )
    );
}

#[test]
fn patch_with_nothing_but_the_key_is_no_statement() {
    let (schema, target) = accounts();
    assert_eq!(patch(&target, &schema, &[true, false, false]), None);
}

#[test]
fn rekey_sets_carried_values_and_finds_the_row_by_its_old_key() {
    let (schema, target) = accounts();
    let row = [
        Datum::Value(Value::Int(2)),
        Datum::UnchangedToast,
        Datum::Value(Value::Text("1.50".into())),
    ];
    assert_eq!(
        rekey(&target, &schema, &row),
        "UPDATE \"public\".\"accounts\" SET \"id\" = ($1::text[])[1]::bigint, \
         \"balance\" = ($2::text[])[1]::numeric WHERE \"id\" = ($3::text[])[1]::bigint"
    );
}

#[test]
fn rekey_with_a_composite_key_numbers_the_old_key_after_the_values() {
    let (schema, target) = table(
        TableId::new("app", "orders"),
        &[("tenant", "text"), ("id", "bigint")],
        &[0, 1],
    );
    let row = [
        Datum::Value(Value::Text("a".into())),
        Datum::Value(Value::Int(7)),
    ];
    assert_eq!(
        rekey(&target, &schema, &row),
        "UPDATE \"app\".\"orders\" SET \"tenant\" = ($1::text[])[1]::text, \"id\" = ($2::text[])[1]::bigint \
         WHERE \"tenant\" = ($3::text[])[1]::text AND \"id\" = ($4::text[])[1]::bigint"
    );
}

#[test]
fn identifiers_are_quoted_with_inner_quotes_doubled() {
    let (schema, target) = table(
        TableId::new("we\"ird", "Mixed Case"),
        &[("a\"b", "bigint"), ("select", "text")],
        &[0],
    );
    assert_eq!(
        upsert(&target, &schema),
        "INSERT INTO \"we\"\"ird\".\"Mixed Case\" (\"a\"\"b\", \"select\") \
         SELECT u.c0::bigint, u.c1::text FROM unnest($1::text[], $2::text[]) AS u(c0, c1) \
         ON CONFLICT (\"a\"\"b\") DO UPDATE SET \"select\" = EXCLUDED.\"select\""
    );
    assert_eq!(
        delete(&target, &schema),
        "DELETE FROM \"we\"\"ird\".\"Mixed Case\" AS t USING unnest($1::text[]) AS u(k0) \
         WHERE t.\"a\"\"b\" = u.k0::bigint"
    );
    assert_eq!(
        truncate(&[&schema.id, &TableId::new("public", "x")]),
        "TRUNCATE \"we\"\"ird\".\"Mixed Case\", \"public\".\"x\""
    );
    assert_eq!(
        has_rows(&schema.id),
        "SELECT EXISTS (SELECT 1 FROM \"we\"\"ird\".\"Mixed Case\")"
    );
}

#[test]
fn a_column_the_target_lacks_is_cast_to_text() {
    let (schema, mut target) = accounts();
    target.columns.retain(|c| c.name != "owner");
    assert!(upsert(&target, &schema).contains("SELECT u.c0::bigint, u.c1::text, u.c2::numeric"));
}

#[test]
fn id_mapped_columns_read_the_new_id_from_the_map() {
    let (mut schema, mut target) = table(
        TableId::new("public", "orders"),
        &[("id", "uuid"), ("customer", "uuid")],
        &[0],
    );
    schema.columns[1].id_map = Some(IdRef {
        namespace: "o'customers".into(),
        kind: IdKind::UuidV7,
        on_missing: OnMissing::Allocate,
        field: "customer".into(),
        sequence: None,
    });
    target.columns[1].cast_sql = "uuid".into();
    assert_eq!(
        upsert(&target, &schema),
        "INSERT INTO \"public\".\"orders\" (\"id\", \"customer\") \
         SELECT u.c0::uuid, (SELECT m.new_id FROM public.ferry_id_map m \
         WHERE m.namespace = 'o''customers' AND m.legacy_id = u.c1)::uuid \
         FROM unnest($1::text[], $2::text[]) AS u(c0, c1) \
         ON CONFLICT (\"id\") DO UPDATE SET \"customer\" = EXCLUDED.\"customer\""
    );
}

#[test]
fn prune_deletes_a_child_s_rows_past_the_parent_s_array_end() {
    let (mut schema, target) = table(
        TableId::new("public", "order_items"),
        &[("order_id", "bigint"), ("idx", "bigint"), ("sku", "text")],
        &[0, 1],
    );
    let link = ChildLink {
        parent_key: vec![0],
        position: 1,
    };
    schema.child = Some(link.clone());
    assert_eq!(
        prune(&target, &schema, &link),
        "DELETE FROM \"public\".\"order_items\" AS t USING unnest($1::text[], $2::text[]) AS u(p0, keep) \
         WHERE t.\"order_id\" = u.p0::bigint AND t.\"idx\" >= u.keep::bigint"
    );
}
