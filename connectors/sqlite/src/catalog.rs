//! What the database holds: its tables, their columns and keys, and the
//! order their foreign keys give (roots first).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use ferry_pipeline::config::SQLITE_SCHEMA;
use ferry_pipeline::event::{quote_ident, Column, TableId, TableSchema};
use rusqlite::Connection;

use crate::change_log::LOG_PREFIX;
use crate::value::mirror_type;

/// The column a table without a declared primary key is keyed by: its
/// rowid, mirrored as a column of that name.
pub const ROWID: &str = "rowid";

/// One source table as Ferry reads it.
#[derive(Debug, Clone)]
pub struct SqliteTable {
    pub name: String,
    /// Declared columns (and `rowid` first for a table keyed by its rowid),
    /// typed by [`mirror_type`].
    pub schema: Arc<TableSchema>,
    /// The key as SQL expressions, in key order: the declared primary key,
    /// or `rowid`.
    pub key: Vec<String>,
    /// The columns as a select list, in `schema` order.
    pub select_list: String,
    pub without_rowid: bool,
    /// Tables this one references by a declared foreign key (not itself).
    pub references: BTreeSet<String>,
}

impl SqliteTable {
    /// Key columns' indexes in `schema.columns`.
    pub fn key_indexes(&self) -> &[usize] {
        &self.schema.primary_key
    }
}

/// The database's ordinary tables, but SQLite's own (`sqlite_*`) and
/// Ferry's (`_ferry_*`), by name. Virtual tables (FTS, R*Tree) and their
/// shadow tables are left out: they are indexes the application rebuilds,
/// not data of its own.
pub fn table_names(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare(
        "SELECT name FROM pragma_table_list WHERE schema = 'main' AND type = 'table' \
         AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND name NOT LIKE ?1 ESCAPE '\\' ORDER BY name",
    )?;
    let like = format!("{}%", LOG_PREFIX.replace('_', "\\_"));
    let names = stmt
        .query_map([like], |r| r.get::<_, String>(0))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(names)
}

