package imapd

import (
	"context"
	"math"
	"slices"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"

	"github.com/cellmail/cellmail/cell/internal/mail"
)

// enabled reports whether the client has enabled an extension, explicitly
// (ENABLE) or by using it (CONDSTORE, RFC 7162 §3.1).
func (se *session) enabled(c imap.Cap) bool {
	return se.conn.EnabledCaps().Has(c)
}

// SelectResync brings a QRESYNC client up to date on SELECT (RFC 7162
// §3.2.5.2): VANISHED (EARLIER) with the UIDs expunged since the client's
// mod-sequence, among those it knows, then FETCH (UID FLAGS MODSEQ) for
// every message in the mailbox changed or added since. The journal keeps
// every removal, so the sequence match data is not needed to narrow the
// answer and is ignored.
func (se *session) SelectResync(w *imapserver.FetchWriter, q *imap.SelectQResync) error {
	ctx, cancel := se.op()
	defer cancel()
	s := se.sel
	if s == nil || q.ModSeq >= s.modseq {
		return nil
	}
	changed := map[uint32]bool{}
	var vanished imap.UIDSet
	since := q.ModSeq
scan:
	for {
		changes, pos, err := se.srv.cfg.Store.MailboxChanges(ctx, se.acct.ID, s.box.ID, since, pollBatch)
		if err != nil {
			return se.toIMAPError("select", err)
		}
		for _, c := range changes {
			if c.Modseq > s.modseq {
				break scan // after the view: the next poll tells it
			}
			if c.UID == 0 {
				continue
			}
			switch c.Kind {
			case mail.ChangeMessageRemoved:
				delete(changed, c.UID)
				if s.seqOf(c.UID) == 0 && (q.KnownUIDs == nil || q.KnownUIDs.Contains(imap.UID(c.UID))) {
					vanished.AddNum(imap.UID(c.UID))
				}
			case mail.ChangeMessageAdded, mail.ChangeFlags:
				if s.seqOf(c.UID) != 0 {
					changed[c.UID] = true
				}
			}
		}
		since = pos
		if len(changes) < pollBatch || pos >= s.modseq {
			break
		}
	}
	if len(vanished) > 0 {
		if err := w.WriteVanished(vanished); err != nil {
			return err
		}
	}
	uids := make([]uint32, 0, len(changed))
	for uid := range changed {
		uids = append(uids, uid)
	}
	slices.Sort(uids)
	return se.messages(ctx, uids, false, func(msgs []mail.Message) error {
		if err := se.announceShown(msgs); err != nil {
			return err
		}
		for _, m := range msgs {
			seq := s.seqOf(m.UID)
			// Changed again after the view was read: the next poll tells it
			// (a MODSEQ past the view could hide earlier changes).
			if seq == 0 || m.Modseq <= q.ModSeq || m.Modseq > s.modseq {
				continue
			}
			rw := w.CreateMessage(seq)
			rw.WriteUID(imap.UID(m.UID))
			rw.WriteFlags(se.flags(m))
			rw.WriteModSeq(m.Modseq)
			if err := rw.Close(); err != nil {
				return err
			}
		}
		return nil
	})
}

// vanishedEarlier answers the VANISHED modifier of UID FETCH (RFC 7162
// §3.2.6): the UIDs of set expunged since the given mod-sequence. UIDs the
// session still shows (an expunge it has not announced yet) are left out:
// VANISHED (EARLIER) does not change the client's message count.
func (se *session) vanishedEarlier(ctx context.Context, w *imapserver.FetchWriter, set imap.UIDSet, since uint64) error {
	s := se.sel
	// Only the span the set covers, and only up to the view: a later
	// removal is told by the next poll.
	lo, hi := uint32(math.MaxUint32), uint32(0)
	for _, r := range set {
		a, b := uint32(r.Start), uint32(r.Stop)
		switch {
		case a == 0 || b == 0: // n:* or *: up to the end
			lo, hi = min(lo, max(max(a, b), 1)), math.MaxUint32
		case a > b:
			lo, hi = min(lo, b), max(hi, a)
		default:
			lo, hi = min(lo, a), max(hi, b)
		}
	}
	if len(set) == 0 || since >= s.modseq {
		return nil
	}
	removed, err := se.srv.cfg.Store.RemovedSince(ctx, se.acct.ID, s.box.ID, since, s.modseq, lo, hi)
	if err != nil {
		return se.toIMAPError("fetch", err)
	}
	var out imap.UIDSet
	for _, uid := range removed {
		if s.seqOf(uid) == 0 && set.Contains(imap.UID(uid)) {
			out.AddNum(imap.UID(uid))
		}
	}
	if len(out) == 0 {
		return nil
	}
	return w.WriteVanished(out)
}

// serverID is what the server says of itself in answer to ID (RFC 2971):
// no version, which would only help an attacker.
var serverID = &imap.IDData{Name: "cellmail", Vendor: "cellmail"}

// ID logs what the client says of itself, takes the client's address and
// the map epoch from the router's ID (fromRouter) and answers with serverID.
func (se *session) ID(client *imap.IDData) *imap.IDData {
	se.fromRouter(client, remote(se.conn))
	if client != nil {
		se.srv.log.Debug("imap client", "name", client.Name, "version", client.Version, "os", client.OS,
			"vendor", client.Vendor)
	}
	return serverID
}
