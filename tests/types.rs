//! Every value survives the trip exactly: inserts (snapshot and stream),
//! updates, deletes and truncates over many types, compared as COPY text.
//! Also: a toasted value that an UPDATE of another column leaves untouched
//! (the stream sends it as "unchanged") is still in the target afterwards,
//! under REPLICA IDENTITY DEFAULT and FULL.

use std::time::Duration;

use crate::support::{ConfigBuilder, Ferry, Pair};

const WAIT: Duration = Duration::from_secs(40);

/// Column list of `typed`.
const TYPED_DDL: &str = r#"
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy', 'it''s "fine", {really}');
CREATE TABLE typed (
    id int PRIMARY KEY,
    n numeric,
    n_scaled numeric(40, 9),
    f8 float8,
    f4 real,
    jb jsonb,
    js json,
    ia int[],
    ta text[],
    i2d int[][],
    t2d text[][],
    na numeric[],
    b bytea,
    tstz timestamptz,
    ts timestamp,
    d date,
    t time,
    iv interval,
    u uuid,
    m mood,
    ma mood[],
    flag boolean,
    tx text,
    vc varchar(20),
    ch char(10),
    i8 bigint,
    i2 smallint,
    tsa timestamptz[]
);
"#;

/// Rows covering the edge values of every column type, with ids from
/// `base + 1`.
fn typed_rows(base: i32) -> String {
    let rows = [
        // Big exact numerics, NaN floats, nested unicode jsonb with escaped
        // quotes, json kept verbatim, arrays with NULLs/quotes/commas/braces.
        r#"(1, '123456789012345678901234567890.123456789', '-123456789012345678901234567890.123456789',
            'NaN', 'NaN',
            '{"nested": {"arr": [1, 2.50, 1e400, null, true], "q": "say \"hi\" \\ back"}, "uni": "żółć 😀 \u00e9"}',
            '{"b":1,  "a" : [1.0, 2e3], "a": "dup"}',
            '{1,-2,NULL,2147483647}',
            ARRAY['a,b', 'c"d', NULL, '{e}', 'NULL', '', ' spaced ', E'back\\slash', E'tab\there', E'nl\nx'],
            '{{1,2,3},{4,NULL,6}}',
            ARRAY[ARRAY['a', NULL], ARRAY['{"x"}', 'y,z']],
            '{1.50,NaN,-0.0000001,Infinity,-Infinity,NULL}',
            '\x00ff00deadbeef00'::bytea,
            'infinity', '2024-02-29 13:14:15.123456', '2024-02-29', '23:59:59.999999',
            '1 year 2 mons -3 days 04:05:06.789',
            'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11',
            'it''s "fine", {really}', ARRAY['sad', 'it''s "fine", {really}']::mood[],
            true,
            E'tab\there\nnew line\\backslash\r cr \\N and \\. end',
            'varchar ünï', 'ab', -9223372036854775808, 32767,
            ARRAY['2024-01-01 00:00:00+00', '-infinity', NULL]::timestamptz[])"#,
        // NaN numeric, infinities, empty containers, explicit array bounds,
        // empty bytea, BC dates, negative intervals, empty strings.
        r#"(2, 'NaN', '-0.00', 'Infinity', '-Infinity', '[]',
            '"just a string with \n escape"',
            '{}', '{}', '[0:1][0:1]={{1,2},{3,4}}', '{}', '{}',
            '\x'::bytea,
            '4713-11-24 00:00:00+00 BC', '0044-03-15 12:00:00 BC', '0001-01-01 BC', '00:00:00',
            '-1 days +02:03:04.000001',
            '00000000-0000-0000-0000-000000000000',
            'sad', '{}', false, '', '', '  x', 9223372036854775807, -32768, '{}')"#,
        // Numeric infinity, float extremes, deep jsonb, NULL-only arrays,
        // bytea of zero bytes, microsecond timestamps with an offset.
        r#"(3, 'Infinity', '0.000000001', 1e300, 3.4028235e38,
            '{"a": {"b": {"c": {"d": [[[]]]}}}, "": ""}', 'null',
            '{-2147483648}', ARRAY[NULL, NULL]::text[], '{{NULL}}', '{{NULL,NULL}}', '{NULL}',
            decode(repeat('00', 100), 'hex'),
            '2024-06-30 23:59:59.999999+05:30', 'infinity', '-infinity', '12:34:56.5',
            '178000000 years',
            'ffffffff-ffff-ffff-ffff-ffffffffffff',
            'happy', ARRAY['happy', NULL]::mood[], NULL,
            E'😀 emoji, \\ backslash, "quotes", \u0001 control',
            repeat('x', 20), 'abcdefghij', 0, 0, NULL)"#,
        // -Infinity numeric, smallest subnormals, surrogate pairs in jsonb.
        r#"(4, '-Infinity', '9999999999999999999999999999999.999999999', 5e-324, 1.4e-45,
            '{"k": "\u00e9\ud83d\ude00", "n": -0.0, "big": 123456789012345678901234567890}',
            '[1, "two", {"three": 3}]',
            NULL, ARRAY['\N', E'\\N', 'a	b'], NULL, NULL, '{0.000000000000000000000000000001}',
            '\x5c6e0d0a09'::bytea,
            '1970-01-01 00:00:00+00', '1999-12-31 23:59:59.5', '2000-01-01', '24:00:00',
            '-178000000 years -1 mons -2 days -03:04:05.678901',
            'c2d29867-3d0b-d497-9191-18a9d8ee7830',
            'ok', NULL, true, 'trailing spaces   ', 'trailing   ', 'a         ', 1, 1, NULL)"#,
        // Negative zeros and tiny/huge values.
        r#"(5, '-0.00', '0', '-0', '-0', '0', '0', '{0}', '{""}', '{{0}}', '{{""}}', '{-0.00}',
            '\x00'::bytea,
            '2000-02-29 12:00:00.000001+00', '2000-02-29 12:00:00.000001', '2000-02-29', '00:00:00.000001',
            '00:00:00.000001', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
            'sad', '{sad,ok,happy}', false, E'\\', '\', ' ', -1, -1, NULL)"#,
        // Everything NULL but the key.
        r#"(6, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
            NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)"#,
        // Values that are easy to round: 0.1 + 0.2, float4 0.1, 1e-30, 1.500.
        r#"(7, '0.000000000000000000000000000001', '-1.500', 0.1::float8 + 0.2::float8, 0.1,
            '{"f": 0.30000000000000004, "e": 1E+2}', '{"f": 0.30000000000000004}',
            '{1,2}', '{"a\\b","c\"d"}', '{{1},{2}}', '{{"\\"}}', '{1e-5,1E+5}',
            '\xff'::bytea,
            '2024-01-01 00:00:00.5-08', '2024-01-01 00:00:00.5', '2024-01-01', '08:00:00',
            '3 days 25:00:00', 'b1e0a2f6-0000-4000-8000-000000000001',
            'happy', '{}', true, 'plain', 'plain', 'plain', 42, 42,
            '{"2024-01-01 00:00:00.123456+00"}')"#,
    ];
    let values: Vec<String> = rows
        .iter()
        .map(|r| r.replacen('(', &format!("({base} + "), 1))
        .collect();
    format!("INSERT INTO typed VALUES {}", values.join(",\n"))
}