/// Describes `name`; `Ok(None)` when there is no such table.
pub fn describe(conn: &Connection, name: &str) -> rusqlite::Result<Option<SqliteTable>> {
    let exists: Option<i64> = conn
        .query_row(
            "SELECT wr FROM pragma_table_list WHERE schema = 'main' AND name = ?1 AND type = 'table'",
            [name],
            |r| r.get(0),
        )
        .map(Some)
        .or_else(|e| match e {
            rusqlite::Error::QueryReturnedNoRows => Ok(None),
            e => Err(e),
        })?;
    let Some(wr) = exists else { return Ok(None) };
    let without_rowid = wr != 0;
    // (name, declared type, not null, position in the primary key)
    let mut stmt =
        conn.prepare("SELECT name, type, \"notnull\", pk FROM pragma_table_info(?1) ORDER BY cid")?;
    let declared: Vec<(String, String, bool, i64)> = stmt
        .query_map([name], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
        .collect::<Result<_, _>>()?;
    let mut columns = Vec::with_capacity(declared.len() + 1);
    let mut pk: Vec<(i64, usize)> = Vec::new();
    let rowid_key = declared.iter().all(|c| c.3 == 0);
    if rowid_key {
        columns.push(Column {
            name: ROWID.into(),
            type_oid: 0,
            type_sql: "bigint".into(),
            nullable: false,
            is_key: true,
            enum_labels: None,
            id_map: None,
        });
        pk.push((1, 0));
    }
    for (col, ty, notnull, in_pk) in &declared {
        if rowid_key && col.eq_ignore_ascii_case(ROWID) {
            // Keyed by its rowid, the table would show two `rowid` columns.
            return Err(rusqlite::Error::InvalidColumnName(format!(
                "{name}.{col}: a table without a primary key may not name a column rowid"
            )));
        }
        if *in_pk > 0 {
            pk.push((*in_pk, columns.len()));
        }
        columns.push(Column {
            name: col.clone(),
            type_oid: 0,
            type_sql: mirror_type(ty),
            nullable: !*notnull && *in_pk == 0,
            is_key: *in_pk > 0,
            enum_labels: None,
            id_map: None,
        });
    }
    pk.sort();
    let primary_key: Vec<usize> = pk.into_iter().map(|(_, i)| i).collect();
    let key = primary_key
        .iter()
        .map(|&i| column_sql(&columns[i].name, rowid_key && i == 0))
        .collect();
    let select_list = columns
        .iter()
        .enumerate()
        .map(|(i, c)| column_sql(&c.name, rowid_key && i == 0))
        .collect::<Vec<_>>()
        .join(", ");
    let mut stmt = conn.prepare("SELECT DISTINCT \"table\" FROM pragma_foreign_key_list(?1)")?;
    let references = stmt
        .query_map([name], |r| r.get::<_, String>(0))?
        .collect::<Result<BTreeSet<_>, _>>()?
        .into_iter()
        .filter(|t| t != name)
        .collect();
    Ok(Some(SqliteTable {
        name: name.to_string(),
        schema: Arc::new(TableSchema {
            id: TableId::new(SQLITE_SCHEMA, name),
            columns,
            primary_key,
            child: None,
        }),
        key,
        select_list,
        without_rowid,
        references,
    }))
}

fn column_sql(name: &str, is_rowid: bool) -> String {
    if is_rowid {
        "rowid".into()
    } else {
        quote_ident(name)
    }
}

/// Orders tables so that every table comes after the tables it references
/// (roots first), by name among equals. Tables in a reference cycle come
/// after the rest, by name, and are returned in the second list.
pub fn foreign_key_order(tables: Vec<SqliteTable>) -> (Vec<SqliteTable>, Vec<String>) {
    let names: BTreeSet<String> = tables.iter().map(|t| t.name.clone()).collect();
    let mut by_name: BTreeMap<String, SqliteTable> =
        tables.into_iter().map(|t| (t.name.clone(), t)).collect();
    let mut done: BTreeSet<String> = BTreeSet::new();
    let mut out = Vec::with_capacity(by_name.len());
    loop {
        // Ready: every reference (among the chosen tables) already placed.
        let ready: Vec<String> = by_name
            .values()
            .filter(|t| {
                t.references
                    .iter()
                    .all(|r| !names.contains(r) || done.contains(r))
            })
            .map(|t| t.name.clone())
            .collect();
        if ready.is_empty() {
            break;
        }
        for name in ready {
            done.insert(name.clone());
            out.push(by_name.remove(&name).expect("listed above"));
        }
    }
    let cyclic: Vec<String> = by_name.keys().cloned().collect();
    out.extend(by_name.into_values());
    (out, cyclic)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db(sql: &str) -> Connection {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch(sql).unwrap();
        c
    }

    #[test]
    fn keys_rowid_declared_and_without_rowid() {
        let c = db("CREATE TABLE a (x TEXT, y INTEGER);
             CREATE TABLE b (id TEXT PRIMARY KEY, n REAL);
             CREATE TABLE c (k1 INTEGER, k2 TEXT, v BLOB, PRIMARY KEY (k2, k1)) WITHOUT ROWID;");
        let a = describe(&c, "a").unwrap().unwrap();
        assert_eq!(a.key, vec!["rowid"]);
        assert_eq!(a.schema.columns[0].name, "rowid");
        assert_eq!(a.select_list, r#"rowid, "x", "y""#);
        let b = describe(&c, "b").unwrap().unwrap();
        assert_eq!(b.key, vec![r#""id""#]);
        assert_eq!(b.schema.columns[1].type_sql, "double precision");
        let t = describe(&c, "c").unwrap().unwrap();
        assert!(t.without_rowid);
        assert_eq!(t.key, vec![r#""k2""#, r#""k1""#]);
        assert_eq!(t.schema.primary_key, vec![1, 0]);
        assert!(describe(&c, "nope").unwrap().is_none());
    }

    #[test]
    fn roots_first_cycles_last() {
        let c = db("CREATE TABLE projects (id TEXT PRIMARY KEY);
             CREATE TABLE tasks (id TEXT PRIMARY KEY, project_id TEXT REFERENCES projects(id), parent TEXT REFERENCES tasks(id));
             CREATE TABLE attempts (id TEXT PRIMARY KEY, task_id TEXT REFERENCES tasks(id));
             CREATE TABLE x (id INTEGER PRIMARY KEY, y_id INTEGER REFERENCES y(id));
             CREATE TABLE y (id INTEGER PRIMARY KEY, x_id INTEGER REFERENCES x(id));
             CREATE VIRTUAL TABLE notes USING fts5(body);");
        let tables = table_names(&c)
            .unwrap()
            .iter()
            .map(|n| describe(&c, n).unwrap().unwrap())
            .collect();
        let (order, cyclic) = foreign_key_order(tables);
        let names: Vec<&str> = order.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["projects", "tasks", "attempts", "x", "y"]);
        assert_eq!(cyclic, ["x", "y"]);
    }
}
