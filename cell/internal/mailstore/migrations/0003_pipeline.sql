-- The inbound pipeline (DESIGN.md §4): spool rows are relayed to the
-- `inbound` topic (outbox); enqueued_at tells the relay which rows it has
-- sent and lets the sweeper re-send those that stalled. A blob a spool row
-- names is kept by the blob collector until the row is gone.
ALTER TABLE spool ADD COLUMN enqueued_at timestamptz;
ALTER TABLE spool ADD COLUMN closed_reason text NOT NULL DEFAULT '';
-- A small message is kept in its spool row (blob_ref empty), so accepting
-- it is one database commit (group commit: one WAL flush for many), with
-- no file fsync; the pipeline stores its blob. Cleared once delivered.
ALTER TABLE spool ADD COLUMN body bytea;
CREATE INDEX spool_blob ON spool (blob_ref);

-- A user's filter rules, applied in position order to each inbound message.
CREATE TABLE filters (
    account_id  uuid     NOT NULL,
    id          uuid     NOT NULL,
    position    integer  NOT NULL,
    -- Condition: a field (from, to, subject, header:<Name>) contains a value
    -- (case-insensitive).
    field       text     NOT NULL,
    contains    text     NOT NULL,
    -- Actions: file into a mailbox (empty: leave it), mark read, flag,
    -- add labels, and whether later rules still run.
    mailbox_id  uuid,
    mark_seen   boolean  NOT NULL DEFAULT false,
    flag        boolean  NOT NULL DEFAULT false,
    labels      text[]   NOT NULL DEFAULT '{}',
    stop        boolean  NOT NULL DEFAULT true,
    PRIMARY KEY ({{pk "account_id"}}, id)
);
