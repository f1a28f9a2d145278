-- Delivery in one round trip, and small blobs kept in the metadata store.
--
-- inline_blobs holds the content of small messages and attachments
-- (delivery.InlineMax), content-addressed like the blob store (the ref is
-- the hex SHA-256 of data), written in the same transaction as the message
-- that refers to it: a delivery then costs no file and no fsync of its own,
-- only its share of the database's group commit. Readers find a ref here
-- when the blob store does not have it (blobstore.Tiered). Unreferenced
-- rows are deleted by Store.CollectInline, under the blob store's rule:
-- a reference is committed with, or after, a refresh of created_at.
CREATE TABLE inline_blobs (
    ref        text        NOT NULL,
    data       bytea       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY ({{pk "ref"}})
);
CREATE INDEX inline_blobs_created ON inline_blobs (created_at);

-- insert_message stores one message the way Store.InsertMessage did in
-- seven round trips, in one (DESIGN.md §4: one transaction, idempotent on
-- the spool id and the delivery key). Errors roll everything back and
-- carry SQLSTATEs the store translates:
--   CM001 no such account, CM002 no such mailbox, CM003 over quota
--   (DETAIL "quota used"), CM004 spool entry already delivered.
-- A delivery key already used in the mailbox returns outcome 'duplicate'
-- and the earlier message's id, changing nothing but the spool entry.
CREATE FUNCTION insert_message(
    p_account uuid, p_mailbox uuid, p_id uuid, p_spool uuid, p_key text,
    p_seen boolean, p_flagged boolean, p_answered boolean, p_draft boolean, p_deleted boolean,
    p_labels text[], p_received timestamptz, p_sent timestamptz, p_size bigint,
    p_subject text, p_from jsonb, p_to jsonb, p_msgid text, p_refs text[], p_new_thread uuid,
    p_snippet text, p_has_attachments boolean, p_blob_ref text, p_envelope bytea,
    p_att_part text[], p_att_filename text[], p_att_type text[], p_att_size bigint[], p_att_cid text[], p_att_ref text[],
    p_inline_ref text[], p_inline_data bytea[])
RETURNS TABLE (outcome text, message_id uuid, uid bigint, modseq bigint, thread_id uuid)
LANGUAGE plpgsql AS $$
DECLARE
    v_id     uuid;
    v_modseq bigint;
    v_uid    bigint;
    v_thread uuid;
    v_quota  bigint;
    v_used   bigint;
BEGIN
    IF p_spool IS NOT NULL THEN
        -- Locks the spool row: a second worker with the same entry waits
        -- here, then finds it delivered.
        UPDATE spool SET state = 1, attempts = attempts + 1, body = NULL WHERE id = p_spool AND state = 0;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'spool entry % already delivered', p_spool USING ERRCODE = 'CM004';
        END IF;
    END IF;
    IF p_key IS NOT NULL THEN
        SELECT m.id INTO v_id FROM messages m
            WHERE m.account_id = p_account AND m.mailbox_id = p_mailbox AND m.delivery_key = p_key;
        IF FOUND THEN
            RETURN QUERY SELECT 'duplicate'::text, v_id, 0::bigint, 0::bigint, NULL::uuid;
            RETURN;
        END IF;
    END IF;
    -- Quota check, journal position and usage in one statement (the
    -- account row locked until commit).
    UPDATE accounts a SET modseq = a.modseq + 1, used_bytes = a.used_bytes + p_size
        WHERE a.id = p_account AND (a.quota_bytes <= 0 OR a.used_bytes + p_size <= a.quota_bytes)
        RETURNING a.modseq INTO v_modseq;
    IF NOT FOUND THEN
        SELECT a.quota_bytes, a.used_bytes INTO v_quota, v_used FROM accounts a WHERE a.id = p_account;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'no such account' USING ERRCODE = 'CM001';
        END IF;
        RAISE EXCEPTION 'over quota' USING ERRCODE = 'CM003', DETAIL = v_quota || ' ' || v_used;
    END IF;
    UPDATE mailboxes b SET uidnext = b.uidnext + 1, highest_modseq = v_modseq, total = b.total + 1,
        unread = b.unread + CASE WHEN p_seen THEN 0 ELSE 1 END
        WHERE b.account_id = p_account AND b.id = p_mailbox
        RETURNING b.uidnext - 1 INTO v_uid;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no such mailbox' USING ERRCODE = 'CM002';
    END IF;
    IF cardinality(p_refs) > 0 THEN
        SELECT m.thread_id INTO v_thread FROM messages m
            WHERE m.account_id = p_account AND m.message_id_header = ANY(p_refs)
            ORDER BY m.received_at LIMIT 1;
    END IF;
    v_thread := COALESCE(v_thread, p_new_thread);
    IF cardinality(p_inline_ref) > 0 THEN
        -- Written, or refreshed against a concurrent collection, with the
        -- reference (the blob store's rule).
        INSERT INTO inline_blobs AS i (ref, data)
            SELECT r, d FROM unnest(p_inline_ref, p_inline_data) AS u(r, d)
            ON CONFLICT (ref) DO UPDATE SET created_at = now();
    END IF;
    INSERT INTO messages (account_id, id, mailbox_id, uid, modseq, seen, flagged, answered, draft, labels,
        received_at, sent_at, size, subject, from_addr, to_addrs, message_id_header, thread_id, snippet,
        has_attachments, blob_ref, delivery_key, deleted, envelope_header)
        VALUES (p_account, p_id, p_mailbox, v_uid, v_modseq, p_seen, p_flagged, p_answered, p_draft, p_labels,
        p_received, p_sent, p_size, p_subject, p_from, p_to, p_msgid, v_thread, p_snippet,
        p_has_attachments, p_blob_ref, p_key, p_deleted, p_envelope);
    IF cardinality(p_att_part) > 0 THEN
        INSERT INTO attachments (account_id, message_id, part_id, filename, content_type, size, content_id, blob_ref)
            SELECT p_account, p_id, u.part, u.filename, u.ctype, u.size, u.cid, u.ref
            FROM unnest(p_att_part, p_att_filename, p_att_type, p_att_size, p_att_cid, p_att_ref)
                AS u(part, filename, ctype, size, cid, ref);
    END IF;
    INSERT INTO changes (account_id, modseq, kind, mailbox_id, message_id, uid)
        VALUES (p_account, v_modseq, 'message_added', p_mailbox, p_id, v_uid);
    RETURN QUERY SELECT 'inserted'::text, p_id, v_uid, v_modseq, v_thread;
END
$$;
