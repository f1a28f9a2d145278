-- IMAP \Recent (RFC 3501 §2.3.2): the highest UID of the mailbox some
-- session has been the first to be told of. A SELECT, and a selected
-- session told of new messages, move it up and hold as \Recent the UIDs
-- it passed over: each message is \Recent in one session only. Existing
-- messages are not recent.
ALTER TABLE mailboxes ADD COLUMN recent_uid bigint NOT NULL DEFAULT 0;
UPDATE mailboxes SET recent_uid = uidnext - 1;
-- The keywords in use in a mailbox (IMAP FLAGS and PERMANENTFLAGS,
-- RFC 3501 §7.2.6) are read from its messages that have labels.
CREATE INDEX messages_labelled ON messages (account_id, mailbox_id) WHERE labels <> '{}';
