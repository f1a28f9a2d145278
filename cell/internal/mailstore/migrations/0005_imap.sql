-- IMAP (RFC 9051): the \Deleted flag, subscriptions, and an index that lets
-- a selected mailbox read its part of the journal (CONDSTORE/QRESYNC and
-- the updates of an IMAP session) without scanning the account's.
ALTER TABLE messages ADD COLUMN deleted boolean NOT NULL DEFAULT false;
ALTER TABLE mailboxes ADD COLUMN subscribed boolean NOT NULL DEFAULT true;
CREATE INDEX changes_mailbox ON changes (account_id, mailbox_id, modseq);
-- The last UIDVALIDITY given to a mailbox of the account: a mailbox made
-- again under a deleted one's name never gets the same UIDVALIDITY, so its
-- UIDs are never mistaken for the old ones' (RFC 9051 §2.3.1.1).
ALTER TABLE accounts ADD COLUMN uidvalidity_last bigint NOT NULL DEFAULT 0;
