-- cellmail cell schema, version 1. Valid on PostgreSQL and YugabyteDB:
-- The pk template function makes the first primary-key column a hash
-- shard key on YugabyteDB ("(account_id) HASH") and leaves it plain on
-- PostgreSQL.

CREATE TABLE accounts (
    id            uuid        NOT NULL,
    address       text        NOT NULL,
    domain        text        NOT NULL,
    placement_key text        NOT NULL,
    jurisdiction  text        NOT NULL,
    -- The 56-bit hash of the placement key: the control plane counts a
    -- range's subjects with it.
    key_hash      bigint      NOT NULL,
    display_name  text        NOT NULL DEFAULT '',
    password_hash text        NOT NULL,
    quota_bytes   bigint      NOT NULL,
    used_bytes    bigint      NOT NULL DEFAULT 0,
    -- Last modseq of the account's change journal.
    modseq        bigint      NOT NULL DEFAULT 0,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY ({{pk "id"}})
);
CREATE UNIQUE INDEX accounts_address ON accounts (address);
CREATE INDEX accounts_key_hash ON accounts (jurisdiction, key_hash);
CREATE INDEX accounts_placement_key ON accounts (placement_key);
CREATE INDEX accounts_domain ON accounts (domain);

CREATE TABLE mailboxes (
    account_id     uuid     NOT NULL,
    id             uuid     NOT NULL,
    name           text     NOT NULL,
    special_use    smallint NOT NULL DEFAULT 0,
    uidvalidity    bigint   NOT NULL,
    uidnext        bigint   NOT NULL DEFAULT 1,
    highest_modseq bigint   NOT NULL DEFAULT 0,
    total          integer  NOT NULL DEFAULT 0,
    unread         integer  NOT NULL DEFAULT 0,
    PRIMARY KEY ({{pk "account_id"}}, id)
);
CREATE UNIQUE INDEX mailboxes_name ON mailboxes (account_id, name);

CREATE TABLE messages (
    account_id        uuid        NOT NULL,
    id                uuid        NOT NULL,
    mailbox_id        uuid        NOT NULL,
    uid               bigint      NOT NULL,
    modseq            bigint      NOT NULL,
    seen              boolean     NOT NULL DEFAULT false,
    flagged           boolean     NOT NULL DEFAULT false,
    answered          boolean     NOT NULL DEFAULT false,
    draft             boolean     NOT NULL DEFAULT false,
    labels            text[]      NOT NULL DEFAULT '{}',
    received_at       timestamptz NOT NULL,
    sent_at           timestamptz,
    size              bigint      NOT NULL,
    subject           text        NOT NULL DEFAULT '',
    from_addr         jsonb       NOT NULL DEFAULT '{}',
    to_addrs          jsonb       NOT NULL DEFAULT '[]',
    message_id_header text        NOT NULL DEFAULT '',
    thread_id         uuid        NOT NULL,
    snippet           text        NOT NULL DEFAULT '',
    has_attachments   boolean     NOT NULL DEFAULT false,
    blob_ref          text        NOT NULL,
    -- Idempotency key of the delivery or send that made the message.
    delivery_key      text,
    PRIMARY KEY ({{pk "account_id"}}, id)
);
CREATE UNIQUE INDEX messages_uid ON messages (account_id, mailbox_id, uid);
CREATE INDEX messages_msgid ON messages (account_id, message_id_header);
CREATE UNIQUE INDEX messages_delivery ON messages (account_id, mailbox_id, delivery_key);
CREATE INDEX messages_blob ON messages (blob_ref);

CREATE TABLE attachments (
    account_id   uuid   NOT NULL,
    message_id   uuid   NOT NULL,
    part_id      text   NOT NULL,
    filename     text   NOT NULL DEFAULT '',
    content_type text   NOT NULL DEFAULT '',
    size         bigint NOT NULL DEFAULT 0,
    content_id   text   NOT NULL DEFAULT '',
    -- The decoded content, stored once per cell by its hash.
    blob_ref     text   NOT NULL DEFAULT '',
    PRIMARY KEY ({{pk "account_id"}}, message_id, part_id)
);
CREATE INDEX attachments_blob ON attachments (blob_ref);

-- The per-account change journal, in modseq order: it feeds GetChanges,
-- IMAP CONDSTORE/QRESYNC and user moves.
CREATE TABLE changes (
    account_id uuid        NOT NULL,
    modseq     bigint      NOT NULL,
    kind       text        NOT NULL,
    mailbox_id uuid,
    message_id uuid,
    uid        bigint,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY ({{pk "account_id"}}, modseq)
);

-- Sessions: only a hash of each token is stored.
CREATE TABLE sessions (
    token_hash bytea       NOT NULL,
    account_id uuid        NOT NULL,
    kind       smallint    NOT NULL,
    family     uuid        NOT NULL,
    expires_at timestamptz NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY ({{pk "token_hash"}})
);
CREATE INDEX sessions_account ON sessions (account_id);
CREATE INDEX sessions_family ON sessions (family);
