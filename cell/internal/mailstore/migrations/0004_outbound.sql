-- Outbound mail (DESIGN.md §4): one row per remote recipient of a message a
-- user sent, committed before the send is reported; sender workers deliver
-- it by MX with retries, then mark it delivered or bounced (a DSN is filed
-- in the sender's INBOX).
CREATE TABLE outbound (
    id              uuid        NOT NULL,
    account_id      uuid        NOT NULL,
    mail_from       text        NOT NULL,
    rcpt            text        NOT NULL,
    domain          text        NOT NULL,
    -- The message as sent (small) or its blob.
    body            bytea,
    blob_ref        text        NOT NULL DEFAULT '',
    state           smallint    NOT NULL DEFAULT 0,
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz NOT NULL,
    last_error      text        NOT NULL DEFAULT '',
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY ({{pk "id"}})
);
CREATE INDEX outbound_due ON outbound (state, next_attempt_at);

-- DKIM keys this cell signs with, one per sending domain (RFC 6376).
CREATE TABLE dkim_keys (
    domain      text        NOT NULL,
    selector    text        NOT NULL,
    private_key bytea       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY ({{pk "domain"}})
);
