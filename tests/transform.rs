//! Mappings end to end (docs/mappings.md): the real `ferry` binary between
//! a MongoDB-wire-protocol server and PostgreSQL, with a mapping file that
//! turns documents into rows of tables the test created itself.
//!
//! The mapping is tests/fixtures/shop-mappings.toml (its commented copy is
//! schemas/mappings.example.toml). Every test checks the target row by row
//! against values written out in the test (never by running the transform's
//! own code): ids through `public.ferry_id_map`, UUIDv5 ids recomputed here
//! (RFC 9562, with a SHA-1 of this file's own), money as the exact text
//! PostgreSQL stores, child rows by position, rejections in
//! `public.ferry_dlq` with stage `transform` and the rule as error code.
//!
//! The tests run on both buses (FERRY_TEST_BUS): `MongoToPg` writes Kafka
//! configs on the Kafka bus, and the dead-letter queue of the embedded bus
//! and the one `ferry dlq replay` reads are the same `ferry_dlq` table.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mongodb::bson::{doc, oid::ObjectId, Bson, DateTime, Decimal128, Document};
use mongodb::Collection;
use rand::{Rng, SeedableRng};
use serde_json::json;

use crate::support::mongo::{log_tail, MongoOptions, MongoToPg};
use crate::support::{ferry_cmd, Ferry};

/// The mapping every test starts from.
const FIXTURE: &str = include_str!("fixtures/shop-mappings.toml");
/// Its commented copy, which docs/mappings.md points users to.
const EXAMPLE: &str = include_str!("../schemas/mappings.example.toml");
/// `[id_maps.offers] namespace_uuid` of the fixture.
const OFFERS_NS: &str = "1b671a64-40d5-491e-99b0-da01ff1f3341";
/// `[id_maps.payments] start` of the fixture.
const PAYMENTS_START: i64 = 1000;
/// The collections the fixture maps (all of them are listed in every
/// config: a mapped table is also a mirrored one).
const COLLECTIONS: [&str; 4] = ["users", "offers", "payments", "purchase_requests"];

/// The target tables of the fixture (the same DDL is in the comments of
/// schemas/mappings.example.toml). The user creates them; Ferry only
/// writes rows.
const SHOP_TABLES: &str = "
CREATE TABLE public.users (
    id           uuid PRIMARY KEY,
    email        text NOT NULL,
    display_name text,
    created_at   timestamptz,
    city         text,
    extra        jsonb
);
CREATE TABLE public.offers (
    id    uuid PRIMARY KEY,
    title text NOT NULL,
    price numeric(12,2)
);
CREATE TABLE public.payments (
    id            bigint PRIMARY KEY,
    user_id       uuid,
    amount        numeric(12,2) NOT NULL,
    fee           numeric(12,2),
    raw_amount    numeric,
    status        text NOT NULL DEFAULT 'new',
    currency      text NOT NULL,
    migrated_note text DEFAULT 'set by the target'
);
CREATE TABLE public.payment_items (
    payment_id bigint NOT NULL
        REFERENCES public.payments (id) DEFERRABLE INITIALLY DEFERRED,
    position   integer NOT NULL,
    sku        text,
    qty        integer,
    price      numeric(12,2),
    PRIMARY KEY (payment_id, position)
);
CREATE TABLE public.purchase_requests (
    id           uuid PRIMARY KEY,
    buyer_id     uuid,
    offer_id     uuid,
    quantity     integer,
    requested_at timestamptz
);
";

// ---------------------------------------------------------------------------
// Helpers (kept here: tests/support is shared and not changed for this file)

fn dec(s: &str) -> Decimal128 {
    s.parse()
        .unwrap_or_else(|e| panic!("Decimal128 {s:?}: {e:?}"))
}

/// A PostgreSQL error with the server's message (`Display` says only
/// "db error").
fn pg_msg(e: tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => e.to_string(),
    }
}

/// Runs a blocking `ferry` command without stalling the test's runtime.
fn cmd(args: &[&str]) -> (i32, String) {
    tokio::task::block_in_place(|| ferry_cmd(args))
}

/// `config` with `mappings = <mappings>` as the first key of `[pipeline]`
/// (the harness writes configs without one).
fn add_mappings(config: &Path, mappings: &str) {
    let text = std::fs::read_to_string(config).expect("read config");
    let mut out = String::with_capacity(text.len() + 100);
    let mut done = false;
    for line in text.lines() {
        out.push_str(line);
        out.push('\n');
        if !done && line.trim() == "[pipeline]" {
            out.push_str(&format!("mappings = {mappings:?}\n"));
            done = true;
        }
    }
    assert!(
        done,
        "no [pipeline] section in {}:\n{text}",
        config.display()
    );
    std::fs::write(config, out).expect("write config");
}

/// `text` with `from` replaced by `to`, which must occur exactly once.
fn replace_once(text: &str, from: &str, to: &str) -> String {
    assert_eq!(
        text.matches(from).count(),
        1,
        "{from:?} is not in the mapping exactly once"
    );
    text.replacen(from, to, 1)
}

/// Writes `text` as `name` in `dir` and returns its absolute path.
fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write file");
    path
}

/// Creates the fixture's tables in the target database `pg_db`.
async fn create_shop_tables(fx: &MongoToPg, pg_db: &str) {
    fx.target
        .connect(pg_db)
        .await
        .expect("connect target")
        .batch_execute(SHOP_TABLES)
        .await
        .expect("create the shop tables");
}

/// A config mirroring the fixture's collections into `pg_db` with the
/// mapping file `mappings` (absolute, or relative to the config).
fn shop_config(fx: &MongoToPg, pg_db: &str, mappings: &str) -> PathBuf {
    let config = fx.config_into(pg_db, &COLLECTIONS, "", "");
    add_mappings(&config, mappings);
    config
}

/// Polls `probe` until it returns `Ok`; panics with its last error and
/// ferry's log after `timeout`, or at once if ferry exits.
async fn wait_until<F, Fut>(what: &str, ferry: &mut Ferry, timeout: Duration, mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let last = match probe().await {
            Ok(()) => return,
            Err(e) => e,
        };
        if let Some(status) = ferry.exited() {
            panic!(
                "ferry exited ({status}) while waiting for {what}; last difference: {last}\n\
                 ferry log:\n{}",
                log_tail(&ferry.log_text(), 80)
            );
        }
        if Instant::now() > deadline {
            panic!(
                "{what}: not reached within {timeout:?}; last difference: {last}\nferry log:\n{}",
                log_tail(&ferry.log_text(), 80)
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Panics with the log if `ferry` has exited.
fn assert_running(ferry: &mut Ferry, when: &str) {
    if let Some(status) = ferry.exited() {
        panic!(
            "ferry exited ({status}) {when}; log:\n{}",
            log_tail(&ferry.log_text(), 80)
        );
    }
}

/// `public.ferry_id_map` as `(namespace, legacy id) → new id` (all text).
type IdMap = HashMap<(String, String), String>;

async fn id_map(pg: &tokio_postgres::Client) -> Result<IdMap, String> {
    let rows = pg
        .query(
            "SELECT namespace::text, legacy_id::text, new_id::text FROM public.ferry_id_map",
            &[],
        )
        .await
        .map_err(|e| format!("read ferry_id_map: {}", pg_msg(e)))?;
    Ok(rows
        .iter()
        .map(|r| ((r.get(0), r.get(1)), r.get(2)))
        .collect())
}

/// The new id of `legacy` in `namespace`; `Err` when it has none.
fn need(ids: &IdMap, namespace: &str, legacy: &str) -> Result<String, String> {
    ids.get(&(namespace.to_owned(), legacy.to_owned()))
        .cloned()
        .ok_or_else(|| format!("ferry_id_map has no entry ({namespace}, {legacy})"))
}

/// One parked record of `public.ferry_dlq`.
#[derive(Debug, Clone)]
struct Parked {
    stage: String,
    code: Option<String>,
    message: String,
    event: String,
    attempts: i32,
}

/// The records that are not superseded, oldest first.
async fn dlq(pg: &tokio_postgres::Client) -> Result<Vec<Parked>, String> {
    let rows = pg
        .query(
            "SELECT stage, error_code, error_message, event, attempts FROM public.ferry_dlq
              WHERE superseded_at IS NULL ORDER BY id",
            &[],
        )
        .await
        .map_err(|e| format!("read ferry_dlq: {}", pg_msg(e)))?;
    Ok(rows
        .iter()
        .map(|r| Parked {
            stage: r.get(0),
            code: r.get(1),
            message: r.get(2),
            event: r.get(3),
            attempts: r.get(4),
        })
        .collect())
}

/// The parked record of the source row with `key` (an ObjectId's hex,
/// which the message names, or the change holds).
fn parked_for<'a>(records: &'a [Parked], key: &str) -> Option<&'a Parked> {
    records
        .iter()
        .find(|r| r.message.contains(key) || r.event.contains(key))
}

/// Panics unless `out` has `token` as a whole word (ids in command output).
fn assert_token(out: &str, token: &str, what: &str) {
    let found = out
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        .any(|t| t == token);
    assert!(found, "{what}: {token:?} not in the output:\n{out}");
}

// ---------------------------------------------------------------------------
// UUIDv5, independently of Ferry: SHA-1 (FIPS 180-4) and RFC 9562 §5.5.

fn sha1(data: &[u8]) -> [u8; 20] {
    let mut h: [u32; 5] = [
        0x6745_2301,
        0xEFCD_AB89,
        0x98BA_DCFE,
        0x1032_5476,
        0xC3D2_E1F0,
    ];
    let mut msg = data.to_vec();
    let bits = (data.len() as u64).wrapping_mul(8);
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&bits.to_be_bytes());
    for block in msg.chunks(64) {
        let mut w = [0u32; 80];
        for (i, word) in block.chunks(4).enumerate() {
            w[i] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for i in 16..80 {
            w[i] = (w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]).rotate_left(1);
        }
        let [mut a, mut b, mut c, mut d, mut e] = h;
        for (i, wi) in w.iter().enumerate() {
            let (f, k) = match i {
                0..=19 => ((b & c) | (!b & d), 0x5A82_7999),
                20..=39 => (b ^ c ^ d, 0x6ED9_EBA1),
                40..=59 => ((b & c) | (b & d) | (c & d), 0x8F1B_BCDC),
                _ => (b ^ c ^ d, 0xCA62_C1D6),
            };
            let t = a
                .rotate_left(5)
                .wrapping_add(f)
                .wrapping_add(e)
                .wrapping_add(k)
                .wrapping_add(*wi);
            e = d;
            d = c;
            c = b.rotate_left(30);
            b = a;
            a = t;
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e]) {
            *x = x.wrapping_add(y);
        }
    }
    let mut out = [0u8; 20];
    for (i, x) in h.iter().enumerate() {
        out[4 * i..4 * i + 4].copy_from_slice(&x.to_be_bytes());
    }
    out
}

/// UUIDv5(`namespace`, `name`), hyphenated lowercase.
fn uuid_v5(namespace: &str, name: &str) -> String {
    let hex: String = namespace.chars().filter(|c| *c != '-').collect();
    assert_eq!(hex.len(), 32, "namespace {namespace:?}");
    let mut data: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("namespace hex"))
        .collect();
    data.extend_from_slice(name.as_bytes());
    let hash = sha1(&data);
    let mut b = [0u8; 16];
    b.copy_from_slice(&hash[..16]);
    b[6] = (b[6] & 0x0f) | 0x50;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// The offers' new id of a legacy id (its text).
fn offer_id(legacy: &str) -> String {
    uuid_v5(OFFERS_NS, legacy)
}

// ---------------------------------------------------------------------------
// Row-by-row comparison against expected values written in the tests.

/// A cell of a target row: text as PostgreSQL prints it, or a jsonb value
/// (compared as JSON, whatever the key order).
#[derive(Debug, Clone, PartialEq)]
enum Cell {
    Text(Option<String>),
    Json(Option<serde_json::Value>),
}

fn t(s: &str) -> Cell {
    Cell::Text(Some(s.to_owned()))
}

fn ts(s: String) -> Cell {
    Cell::Text(Some(s))
}

