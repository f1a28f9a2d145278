-- Each message's bytes are stored once (DESIGN.md §4): the header fields a
-- cell adds when it files a message (Authentication-Results, the spam
-- verdict) are kept in the row as its prefix, and blob_ref is the message
-- as it was accepted — the spool's own blob, shared by every recipient's
-- copy and by the sender's Sent copy — instead of a second, whole blob per
-- mailbox. A stored message reads as prefix || blob (blobstore.OpenMessage).
-- Attachments are read from the message itself: new rows of attachments
-- have an empty blob_ref (older rows keep their decoded blobs).
ALTER TABLE messages ADD COLUMN prefix bytea;

DROP FUNCTION insert_message(uuid, uuid, uuid, uuid, text, boolean, boolean, boolean, boolean, boolean,
    text[], timestamptz, timestamptz, bigint, text, jsonb, jsonb, text, text[], uuid, text, boolean, text, bytea,
    text[], text[], text[], bigint[], text[], text[], text[], bytea[]);

CREATE FUNCTION insert_message(
    p_account uuid, p_mailbox uuid, p_id uuid, p_spool uuid, p_key text,
    p_seen boolean, p_flagged boolean, p_answered boolean, p_draft boolean, p_deleted boolean,
    p_labels text[], p_received timestamptz, p_sent timestamptz, p_size bigint,
    p_subject text, p_from jsonb, p_to jsonb, p_msgid text, p_refs text[], p_new_thread uuid,
    p_snippet text, p_has_attachments boolean, p_blob_ref text, p_envelope bytea,
    p_att_part text[], p_att_filename text[], p_att_type text[], p_att_size bigint[], p_att_cid text[], p_att_ref text[],
    p_inline_ref text[], p_inline_data bytea[], p_prefix bytea)
RETURNS TABLE (outcome text, message_id uuid, uid bigint, modseq bigint, thread_id uuid)
LANGUAGE plpgsql AS $$
DECLARE
    v_state  smallint;
    v_modseq bigint;
    v_uid    bigint;
    v_thread uuid;
    v_quota  bigint;
    v_used   bigint;
BEGIN
    IF p_spool IS NOT NULL THEN
        -- Locks the spool row: a second worker with the same entry waits
        -- here, then finds it delivered. By id alone (see the top).
        SELECT s.state INTO v_state FROM spool s WHERE s.id = p_spool FOR UPDATE;
        IF v_state IS DISTINCT FROM 0 THEN
            RAISE EXCEPTION 'spool entry % already delivered', p_spool USING ERRCODE = 'CM004';
        END IF;
        UPDATE spool s SET state = 1, attempts = s.attempts + 1, body = NULL WHERE s.id = p_spool;
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
        has_attachments, blob_ref, delivery_key, deleted, envelope_header, prefix)
        VALUES (p_account, p_id, p_mailbox, v_uid, v_modseq, p_seen, p_flagged, p_answered, p_draft, p_labels,
        p_received, p_sent, p_size, p_subject, p_from, p_to, p_msgid, v_thread, p_snippet,
        p_has_attachments, p_blob_ref, p_key, p_deleted, p_envelope, p_prefix)
        ON CONFLICT (account_id, mailbox_id, delivery_key) DO NOTHING;
    IF NOT FOUND THEN
        -- Delivered before under this key: undo all (the caller finds the
        -- first message and closes the spool entry).
        RAISE EXCEPTION 'delivery key already used in the mailbox' USING ERRCODE = 'CM005';
    END IF;
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
