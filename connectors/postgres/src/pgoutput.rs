//! Decoder for PostgreSQL's `pgoutput` logical replication protocol,
//! version 1.
//!
//! Owns the byte layout of the messages a pgoutput slot streams inside
//! `XLogData` (see "Logical Replication Message Formats" in the PostgreSQL
//! docs) and nothing else: it turns one payload into a [`LogicalMessage`]
//! without interpreting the column texts (that is [`crate::text`]'s job) and
//! without any I/O. Every read is bounds-checked, so a malformed or
//! truncated payload yields a [`DecodeError`], never a panic: the payload
//! comes from the network and a panic would take the whole pipeline down.
//!
//! Protocol version 1 only: the streaming (`S`, `E`, `c`, `A`) and two-phase
//! messages of later versions are rejected as unknown types, because with
//! version 1 the server never sends them and seeing one means the slot was
//! started with options this decoder does not understand.

/// One decoded pgoutput message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogicalMessage {
    /// `B`: a transaction starts.
    Begin {
        /// LSN of the transaction's commit record.
        final_lsn: u64,
        /// Commit time, microseconds since 2000-01-01 00:00:00 UTC (the
        /// PostgreSQL epoch, not the Unix one).
        commit_ts_micros: i64,
        /// Transaction id.
        xid: u32,
    },
    /// `C`: the transaction started by the last `Begin` commits.
    Commit {
        /// Unused by PostgreSQL so far; kept so nothing is lost.
        flags: u8,
        /// LSN of the commit record.
        commit_lsn: u64,
        /// LSN just past the commit record: what the client confirms.
        end_lsn: u64,
        /// Commit time, microseconds since 2000-01-01 00:00:00 UTC.
        commit_ts_micros: i64,
    },
    /// `O`: the transaction was replayed from another node (replication
    /// origin).
    Origin {
        /// LSN of the commit on the origin server.
        lsn: u64,
        /// Name of the origin.
        name: String,
    },
    /// `R`: the shape of a relation, sent before its first change in a
    /// session and again whenever it changes.
    Relation(Relation),
    /// `Y`: a non-builtin type that a following `Relation` references.
    Type {
        /// Type OID.
        oid: u32,
        /// Schema of the type (empty for `pg_catalog`).
        namespace: String,
        /// Type name.
        name: String,
    },
    /// `I`: a row was inserted.
    Insert {
        /// OID of the relation, as announced by a `Relation` message.
        relation_id: u32,
        /// The new row.
        new: Vec<TupleColumn>,
    },
    /// `U`: a row was updated.
    Update {
        /// OID of the relation.
        relation_id: u32,
        /// The old row: its replica identity columns (`K`, when the key
        /// changed) or the whole row (`O`, under `REPLICA IDENTITY FULL`);
        /// `None` when the server sent no old tuple.
        old: Option<Vec<TupleColumn>>,
        /// Whether `old` is the whole row (`O`) rather than the key (`K`).
        old_is_full_row: bool,
        /// The new row; unchanged TOASTed values come as
        /// [`TupleColumn::UnchangedToast`].
        new: Vec<TupleColumn>,
    },
    /// `D`: a row was deleted.
    Delete {
        /// OID of the relation.
        relation_id: u32,
        /// The deleted row's key (`K`) or whole row (`O`).
        old: Vec<TupleColumn>,
        /// Whether `old` is the whole row (`O`) rather than the key (`K`).
        old_is_full_row: bool,
    },
    /// `T`: one or more relations were truncated.
    Truncate {
        /// Option bits: 1 = `CASCADE`, 2 = `RESTART IDENTITY`.
        options: u8,
        /// OIDs of the truncated relations.
        relation_ids: Vec<u32>,
    },
    /// `M`: a message written with `pg_logical_emit_message`.
    Message {
        /// Whether the message is part of the surrounding transaction.
        transactional: bool,
        /// LSN of the message.
        lsn: u64,
        /// The prefix it was emitted with.
        prefix: String,
        /// The raw content (not necessarily text).
        content: Vec<u8>,
    },
}

/// A relation as described by a `Relation` message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    /// Relation OID: what `Insert`, `Update`, `Delete` and `Truncate` refer
    /// to.
    pub id: u32,
    /// Schema (empty for `pg_catalog`).
    pub namespace: String,
    /// Relation name.
    pub name: String,
    /// `relreplident`: `b'd'` default (primary key), `b'n'` nothing,
    /// `b'f'` full, `b'i'` index.
    pub replica_identity: u8,
    /// Columns in tuple order (dropped and generated columns excluded by
    /// the server).
    pub columns: Vec<RelationColumn>,
}