fn opt(s: Option<String>) -> Cell {
    Cell::Text(s)
}

const NULL: Cell = Cell::Text(None);

fn jv(v: serde_json::Value) -> Cell {
    Cell::Json(Some(v))
}

/// A mapped target table: its rows are found through their own id's
/// `ferry_id_map` entry, so that each is compared with the document it
/// came from (by legacy id).
struct Shape {
    table: &'static str,
    namespace: &'static str,
    /// (label, SQL expression over `t` giving text).
    cols: &'static [(&'static str, &'static str)],
    /// Labels of jsonb columns.
    json: &'static [&'static str],
}

const USERS: Shape = Shape {
    table: "users",
    namespace: "users",
    cols: &[
        ("email", "t.email"),
        ("display_name", "t.display_name"),
        (
            "created_at (ms)",
            "(extract(epoch FROM t.created_at) * 1000)::bigint::text",
        ),
        ("city", "t.city"),
        ("extra", "t.extra::text"),
    ],
    json: &["extra"],
};

const OFFERS: Shape = Shape {
    table: "offers",
    namespace: "offers",
    cols: &[
        ("id", "t.id::text"),
        ("title", "t.title"),
        ("price", "t.price::text"),
    ],
    json: &[],
};

const PAYMENTS: Shape = Shape {
    table: "payments",
    namespace: "payments",
    cols: &[
        ("user_id", "t.user_id::text"),
        ("amount", "t.amount::text"),
        ("fee", "t.fee::text"),
        ("raw_amount", "t.raw_amount::text"),
        ("status", "t.status"),
        ("currency", "t.currency"),
        ("migrated_note", "t.migrated_note"),
    ],
    json: &[],
};

const PURCHASES: Shape = Shape {
    table: "purchase_requests",
    namespace: "purchase_requests",
    cols: &[
        ("buyer_id", "t.buyer_id::text"),
        ("offer_id", "t.offer_id::text"),
        ("quantity", "t.quantity::text"),
        (
            "requested_at (ms)",
            "(extract(epoch FROM t.requested_at) * 1000)::bigint::text",
        ),
    ],
    json: &[],
};

/// Expected rows: legacy id → cells in the shape's column order.
type Rows = BTreeMap<String, Vec<Cell>>;

/// The rows of a shape's table by the legacy id of their own id; `Err` for
/// a row whose id has no mapping (or shares one).
async fn fetch(pg: &tokio_postgres::Client, shape: &Shape) -> Result<Rows, String> {
    let cols: Vec<&str> = shape.cols.iter().map(|c| c.1).collect();
    let sql = format!(
        "SELECT t.id::text, m.legacy_id::text, {} FROM public.{} t
           LEFT JOIN public.ferry_id_map m
             ON m.namespace = '{}' AND m.new_id::text = t.id::text",
        cols.join(", "),
        shape.table,
        shape.namespace
    );
    let rows = pg
        .query(&sql, &[])
        .await
        .map_err(|e| format!("read {}: {}", shape.table, pg_msg(e)))?;
    let mut out = Rows::new();
    for r in &rows {
        let id: String = r.get(0);
        let Some(legacy) = r.get::<_, Option<String>>(1) else {
            return Err(format!(
                "{}: row id {id} has no ferry_id_map entry in namespace {}",
                shape.table, shape.namespace
            ));
        };
        let mut cells = Vec::with_capacity(shape.cols.len());
        for (i, (label, _)) in shape.cols.iter().enumerate() {
            let text: Option<String> = r.get(i + 2);
            if shape.json.contains(label) {
                let v = match text {
                    Some(s) => Some(
                        serde_json::from_str(&s)
                            .map_err(|e| format!("{}.{label}: {e}: {s}", shape.table))?,
                    ),
                    None => None,
                };
                cells.push(Cell::Json(v));
            } else {
                cells.push(Cell::Text(text));
            }
        }
        if out.insert(legacy.clone(), cells).is_some() {
            return Err(format!("{}: two rows for legacy id {legacy}", shape.table));
        }
    }
    Ok(out)
}