/// Types Ferry carries as text or as arrays of modelled elements, in a
/// table and columns whose names need quoting.
const ODD_DDL: &str = r#"
CREATE TYPE "Mood Type" AS ENUM ('a b', 'C');
CREATE TABLE "Odd Table" (
    "Id" int PRIMARY KEY,
    "select" int4range,
    "a""b" tstzrange,
    nr numrange,
    ip inet,
    net cidr,
    mac macaddr,
    bits bit(4),
    vbits varbit,
    tsv tsvector,
    doc xml,
    pt point,
    boxes box[],
    jbs jsonb[],
    bas bytea[],
    uus uuid[],
    ivs interval[],
    f8s float8[],
    bs bool[],
    chs char(3)[],
    ttz timetz,
    nm name,
    o oid,
    mt "Mood Type",
    mts "Mood Type"[]
);
"#;

fn odd_rows(base: i32) -> String {
    format!(
        r#"INSERT INTO "Odd Table" VALUES
        ({base} + 1, '[1,10)', '[2024-01-01 00:00:00+00,infinity)', '(-1.5,2.50]', '192.168.0.1/24',
         '10.0.0.0/8', '08:00:2b:01:02:03', B'1010', B'1', 'a:1 fat:2 cat:3',
         '<a x="1">t &amp; "q"</a>', '(1.5,-2)', ARRAY['(1,1),(0,0)'::box, '(3,3),(2,2)'::box],
         ARRAY['{{"a": "x\"y"}}'::jsonb, 'null'::jsonb, NULL], ARRAY['\x00'::bytea, '\x'::bytea],
         ARRAY['a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid], ARRAY['1 day'::interval, '-00:00:01'],
         ARRAY['NaN', '-Infinity', '1e-300', '-0']::float8[], '{{t,f}}', ARRAY['a', 'ab ', NULL]::char(3)[],
         '23:59:59.999999+14', 'name with space', 4294967295, 'a b', '{{"a b",C,NULL}}'),
        ({base} + 2, 'empty', '(,)', NULL, '::1', '2001:db8::/32', NULL, B'0000', B'', '', '<x/>',
         NULL, '{{}}', '{{}}', '{{}}', '{{}}', '{{}}', '{{}}', '{{}}', '{{}}', '00:00:00-12', '', 0, 'C', '{{}}')"#
    )
}

/// A >8 kB text of md5 hex digests: incompressible enough to be stored
/// out of line (TOAST) rather than inline.
fn big_value(seed: &str) -> String {
    format!("(SELECT string_agg(md5('{seed}' || i), '') FROM generate_series(1, 400) i)")
}

/// Fails unless `table`'s TOAST relation holds chunks: the test must
/// exercise out-of-line values, not inline ones.
async fn assert_toasted(client: &tokio_postgres::Client, table: &str) {
    let toast: String = client
        .query_one(
            "SELECT reltoastrelid::regclass::text FROM pg_class WHERE oid = $1::text::regclass",
            &[&table],
        )
        .await
        .unwrap()
        .get(0);
    let chunks: i64 = client
        .query_one(&format!("SELECT count(*) FROM {toast}"), &[])
        .await
        .unwrap()
        .get(0);
    assert!(chunks > 0, "{table}: nothing stored out of line in {toast}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_type_survives_snapshot_stream_and_truncate() {
    let pair = Pair::start("types").await;
    let src = pair.src().await;
    src.batch_execute(TYPED_DDL).await.unwrap();
    src.batch_execute(ODD_DDL).await.unwrap();
    // Snapshot path.
    src.batch_execute(&typed_rows(0)).await.unwrap();
    src.batch_execute(&odd_rows(0)).await.unwrap();
    let tables = ["public.typed", "public.Odd Table"];
    let config = ConfigBuilder::new(&pair).tables(&tables).build();
    let mut ferry = Ferry::spawn(&config);
    pair.wait_equal(&tables, WAIT).await;

    // Stream path: the same values inserted while ferry runs.
    src.batch_execute(&typed_rows(100)).await.unwrap();
    src.batch_execute(&odd_rows(100)).await.unwrap();
    src.batch_execute(
        r#"UPDATE "Odd Table" SET "select" = '[5,6]', f8s = NULL, "Id" = "Id" + 10 WHERE "Id" = 101"#,
    )
    .await
    .unwrap();
    pair.wait_equal(&tables, WAIT).await;

    // Updates (values ↔ NULL, key change, enum, jsonb) and deletes.
    src.batch_execute(
        r#"
        UPDATE typed SET n = '-0.00', f8 = '-Infinity', ia = NULL,
                         tx = tx || E'\nupdated\t\\', ch = 'z' WHERE id IN (1, 101);
        UPDATE typed SET jb = jb || '{"added": "x\"y", "ü": [null]}'
         WHERE jsonb_typeof(jb) = 'object';
        UPDATE typed SET m = 'it''s "fine", {really}', ma = '{ok,NULL}', flag = NULL
         WHERE id IN (2, 102, 6, 106);
        UPDATE typed SET n = '1e-20', f4 = '3.14159', b = '\x0000'::bytea,
                         ta = ARRAY[E'\\', '"', ',', '{', '}', ' ', 'NULL', NULL]
         WHERE id IN (6, 106);
        UPDATE typed SET id = id + 500 WHERE id IN (3, 103);
        DELETE FROM typed WHERE id IN (4, 104);
        BEGIN;
        UPDATE typed SET n = n_scaled WHERE id IN (5, 105);
        UPDATE typed SET n = 'NaN' WHERE id IN (5, 105);
        DELETE FROM typed WHERE id IN (7, 107);
        INSERT INTO typed (id, n, tx) VALUES (7, '7.70', 'reinserted');
        COMMIT;
        "#,
    )
    .await
    .unwrap();
    pair.wait_equal(&tables, WAIT).await;

    // TRUNCATE then new rows in the same transaction, then a TRUNCATE and
    // new rows in separate transactions right after each other.
    src.batch_execute(&format!(
        "BEGIN; TRUNCATE typed; {}; COMMIT;",
        typed_rows(1000)
    ))
    .await
    .unwrap();
    pair.wait_equal(&tables, WAIT).await;
    let dst = pair.dst().await;
    let n: i64 = dst
        .query_one("SELECT count(*) FROM typed", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 7, "target after TRUNCATE + INSERT");
    src.batch_execute("TRUNCATE typed").await.unwrap();
    src.batch_execute(&typed_rows(2000)).await.unwrap();
    src.batch_execute("UPDATE typed SET tx = 'after truncate' WHERE id = 2001")
        .await
        .unwrap();
    pair.wait_equal(&tables, WAIT).await;
    let ids: Vec<i32> = dst
        .query("SELECT id FROM typed ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ids, (2001..=2007).collect::<Vec<_>>());
    assert!(
        ferry.exited().is_none(),
        "ferry exited: {}",
        ferry.log_text()
    );
}

/// Unchanged TOAST values under one replica identity.
async fn toast_kept(identity: &str) {
    let pair = Pair::start("toast").await;
    let src = pair.src().await;
    src.batch_execute(&format!(
        "CREATE TABLE docs (id int PRIMARY KEY, note text, big text, n int);
         ALTER TABLE docs REPLICA IDENTITY {identity};
         INSERT INTO docs SELECT g, 'note ' || g, {big}, g FROM generate_series(1, 6) g;",
        big = big_value("snap"),
    ))
    .await
    .unwrap();
    assert_toasted(&src, "docs").await;
    let tables = ["public.docs"];
    let config = ConfigBuilder::new(&pair).tables(&tables).build();
    let mut ferry = Ferry::spawn(&config);
    pair.wait_equal(&tables, WAIT).await;

    // Rows copied by the snapshot, updated without touching `big`.
    src.batch_execute("UPDATE docs SET note = 'changed' WHERE id IN (1, 2)")
        .await
        .unwrap();
    pair.wait_equal(&tables, WAIT).await;

    // Rows inserted by the stream, then (in a later batch) updated without
    // touching `big`, twice in one transaction.
    src.batch_execute(&format!(
        "INSERT INTO docs VALUES (10, 'streamed', {}, 10)",
        big_value("stream")
    ))
    .await
    .unwrap();
    pair.wait_equal(&tables, WAIT).await;
    src.batch_execute(
        "BEGIN; UPDATE docs SET note = 'once' WHERE id = 10;
                UPDATE docs SET n = n + 1 WHERE id = 10; COMMIT;",
    )
    .await
    .unwrap();
    pair.wait_equal(&tables, WAIT).await;

    // Insert and untouched-big update in the same transaction; an update
    // that does change `big`; a NULL note; a delete of a toasted row.
    src.batch_execute(&format!(
        "BEGIN;
         INSERT INTO docs VALUES (11, 'fresh', {}, 11);
         UPDATE docs SET note = NULL WHERE id = 11;
         COMMIT;
         UPDATE docs SET big = {} WHERE id = 3;
         UPDATE docs SET note = 'after big changed' WHERE id = 3;
         DELETE FROM docs WHERE id = 4;",
        big_value("same-tx"),
        big_value("changed")
    ))
    .await
    .unwrap();
    pair.wait_equal(&tables, WAIT).await;

    // A key change leaves `big` untouched too: the row moves to its new
    // key with its big value.
    src.batch_execute("UPDATE docs SET id = 20, note = 'moved' WHERE id = 5")
        .await
        .unwrap();
    pair.wait_equal(&tables, WAIT).await;

    // Key changes into a key freed in the same transaction, chained, and
    // several rows at once.
    src.batch_execute(
        "BEGIN;
         DELETE FROM docs WHERE id = 6;
         UPDATE docs SET id = 6, note = 'moved into a freed key' WHERE id = 20;
         UPDATE docs SET id = 30 WHERE id = 1;
         UPDATE docs SET id = 31, n = 0 WHERE id = 30;
         COMMIT;
         UPDATE docs SET id = -id WHERE id IN (2, 10);",
    )
    .await
    .unwrap();
    pair.wait_equal(&tables, WAIT).await;

    // Explicit: the target still holds every big value, in full.
    let dst = pair.dst().await;
    let rows = dst
        .query("SELECT id, length(big) FROM docs ORDER BY id", &[])
        .await
        .unwrap();
    assert_eq!(rows.len(), 6);
    for r in rows {
        let (id, len): (i32, Option<i32>) = (r.get(0), r.get(1));
        assert_eq!(len, Some(12_800), "docs.big of id {id} in the target");
    }
    assert!(
        ferry.exited().is_none(),
        "ferry exited: {}",
        ferry.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_toast_kept_with_replica_identity_default() {
    toast_kept("DEFAULT").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_toast_kept_with_replica_identity_full() {
    toast_kept("FULL").await;
}