/// One column of a [`Relation`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationColumn {
    /// Part of the replica identity (flags bit 1).
    pub is_key: bool,
    /// Column name.
    pub name: String,
    /// Type OID.
    pub type_oid: u32,
    /// `atttypmod` (-1 when the type has none).
    pub type_modifier: i32,
}

/// One column of a tuple (`TupleData`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TupleColumn {
    /// `n`: SQL NULL.
    Null,
    /// `u`: an out-of-line (TOAST) value the change did not touch; its
    /// actual value is not sent.
    UnchangedToast,
    /// `t`: the value in the type's text output format.
    Text(Vec<u8>),
    /// `b`: the value in the type's binary send format (only when the slot
    /// was started with `binary 'true'`).
    Binary(Vec<u8>),
}

/// Why a payload is not a valid pgoutput v1 message.
///
/// `message` names the message type being decoded (`"Begin"`, `"Insert"`,
/// ...) so that a log line says where the stream went wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The payload has no bytes at all.
    #[error("empty pgoutput message")]
    Empty,
    /// The first byte is not a pgoutput v1 message type.
    #[error("unknown pgoutput message type byte {byte:#04x} ({:?})", *byte as char)]
    UnknownType {
        /// The offending type byte.
        byte: u8,
    },
    /// The payload ends before a field does.
    #[error(
        "{message} message truncated: {field} at offset {offset} needs {needed} bytes, {available} left"
    )]
    Truncated {
        /// Message type being decoded.
        message: &'static str,
        /// Field being read.
        field: &'static str,
        /// Offset of the field in the payload.
        offset: usize,
        /// Bytes the field needs.
        needed: usize,
        /// Bytes left in the payload.
        available: usize,
    },
    /// A string field has no terminating NUL byte.
    #[error("{message} message truncated: {field} at offset {offset} has no terminating NUL")]
    Unterminated {
        /// Message type being decoded.
        message: &'static str,
        /// Field being read.
        field: &'static str,
        /// Offset of the field in the payload.
        offset: usize,
    },
    /// A string field is not valid UTF-8.
    #[error("{message} message: {field} at offset {offset} is not valid UTF-8")]
    BadUtf8 {
        /// Message type being decoded.
        message: &'static str,
        /// Field being read.
        field: &'static str,
        /// Offset of the field in the payload.
        offset: usize,
    },
    /// A tag byte (tuple kind, column kind) has a value the protocol does
    /// not define there.
    #[error("{message} message: unexpected byte {byte:#04x} for {field} at offset {offset}")]
    UnexpectedByte {
        /// Message type being decoded.
        message: &'static str,
        /// Field being read.
        field: &'static str,
        /// The offending byte.
        byte: u8,
        /// Offset of the byte in the payload.
        offset: usize,
    },
    /// A count or length field is negative.
    #[error("{message} message: {field} at offset {offset} is negative ({value})")]
    NegativeLength {
        /// Message type being decoded.
        message: &'static str,
        /// Field being read.
        field: &'static str,
        /// The value read.
        value: i64,
        /// Offset of the field in the payload.
        offset: usize,
    },
    /// Bytes are left over after the message: the framing is off, and
    /// whatever was decoded cannot be trusted.
    #[error("{message} message: {count} trailing bytes after offset {offset}")]
    TrailingBytes {
        /// Message type being decoded.
        message: &'static str,
        /// Number of bytes left over.
        count: usize,
        /// Where the message ended.
        offset: usize,
    },
}