/// `Err` naming the first differences between `actual` and `expected`.
fn diff(table: &str, labels: &[&str], actual: &Rows, expected: &Rows) -> Result<(), String> {
    let mut problems = Vec::new();
    for (legacy, want) in expected {
        match actual.get(legacy) {
            None => problems.push(format!("{table}: no row for {legacy}")),
            Some(got) if got != want => {
                for ((label, g), w) in labels.iter().zip(got).zip(want) {
                    if g != w {
                        problems.push(format!(
                            "{table} {legacy}: {label} is {g:?}, expected {w:?}"
                        ));
                    }
                }
            }
            Some(_) => {}
        }
    }
    for legacy in actual.keys() {
        if !expected.contains_key(legacy) {
            problems.push(format!(
                "{table}: unexpected row for {legacy}: {:?}",
                actual[legacy]
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        problems.truncate(6);
        Err(problems.join("; "))
    }
}

/// Compares a shape's table with `expected`.
async fn check_table(
    pg: &tokio_postgres::Client,
    shape: &Shape,
    expected: &Rows,
) -> Result<(), String> {
    let actual = fetch(pg, shape).await?;
    let labels: Vec<&str> = shape.cols.iter().map(|c| c.0).collect();
    diff(shape.table, &labels, &actual, expected)
}

/// payment_items by `<payment legacy id>#<position>` → [sku, qty, price].
async fn fetch_items(pg: &tokio_postgres::Client) -> Result<Rows, String> {
    let rows = pg
        .query(
            "SELECT i.payment_id::text, m.legacy_id::text, i.position::bigint,
                    i.sku, i.qty::text, i.price::text
               FROM public.payment_items i
               LEFT JOIN public.ferry_id_map m
                 ON m.namespace = 'payments' AND m.new_id::text = i.payment_id::text",
            &[],
        )
        .await
        .map_err(|e| format!("read payment_items: {}", pg_msg(e)))?;
    let mut out = Rows::new();
    for r in &rows {
        let pid: String = r.get(0);
        let Some(legacy) = r.get::<_, Option<String>>(1) else {
            return Err(format!(
                "payment_items: payment_id {pid} has no ferry_id_map entry"
            ));
        };
        let pos: i64 = r.get(2);
        out.insert(
            format!("{legacy}#{pos}"),
            vec![opt(r.get(3)), opt(r.get(4)), opt(r.get(5))],
        );
    }
    Ok(out)
}

/// Child rows as `(sku, qty, price)` text, by position.
type ItemRows = Vec<(&'static str, &'static str, &'static str)>;

/// Expected child rows of one payment: `(sku, qty, price)` by position.
fn items_of(expected: &mut Rows, payment: &ObjectId, items: &[(&str, &str, &str)]) {
    for (pos, (sku, qty, price)) in items.iter().enumerate() {
        expected.insert(
            format!("{}#{pos}", payment.to_hex()),
            vec![t(sku), t(qty), t(price)],
        );
    }
}

async fn check_items(pg: &tokio_postgres::Client, expected: &Rows) -> Result<(), String> {
    let actual = fetch_items(pg).await?;
    diff("payment_items", &["sku", "qty", "price"], &actual, expected)
}

/// No payment id below the bigint map's `start`.
async fn check_payment_ids(pg: &tokio_postgres::Client) -> Result<(), String> {
    let low: i64 = pg
        .query_one(
            "SELECT count(*) FROM public.payments WHERE id < $1",
            &[&PAYMENTS_START],
        )
        .await
        .map_err(|e| format!("payments ids: {}", pg_msg(e)))?
        .get(0);
    if low > 0 {
        return Err(format!("{low} payment id(s) below start {PAYMENTS_START}"));
    }
    Ok(())
}

// ---------------------------------------------------------------------------

/// The example file docs/mappings.md points to is the fixture this file
/// runs, comments aside: what users copy is what is tested.
#[test]
fn example_mappings_match_the_fixture() {
    /// The lines of a TOML file without comments and blank lines (no `#`
    /// occurs inside a string of these files).
    fn content(text: &str) -> Vec<&str> {
        text.lines()
            .map(|l| l.split('#').next().unwrap_or("").trim())
            .filter(|l| !l.is_empty())
            .collect()
    }
    assert_eq!(content(EXAMPLE), content(FIXTURE));
}

/// The test's UUIDv5 is RFC 9562's: Python's documented
/// `uuid5(NAMESPACE_DNS, "python.org")`, and an offer id of the fixture.
#[test]
fn uuid_v5_oracle_is_rfc_9562() {
    assert_eq!(
        uuid_v5("6ba7b810-9dad-11d1-80b4-00c04fd430c8", "python.org"),
        "886313e1-3b8a-5372-9b90-0c9aee199e5d"
    );
    assert_eq!(offer_id("offer-1"), "abcc4294-d53e-5803-9628-e2202e7ab913");
}

/// The ids of the documents of [`mongo_shop_fixture_end_to_end`].
struct Shop {
    u1: ObjectId,
    u2: ObjectId,
    u3: ObjectId,
    u4: ObjectId,
    u_late: ObjectId,
    o3: ObjectId,
    p1: ObjectId,
    p2: ObjectId,
    p3: ObjectId,
    p4: ObjectId,
    p5: ObjectId,
    p6: ObjectId,
    p7: ObjectId,
    r1: ObjectId,
    r_late: ObjectId,
    r3: ObjectId,
    r_coupon: ObjectId,
}

/// A 31-digit amount: beyond `rust_decimal`, within Decimal128.
const HUGE: &str = "123456789012345678901234567890.5";
/// 34 digits, Decimal128's most.
const HUGER: &str = "99999999999999999999999999999999.99";

/// users after the snapshot.
fn users_snapshot(s: &Shop) -> Rows {
    Rows::from([
        (
            s.u1.to_hex(),
            vec![
                t("ada@example.com"),
                t("Ada"),
                t("1700000000123"),
                t("Paris"),
                jv(
                    json!({"profile": {"address": {"zip": "75001"}, "bio": "math"}, "tags": ["vip"]}),
                ),
            ],
        ),
        (
            s.u2.to_hex(),
            vec![
                t("grace@example.com"),
                t("Grace"),
                t("1600000000000"),
                t("Arlington"),
                jv(json!({"profile": {"address": {"zip": "22201"}}, "locale": "en-US"})),
            ],
        ),
        (
            s.u3.to_hex(),
            vec![
                t("linus@example.com"),
                NULL,
                t("1500000000999"),
                NULL,
                jv(json!({"profile": {"address": {"zip": "00100"}}, "tags": []})),
            ],
        ),
    ])
}

/// users after the streamed changes: u1 updated, u3 deleted, u4 and the
/// late user inserted.
fn users_streamed(s: &Shop) -> Rows {
    let mut rows = users_snapshot(s);
    rows.insert(
        s.u1.to_hex(),
        vec![
            t("ada@example.com"),
            t("Ada L."),
            t("1700000000123"),
            t("London"),
            jv(json!({"profile": {"address": {"zip": "75001"}, "bio": "math"}})),
        ],
    );
    rows.remove(&s.u3.to_hex());
    rows.insert(
        s.u4.to_hex(),
        vec![
            t("margaret@example.com"),
            t("Margaret"),
            t("1710000000000"),
            t("Boston"),
            jv(json!({"profile": {"address": {"zip": "02139"}}, "tags": ["new"]})),
        ],
    );
    rows.insert(
        s.u_late.to_hex(),
        vec![
            t("late@example.com"),
            t("Late Comer"),
            t("1720000000000"),
            t("Oslo"),
            jv(json!({"profile": {"address": {"zip": "0150"}}, "locale": "nb-NO"})),
        ],
    );
    rows
}

fn offers_expected(s: &Shop, streamed: bool) -> Rows {
    let o3 = s.o3.to_hex();
    let mut rows = Rows::from([
        (
            "offer-1".to_owned(),
            vec![ts(offer_id("offer-1")), t("Desk"), t("199.90")],
        ),
        (
            "offer-2".to_owned(),
            vec![ts(offer_id("offer-2")), t("Lamp"), t("5.00")],
        ),
        (o3.clone(), vec![ts(offer_id(&o3)), t("Chair"), t("45.00")]),
    ]);
    if streamed {
        rows.insert(
            "offer-4".to_owned(),
            vec![ts(offer_id("offer-4")), t("Rug"), t("80.50")],
        );
    }
    rows
}

/// A payments row: [user_id, amount, fee, raw_amount, status, currency,
/// migrated_note].
fn payment(
    user: Option<String>,
    amount: &str,
    fee: Option<&str>,
    raw: Option<&str>,
    status: &str,
    note: &str,
) -> Vec<Cell> {
    vec![
        opt(user),
        t(amount),
        opt(fee.map(str::to_owned)),
        opt(raw.map(str::to_owned)),
        t(status),
        t("EUR"),
        t(note),
    ]
}

const TARGET_NOTE: &str = "set by the target";
const EDITED_NOTE: &str = "edited in the target";

/// Phase of [`mongo_shop_fixture_end_to_end`].
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Snapshot,
    Streamed,
    Replayed,
}

fn payments_expected(s: &Shop, ids: &IdMap, phase: Phase) -> Result<Rows, String> {
    let u1 = need(ids, "users", &s.u1.to_hex())?;
    let u2 = need(ids, "users", &s.u2.to_hex())?;
    let mut rows = Rows::new();
    if phase == Phase::Snapshot {
        rows.insert(
            s.p1.to_hex(),
            payment(
                Some(u1.clone()),
                "100.00",
                Some("10.00"),
                Some(HUGE),
                "paid",
                TARGET_NOTE,
            ),
        );
        rows.insert(
            s.p2.to_hex(),
            payment(
                Some(u2),
                "19.99",
                Some("10.02"),
                None,
                "pending",
                TARGET_NOTE,
            ),
        );
    } else {
        let u4 = need(ids, "users", &s.u4.to_hex())?;
        // Updated: amount changed, the target's own edit of migrated_note
        // (a column no rule fills) kept.
        rows.insert(
            s.p1.to_hex(),
            payment(
                Some(u1.clone()),
                "12.50",
                Some("10.00"),
                Some(HUGE),
                "paid",
                EDITED_NOTE,
            ),
        );
        rows.insert(
            s.p7.to_hex(),
            payment(Some(u4), "7.00", None, Some(HUGER), "pending", TARGET_NOTE),
        );
    }
    rows.insert(
        s.p5.to_hex(),
        payment(None, "12.30", None, None, "refunded", TARGET_NOTE),
    );
    if phase == Phase::Replayed {
        rows.insert(
            s.p6.to_hex(),
            payment(Some(u1), "10.00", None, None, "pending", TARGET_NOTE),
        );
    }
    Ok(rows)
}

fn items_expected(s: &Shop, phase: Phase) -> Rows {
    let mut rows = Rows::new();
    if phase == Phase::Snapshot {
        // The second element's `note` is dropped (unmapped = "drop").
        items_of(
            &mut rows,
            &s.p1,
            &[("A-1", "2", "9.99"), ("B-2", "1", "80.02")],
        );
        items_of(&mut rows, &s.p2, &[("C-3", "1", "19.99")]);
    } else {
        items_of(
            &mut rows,
            &s.p1,
            &[
                ("A-1", "2", "9.99"),
                ("B-2", "1", "80.02"),
                ("D-4", "3", "1.10"),
            ],
        );
    }
    if phase == Phase::Replayed {
        items_of(&mut rows, &s.p6, &[("R-1", "1", "10.00")]);
    }
    rows
}

fn purchases_expected(s: &Shop, ids: &IdMap, phase: Phase) -> Result<Rows, String> {
    let o3 = s.o3.to_hex();
    let mut rows = Rows::from([
        (
            s.r1.to_hex(),
            vec![
                ts(need(ids, "users", &s.u1.to_hex())?),
                ts(offer_id("offer-1")),
                t("1"),
                t("1709287200001"),
            ],
        ),
        (
            // Its buyer arrives later: the buyer's id is allocated ahead.
            s.r_late.to_hex(),
            vec![
                ts(need(ids, "users", &s.u_late.to_hex())?),
                ts(offer_id(&o3)),
                t("3"),
                t("1709287200000"),
            ],
        ),
    ]);
    if phase >= Phase::Streamed {
        rows.insert(
            s.r3.to_hex(),
            vec![
                ts(need(ids, "users", &s.u4.to_hex())?),
                ts(offer_id("offer-4")),
                t("2"),
                t("1709287200500"),
            ],
        );
    }
    if phase == Phase::Replayed {
        rows.insert(
            s.r_coupon.to_hex(),
            vec![
                ts(need(ids, "users", &s.u2.to_hex())?),
                ts(offer_id("offer-2")),
                t("1"),
                t("1709300000000"),
            ],
        );
    }
    Ok(rows)
}

/// Every mapped table of the shop against the phase's expected rows.
async fn check_shop(pg: &tokio_postgres::Client, s: &Shop, phase: Phase) -> Result<(), String> {
    let ids = id_map(pg).await?;
    let users = if phase == Phase::Snapshot {
        users_snapshot(s)
    } else {
        users_streamed(s)
    };
    check_table(pg, &USERS, &users).await?;
    check_table(pg, &OFFERS, &offers_expected(s, phase != Phase::Snapshot)).await?;
    check_table(pg, &PAYMENTS, &payments_expected(s, &ids, phase)?).await?;
    check_items(pg, &items_expected(s, phase)).await?;
    check_table(pg, &PURCHASES, &purchases_expected(s, &ids, phase)?).await?;
    check_payment_ids(pg).await?;
    // Offers' map entries are the derived ids too.
    for legacy in offers_expected(s, phase != Phase::Snapshot).keys() {
        let got = need(&ids, "offers", legacy)?;
        if got != offer_id(legacy) {
            return Err(format!(
                "ferry_id_map (offers, {legacy}) is {got}, UUIDv5 is {}",
                offer_id(legacy)
            ));
        }
    }
    Ok(())
}

/// The codes of the records parked for the shop's bad documents, once all
/// of them are there (and nothing else is).
async fn check_shop_dlq(pg: &tokio_postgres::Client, s: &Shop) -> Result<(), String> {
    let records = dlq(pg).await?;
    let mut codes: Vec<String> = records
        .iter()
        .map(|r| r.code.clone().unwrap_or_default())
        .collect();
    codes.sort();
    let want = [
        "needs_rounding",
        "null_in_not_null",
        "too_large",
        "unmapped_field",
    ];
    if codes != want {
        return Err(format!("ferry_dlq codes {codes:?}, expected {want:?}"));
    }
    for key in [&s.p3, &s.p4, &s.p6, &s.r_coupon] {
        if parked_for(&records, &key.to_hex()).is_none() {
            return Err(format!("no parked record names {}", key.to_hex()));
        }
    }
    Ok(())
}

/// A realistic MongoDB shop (users, offers, payments with items, purchase
/// requests) into tables designed for PostgreSQL, through the fixture
/// mapping, by snapshot and then by streamed inserts, updates and deletes.
/// It proves, row by row:
/// - field mapping: renamed and snake_cased fields, a nested path
///   (`profile.address.city`), `__v` dropped, the leftovers (minus the
///   mapped paths) in the jsonb `rest` column, BSON dates into timestamptz,
///   a constant, a mapping default for a missing field beside a present
///   one, and a column no rule fills left to the target (its default on
///   insert, its own edit kept across an update);
/// - the id map: every row's id is its `ferry_id_map` entry; bigint ids
///   from `start`; UUIDv5 offer ids equal to an independent computation;
///   references translated to the referenced row's id; a reference to a
///   user that arrives later is allocated ahead and that user's row gets
///   exactly the allocated id;
/// - money: `1E+2` → `100.00`, a double, an integer and a decimal string
///   exact at scale 2, 31 and 34 digits kept exactly in an unconstrained
///   `numeric`, `round = "half_even"` on `fee` (10.005 → 10.00,
///   10.015 → 10.02);
/// - coercions: integers from a string and a Decimal128, timestamps from a
///   date, a string and epoch milliseconds;
/// - child rows: one per element, an element's unmapped field dropped,
///   a `$push` adds a row, a deleted parent takes its rows;
/// - rejections: NULL into a NOT NULL amount (`null_in_not_null`), 31
///   digits into numeric(12,2) (`too_large`), 10.005 with no `round`
///   (`needs_rounding`) and a leftover field with no `rest`
///   (`unmapped_field`) are parked with stage `transform`, the rule as
///   code, and a message naming the key, the field path and the raw value,
///   while the good records land;
/// - replay: after the mapping is fixed (`round` on amount, the field
///   dropped), `ferry dlq replay` runs the parked records through the new
///   mapping: those two land (the payment rounded, with its child row) and
///   the two that no mapping can fix stay parked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongo_shop_fixture_end_to_end() {
    let started = Instant::now();
    let fx = MongoToPg::start("tshop", MongoOptions::default()).await;
    create_shop_tables(&fx, &fx.pg_db).await;
    let db = fx.db().await;
    let users: Collection<Document> = db.collection("users");
    let offers: Collection<Document> = db.collection("offers");
    let payments: Collection<Document> = db.collection("payments");
    let purchases: Collection<Document> = db.collection("purchase_requests");
    let s = Shop {
        u1: ObjectId::new(),
        u2: ObjectId::new(),
        u3: ObjectId::new(),
        u4: ObjectId::new(),
        u_late: ObjectId::new(),
        o3: ObjectId::new(),
        p1: ObjectId::new(),
        p2: ObjectId::new(),
        p3: ObjectId::new(),
        p4: ObjectId::new(),
        p5: ObjectId::new(),
        p6: ObjectId::new(),
        p7: ObjectId::new(),
        r1: ObjectId::new(),
        r_late: ObjectId::new(),
        r3: ObjectId::new(),
        r_coupon: ObjectId::new(),
    };

    // Before ferry starts: the snapshot's part.
    users
        .insert_many([
            doc! {
                "_id": s.u1, "email": "ada@example.com", "displayName": "Ada",
                "createdAt": DateTime::from_millis(1_700_000_000_123),
                "profile": {"address": {"city": "Paris", "zip": "75001"}, "bio": "math"},
                "tags": ["vip"], "__v": 3,
            },
            doc! {
                "_id": s.u2, "email": "grace@example.com", "displayName": "Grace",
                "createdAt": DateTime::from_millis(1_600_000_000_000),
                "profile": {"address": {"city": "Arlington", "zip": "22201"}},
                "locale": "en-US", "__v": 0,
            },
            // No displayName, no city: both NULL.
            doc! {
                "_id": s.u3, "email": "linus@example.com",
                "createdAt": DateTime::from_millis(1_500_000_000_999),
                "profile": {"address": {"zip": "00100"}}, "tags": [],
            },
        ])
        .await
        .unwrap();
    offers
        .insert_many([
            doc! {"_id": "offer-1", "title": "Desk", "price": dec("199.90"), "internalNotes": "supplier A"},
            doc! {"_id": "offer-2", "title": "Lamp", "price": dec("5")},
            doc! {"_id": s.o3, "title": "Chair", "price": 45},
        ])
        .await
        .unwrap();
    payments
        .insert_many([
            doc! {
                "_id": s.p1, "userId": s.u1, "amount": dec("1E+2"), "fee": dec("10.005"),
                "rawAmount": dec(HUGE), "status": "paid", "__v": 0,
                "items": [
                    {"sku": "A-1", "qty": 2, "price": dec("9.99")},
                    {"sku": "B-2", "qty": 1, "price": dec("80.02"), "note": "gift wrap"},
                ],
            },
            // A double amount, a fee rounded half-even upwards, no status.
            doc! {
                "_id": s.p2, "userId": s.u2, "amount": 19.99_f64, "fee": dec("10.015"),
                "items": [{"sku": "C-3", "qty": 1, "price": "19.99"}],
            },
            // Rejected: null_in_not_null.
            doc! {"_id": s.p3, "userId": s.u1, "amount": Bson::Null},
            // Rejected: too_large for numeric(12,2).
            doc! {"_id": s.p4, "userId": s.u2, "amount": dec(HUGE)},
            // A decimal string, no user, no items.
            doc! {"_id": s.p5, "amount": "12.30", "status": "refunded"},
        ])
        .await
        .unwrap();
    purchases
        .insert_many([
            doc! {
                "_id": s.r1, "buyerId": s.u1, "offerId": "offer-1", "quantity": 1,
                "requestedAt": DateTime::from_millis(1_709_287_200_001),
            },
            // The buyer does not exist yet; the offer's id is an ObjectId.
            doc! {
                "_id": s.r_late, "buyerId": s.u_late, "offerId": s.o3, "quantity": "3",
                "requestedAt": "2024-03-01T10:00:00Z",
            },
        ])
        .await
        .unwrap();

    // The mapping file beside the config, named relatively (the contract:
    // relative to the config file).
    write_file(fx.dir.path(), "shop-mappings.toml", FIXTURE);
    let config = shop_config(&fx, &fx.pg_db, "shop-mappings.toml");
    let mut ferry = Ferry::spawn(&config);
    let pg = fx.pg().await;

    wait_until(
        "the snapshot, mapped",
        &mut ferry,
        Duration::from_secs(40),
        || check_shop(&pg, &s, Phase::Snapshot),
    )
    .await;
    // Allocated ahead: the late user has an id, used by the request, and no
    // row yet (the users rows are exactly u1..u3, checked above).
    let ids = id_map(&pg).await.unwrap();
    let allocated = need(&ids, "users", &s.u_late.to_hex()).unwrap();
    let n: i64 = pg
        .query_one(
            "SELECT count(*) FROM public.users WHERE id::text = $1",
            &[&allocated],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "the late user has a row before it arrived");
    // A column no rule fills belongs to the target: an edit of it must
    // survive the mapped updates below.
    let p1_id = need(&ids, "payments", &s.p1.to_hex()).unwrap();
    let edited = pg
        .execute(
            "UPDATE public.payments SET migrated_note = $1 WHERE id::text = $2",
            &[&EDITED_NOTE, &p1_id],
        )
        .await
        .unwrap();
    assert_eq!(edited, 1);

    // Streaming: inserts, updates, deletes.
    users
        .insert_one(doc! {
            "_id": s.u4, "email": "margaret@example.com", "displayName": "Margaret",
            "createdAt": DateTime::from_millis(1_710_000_000_000),
            "profile": {"address": {"city": "Boston", "zip": "02139"}}, "tags": ["new"],
        })
        .await
        .unwrap();
    users
        .update_one(
            doc! {"_id": s.u1},
            doc! {
                "$set": {"displayName": "Ada L.", "profile.address.city": "London"},
                "$unset": {"tags": ""},
            },
        )
        .await
        .unwrap();
    users.delete_one(doc! {"_id": s.u3}).await.unwrap();
    offers
        .insert_one(doc! {"_id": "offer-4", "title": "Rug", "price": dec("80.50")})
        .await
        .unwrap();
    payments
        .insert_many([
            // Rejected: needs_rounding (no `round` on amount).
            doc! {
                "_id": s.p6, "userId": s.u1, "amount": dec("10.005"),
                "items": [{"sku": "R-1", "qty": 1, "price": dec("10.00")}],
            },
            doc! {"_id": s.p7, "userId": s.u4, "amount": 7, "rawAmount": dec(HUGER)},
        ])
        .await
        .unwrap();
    payments
        .update_one(
            doc! {"_id": s.p1},
            doc! {
                "$set": {"amount": dec("12.5")},
                "$push": {"items": {"sku": "D-4", "qty": 3, "price": dec("1.10")}},
            },
        )
        .await
        .unwrap();
    payments.delete_one(doc! {"_id": s.p2}).await.unwrap();
    purchases
        .insert_many([
            doc! {
                "_id": s.r3, "buyerId": s.u4, "offerId": "offer-4", "quantity": dec("2"),
                "requestedAt": Bson::Int64(1_709_287_200_500),
            },
            // Rejected: unmapped_field (no `rest` on purchase_requests).
            doc! {
                "_id": s.r_coupon, "buyerId": s.u2, "offerId": "offer-2", "quantity": 1,
                "requestedAt": DateTime::from_millis(1_709_300_000_000), "coupon": "SUMMER10",
            },
        ])
        .await
        .unwrap();
    // The late user arrives.
    users
        .insert_one(doc! {
            "_id": s.u_late, "email": "late@example.com", "displayName": "Late Comer",
            "createdAt": DateTime::from_millis(1_720_000_000_000),
            "profile": {"address": {"city": "Oslo", "zip": "0150"}}, "locale": "nb-NO",
        })
        .await
        .unwrap();

    wait_until(
        "the streamed changes, mapped, and four parked records",
        &mut ferry,
        Duration::from_secs(40),
        || async {
            check_shop(&pg, &s, Phase::Streamed).await?;
            check_shop_dlq(&pg, &s).await
        },
    )
    .await;
    let ids = id_map(&pg).await.unwrap();
    assert_eq!(
        need(&ids, "users", &s.u_late.to_hex()).unwrap(),
        allocated,
        "the late user's id changed after it arrived"
    );
    let late_row: String = pg
        .query_one(
            "SELECT id::text FROM public.users WHERE email = 'late@example.com'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        late_row, allocated,
        "the late user did not get the allocated id"
    );

    // The rejections, one by one.
    let records = dlq(&pg).await.unwrap();
    let cases: [(&ObjectId, &str, &str, &[&str]); 4] = [
        (&s.p3, "payments", "null_in_not_null", &["amount"]),
        (&s.p4, "payments", "too_large", &["amount", HUGE]),
        (&s.p6, "payments", "needs_rounding", &["amount", "10.005"]),
        (
            &s.r_coupon,
            "purchase_requests",
            "unmapped_field",
            &["coupon", "SUMMER10"],
        ),
    ];
    for (key, table, code, words) in cases {
        let hex = key.to_hex();
        let r = parked_for(&records, &hex)
            .unwrap_or_else(|| panic!("no parked record for {table} {hex}: {records:?}"));
        assert_eq!(r.stage, "transform", "{r:?}");
        assert_eq!(r.code.as_deref(), Some(code), "{r:?}");
        assert!(
            r.message.contains(&hex),
            "the message does not name the key {hex}: {r:?}"
        );
        assert!(
            r.message.contains(table),
            "the message does not name the table {table}: {r:?}"
        );
        for w in words {
            assert!(r.message.contains(w), "the message lacks {w:?}: {r:?}");
        }
        assert!(
            r.message.contains(code),
            "the message does not name the rule: {r:?}"
        );
    }
    assert_running(&mut ferry, "after the rejections");

    // Fix the mapping: round amounts half-even, drop coupons. The replay
    // runs the parked records through the mapping as it is now.
    let fixed = replace_once(
        FIXTURE,
        "amount = { from = \"amount\" }",
        "amount = { from = \"amount\", round = \"half_even\" }",
    );
    let fixed = replace_once(
        &fixed,
        "target = \"public.purchase_requests\"\n",
        "target = \"public.purchase_requests\"\ndrop = [\"coupon\"]\n",
    );
    write_file(fx.dir.path(), "shop-mappings.toml", &fixed);
    let cfg = config.to_str().unwrap();
    // The mapping refused these records, so the queue holds them under the
    // source's name; the operator may name the target's.
    let (code, out) = cmd(&["dlq", "list", "--config", cfg, "--table", "public.payments"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(" | null_in_not_null | 1 |")
            && out.contains(" | too_large | 1 |")
            && out.contains(" | needs_rounding | 1 |")
            && out.contains("3 record(s)"),
        "--table public.payments finds app.payments' records: {out}"
    );
    let (code, out) = cmd(&[
        "dlq",
        "replay",
        "--config",
        cfg,
        "--dry-run",
        "--table",
        "payments",
        "--rule",
        "needs_rounding",
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("would apply 1, superseded 0, failed again 0"),
        "{out}"
    );
    let (code, out) = cmd(&["dlq", "replay", "--config", cfg]);
    assert!(
        out.contains("applied 2, superseded 0, failed again 2"),
        "{out}"
    );
    assert_eq!(code, 1, "records failed again: exit 1\n{out}");
    check_shop(&pg, &s, Phase::Replayed)
        .await
        .unwrap_or_else(|e| panic!("after the replay: {e}"));
    let left = dlq(&pg).await.unwrap();
    let mut codes: Vec<&str> = left.iter().filter_map(|r| r.code.as_deref()).collect();
    codes.sort_unstable();
    assert_eq!(codes, ["null_in_not_null", "too_large"], "{left:?}");
    assert!(
        left.iter()
            .all(|r| r.attempts == 2 && r.stage == "transform"),
        "{left:?}"
    );
    assert_running(&mut ferry, "after the replay");
    eprintln!("mongo_shop_fixture_end_to_end: {:?}", started.elapsed());
}

/// An array of subdocuments follows its parent through every kind of
/// change: [a,b,c] gives three child rows; `$pull` of b leaves a at 0 and
/// c at 1 (the row past the end is deleted); an element's field update
/// updates its row; `[]`, `null` and a missing array leave no rows; a new
/// array after those gives rows again; deleting the parent deletes its
/// rows. Another payment's rows stay untouched throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_rows_follow_array_updates() {
    let started = Instant::now();
    let fx = MongoToPg::start("tchild", MongoOptions::default()).await;
    create_shop_tables(&fx, &fx.pg_db).await;
    let db = fx.db().await;
    let payments: Collection<Document> = db.collection("payments");
    let x = ObjectId::new();
    let y = ObjectId::new();
    let item =
        |sku: &str, qty: i32, price: &str| doc! {"sku": sku, "qty": qty, "price": dec(price)};
    // y is copied by the snapshot, x streamed.
    payments
        .insert_one(doc! {"_id": y, "amount": dec("2.00"), "items": [item("y", 7, "7.77")]})
        .await
        .unwrap();
    let mappings = write_file(fx.dir.path(), "mappings.toml", FIXTURE);
    let config = shop_config(&fx, &fx.pg_db, mappings.to_str().unwrap());
    let mut ferry = Ferry::spawn(&config);
    let pg = fx.pg().await;

    let y_items: &[(&str, &str, &str)] = &[("y", "7", "7.77")];
    let expect = |x_items: &[(&str, &str, &str)]| {
        let mut rows = Rows::new();
        items_of(&mut rows, &x, x_items);
        items_of(&mut rows, &y, y_items);
        rows
    };
    let only_y = expect(&[]);
    wait_until("y's child row", &mut ferry, Duration::from_secs(30), || {
        check_items(&pg, &only_y)
    })
    .await;

    payments
        .insert_one(doc! {
            "_id": x, "amount": dec("1.00"),
            "items": [item("a", 1, "1.10"), item("b", 2, "2.20"), item("c", 3, "3.30")],
        })
        .await
        .unwrap();
    let steps: Vec<(&str, Document, ItemRows)> = vec![
        (
            "insert [a,b,c]",
            doc! {},
            vec![("a", "1", "1.10"), ("b", "2", "2.20"), ("c", "3", "3.30")],
        ),
        (
            "$pull b",
            doc! {"$pull": {"items": {"sku": "b"}}},
            vec![("a", "1", "1.10"), ("c", "3", "3.30")],
        ),
        (
            "$set items.0.qty",
            doc! {"$set": {"items.0.qty": 9}},
            vec![("a", "9", "1.10"), ("c", "3", "3.30")],
        ),
        ("[]", doc! {"$set": {"items": []}}, vec![]),
        (
            "[d,e]",
            doc! {"$set": {"items": [item("d", 4, "4.40"), item("e", 5, "5.50")]}},
            vec![("d", "4", "4.40"), ("e", "5", "5.50")],
        ),
        ("null", doc! {"$set": {"items": Bson::Null}}, vec![]),
        (
            "[f]",
            doc! {"$set": {"items": [item("f", 6, "6.60")]}},
            vec![("f", "6", "6.60")],
        ),
        ("$unset items", doc! {"$unset": {"items": ""}}, vec![]),
        (
            "[g,h]",
            doc! {"$set": {"items": [item("g", 1, "0.01"), item("h", 2, "0.02")]}},
            vec![("g", "1", "0.01"), ("h", "2", "0.02")],
        ),
    ];
    for (what, update, x_items) in steps {
        if !update.is_empty() {
            payments.update_one(doc! {"_id": x}, update).await.unwrap();
        }
        let want = expect(&x_items);
        wait_until(
            &format!("x's child rows after {what}"),
            &mut ferry,
            Duration::from_secs(20),
            || check_items(&pg, &want),
        )
        .await;
    }
    // The parent is there with its own row, then deleted with its rows.
    let x_id = need(&id_map(&pg).await.unwrap(), "payments", &x.to_hex()).unwrap();
    payments.delete_one(doc! {"_id": x}).await.unwrap();
    let want = expect(&[]);
    wait_until(
        "x and its child rows deleted",
        &mut ferry,
        Duration::from_secs(20),
        || async {
            check_items(&pg, &want).await?;
            let n: i64 = pg
                .query_one(
                    "SELECT count(*) FROM public.payments WHERE id::text = $1",
                    &[&x_id],
                )
                .await
                .map_err(pg_msg)?
                .get(0);
            if n == 0 {
                Ok(())
            } else {
                Err("the deleted payment is still there".into())
            }
        },
    )
    .await;
    let ys: i64 = pg
        .query_one("SELECT count(*) FROM public.payments", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(ys, 1, "only y is left");
    assert_running(&mut ferry, "after the child updates");
    eprintln!("child_rows_follow_array_updates: {:?}", started.elapsed());
}

/// Users and payments inserted (and users updated) while ferry is killed
/// with SIGKILL twice: the id map and the rows commit together, so after
/// catching up every users/payments row has exactly one `ferry_id_map`
/// entry and every entry its row (no orphan either way, no duplicate), each
/// row holds its own document's values, every payment has exactly its
/// child rows, and the ids recorded before the last kill are unchanged
/// (a replayed change gets the id it got the first time). No references:
/// an allocated-ahead id would be a legitimate mapping without a row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn id_map_survives_kill9_and_replay() {
    const SEED_DOCS: i64 = 1000;
    let started = Instant::now();
    let seed = std::env::var("FERRY_TRANSFORM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    eprintln!("id_map_survives_kill9_and_replay: FERRY_TRANSFORM_SEED={seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let fx = MongoToPg::start("tkill", MongoOptions::default()).await;
    create_shop_tables(&fx, &fx.pg_db).await;
    let db = fx.db().await;
    let users: Collection<Document> = db.collection("users");
    let payments: Collection<Document> = db.collection("payments");
    let user_doc = |i: i64, id: ObjectId| {
        doc! {
            "_id": id, "email": format!("user{i}@example.com"), "displayName": format!("user {i}"),
            "createdAt": DateTime::from_millis(1_700_000_000_000 + i),
            "profile": {"address": {"city": format!("city {}", i % 7), "zip": format!("{i:05}")}},
        }
    };
    let payment_doc = |i: i64, id: ObjectId| {
        let items: Vec<Document> = (0..i % 3)
            .map(|k| doc! {"sku": format!("s{i}-{k}"), "qty": 1, "price": dec("1.00")})
            .collect();
        doc! {"_id": id, "amount": dec(&format!("{i}.25")), "items": items}
    };
    let mut user_ids = Vec::new();
    for start in (0..SEED_DOCS).step_by(500) {
        let mut ub = Vec::new();
        let mut pb = Vec::new();
        for i in start..start + 500 {
            let u = ObjectId::new();
            user_ids.push(u);
            ub.push(user_doc(i, u));
            pb.push(payment_doc(i, ObjectId::new()));
        }
        users.insert_many(ub).await.unwrap();
        payments.insert_many(pb).await.unwrap();
    }

    // A writer: a user and a payment per round, and a rename of an
    // existing user every other round, until stopped.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = Arc::clone(&stop);
        let (users, payments) = (users.clone(), payments.clone());
        let mut user_ids = user_ids.clone();
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x5eed);
        tokio::spawn(async move {
            let mut i = SEED_DOCS;
            while !stop.load(Ordering::SeqCst) {
                let u = ObjectId::new();
                users.insert_one(user_doc(i, u)).await.expect("insert user");
                user_ids.push(u);
                payments
                    .insert_one(payment_doc(i, ObjectId::new()))
                    .await
                    .expect("insert payment");
                if i % 2 == 0 {
                    let k = rng.random_range(0..user_ids.len());
                    users
                        .update_one(
                            doc! {"_id": user_ids[k]},
                            doc! {"$set": {"displayName": format!("renamed {i}")}},
                        )
                        .await
                        .expect("update user");
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            i - SEED_DOCS
        })
    };

    let mappings = write_file(fx.dir.path(), "mappings.toml", FIXTURE);
    let config = shop_config(&fx, &fx.pg_db, mappings.to_str().unwrap());
    let pg = fx.pg().await;
    let mut ferry = Ferry::spawn(&config);
    let mut logs = Vec::new();

    // Kill 1: once some rows are in (during the snapshot, most likely).
    let kill_at = rng.random_range(50..=SEED_DOCS / 2);
    wait_until(
        "the first mapped rows",
        &mut ferry,
        Duration::from_secs(30),
        || async {
            let n: i64 = pg
                .query_one("SELECT count(*) FROM public.users", &[])
                .await
                .map_err(pg_msg)?
                .get(0);
            if n >= kill_at {
                Ok(())
            } else {
                Err(format!("{n} users rows"))
            }
        },
    )
    .await;
    ferry.kill9();
    logs.push(ferry.log_text());
    ferry = Ferry::spawn(&config);

    // Kill 2: at a random moment of the stream; the ids committed before
    // it are recorded first.
    tokio::time::sleep(Duration::from_millis(rng.random_range(500..=2500))).await;
    assert_running(&mut ferry, "before the second kill");
    let before: Vec<((String, String), String)> = id_map(&pg)
        .await
        .unwrap()
        .into_iter()
        .filter(|((ns, _), _)| ns == "users" || ns == "payments")
        .collect();
    assert!(!before.is_empty(), "no id mapped before the last kill");
    ferry.kill9();
    logs.push(ferry.log_text());
    ferry = Ferry::spawn(&config);
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::SeqCst);
    let written = writer.await.expect("writer");
    eprintln!(
        "2 kills (the first at {kill_at} users rows), {written} streamed rounds, {} ids recorded",
        before.len()
    );

    // What MongoDB holds now: the expected rows.
    let mut want_users = Rows::new();
    let mut cursor = users.find(doc! {}).await.unwrap();
    while cursor.advance().await.unwrap() {
        let d = cursor.deserialize_current().unwrap();
        want_users.insert(
            d.get_object_id("_id").unwrap().to_hex(),
            vec![
                t(d.get_str("email").unwrap()),
                t(d.get_str("displayName").unwrap()),
            ],
        );
    }
    let mut want_payments = Rows::new();
    let mut want_items: BTreeMap<String, i64> = BTreeMap::new();
    let mut cursor = payments.find(doc! {}).await.unwrap();
    while cursor.advance().await.unwrap() {
        let d = cursor.deserialize_current().unwrap();
        let hex = d.get_object_id("_id").unwrap().to_hex();
        let amount = d.get_decimal128("amount").unwrap().to_string();
        want_payments.insert(hex.clone(), vec![ts(amount)]);
        let n = d.get_array("items").unwrap().len() as i64;
        if n > 0 {
            want_items.insert(hex, n);
        }
    }
    const USERS_KEY: Shape = Shape {
        table: "users",
        namespace: "users",
        cols: &[("email", "t.email"), ("display_name", "t.display_name")],
        json: &[],
    };
    const PAYMENTS_KEY: Shape = Shape {
        table: "payments",
        namespace: "payments",
        cols: &[("amount", "t.amount::text")],
        json: &[],
    };
    let consistent = || async {
        check_table(&pg, &USERS_KEY, &want_users).await?;
        check_table(&pg, &PAYMENTS_KEY, &want_payments).await?;
        for (table, ns) in [("users", "users"), ("payments", "payments")] {
            let row = pg
                .query_one(
                    &format!(
                        "SELECT
                           (SELECT count(*) FROM public.ferry_id_map m WHERE m.namespace = '{ns}'
                               AND NOT EXISTS (SELECT 1 FROM public.{table} t WHERE t.id::text = m.new_id::text)),
                           (SELECT count(*) FROM public.{table} t WHERE NOT EXISTS
                               (SELECT 1 FROM public.ferry_id_map m WHERE m.namespace = '{ns}'
                                   AND m.new_id::text = t.id::text)),
                           (SELECT count(*) FROM (SELECT legacy_id FROM public.ferry_id_map
                               WHERE namespace = '{ns}' GROUP BY legacy_id HAVING count(*) > 1) d),
                           (SELECT count(*) FROM (SELECT new_id FROM public.ferry_id_map
                               WHERE namespace = '{ns}' GROUP BY new_id HAVING count(*) > 1) d)"
                    ),
                    &[],
                )
                .await
                .map_err(pg_msg)?;
            let (orphans, unmapped, dup_legacy, dup_new): (i64, i64, i64, i64) =
                (row.get(0), row.get(1), row.get(2), row.get(3));
            if (orphans, unmapped, dup_legacy, dup_new) != (0, 0, 0, 0) {
                return Err(format!(
                    "{ns}: {orphans} mapping(s) without a row, {unmapped} row(s) without a \
                     mapping, {dup_legacy} legacy id(s) and {dup_new} new id(s) mapped twice"
                ));
            }
        }
        let rows = pg
            .query(
                "SELECT m.legacy_id::text, count(*) FROM public.payment_items i
                   JOIN public.ferry_id_map m
                     ON m.namespace = 'payments' AND m.new_id::text = i.payment_id::text
                  GROUP BY 1",
                &[],
            )
            .await
            .map_err(pg_msg)?;
        let items: BTreeMap<String, i64> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        if items != want_items {
            let differing: Vec<_> = want_items
                .iter()
                .filter(|(k, v)| items.get(*k) != Some(v))
                .take(3)
                .collect();
            return Err(format!(
                "payment_items: {} payments with rows, expected {}; e.g. expected {differing:?}",
                items.len(),
                want_items.len()
            ));
        }
        Ok(())
    };
    let deadline = Instant::now() + Duration::from_secs(45);
    loop {
        let Err(e) = consistent().await else { break };
        if let Some(status) = ferry.exited() {
            panic!(
                "ferry exited ({status}) after the kills: {e}\nlast log:\n{}\n\nearlier runs:\n{}",
                log_tail(&ferry.log_text(), 60),
                logs.iter()
                    .map(|l| log_tail(l, 20))
                    .collect::<Vec<_>>()
                    .join("\n----\n")
            );
        }
        assert!(
            Instant::now() < deadline,
            "never consistent after the kills: {e}\nlast log:\n{}",
            log_tail(&ferry.log_text(), 60)
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let after = id_map(&pg).await.unwrap();
    for ((ns, legacy), new) in &before {
        assert_eq!(
            after.get(&(ns.clone(), legacy.clone())),
            Some(new),
            "the id of ({ns}, {legacy}) changed across the kill"
        );
    }
    assert_running(&mut ferry, "after catching up");
    eprintln!("id_map_survives_kill9_and_replay: {:?}", started.elapsed());
}

/// `on_missing = "dead_letter"` on a reference: a purchase whose buyer has
/// not arrived is parked (`missing_reference`, stage `transform`, naming
/// the field and the missing id) instead of allocating the buyer's id;
/// one whose buyer exists lands. A replay before the buyer arrives fails
/// again and changes nothing; after the buyer arrives, `ferry dlq replay`
/// applies it with the buyer's id and the queue is empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reference_dead_letter_policy() {
    let started = Instant::now();
    let fx = MongoToPg::start("tref", MongoOptions::default()).await;
    create_shop_tables(&fx, &fx.pg_db).await;
    let db = fx.db().await;
    let users: Collection<Document> = db.collection("users");
    let offers: Collection<Document> = db.collection("offers");
    let purchases: Collection<Document> = db.collection("purchase_requests");
    let (u1, missing, r1, r2) = (
        ObjectId::new(),
        ObjectId::new(),
        ObjectId::new(),
        ObjectId::new(),
    );
    let user = |id: ObjectId, email: &str| {
        doc! {
            "_id": id, "email": email, "displayName": email,
            "createdAt": DateTime::from_millis(1_700_000_000_000),
            "profile": {"address": {"city": "Rome", "zip": "00118"}},
        }
    };
    users.insert_one(user(u1, "u1@example.com")).await.unwrap();
    offers
        .insert_one(doc! {"_id": "offer-1", "title": "Desk", "price": dec("10")})
        .await
        .unwrap();
    let mapping = replace_once(
        FIXTURE,
        "buyer_id = { from = \"buyerId\", id_map = \"users\" }",
        "buyer_id = { from = \"buyerId\", id_map = \"users\", on_missing = \"dead_letter\" }",
    );
    let mappings = write_file(fx.dir.path(), "mappings.toml", &mapping);
    let config = shop_config(&fx, &fx.pg_db, mappings.to_str().unwrap());
    let mut ferry = Ferry::spawn(&config);
    let pg = fx.pg().await;
    // The buyer must be in before the purchases: in a snapshot a purchase
    // may be copied before its (existing) user, and would be parked.
    wait_until("u1", &mut ferry, Duration::from_secs(30), || async {
        need(&id_map(&pg).await?, "users", &u1.to_hex()).map(|_| ())
    })
    .await;

    purchases
        .insert_many([
            doc! {"_id": r1, "buyerId": u1, "offerId": "offer-1", "quantity": 1,
            "requestedAt": DateTime::from_millis(1_709_287_200_000)},
            doc! {"_id": r2, "buyerId": missing, "offerId": "offer-1", "quantity": 2,
            "requestedAt": DateTime::from_millis(1_709_287_200_000)},
        ])
        .await
        .unwrap();
    let landed = |with_r2: bool| {
        let pg = &pg;
        async move {
            let ids = id_map(pg).await?;
            let mut want = Rows::from([(
                r1.to_hex(),
                vec![
                    ts(need(&ids, "users", &u1.to_hex())?),
                    ts(offer_id("offer-1")),
                    t("1"),
                    t("1709287200000"),
                ],
            )]);
            if with_r2 {
                want.insert(
                    r2.to_hex(),
                    vec![
                        ts(need(&ids, "users", &missing.to_hex())?),
                        ts(offer_id("offer-1")),
                        t("2"),
                        t("1709287200000"),
                    ],
                );
            }
            check_table(pg, &PURCHASES, &want).await
        }
    };
    wait_until(
        "r1 landed and r2 parked",
        &mut ferry,
        Duration::from_secs(30),
        || async {
            landed(false).await?;
            let records = dlq(&pg).await?;
            if records.len() == 1 {
                Ok(())
            } else {
                Err(format!("{} parked records: {records:?}", records.len()))
            }
        },
    )
    .await;
    let records = dlq(&pg).await.unwrap();
    let r = &records[0];
    assert_eq!(r.stage, "transform", "{r:?}");
    assert_eq!(r.code.as_deref(), Some("missing_reference"), "{r:?}");
    for w in [
        r2.to_hex().as_str(),
        "purchase_requests",
        "buyerId",
        missing.to_hex().as_str(),
    ] {
        assert!(r.message.contains(w), "the message lacks {w:?}: {r:?}");
    }
    let ids = id_map(&pg).await.unwrap();
    assert!(
        !ids.contains_key(&("users".to_owned(), missing.to_hex())),
        "dead_letter allocated the missing buyer's id anyway"
    );

    // Too early: the buyer is still missing.
    let cfg = config.to_str().unwrap();
    let (code, out) = cmd(&["dlq", "replay", "--config", cfg]);
    assert!(
        out.contains("applied 0, superseded 0, failed again 1"),
        "{out}"
    );
    assert_eq!(code, 1, "{out}");
    landed(false).await.unwrap();
    assert!(
        !id_map(&pg)
            .await
            .unwrap()
            .contains_key(&("users".to_owned(), missing.to_hex())),
        "a failed replay allocated the missing buyer's id"
    );

    // The buyer arrives; the replay applies the purchase.
    users
        .insert_one(user(missing, "late@example.com"))
        .await
        .unwrap();
    wait_until(
        "the late buyer's row",
        &mut ferry,
        Duration::from_secs(30),
        || async {
            let n: i64 = pg
                .query_one(
                    "SELECT count(*) FROM public.users WHERE email = 'late@example.com'",
                    &[],
                )
                .await
                .map_err(pg_msg)?
                .get(0);
            if n == 1 {
                Ok(())
            } else {
                Err("no row yet".into())
            }
        },
    )
    .await;
    let (code, out) = cmd(&["dlq", "replay", "--config", cfg]);
    assert!(
        out.contains("applied 1, superseded 0, failed again 0"),
        "{out}"
    );
    assert_eq!(code, 0, "{out}");
    landed(true).await.unwrap();
    let buyer: String = pg
        .query_one(
            "SELECT u.id::text FROM public.users u WHERE u.email = 'late@example.com'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let ids = id_map(&pg).await.unwrap();
    assert_eq!(need(&ids, "users", &missing.to_hex()).unwrap(), buyer);
    assert!(dlq(&pg).await.unwrap().is_empty(), "the queue is not empty");
    assert_running(&mut ferry, "after the replay");
    eprintln!("reference_dead_letter_policy: {:?}", started.elapsed());
}

/// `ferry mapping check` against live target schemas: exit 0 for the
/// fixture against its tables; exit 1 naming the problem for a missing
/// table, a missing column, a NOT NULL column no rule fills, `round` on a
/// text column, an id map of UUIDs into a bigint column, a `rest` column
/// that is not jsonb and a child table whose key is not parent_key +
/// position; exit 2 naming the key for an invalid mapping file; exit 4
/// (never a pass) when the target cannot be read. `ferry run` refuses to
/// start on a finding and writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mapping_check_cli() {
    let started = Instant::now();
    let fx = MongoToPg::start("tcheck", MongoOptions::default()).await;
    // A document a refused run would otherwise copy.
    fx.db()
        .await
        .collection::<Document>("users")
        .insert_one(doc! {"_id": ObjectId::new(), "email": "a@example.com"})
        .await
        .unwrap();
    let dir = fx.dir.path();

    // (case, SQL run on the fresh shop tables, mapping, exit code, words
    // the output must hold)
    let title_rounded = replace_once(
        FIXTURE,
        "title = \"title\"",
        "title = { from = \"title\", round = \"half_even\" }",
    );
    let cases: Vec<(&str, &str, String, i32, Vec<&str>)> = vec![
        ("good", "", FIXTURE.to_owned(), 0, vec![]),
        (
            "no_table",
            "DROP TABLE public.offers",
            FIXTURE.to_owned(),
            1,
            vec!["offers"],
        ),
        (
            "no_column",
            "ALTER TABLE public.users DROP COLUMN city",
            FIXTURE.to_owned(),
            1,
            vec!["users", "city"],
        ),
        (
            "not_null",
            "ALTER TABLE public.payments ADD COLUMN invoice_no text NOT NULL",
            FIXTURE.to_owned(),
            1,
            vec!["payments", "invoice_no"],
        ),
        ("round_text", "", title_rounded, 1, vec!["offers", "title"]),
        (
            "uuid_into_bigint",
            "ALTER TABLE public.purchase_requests DROP COLUMN buyer_id,
                 ADD COLUMN buyer_id bigint",
            FIXTURE.to_owned(),
            1,
            vec!["purchase_requests", "buyer_id"],
        ),
        (
            "rest_not_jsonb",
            "ALTER TABLE public.users ALTER COLUMN extra TYPE text USING extra::text",
            FIXTURE.to_owned(),
            1,
            vec!["users", "extra"],
        ),
        (
            "child_key",
            "ALTER TABLE public.payment_items DROP CONSTRAINT payment_items_pkey,
                 ADD PRIMARY KEY (payment_id, sku)",
            FIXTURE.to_owned(),
            1,
            vec!["payment_items"],
        ),
        (
            "unknown_table_key",
            "",
            replace_once(
                FIXTURE,
                "target = \"public.users\"\n",
                "target = \"public.users\"\ncolour = \"red\"\n",
            ),
            2,
            vec!["colour"],
        ),
        (
            "unknown_column_key",
            "",
            replace_once(
                FIXTURE,
                "city = \"profile.address.city\"",
                "city = { form = \"profile.address.city\" }",
            ),
            2,
            vec!["form"],
        ),
        (
            "bad_kind",
            "",
            replace_once(FIXTURE, "kind = \"uuid_v5\"", "kind = \"uuid_v6\""),
            2,
            vec!["kind"],
        ),
    ];
    let mut configs = HashMap::new();
    for (case, sql, mapping, want_code, words) in &cases {
        let pg_db = format!("{}_{case}", fx.pg_db);
        fx.target
            .create_database(&pg_db)
            .await
            .expect("create target db");
        create_shop_tables(&fx, &pg_db).await;
        if !sql.is_empty() {
            fx.target
                .connect(&pg_db)
                .await
                .unwrap()
                .batch_execute(sql)
                .await
                .unwrap_or_else(|e| panic!("{case}: {sql}: {}", pg_msg(e)));
        }
        let mappings = write_file(dir, &format!("mappings-{case}.toml"), mapping);
        let config = shop_config(&fx, &pg_db, mappings.to_str().unwrap());
        let (code, out) = cmd(&["mapping", "check", "--config", config.to_str().unwrap()]);
        assert_eq!(code, *want_code, "{case}: exit {code}, output:\n{out}");
        for w in words {
            assert!(
                out.contains(w),
                "{case}: the output does not name {w:?}:\n{out}"
            );
        }
        configs.insert(*case, (pg_db, config));
    }

    // `--sample`: records of the source run through the same mapping.
    // A user with fields no rule maps (they go to `rest`), a payment the
    // run would dead-letter (an amount numeric(12,2) cannot hold without
    // rounding), no purchase request with `quantity`, and a collection no
    // mapping names: warnings and notes, still exit 0 (a sample is
    // evidence, not proof).
    let db = fx.db().await;
    db.collection::<Document>("users")
        .insert_one(doc! {
            "_id": ObjectId::new(), "email": "b@example.com", "nickname": "bee",
            "profile": {"address": {"city": "Oslo"}, "zip": "0150"},
        })
        .await
        .unwrap();
    db.collection::<Document>("payments")
        .insert_one(doc! {
            "_id": 7i64, "amount": "12.345".parse::<Decimal128>().unwrap(),
            "userId": ObjectId::new(), "fee": "0.10".parse::<Decimal128>().unwrap(),
            "rawAmount": "12.345".parse::<Decimal128>().unwrap(), "status": "paid",
            "items": [{"sku": "a", "qty": 1, "price": "1.00".parse::<Decimal128>().unwrap()}],
        })
        .await
        .unwrap();
    db.collection::<Document>("purchase_requests")
        .insert_one(
            doc! {"_id": ObjectId::new(), "buyerId": ObjectId::new(), "offerId": ObjectId::new()},
        )
        .await
        .unwrap();
    db.collection::<Document>("audit")
        .insert_one(doc! {"_id": 1, "what": "login"})
        .await
        .unwrap();
    let (pg_db, _) = &configs["good"];
    let mut collections = COLLECTIONS.to_vec();
    collections.push("audit");
    let sampled = fx.config_into(pg_db, &collections, "", "");
    let with_quantity = replace_once(
        FIXTURE,
        "offer_id = { from = \"offerId\", id_map = \"offers\" }",
        "offer_id = { from = \"offerId\", id_map = \"offers\" }\nquantity = \"quantity\"",
    );
    let mappings = write_file(dir, "mappings-sampled.toml", &with_quantity);
    add_mappings(&sampled, mappings.to_str().unwrap());
    let (code, out) = cmd(&["mapping", "check", "--config", sampled.to_str().unwrap()]);
    assert_eq!(code, 0, "sampled: exit {code}, output:\n{out}");
    for want in [
        "[warn] mappings.tables[2] (app.payments): 1 of 1 sampled documents would be dead-lettered:",
        "needs_rounding × 1, e.g. app.payments key",
        "[warn] mappings.tables[3].columns.quantity: none of 1 sampled documents of app.purchase_requests has a field \"quantity\"",
        "[info] mappings.tables[0] (app.users): fields of sampled documents that no rule maps go to the rest column \"extra\": nickname (1 of 2), profile.zip (1 of 2)",
        "[info] app.audit: no mapping names it; it is mirrored as _id + document (jsonb) into app.audit (created if missing)",
        "ok, 2 warning(s), ",
    ] {
        assert!(out.contains(want), "sampled: the output lacks {want:?}:\n{out}");
    }
    // `--sample 0`: the schema check alone.
    let (code, out) = cmd(&[
        "mapping",
        "check",
        "--config",
        sampled.to_str().unwrap(),
        "--sample",
        "0",
    ]);
    assert_eq!(code, 0, "--sample 0: exit {code}, output:\n{out}");
    assert!(
        !out.contains("[warn]") && !out.contains("[info]"),
        "--sample 0 sampled:\n{out}"
    );

    // The target cannot be read: exit 4, never 0.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let text = crate::support::mongo::mongo_config_text(
        &fx.mongo.url(),
        &fx.mongo_db,
        &COLLECTIONS,
        &format!("postgres://postgres@127.0.0.1:{closed}/nowhere"),
        "",
        "",
    );
    let config = write_file(dir, "unreachable.toml", &text);
    let mappings = write_file(dir, "mappings-unreachable.toml", FIXTURE);
    add_mappings(&config, mappings.to_str().unwrap());
    let (code, out) = cmd(&["mapping", "check", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 4, "unreachable target: exit {code}, output:\n{out}");

    // `ferry run` runs the same checks and refuses to start.
    let (pg_db, config) = &configs["no_column"];
    let mut ferry = Ferry::spawn(config);
    let status = tokio::task::block_in_place(|| ferry.wait_exit(Duration::from_secs(30)));
    let log = ferry.log_text();
    let status = status.unwrap_or_else(|| {
        panic!(
            "ferry run started despite a finding; log:\n{}",
            log_tail(&log, 40)
        )
    });
    assert!(!status.success(), "ferry run exited 0 on a finding:\n{log}");
    assert!(
        log.contains("city"),
        "the refusal does not name the column:\n{log}"
    );
    let n: i64 = fx
        .target
        .connect(pg_db)
        .await
        .unwrap()
        .query_one("SELECT count(*) FROM public.users", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "a refused run wrote rows");
    eprintln!("mapping_check_cli: {:?}", started.elapsed());
}

/// `ferry idmap lookup` in both directions once rows are mirrored: a
/// user's ObjectId hex gives its new UUID (the users row's id), that UUID
/// gives the hex back (for rollback); an offer's string id gives its
/// UUIDv5; a payment's ObjectId gives its bigint; an id the map does not
/// know exits 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idmap_lookup_cli() {
    let started = Instant::now();
    let fx = MongoToPg::start("tlookup", MongoOptions::default()).await;
    create_shop_tables(&fx, &fx.pg_db).await;
    let db = fx.db().await;
    let (u, p) = (ObjectId::new(), ObjectId::new());
    db.collection::<Document>("users")
        .insert_one(doc! {
            "_id": u, "email": "ada@example.com", "displayName": "Ada",
            "createdAt": DateTime::from_millis(1_700_000_000_000),
            "profile": {"address": {"city": "Paris", "zip": "75001"}},
        })
        .await
        .unwrap();
    db.collection::<Document>("offers")
        .insert_one(doc! {"_id": "offer-1", "title": "Desk", "price": dec("10")})
        .await
        .unwrap();
    db.collection::<Document>("payments")
        .insert_one(doc! {"_id": p, "userId": u, "amount": dec("1.00")})
        .await
        .unwrap();
    let mappings = write_file(fx.dir.path(), "mappings.toml", FIXTURE);
    let config = shop_config(&fx, &fx.pg_db, mappings.to_str().unwrap());
    let mut ferry = Ferry::spawn(&config);
    let pg = fx.pg().await;
    wait_until(
        "the three rows",
        &mut ferry,
        Duration::from_secs(30),
        || async {
            let n: i64 = pg
                .query_one(
                    "SELECT (SELECT count(*) FROM public.users) + (SELECT count(*) FROM public.offers)
                          + (SELECT count(*) FROM public.payments)",
                    &[],
                )
                .await
                .map_err(pg_msg)?
                .get(0);
            if n == 3 {
                Ok(())
            } else {
                Err(format!("{n} of 3 rows"))
            }
        },
    )
    .await;
    let user_id: String = pg
        .query_one("SELECT id::text FROM public.users", &[])
        .await
        .unwrap()
        .get(0);
    let payment_id: String = pg
        .query_one("SELECT id::text FROM public.payments", &[])
        .await
        .unwrap()
        .get(0);
    let cfg = config.to_str().unwrap();
    let hex = u.to_hex();

    let (code, out) = cmd(&["idmap", "lookup", "--config", cfg, "users", &hex]);
    assert_eq!(code, 0, "{out}");
    assert_token(&out, &user_id, "users legacy → new");
    let (code, out) = cmd(&["idmap", "lookup", "--config", cfg, "users", &user_id]);
    assert_eq!(code, 0, "{out}");
    assert_token(&out, &hex, "users new → legacy");
    let (code, out) = cmd(&["idmap", "lookup", "--config", cfg, "offers", "offer-1"]);
    assert_eq!(code, 0, "{out}");
    assert_token(&out, &offer_id("offer-1"), "offers legacy → UUIDv5");
    let (code, out) = cmd(&["idmap", "lookup", "--config", cfg, "payments", &p.to_hex()]);
    assert_eq!(code, 0, "{out}");
    assert_token(&out, &payment_id, "payments legacy → bigint");
    let unknown = ObjectId::new().to_hex();
    let (code, out) = cmd(&["idmap", "lookup", "--config", cfg, "users", &unknown]);
    assert_eq!(code, 1, "an unknown id: {out}");
    // ObjectId hex and UUIDs in any case (what people paste from logs).
    let upper = hex.to_ascii_uppercase();
    let (code, out) = cmd(&["idmap", "lookup", "--config", cfg, "users", &upper]);
    assert_eq!(code, 0, "{out}");
    assert_token(&out, &user_id, "users legacy (upper case) → new");
    let (code, out) = cmd(&[
        "idmap",
        "lookup",
        "--config",
        cfg,
        "users",
        &user_id.to_ascii_uppercase(),
    ]);
    assert_eq!(code, 0, "{out}");
    assert_token(&out, &hex, "users new (upper case) → legacy");
    // A namespace nobody declared: named as such, with the known ones.
    let (code, out) = cmd(&["idmap", "lookup", "--config", cfg, "userz", &hex]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("no such namespace \"userz\" (known: ") && out.contains("users"),
        "{out}"
    );
    // The whole map as CSV, for the application team.
    let csv = fx.dir.path().join("users.csv");
    let (code, out) = cmd(&[
        "idmap",
        "export",
        "--config",
        cfg,
        "--namespace",
        "users",
        "--output",
        csv.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}");
    let text = std::fs::read_to_string(&csv).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "legacy_id,new_id,allocated_at", "{text}");
    assert!(
        lines.len() == 2 && lines[1].starts_with(&format!("{hex},{user_id},")),
        "{text}"
    );
    let (code, out) = cmd(&["idmap", "export", "--config", cfg, "--namespace", "nope"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("no such namespace \"nope\""), "{out}");
    assert_running(&mut ferry, "after the lookups");
    eprintln!("idmap_lookup_cli: {:?}", started.elapsed());
}

const ARRAYS_MAPPING: &str = r#"
[id_maps.users]
kind = "uuid_v7"

[[tables]]
source = "DB.users"
target = "public.users"
unmapped = "drop"
[tables.columns]
id = { from = "_id", id_map = "users" }
email = "email"

[[tables]]
source = "DB.purchase_requests"
target = "public.requests"
unmapped = "drop"
[tables.columns]
id = "_id"
tag_list = "tags"
seller_ids = { from = "preferredSellers", id_map = "users" }
seller_json = { from = "preferredSellers", id_map = "users" }

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

const ARRAYS_TABLES: &str = "
CREATE TABLE public.users (id uuid PRIMARY KEY, email text);
CREATE TABLE public.requests (id text PRIMARY KEY, tag_list text[], seller_ids uuid[],
                              seller_json jsonb);
CREATE TABLE public.request_tags (request_id text, position integer, tag text,
                                  PRIMARY KEY (request_id, position));
CREATE TABLE public.request_sellers (request_id text, position integer, seller_id uuid,
                                     PRIMARY KEY (request_id, position));";

/// Arrays of scalars and of references (`value`): `tags: ["x", "y"]` and
/// `preferredSellers: [ObjectId, …]` become child rows and, at the same
/// time, array columns of the parent (`text[]`; `uuid[]` and jsonb with
/// each element translated through the id map), the references
/// translated through the users' id map, allocated ahead for a seller who
/// has not arrived yet and the same id once they do; a shrink deletes the
/// rows past the end, a delete of the parent deletes them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arrays_of_scalars_and_references_into_child_tables() {
    let fx = MongoToPg::start("tarrays", MongoOptions::default()).await;
    let pg = fx.pg().await;
    pg.batch_execute(ARRAYS_TABLES).await.unwrap();
    let db = fx.db().await;
    let users: Collection<Document> = db.collection("users");
    let requests: Collection<Document> = db.collection("purchase_requests");
    let (ann, bob) = (ObjectId::new(), ObjectId::new());
    users
        .insert_one(doc! {"_id": ann, "email": "ann@example.com"})
        .await
        .unwrap();
    requests
        .insert_one(doc! {"_id": "r1", "tags": ["x", "y", "z"], "preferredSellers": [ann, bob]})
        .await
        .unwrap();
    let mapping = ARRAYS_MAPPING.replace("DB.", &format!("{}.", fx.mongo_db));
    let mappings = write_file(fx.dir.path(), "mappings.toml", &mapping);
    let config = shop_config(&fx, &fx.pg_db, mappings.to_str().unwrap());
    let mut ferry = Ferry::spawn(&config);

    let expect = |tags: &[&str], sellers: &[&ObjectId]| {
        (
            tags.iter()
                .enumerate()
                .map(|(i, t)| format!("{i}:{t}"))
                .collect::<Vec<_>>(),
            sellers
                .iter()
                .enumerate()
                .map(|(i, s)| format!("{i}:{}", s.to_hex()))
                .collect::<Vec<_>>(),
        )
    };
    let want = expect(&["x", "y", "z"], &[&ann, &bob]);
    wait_until(
        "the snapshot's child rows",
        &mut ferry,
        Duration::from_secs(60),
        || arrays_are(&pg, &want),
    )
    .await;
    // Bob arrives after being referenced: he gets the id allocated ahead.
    users
        .insert_one(doc! {"_id": bob, "email": "bob@example.com"})
        .await
        .unwrap();
    wait_until(
        "bob's row under his allocated id",
        &mut ferry,
        Duration::from_secs(30),
        || async {
            let n: i64 = pg
                .query_one(
                    "SELECT count(*) FROM users u JOIN request_sellers s ON s.seller_id = u.id
                  WHERE u.email = 'bob@example.com'",
                    &[],
                )
                .await
                .map_err(pg_msg)?
                .get(0);
            if n == 1 {
                Ok(())
            } else {
                Err("bob's id differs from the one allocated ahead".into())
            }
        },
    )
    .await;
    // A shrink and a change, then the parent deleted.
    requests
        .update_one(
            doc! {"_id": "r1"},
            doc! {"$set": {"tags": ["w"], "preferredSellers": [bob]}},
        )
        .await
        .unwrap();
    let want = expect(&["w"], &[&bob]);
    wait_until(
        "the shrunk arrays",
        &mut ferry,
        Duration::from_secs(30),
        || arrays_are(&pg, &want),
    )
    .await;
    requests.delete_one(doc! {"_id": "r1"}).await.unwrap();
    let want = expect(&[], &[]);
    wait_until(
        "no child rows after the delete",
        &mut ferry,
        Duration::from_secs(30),
        || arrays_are(&pg, &want),
    )
    .await;
    let parked: i64 = pg
        .query_one("SELECT count(*) FROM ferry_dlq", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(parked, 0, "nothing parked");
    assert_running(&mut ferry, "after the array changes");
}

/// `Ok` when request r1's tags and sellers by position (`"0:x"`; sellers
/// as the legacy ids their new ids map back to) are `want`.
async fn arrays_are(
    pg: &tokio_postgres::Client,
    want: &(Vec<String>, Vec<String>),
) -> Result<(), String> {
    let tags: Vec<String> = pg
        .query(
            "SELECT position || ':' || tag FROM request_tags WHERE request_id = 'r1' ORDER BY position",
            &[],
        )
        .await
        .map_err(pg_msg)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let sellers: Vec<String> = pg
        .query(
            "SELECT s.position || ':' || m.legacy_id FROM request_sellers s
               JOIN ferry_id_map m ON m.namespace = 'users' AND m.new_id = s.seller_id::text
              WHERE s.request_id = 'r1' ORDER BY s.position",
            &[],
        )
        .await
        .map_err(pg_msg)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    // The same arrays as columns of the request: `text[]`, and the
    // references translated element by element into `uuid[]` and jsonb.
    let columns: Option<(String, String, String)> = pg
        .query_opt(
            "SELECT array_to_string(r.tag_list, ','),
                    (SELECT string_agg(m.legacy_id, ',' ORDER BY s.o)
                       FROM unnest(r.seller_ids) WITH ORDINALITY AS s(id, o)
                       JOIN ferry_id_map m ON m.namespace = 'users' AND m.new_id = s.id::text),
                    (SELECT string_agg(m.legacy_id, ',' ORDER BY s.o)
                       FROM jsonb_array_elements_text(r.seller_json) WITH ORDINALITY AS s(id, o)
                       JOIN ferry_id_map m ON m.namespace = 'users' AND m.new_id = s.id)
               FROM requests r WHERE r.id = 'r1'",
            &[],
        )
        .await
        .map_err(pg_msg)?
        .map(|r| {
            let text = |i: usize| r.get::<_, Option<String>>(i).unwrap_or_default();
            (text(0), text(1), text(2))
        });
    let unpositioned = |v: &[String]| {
        v.iter()
            .map(|s| s.split_once(':').map_or(s.as_str(), |(_, v)| v))
            .collect::<Vec<_>>()
            .join(",")
    };
    let want_columns = (!want.0.is_empty()).then(|| {
        let sellers = unpositioned(&want.1);
        (unpositioned(&want.0), sellers.clone(), sellers)
    });
    if (&tags, &sellers) == (&want.0, &want.1) && columns == want_columns {
        Ok(())
    } else {
        Err(format!("{:?}", (tags, sellers, columns)))
    }
}

/// One mapping shape of docs/mappings.md for the check ⇔ run agreement
/// test: the collection, its `[[tables]]` entry (after `source`/`target`),
/// the target table's columns, and documents the run keeps or refuses.
struct MappingShape {
    name: &'static str,
    mapping: &'static str,
    ddl: &'static str,
    docs: Vec<Document>,
}

/// `ferry mapping check --sample` and `ferry run` agree, for every mapping
/// shape the docs describe (renames and nested paths, id-map keys and
/// array columns, defaults, rounding, `rest`, `unmapped` reject and drop,
/// child tables of documents and of scalars, type coercion): the records
/// check says the run would dead-letter are exactly, by table and rule,
/// the ones the run parks, and every other record lands. (References with
/// `on_missing = "dead_letter"` are decided by the id map in the target,
/// which a sample cannot see: they are left out.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mapping_check_and_run_agree_on_every_shape() {
    let fx = MongoToPg::start("tagree", MongoOptions::default()).await;
    let pg = fx.pg().await;
    let oid = ObjectId::new;
    let dec = |s: &str| s.parse::<Decimal128>().unwrap();
    let shapes = vec![
        MappingShape {
            name: "renamed",
            mapping: "[tables.columns]\nid = \"_id\"\nname = \"profile.name\"\n",
            ddl: "id text PRIMARY KEY, name text",
            docs: vec![doc! {"_id": "a", "profile": {"name": "Ann"}}],
        },
        MappingShape {
            name: "keyed",
            mapping: "[tables.columns]\nid = { from = \"_id\", id_map = \"k\" }\nv = \"v\"\n",
            ddl: "id uuid PRIMARY KEY, v integer",
            docs: vec![doc! {"_id": oid(), "v": 1}, doc! {"_id": oid(), "v": "two"}],
        },
        MappingShape {
            name: "defaults",
            mapping: "[tables.columns]\nid = \"_id\"\nstatus = { from = \"status\", default = \"new\" }\ncurrency = { default = \"EUR\" }\n",
            ddl: "id text PRIMARY KEY, status text NOT NULL, currency text NOT NULL",
            docs: vec![doc! {"_id": "a"}, doc! {"_id": "b", "status": "paid"}],
        },
        MappingShape {
            name: "money",
            mapping: "[tables.columns]\nid = \"_id\"\namount = \"amount\"\nfee = { from = \"fee\", round = \"half_even\" }\n",
            ddl: "id text PRIMARY KEY, amount numeric(12,2), fee numeric(12,2)",
            docs: vec![
                doc! {"_id": "a", "amount": dec("1.10"), "fee": dec("0.125")},
                doc! {"_id": "b", "amount": dec("1.005")},
            ],
        },
        MappingShape {
            name: "rested",
            mapping: "rest = \"extra\"\n[tables.columns]\nid = \"_id\"\n",
            ddl: "id text PRIMARY KEY, extra jsonb",
            docs: vec![doc! {"_id": "a", "x": 1, "y": {"z": true}}],
        },
        MappingShape {
            name: "strict",
            mapping: "[tables.columns]\nid = \"_id\"\n",
            ddl: "id text PRIMARY KEY",
            docs: vec![doc! {"_id": "a"}, doc! {"_id": "b", "stray": 1}],
        },
        MappingShape {
            name: "lenient",
            mapping: "unmapped = \"drop\"\n[tables.columns]\nid = \"_id\"\n",
            ddl: "id text PRIMARY KEY",
            docs: vec![doc! {"_id": "a", "stray": 1}],
        },
        MappingShape {
            name: "orders",
            mapping: "unmapped = \"drop\"\n[tables.columns]\nid = \"_id\"\n\n[[tables.children]]\nfrom = \"items\"\ntarget = \"public.orders_items\"\nparent_key = [\"order_id\"]\nposition = \"position\"\nunmapped = \"drop\"\n[tables.children.columns]\nsku = \"sku\"\n",
            ddl: "id text PRIMARY KEY",
            docs: vec![
                doc! {"_id": "a", "items": [{"sku": "x"}, {"sku": "y"}]},
                doc! {"_id": "b", "items": "not an array"},
                doc! {"_id": "c", "items": [1, 2]},
            ],
        },
        MappingShape {
            name: "tagged",
            mapping: "unmapped = \"drop\"\n[tables.columns]\nid = \"_id\"\n\n[[tables.children]]\nfrom = \"tags\"\ntarget = \"public.tagged_tags\"\nparent_key = [\"tagged_id\"]\nposition = \"position\"\nvalue = \"tag\"\n",
            ddl: "id text PRIMARY KEY",
            docs: vec![
                doc! {"_id": "a", "tags": ["x", "y"]},
                doc! {"_id": "b", "tags": [{"no": "scalar"}]},
            ],
        },
        MappingShape {
            name: "picks",
            mapping: "[tables.columns]\nid = \"_id\"\nsellers = { from = \"sellers\", id_map = \"k\" }\nsellers_json = { from = \"sellers\", id_map = \"k\" }\n",
            ddl: "id text PRIMARY KEY, sellers uuid[], sellers_json jsonb",
            docs: vec![
                doc! {"_id": "a", "sellers": [oid(), oid()]},
                doc! {"_id": "b", "sellers": oid()},
            ],
        },
    ];
    let db = fx.db().await;
    let mut mapping = String::from("[id_maps.k]\nkind = \"uuid_v7\"\n");
    for s in &shapes {
        pg.batch_execute(&format!("CREATE TABLE public.{} ({})", s.name, s.ddl))
            .await
            .unwrap();
        db.collection::<Document>(s.name)
            .insert_many(s.docs.clone())
            .await
            .unwrap();
        mapping.push_str(&format!(
            "\n[[tables]]\nsource = \"{}.{}\"\ntarget = \"public.{}\"\n{}",
            fx.mongo_db, s.name, s.name, s.mapping
        ));
    }
    pg.batch_execute(
        "CREATE TABLE public.orders_items (order_id text, position integer, sku text,
                                           PRIMARY KEY (order_id, position));
         CREATE TABLE public.tagged_tags (tagged_id text, position integer, tag text,
                                          PRIMARY KEY (tagged_id, position));",
    )
    .await
    .unwrap();
    let names: Vec<&str> = shapes.iter().map(|s| s.name).collect();
    let config = fx.config_into(&fx.pg_db, &names, "", "");
    let mappings = write_file(fx.dir.path(), "agree.toml", &mapping);
    add_mappings(&config, mappings.to_str().unwrap());

    // What check predicts: (collection, rule) → records.
    let (code, out) = cmd(&["mapping", "check", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    let mut predicted: BTreeMap<(String, String), i64> = BTreeMap::new();
    let mut current = None;
    for line in out.lines() {
        if line.contains("would be dead-lettered") {
            let source = line.split('(').nth(1).and_then(|r| r.split(')').next());
            current = source.map(|s| s.rsplit('.').next().unwrap_or(s).to_string());
        } else if let (Some(table), Some((rule, rest))) = (&current, line.trim().split_once(" × "))
        {
            let n: i64 = rest.split(',').next().unwrap().trim().parse().unwrap();
            predicted.insert((table.clone(), rule.to_string()), n);
        } else {
            current = None;
        }
    }
    let want: BTreeMap<(String, String), i64> = [
        ("keyed", "not_coercible"),
        ("money", "needs_rounding"),
        ("strict", "unmapped_field"),
        ("orders", "not_an_array"),
        ("orders", "not_a_document"),
        ("tagged", "not_a_scalar"),
        ("picks", "bad_id"),
    ]
    .iter()
    .map(|(t, r)| ((t.to_string(), r.to_string()), 1))
    .collect();
    assert_eq!(predicted, want, "check's predictions:\n{out}");

    // What the run does.
    let mut ferry = Ferry::spawn(&config);
    let parked = || async {
        let rows = pg
            .query(
                "SELECT table_name, error_code, count(*) FROM ferry_dlq GROUP BY 1, 2",
                &[],
            )
            .await
            .map_err(pg_msg)?;
        Ok::<_, String>(
            rows.iter()
                .map(|r| {
                    (
                        (r.get::<_, String>(0), r.get::<_, String>(1)),
                        r.get::<_, i64>(2),
                    )
                })
                .collect::<BTreeMap<(String, String), i64>>(),
        )
    };
    wait_until(
        "the run parks what check predicted",
        &mut ferry,
        Duration::from_secs(90),
        || async {
            let got = parked().await?;
            if got == predicted {
                Ok(())
            } else {
                Err(format!("{got:?}"))
            }
        },
    )
    .await;
    wait_until(
        "every other record landed",
        &mut ferry,
        Duration::from_secs(60),
        || async {
            for s in &shapes {
                let refused: i64 = predicted
                    .iter()
                    .filter(|((t, _), _)| t == s.name)
                    .map(|(_, n)| n)
                    .sum();
                let n: i64 = pg
                    .query_one(&format!("SELECT count(*) FROM public.{}", s.name), &[])
                    .await
                    .map_err(pg_msg)?
                    .get(0);
                if n != s.docs.len() as i64 - refused {
                    return Err(format!("{}: {n} rows", s.name));
                }
            }
            Ok(())
        },
    )
    .await;
    assert_running(&mut ferry, "after the agreement check");
}
