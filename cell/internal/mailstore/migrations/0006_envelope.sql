-- The raw header fields an IMAP ENVELOPE is made of (Date, Subject, From,
-- Sender, Reply-To, To, Cc, Bcc, In-Reply-To, Message-ID), kept at
-- delivery so that FETCH ENVELOPE reads the row, not the message's blob.
-- NULL for messages stored before, or whose fields are too large: readers
-- then go to the blob.
ALTER TABLE messages ADD COLUMN envelope_header bytea;
