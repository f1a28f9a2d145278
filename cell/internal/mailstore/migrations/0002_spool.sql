-- The inbound spool: one row per accepted recipient, committed (with the
-- message blob fsync'd) before the cell answers 250 (DESIGN.md §4).
CREATE TABLE spool (
    id              uuid        NOT NULL,
    account_id      uuid        NOT NULL,
    mail_from       text        NOT NULL,
    rcpt            text        NOT NULL,
    blob_ref        text        NOT NULL,
    -- Envelope and body hash: a retried delivery is recognised by it.
    delivery_key    text        NOT NULL,
    state           smallint    NOT NULL DEFAULT 0,
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error      text        NOT NULL DEFAULT '',
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY ({{pk "id"}})
);
CREATE UNIQUE INDEX spool_key ON spool (delivery_key);
CREATE INDEX spool_due ON spool (state, next_attempt_at);