/// Decodes one pgoutput v1 message: the payload of one `XLogData`,
/// starting with the message type byte.
pub fn decode(payload: &[u8]) -> Result<LogicalMessage, DecodeError> {
    let (&kind, _) = payload.split_first().ok_or(DecodeError::Empty)?;
    let message = message_name(kind).ok_or(DecodeError::UnknownType { byte: kind })?;
    let mut r = Reader {
        buf: payload,
        pos: 1,
        message,
    };
    let decoded = match kind {
        b'B' => LogicalMessage::Begin {
            final_lsn: r.u64("final LSN")?,
            commit_ts_micros: r.i64("commit timestamp")?,
            xid: r.u32("xid")?,
        },
        b'C' => LogicalMessage::Commit {
            flags: r.u8("flags")?,
            commit_lsn: r.u64("commit LSN")?,
            end_lsn: r.u64("end LSN")?,
            commit_ts_micros: r.i64("commit timestamp")?,
        },
        b'O' => LogicalMessage::Origin {
            lsn: r.u64("origin LSN")?,
            name: r.cstr("origin name")?,
        },
        b'R' => LogicalMessage::Relation(r.relation()?),
        b'Y' => LogicalMessage::Type {
            oid: r.u32("type OID")?,
            namespace: r.cstr("namespace")?,
            name: r.cstr("type name")?,
        },
        b'I' => {
            let relation_id = r.u32("relation OID")?;
            r.expect_tag("new tuple tag", b'N')?;
            LogicalMessage::Insert {
                relation_id,
                new: r.tuple()?,
            }
        }
        b'U' => {
            let relation_id = r.u32("relation OID")?;
            let (offset, tag) = (r.pos, r.u8("tuple tag")?);
            let (old, old_is_full_row) = match tag {
                b'K' | b'O' => {
                    let old = r.tuple()?;
                    r.expect_tag("new tuple tag", b'N')?;
                    (Some(old), tag == b'O')
                }
                b'N' => (None, false),
                byte => {
                    return Err(DecodeError::UnexpectedByte {
                        message,
                        field: "tuple tag",
                        byte,
                        offset,
                    })
                }
            };
            LogicalMessage::Update {
                relation_id,
                old,
                old_is_full_row,
                new: r.tuple()?,
            }
        }
        b'D' => {
            let relation_id = r.u32("relation OID")?;
            let (offset, tag) = (r.pos, r.u8("old tuple tag")?);
            let old_is_full_row = match tag {
                b'K' => false,
                b'O' => true,
                byte => {
                    return Err(DecodeError::UnexpectedByte {
                        message,
                        field: "old tuple tag",
                        byte,
                        offset,
                    })
                }
            };
            LogicalMessage::Delete {
                relation_id,
                old: r.tuple()?,
                old_is_full_row,
            }
        }
        b'T' => {
            let count = r.count_i32("relation count")?;
            let options = r.u8("options")?;
            // Cap the preallocation by what the payload can hold: the count
            // is untrusted and could ask for gigabytes.
            let mut relation_ids = Vec::with_capacity(count.min(r.remaining() / 4));
            for _ in 0..count {
                relation_ids.push(r.u32("relation OID")?);
            }
            LogicalMessage::Truncate {
                options,
                relation_ids,
            }
        }
        b'M' => {
            let flags = r.u8("flags")?;
            let lsn = r.u64("message LSN")?;
            let prefix = r.cstr("prefix")?;
            let len = r.count_i32("content length")?;
            LogicalMessage::Message {
                transactional: flags & 1 != 0,
                lsn,
                prefix,
                content: r.bytes(len, "content")?.to_vec(),
            }
        }
        byte => return Err(DecodeError::UnknownType { byte }),
    };
    if r.remaining() != 0 {
        return Err(DecodeError::TrailingBytes {
            message,
            count: r.remaining(),
            offset: r.pos,
        });
    }
    Ok(decoded)
}

/// The name errors use for a message type byte, `None` for bytes that are
/// not pgoutput v1 message types.
fn message_name(kind: u8) -> Option<&'static str> {
    Some(match kind {
        b'B' => "Begin",
        b'C' => "Commit",
        b'O' => "Origin",
        b'R' => "Relation",
        b'Y' => "Type",
        b'I' => "Insert",
        b'U' => "Update",
        b'D' => "Delete",
        b'T' => "Truncate",
        b'M' => "Message",
        _ => return None,
    })
}

