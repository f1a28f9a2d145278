-- Labels (and IMAP keywords, stored as labels) are charged to the
-- account's quota and their number per account is bounded (mail.Max*
-- constants; issue 13 found 5,000 labels of 200 bytes on 20 messages grew
-- the database by 21.5 MB, uncharged). One trigger on messages does it for
-- every path that writes labels — flag changes, deliveries with filter
-- labels, IMAP COPY, expunges — so none can forget it:
--   - used_bytes moves by the change in the message's label bytes; a rise
--     past the quota raises CM003 (over quota, as insert_message does);
--   - account_labels records each label the account uses; a flag change
--     (UPDATE) that would take it past 1000 distinct labels raises CM006
--     (a delivery or a copy only records: the store bounds filter labels,
--     and a delivery must not fail for a label). Labels no message uses
--     any more are collected by the store when the bound is reached.

CREATE TABLE IF NOT EXISTS account_labels (
    account_id uuid NOT NULL,
    label      text NOT NULL,
    PRIMARY KEY ({{pk "account_id"}}, label)
);

CREATE OR REPLACE FUNCTION label_bytes(p_labels text[]) RETURNS bigint
LANGUAGE sql IMMUTABLE AS $$
    SELECT coalesce(sum(octet_length(l)), 0)::bigint FROM unnest(p_labels) AS l
$$;

CREATE OR REPLACE FUNCTION messages_labels_charge() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v_delta bigint;
    v_quota bigint;
    v_used  bigint;
    v_n     bigint;
BEGIN
    IF TG_OP = 'DELETE' THEN
        UPDATE accounts a SET used_bytes = greatest(a.used_bytes - label_bytes(OLD.labels), 0) WHERE a.id = OLD.account_id;
        RETURN OLD;
    END IF;
    v_delta := label_bytes(NEW.labels);
    IF TG_OP = 'UPDATE' THEN
        v_delta := v_delta - label_bytes(OLD.labels);
    END IF;
    IF v_delta > 0 THEN
        UPDATE accounts a SET used_bytes = a.used_bytes + v_delta
            WHERE a.id = NEW.account_id AND (a.quota_bytes <= 0 OR a.used_bytes + v_delta <= a.quota_bytes);
        IF NOT FOUND THEN
            SELECT a.quota_bytes, a.used_bytes INTO v_quota, v_used FROM accounts a WHERE a.id = NEW.account_id;
            IF FOUND THEN
                RAISE EXCEPTION 'over quota' USING ERRCODE = 'CM003', DETAIL = v_quota || ' ' || v_used;
            END IF;
        END IF;
    ELSIF v_delta < 0 THEN
        UPDATE accounts a SET used_bytes = greatest(a.used_bytes + v_delta, 0) WHERE a.id = NEW.account_id;
    END IF;
    IF cardinality(NEW.labels) > 0 THEN
        INSERT INTO account_labels (account_id, label)
            SELECT NEW.account_id, l FROM unnest(NEW.labels) AS l
            ON CONFLICT DO NOTHING;
        IF FOUND AND TG_OP = 'UPDATE' THEN
            SELECT count(*) INTO v_n FROM account_labels al WHERE al.account_id = NEW.account_id;
            IF v_n > 1000 THEN
                RAISE EXCEPTION 'too many labels' USING ERRCODE = 'CM006', DETAIL = '1000';
            END IF;
        END IF;
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER messages_labels_insert AFTER INSERT ON messages
    FOR EACH ROW WHEN (cardinality(NEW.labels) > 0) EXECUTE FUNCTION messages_labels_charge();
CREATE TRIGGER messages_labels_update AFTER UPDATE OF labels ON messages
    FOR EACH ROW WHEN (OLD.labels IS DISTINCT FROM NEW.labels) EXECUTE FUNCTION messages_labels_charge();
CREATE TRIGGER messages_labels_delete AFTER DELETE ON messages
    FOR EACH ROW WHEN (cardinality(OLD.labels) > 0) EXECUTE FUNCTION messages_labels_charge();

-- What is stored already: charged once, and recorded.
UPDATE accounts a SET used_bytes = a.used_bytes + s.bytes
    FROM (SELECT account_id, sum(label_bytes(labels)) AS bytes FROM messages
          WHERE cardinality(labels) > 0 GROUP BY account_id) AS s
    WHERE a.id = s.account_id;
INSERT INTO account_labels (account_id, label)
    SELECT DISTINCT account_id, l FROM messages, unnest(labels) AS l
    ON CONFLICT DO NOTHING;
