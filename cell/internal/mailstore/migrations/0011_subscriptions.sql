-- IMAP subscriptions (RFC 9051 §6.3.7) are kept by name, apart from the
-- mailboxes: a subscription outlives its mailbox's DELETE (RFC 3501 §6.3.6:
-- the server must not remove it unilaterally) and LIST (SUBSCRIBED) shows
-- it \NonExistent (RFC 5258 §3.1). A RENAME takes the subscriptions of
-- the mailboxes it renames along.
CREATE TABLE subscriptions (
    account_id uuid NOT NULL,
    name       text NOT NULL,
    PRIMARY KEY ({{pk "account_id"}}, name)
);
INSERT INTO subscriptions (account_id, name) SELECT account_id, name FROM mailboxes WHERE subscribed;
ALTER TABLE mailboxes DROP COLUMN subscribed;
