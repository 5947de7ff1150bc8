-- The source's replication user and the demo tables (compose.yaml).
CREATE ROLE ferry WITH LOGIN REPLICATION PASSWORD 'ferry';
CREATE TYPE mood AS ENUM ('ok', 'late', 'disputed');
CREATE TABLE accounts (
    id bigint PRIMARY KEY, owner text NOT NULL, balance numeric(38, 10) NOT NULL,
    tags text[], meta jsonb, mood mood, updated_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE transfers (
    id bigint PRIMARY KEY, from_id bigint NOT NULL, to_id bigint NOT NULL,
    amount numeric(38, 10) NOT NULL, note text, created_at timestamptz NOT NULL DEFAULT now());
GRANT SELECT ON ALL TABLES IN SCHEMA public TO ferry;
-- Ferry creates the publication when it may; as the owner of the tables is
-- postgres here, create it up front.
CREATE PUBLICATION ferry FOR TABLE accounts, transfers;