/// A cursor over one payload that reports every failure with the message
/// type and field it was reading.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    message: &'static str,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn bytes(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.remaining() < n {
            return Err(DecodeError::Truncated {
                message: self.message,
                field,
                offset: self.pos,
                needed: n,
                available: self.remaining(),
            });
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(N, field)?);
        Ok(out)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(field)?[0])
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array(field)?))
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    fn i32(&mut self, field: &'static str) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.array(field)?))
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array(field)?))
    }

    fn i64(&mut self, field: &'static str) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(self.array(field)?))
    }

    /// An Int32 count or length, which the protocol never sends negative.
    fn count_i32(&mut self, field: &'static str) -> Result<usize, DecodeError> {
        let offset = self.pos;
        let value = self.i32(field)?;
        usize::try_from(value).map_err(|_| DecodeError::NegativeLength {
            message: self.message,
            field,
            value: value.into(),
            offset,
        })
    }

    /// A NUL-terminated UTF-8 string (the server encoding is UTF-8; the
    /// source refuses other encodings before it gets here).
    fn cstr(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let offset = self.pos;
        let rest = &self.buf[self.pos..];
        let len = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or(DecodeError::Unterminated {
                message: self.message,
                field,
                offset,
            })?;
        let s = std::str::from_utf8(&rest[..len]).map_err(|_| DecodeError::BadUtf8 {
            message: self.message,
            field,
            offset,
        })?;
        self.pos += len + 1;
        Ok(s.to_owned())
    }

    fn expect_tag(&mut self, field: &'static str, want: u8) -> Result<(), DecodeError> {
        let offset = self.pos;
        match self.u8(field)? {
            b if b == want => Ok(()),
            byte => Err(DecodeError::UnexpectedByte {
                message: self.message,
                field,
                byte,
                offset,
            }),
        }
    }

    fn relation(&mut self) -> Result<Relation, DecodeError> {
        let id = self.u32("relation OID")?;
        let namespace = self.cstr("namespace")?;
        let name = self.cstr("relation name")?;
        let replica_identity = self.u8("replica identity")?;
        // Int16 on the wire, but a table has at most 1600 columns, so read
        // it unsigned rather than reject a count that is merely large.
        let ncols = self.u16("column count")?;
        let mut columns = Vec::with_capacity(usize::from(ncols).min(self.remaining() / 10));
        for _ in 0..ncols {
            let flags = self.u8("column flags")?;
            columns.push(RelationColumn {
                is_key: flags & 1 != 0,
                name: self.cstr("column name")?,
                type_oid: self.u32("column type OID")?,
                type_modifier: self.i32("column type modifier")?,
            });
        }
        Ok(Relation {
            id,
            namespace,
            name,
            replica_identity,
            columns,
        })
    }

    /// `TupleData`: an Int16 column count, then one tagged column each.
    fn tuple(&mut self) -> Result<Vec<TupleColumn>, DecodeError> {
        let ncols = self.u16("tuple column count")?;
        // Every column takes at least its tag byte.
        let mut cols = Vec::with_capacity(usize::from(ncols).min(self.remaining()));
        for _ in 0..ncols {
            let offset = self.pos;
            let col = match self.u8("column kind")? {
                b'n' => TupleColumn::Null,
                b'u' => TupleColumn::UnchangedToast,
                b't' => {
                    let len = self.count_i32("column length")?;
                    TupleColumn::Text(self.bytes(len, "column value")?.to_vec())
                }
                b'b' => {
                    let len = self.count_i32("column length")?;
                    TupleColumn::Binary(self.bytes(len, "column value")?.to_vec())
                }
                byte => {
                    return Err(DecodeError::UnexpectedByte {
                        message: self.message,
                        field: "column kind",
                        byte,
                        offset,
                    })
                }
            };
            cols.push(col);
        }
        Ok(cols)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Builds payloads field by field, in the wire layout of the docs.
    struct Buf(Vec<u8>);

    impl Buf {
        fn new(kind: u8) -> Self {
            Buf(vec![kind])
        }
        fn u8(mut self, v: u8) -> Self {
            self.0.push(v);
            self
        }
        fn i16(mut self, v: i16) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn i32(mut self, v: i32) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn u32(mut self, v: u32) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn u64(mut self, v: u64) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn i64(mut self, v: i64) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn s(mut self, v: &str) -> Self {
            self.0.extend_from_slice(v.as_bytes());
            self.0.push(0);
            self
        }
        fn raw(mut self, v: &[u8]) -> Self {
            self.0.extend_from_slice(v);
            self
        }
        fn text(self, v: &str) -> Self {
            self.u8(b't').i32(v.len() as i32).raw(v.as_bytes())
        }
    }

    fn text(v: &str) -> TupleColumn {
        TupleColumn::Text(v.as_bytes().to_vec())
    }

    #[test]
    fn begin() {
        let p = Buf::new(b'B')
            .u64(0x0000_0001_2345_6789)
            .i64(771_234_567_890_123)
            .u32(4_000_000_000)
            .0;
        assert_eq!(
            decode(&p).unwrap(),
            LogicalMessage::Begin {
                final_lsn: 0x0000_0001_2345_6789,
                commit_ts_micros: 771_234_567_890_123,
                xid: 4_000_000_000,
            }
        );
    }

    #[test]
    fn commit() {
        let p = Buf::new(b'C').u8(0).u64(100).u64(148).i64(-5).0;
        assert_eq!(
            decode(&p).unwrap(),
            LogicalMessage::Commit {
                flags: 0,
                commit_lsn: 100,
                end_lsn: 148,
                commit_ts_micros: -5,
            }
        );
    }

    #[test]
    fn origin() {
        let p = Buf::new(b'O').u64(7).s("node_a").0;
        assert_eq!(
            decode(&p).unwrap(),
            LogicalMessage::Origin {
                lsn: 7,
                name: "node_a".into()
            }
        );
    }

    #[test]
    fn relation() {
        let p = Buf::new(b'R')
            .u32(16384)
            .s("public")
            .s("Ünïcode tbl")
            .u8(b'd')
            .i16(2)
            .u8(1)
            .s("id")
            .u32(20)
            .i32(-1)
            .u8(0)
            .s("amount")
            .u32(1700)
            .i32((30 << 16 | 10) + 4)
            .0;
        assert_eq!(
            decode(&p).unwrap(),
            LogicalMessage::Relation(Relation {
                id: 16384,
                namespace: "public".into(),
                name: "Ünïcode tbl".into(),
                replica_identity: b'd',
                columns: vec![
                    RelationColumn {
                        is_key: true,
                        name: "id".into(),
                        type_oid: 20,
                        type_modifier: -1
                    },
                    RelationColumn {
                        is_key: false,
                        name: "amount".into(),
                        type_oid: 1700,
                        type_modifier: (30 << 16 | 10) + 4
                    },
                ],
            })
        );
    }

    #[test]
    fn relation_without_columns_and_pg_catalog_namespace() {
        let p = Buf::new(b'R').u32(1).s("").s("t").u8(b'n').i16(0).0;
        let LogicalMessage::Relation(r) = decode(&p).unwrap() else {
            panic!("not a relation")
        };
        assert_eq!(r.namespace, "");
        assert_eq!(r.replica_identity, b'n');
        assert!(r.columns.is_empty());
    }

    #[test]
    fn type_message() {
        let p = Buf::new(b'Y').u32(90_001).s("app").s("mood").0;
        assert_eq!(
            decode(&p).unwrap(),
            LogicalMessage::Type {
                oid: 90_001,
                namespace: "app".into(),
                name: "mood".into()
            }
        );
    }

    #[test]
    fn insert_with_every_column_kind() {
        let p = Buf::new(b'I')
            .u32(16384)
            .u8(b'N')
            .i16(5)
            .text("42")
            .u8(b'n')
            .u8(b'u')
            .u8(b'b')
            .i32(3)
            .raw(&[0, 0xff, 7])
            .text("")
            .0;
        assert_eq!(
            decode(&p).unwrap(),
            LogicalMessage::Insert {
                relation_id: 16384,
                new: vec![
                    text("42"),
                    TupleColumn::Null,
                    TupleColumn::UnchangedToast,
                    TupleColumn::Binary(vec![0, 0xff, 7]),
                    text(""),
                ],
            }
        );
    }

    #[test]
    fn text_column_keeps_raw_bytes() {
        // Column bytes are not checked for UTF-8 here: the text codec does
        // that with the type at hand.
        let p = Buf::new(b'I')
            .u32(1)
            .u8(b'N')
            .i16(1)
            .u8(b't')
            .i32(2)
            .raw(&[0xc3, 0x28])
            .0;
        let LogicalMessage::Insert { new, .. } = decode(&p).unwrap() else {
            panic!("not an insert")
        };
        assert_eq!(new, vec![TupleColumn::Text(vec![0xc3, 0x28])]);
    }

    #[test]
    fn update_without_old_tuple() {
        let p = Buf::new(b'U').u32(5).u8(b'N').i16(2).text("1").u8(b'u').0;
        assert_eq!(
            decode(&p).unwrap(),
            LogicalMessage::Update {
                relation_id: 5,
                old: None,
                old_is_full_row: false,
                new: vec![text("1"), TupleColumn::UnchangedToast],
            }
        );
    }

    #[test]
    fn update_with_key() {
        let p = Buf::new(b'U')
            .u32(5)
            .u8(b'K')
            .i16(2)
            .text("1")
            .u8(b'n')
            .u8(b'N')
            .i16(2)
            .text("2")
            .text("x")
            .0;
        assert_eq!(
            decode(&p).unwrap(),
            LogicalMessage::Update {
                relation_id: 5,
                old: Some(vec![text("1"), TupleColumn::Null]),
                old_is_full_row: false,
                new: vec![text("2"), text("x")],
            }
        );
    }

    #[test]
    fn update_with_full_old_row() {
        let p = Buf::new(b'U')
            .u32(5)
            .u8(b'O')
            .i16(1)
            .text("a")
            .u8(b'N')
            .i16(1)
            .text("b")
            .0;
        assert_eq!(
            decode(&p).unwrap(),
            LogicalMessage::Update {
                relation_id: 5,
                old: Some(vec![text("a")]),
                old_is_full_row: true,
                new: vec![text("b")],
            }
        );
    }

    #[test]
    fn update_missing_new_tuple_tag() {
        let p = Buf::new(b'U').u32(5).u8(b'K').i16(1).text("a").u8(b'X').0;
        assert_eq!(
            decode(&p).unwrap_err(),
            DecodeError::UnexpectedByte {
                message: "Update",
                field: "new tuple tag",
                byte: b'X',
                offset: 14,
            }
        );
    }

    #[test]
    fn delete_key_and_full() {
        for (tag, full) in [(b'K', false), (b'O', true)] {
            let p = Buf::new(b'D').u32(9).u8(tag).i16(1).text("7").0;
            assert_eq!(
                decode(&p).unwrap(),
                LogicalMessage::Delete {
                    relation_id: 9,
                    old: vec![text("7")],
                    old_is_full_row: full,
                }
            );
        }
        let p = Buf::new(b'D').u32(9).u8(b'N').i16(0).0;
        assert!(matches!(
            decode(&p),
            Err(DecodeError::UnexpectedByte {
                message: "Delete",
                byte: b'N',
                ..
            })
        ));
    }

    #[test]
    fn truncate() {
        let p = Buf::new(b'T').i32(3).u8(3).u32(1).u32(2).u32(0xffff_fff0).0;
        assert_eq!(
            decode(&p).unwrap(),
            LogicalMessage::Truncate {
                options: 3,
                relation_ids: vec![1, 2, 0xffff_fff0],
            }
        );
    }

    #[test]
    fn truncate_huge_count_is_an_error_not_an_allocation() {
        let p = Buf::new(b'T').i32(i32::MAX).u8(0).u32(1).0;
        assert!(matches!(
            decode(&p),
            Err(DecodeError::Truncated {
                message: "Truncate",
                field: "relation OID",
                ..
            })
        ));
        let p = Buf::new(b'T').i32(-1).u8(0).0;
        assert!(matches!(
            decode(&p),
            Err(DecodeError::NegativeLength { value: -1, .. })
        ));
    }

    #[test]
    fn message() {
        let p = Buf::new(b'M')
            .u8(1)
            .u64(0xAB)
            .s("ferry")
            .i32(3)
            .raw(&[0, 1, 2])
            .0;
        assert_eq!(
            decode(&p).unwrap(),
            LogicalMessage::Message {
                transactional: true,
                lsn: 0xAB,
                prefix: "ferry".into(),
                content: vec![0, 1, 2],
            }
        );
        let p = Buf::new(b'M').u8(0).u64(1).s("").i32(0).0;
        assert_eq!(
            decode(&p).unwrap(),
            LogicalMessage::Message {
                transactional: false,
                lsn: 1,
                prefix: String::new(),
                content: vec![],
            }
        );
    }

    #[test]
    fn empty_and_unknown() {
        assert_eq!(decode(&[]).unwrap_err(), DecodeError::Empty);
        for byte in [b'S', b'E', b'c', b'A', b'Z', 0] {
            assert_eq!(
                decode(&[byte, 0, 0]).unwrap_err(),
                DecodeError::UnknownType { byte }
            );
        }
        let msg = DecodeError::UnknownType { byte: b'S' }.to_string();
        assert!(msg.contains("0x53"), "{msg}");
    }

    #[test]
    fn every_truncation_of_valid_messages_is_an_error() {
        let valid = [
            Buf::new(b'B').u64(1).i64(2).u32(3).0,
            Buf::new(b'C').u8(0).u64(1).u64(2).i64(3).0,
            Buf::new(b'O').u64(1).s("o").0,
            Buf::new(b'R')
                .u32(1)
                .s("s")
                .s("t")
                .u8(b'f')
                .i16(1)
                .u8(1)
                .s("c")
                .u32(23)
                .i32(-1)
                .0,
            Buf::new(b'Y').u32(1).s("s").s("t").0,
            Buf::new(b'I').u32(1).u8(b'N').i16(2).text("ab").u8(b'n').0,
            Buf::new(b'U')
                .u32(1)
                .u8(b'O')
                .i16(1)
                .text("a")
                .u8(b'N')
                .i16(1)
                .text("b")
                .0,
            Buf::new(b'D').u32(1).u8(b'K').i16(1).text("a").0,
            Buf::new(b'T').i32(2).u8(0).u32(1).u32(2).0,
            Buf::new(b'M').u8(1).u64(1).s("p").i32(1).raw(b"x").0,
        ];
        for p in valid {
            decode(&p).unwrap();
            for cut in 0..p.len() {
                assert!(
                    decode(&p[..cut]).is_err(),
                    "prefix of {} bytes of {:?} decoded",
                    cut,
                    p
                );
            }
            let mut longer = p.clone();
            longer.push(0);
            assert!(matches!(
                decode(&longer),
                Err(DecodeError::TrailingBytes { count: 1, .. })
            ));
        }
    }

    #[test]
    fn truncated_error_says_where() {
        let p = Buf::new(b'B').u64(1).u32(2).0;
        let err = decode(&p).unwrap_err();
        assert_eq!(
            err,
            DecodeError::Truncated {
                message: "Begin",
                field: "commit timestamp",
                offset: 9,
                needed: 8,
                available: 4,
            }
        );
        assert_eq!(
            err.to_string(),
            "Begin message truncated: commit timestamp at offset 9 needs 8 bytes, 4 left"
        );
    }

    #[test]
    fn string_errors() {
        let p = Buf::new(b'O').u64(1).raw(b"no nul").0;
        assert!(matches!(
            decode(&p),
            Err(DecodeError::Unterminated {
                message: "Origin",
                field: "origin name",
                offset: 9
            })
        ));
        let p = Buf::new(b'Y').u32(1).raw(&[0xff, 0xfe, 0]).s("t").0;
        assert!(matches!(
            decode(&p),
            Err(DecodeError::BadUtf8 {
                message: "Type",
                field: "namespace",
                ..
            })
        ));
    }

    #[test]
    fn bad_column_kind_and_length() {
        let p = Buf::new(b'I').u32(1).u8(b'N').i16(1).u8(b'x').0;
        assert!(matches!(
            decode(&p),
            Err(DecodeError::UnexpectedByte {
                field: "column kind",
                byte: b'x',
                offset: 8,
                ..
            })
        ));
        let p = Buf::new(b'I').u32(1).u8(b'N').i16(1).u8(b't').i32(-1).0;
        assert!(matches!(
            decode(&p),
            Err(DecodeError::NegativeLength {
                field: "column length",
                ..
            })
        ));
        let p = Buf::new(b'I')
            .u32(1)
            .u8(b'N')
            .i16(1)
            .u8(b't')
            .i32(10)
            .raw(b"abc")
            .0;
        assert!(matches!(
            decode(&p),
            Err(DecodeError::Truncated {
                field: "column value",
                needed: 10,
                available: 3,
                ..
            })
        ));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(p in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(&p);
        }

        /// Random bodies behind a valid type byte reach far deeper into the
        /// decoders than fully random payloads.
        #[test]
        fn arbitrary_bodies_never_panic(
            kind in proptest::sample::select(b"BCORYIUDTM".to_vec()),
            body in proptest::collection::vec(any::<u8>(), 0..512),
        ) {
            let mut p = vec![kind];
            p.extend(body);
            let _ = decode(&p);
        }

        /// Mostly-small bytes make small counts and lengths, and tags such
        /// as `t`, `n`, `N`, `K` are then far likelier than at random.
        #[test]
        fn structured_noise_never_panics(
            kind in proptest::sample::select(b"RIUDT".to_vec()),
            body in proptest::collection::vec(
                prop_oneof![Just(0u8), Just(1u8), Just(2u8), proptest::sample::select(b"tnubNKO".to_vec()), any::<u8>()],
                0..256,
            ),
        ) {
            let mut p = vec![kind];
            p.extend(body);
            let _ = decode(&p);
        }
    }
}
