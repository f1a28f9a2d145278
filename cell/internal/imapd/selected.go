package imapd

import (
	"context"
	"slices"
	"strings"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"

	"github.com/cellmail/cellmail/cell/internal/delivery"
	"github.com/cellmail/cellmail/cell/internal/mail"
)

func changesChannel(accountID string) string { return delivery.ChangesChannel(accountID) }

// selected is the session's view of its selected mailbox: the UIDs it has
// announced, ascending (message sequence number n is uids[n-1]), and the
// journal position up to which it has reported changes.
type selected struct {
	box      mail.Mailbox
	readOnly bool
	uids     []uint32
	modseq   uint64
	// removed: UIDs gone from the store but still in uids, because the
	// change was seen during FETCH, STORE or SEARCH, when EXPUNGE may not
	// be sent (RFC 9051 §7.5.1).
	// The value is the removal's journal position.
	removed map[uint32]uint64
	// highest: the mailbox's HIGHESTMODSEQ as far as the journal has been
	// read for this session (RFC 7162 §3.1.2.1).
	highest uint64
	// own: journal positions of this session's own flag changes, already
	// answered; Poll does not repeat them.
	own map[uint64]bool
	// keywords: those the client has been told of in FLAGS (RFC 3501
	// §7.2.6).
	keywords map[string]bool
	// recent: the UIDs that are \Recent in this session (RFC 3501
	// §2.3.2): it was the first told of them.
	recent map[uint32]bool
}

// seqOf is the sequence number of uid in the view, 0 if absent.
func (s *selected) seqOf(uid uint32) uint32 {
	i, ok := slices.BinarySearch(s.uids, uid)
	if !ok {
		return 0
	}
	return uint32(i + 1)
}

// systemFlags are the flags every mailbox supports.
var systemFlags = []imap.Flag{imap.FlagSeen, imap.FlagAnswered, imap.FlagFlagged, imap.FlagDeleted, imap.FlagDraft}

// baseFlags: the system flags and the keywords every mailbox lists.
var baseFlags = append(slices.Clone(systemFlags), imap.FlagForwarded, imap.FlagJunk, imap.FlagNotJunk)

// isBaseFlag: f is among baseFlags (flags are case-insensitive).
func isBaseFlag(f string) bool {
	return slices.ContainsFunc(baseFlags, func(b imap.Flag) bool { return strings.EqualFold(string(b), f) })
}

// mailboxFlags are the FLAGS of the view (the base flags and the keywords
// in use) and its PERMANENTFLAGS: the same and \* while keywords can be
// made (RFC 3501 §7.1), none when read-only.
func (s *selected) mailboxFlags() (flags, perm []imap.Flag) {
	kws := make([]string, 0, len(s.keywords))
	for k := range s.keywords {
		kws = append(kws, k)
	}
	slices.Sort(kws)
	flags = slices.Clone(baseFlags)
	for _, k := range kws {
		flags = append(flags, imap.Flag(k))
	}
	if s.readOnly {
		return flags, nil
	}
	perm = slices.Clone(flags)
	if len(s.keywords) < maxKeywords {
		perm = append(perm, imap.FlagWildcard)
	}
	return flags, perm
}

// learn adds the keywords among labels to what the client is told; it
// reports whether there were new ones.
func (s *selected) learn(labels []string) bool {
	fresh := false
	for _, l := range labels {
		if mail.IsKeyword(l) && !s.keywords[l] && !isBaseFlag(l) {
			s.keywords[l] = true
			fresh = true
		}
	}
	return fresh
}

// announce tells the client of the keywords among labels it has not been
// told of: FLAGS and PERMANENTFLAGS again, before the responses that show
// them (RFC 3501 §7.2.6).
func (se *session) announce(labels []string) error {
	s := se.sel
	if s == nil || !s.learn(labels) {
		return nil
	}
	flags, perm := s.mailboxFlags()
	return se.conn.WriteMailboxFlags(flags, perm)
}

// announceShown is announce for the keywords of msgs, before responses
// that show their flags: the messages were read as they are now, which may
// be newer than what the last poll told the client, so a keyword another
// session has just put on one is announced here rather than by the poll
// after the command (RFC 3501 §7.2.6).
func (se *session) announceShown(msgs []mail.Message) error {
	var labels []string
	for _, m := range msgs {
		labels = append(labels, m.Labels...)
	}
	return se.announce(labels)
}

// keywordRoom refuses a STORE or APPEND that would take the mailbox past
// maxKeywords distinct keywords (NO [LIMIT]); known are keywords already
// counted as in use.
func (se *session) keywordRoom(ctx context.Context, mailboxID string, known map[string]bool, add []string) error {
	var fresh []string
	for _, k := range add {
		if !known[k] && !isBaseFlag(k) {
			fresh = append(fresh, k)
		}
	}
	if len(fresh) == 0 {
		return nil
	}
	// The account's recorded labels hold every keyword of the mailbox: when
	// they leave room, the mailbox's need not be read (a read of all its
	// labelled messages, for each APPEND with a keyword).
	n, err := se.srv.cfg.Store.AccountLabels(ctx, se.acct.ID, fresh)
	if err != nil {
		return se.toIMAPError("keywords", err)
	}
	if n <= maxKeywords {
		return nil
	}
	have, err := se.srv.cfg.Store.MailboxKeywords(ctx, se.acct.ID, mailboxID, 0, listedKeywords)
	if err != nil {
		return se.toIMAPError("keywords", err)
	}
	set := map[string]bool{}
	for _, k := range have {
		if mail.IsKeyword(k) && !isBaseFlag(k) {
			set[k] = true
		}
	}
	before := len(set)
	for _, k := range fresh {
		set[k] = true
	}
	if len(set) > maxKeywords && len(set) > before {
		return imapNo(imap.ResponseCodeLimit, "At most %d keywords per mailbox", maxKeywords)
	}
	return nil
}

// flags is a message's flags in this session: with \Recent for an
// IMAP4rev1 client (RFC 3501 §2.3.2; IMAP4rev2 has none, RFC 9051
// Appendix E).
func (se *session) flags(m mail.Message) []imap.Flag {
	f := flagsOf(m)
	if s := se.sel; s != nil && s.recent[m.UID] && !se.enabled(imap.CapIMAP4rev2) {
		f = append(f, imap.Flag(`\Recent`))
	}
	return f
}

// flagsOf is a message's flags as IMAP says them: system flags and the
// labels that are IMAP atoms (keywords, RFC 9051 §2.3.2).
func flagsOf(m mail.Message) []imap.Flag {
	out := make([]imap.Flag, 0, 4)
	if m.Flags.Seen {
		out = append(out, imap.FlagSeen)
	}
	if m.Flags.Answered {
		out = append(out, imap.FlagAnswered)
	}
	if m.Flags.Flagged {
		out = append(out, imap.FlagFlagged)
	}
	if m.Flags.Deleted {
		out = append(out, imap.FlagDeleted)
	}
	if m.Flags.Draft {
		out = append(out, imap.FlagDraft)
	}
	for _, l := range m.Labels {
		if mail.IsKeyword(l) {
			out = append(out, imap.Flag(l))
		}
	}
	return out
}

// flagChange turns a STORE into a store change (RFC 9051 §6.4.6).
func flagChange(sf *imap.StoreFlags) (mail.FlagChange, error) {
	var fc mail.FlagChange
	t, f := true, false
	val := &t
	if sf.Op == imap.StoreFlagsDel {
		val = &f
	}
	var keywords []string
	seen := map[string]bool{}
	for _, fl := range sf.Flags {
		switch strings.ToLower(string(fl)) {
		case `\seen`:
			fc.Seen = val
		case `\answered`:
			fc.Answered = val
		case `\flagged`:
			fc.Flagged = val
		case `\deleted`:
			fc.Deleted = val
		case `\draft`:
			fc.Draft = val
		case `\recent`:
			// Session-only and read-only: ignored.
		default:
			if !mail.IsKeyword(string(fl)) {
				return fc, imapNo(imap.ResponseCodeCannot, "Flag %q cannot be stored", string(fl))
			}
			if !seen[string(fl)] {
				seen[string(fl)] = true
				keywords = append(keywords, string(fl))
			}
		}
	}
	if len(keywords) > mail.MaxMessageLabels {
		return fc, imapNo(imap.ResponseCodeLimit, "At most %d keywords per message", mail.MaxMessageLabels)
	}
	switch sf.Op {
	case imap.StoreFlagsSet:
		for _, p := range []**bool{&fc.Seen, &fc.Answered, &fc.Flagged, &fc.Deleted, &fc.Draft} {
			if *p == nil {
				*p = &f
			}
		}
		fc.ReplaceLabels, fc.AddLabels = true, keywords
	case imap.StoreFlagsAdd:
		fc.AddLabels = keywords
	case imap.StoreFlagsDel:
		fc.RemoveLabels = keywords
	}
	return fc, nil
}

// Select opens a mailbox (RFC 9051 §6.3.2).
func (se *session) Select(name string, options *imap.SelectOptions) (*imap.SelectData, error) {
	ctx, cancel := se.op()
	defer cancel()
	se.sel = nil
	mb, err := se.mailbox(ctx, name)
	if err != nil {
		return nil, se.toIMAPError("select", err)
	}
	mb, uids, modseq, err := se.srv.cfg.Store.MailboxView(ctx, se.acct.ID, mb.ID)
	if err != nil {
		return nil, se.toIMAPError("select", err)
	}
	kws, err := se.srv.cfg.Store.MailboxKeywords(ctx, se.acct.ID, mb.ID, 0, listedKeywords)
	if err != nil {
		return nil, se.toIMAPError("select", err)
	}
	// SELECT takes the messages no session has been told of as this
	// one's \Recent; EXAMINE shows them and leaves them (RFC 3501
	// §2.3.2, §6.3.2).
	upTo := uint32(0)
	if !options.ReadOnly && mb.UIDNext > 1 {
		upTo = mb.UIDNext - 1
	}
	mark, err := se.srv.cfg.Store.ClaimRecent(ctx, se.acct.ID, mb.ID, upTo)
	if err != nil {
		return nil, se.toIMAPError("select", err)
	}
	s := &selected{box: mb, readOnly: options.ReadOnly, uids: uids, modseq: modseq,
		removed: map[uint32]uint64{}, own: map[uint64]bool{}, highest: max(mb.HighestModseq, 1),
		keywords: map[string]bool{}, recent: map[uint32]bool{}}
	s.learn(kws)
	for i := len(uids) - 1; i >= 0 && uids[i] > mark; i-- {
		s.recent[uids[i]] = true
	}
	// IMAP4rev1 names the first unseen message (RFC 3501 §6.3.1;
	// IMAP4rev2 has no UNSEEN, RFC 9051 §6.3.2).
	var unseen uint32
	if mb.Unread > 0 && !se.enabled(imap.CapIMAP4rev2) {
		uid, err := se.srv.cfg.Store.FirstUnseen(ctx, se.acct.ID, mb.ID)
		if err != nil {
			return nil, se.toIMAPError("select", err)
		}
		unseen = s.seqOf(uid)
	}
	se.sel = s
	flags, perm := s.mailboxFlags()
	listData := &imap.ListData{Mailbox: mb.Name, Delim: delim}
	if a := useAttr(mb.SpecialUse); a != "" {
		listData.Attrs = append(listData.Attrs, a)
	}
	return &imap.SelectData{
		Flags:             flags,
		PermanentFlags:    perm,
		NumMessages:       uint32(len(uids)),
		NumRecent:         uint32(len(s.recent)),
		FirstUnseenSeqNum: unseen,
		UIDNext:           imap.UID(mb.UIDNext),
		UIDValidity:       mb.UIDValidity,
		List:              listData,
		HighestModSeq:     max(mb.HighestModseq, 1),
	}, nil
}

func (se *session) Unselect() error {
	se.sel = nil
	return nil
}

// Poll reports what changed in the selected mailbox since the session last
// looked (RFC 9051 §5.2, §7.5.1): EXPUNGE for messages gone (only when
// allowed, else later), EXISTS for new ones, FETCH FLAGS for changed flags.
func (se *session) Poll(w *imapserver.UpdateWriter, allowExpunge bool) error {
	if se.sel == nil {
		return nil
	}
	ctx, cancel := se.op()
	defer cancel()
	return se.poll(ctx, w, allowExpunge)
}

// pollBatch is how many journal entries one read takes.
const pollBatch = 5000

func (se *session) poll(ctx context.Context, w *imapserver.UpdateWriter, allowExpunge bool) error {
	s := se.sel
	var added []uint32
	flagged := map[uint32]bool{}
	for {
		changes, pos, err := se.srv.cfg.Store.MailboxChanges(ctx, se.acct.ID, s.box.ID, s.modseq, pollBatch)
		if err != nil {
			return se.toIMAPError("poll", err)
		}
		for _, c := range changes {
			s.highest = max(s.highest, c.Modseq)
			switch c.Kind {
			case mail.ChangeMessageAdded:
				if c.UID != 0 && s.seqOf(c.UID) == 0 && !slices.Contains(added, c.UID) {
					added = append(added, c.UID)
				}
			case mail.ChangeMessageRemoved:
				if i := slices.Index(added, c.UID); i >= 0 {
					added = slices.Delete(added, i, i+1)
				} else if s.seqOf(c.UID) != 0 {
					s.removed[c.UID] = c.Modseq
				}
			case mail.ChangeFlags:
				if s.own[c.Modseq] {
					delete(s.own, c.Modseq)
				} else if c.UID != 0 {
					flagged[c.UID] = true
				}
			}
		}
		s.modseq = pos
		if len(changes) < pollBatch {
			break
		}
	}
	if allowExpunge && len(s.removed) > 0 {
		gone := make([]uint32, 0, len(s.removed))
		for uid := range s.removed {
			gone = append(gone, uid)
			delete(flagged, uid)
		}
		if err := se.expunged(gone, w.WriteExpunge, w.WriteVanished); err != nil {
			return err
		}
		clear(s.removed)
	}
	var fresh []uint32 // added to the view now
	if len(added) > 0 {
		slices.Sort(added)
		last := uint32(0)
		if len(s.uids) > 0 {
			last = s.uids[len(s.uids)-1]
		}
		for _, uid := range added {
			if uid > last {
				s.uids = append(s.uids, uid)
				fresh = append(fresh, uid)
				last = uid
			}
		}
	}
	// The messages whose flags changed, and the keywords of the new
	// ones, are read before anything is written: a keyword the client
	// was not told of is announced first (FLAGS, RFC 3501 §7.2.6).
	var uids []uint32
	for uid := range flagged {
		if s.removed[uid] == 0 && s.seqOf(uid) != 0 {
			uids = append(uids, uid)
		}
	}
	slices.Sort(uids)
	var changed []mail.Message
	var labels []string
	if len(uids) > 0 {
		msgs, err := se.srv.cfg.Store.MessagesByUID(ctx, se.acct.ID, s.box.ID, uids, false, false)
		if err != nil {
			return se.toIMAPError("poll", err)
		}
		for _, m := range msgs {
			labels = append(labels, m.Labels...)
		}
		changed = msgs
	}
	if len(fresh) > 0 {
		kws, err := se.srv.cfg.Store.MailboxKeywords(ctx, se.acct.ID, s.box.ID, fresh[0], listedKeywords)
		if err != nil {
			return se.toIMAPError("poll", err)
		}
		labels = append(labels, kws...)
	}
	if err := se.announce(labels); err != nil {
		return err
	}
	if len(fresh) > 0 {
		// The new messages no other session was told of first are
		// \Recent here; EXAMINE only looks (RFC 3501 §2.3.2).
		upTo := fresh[len(fresh)-1]
		if s.readOnly {
			upTo = 0
		}
		mark, err := se.srv.cfg.Store.ClaimRecent(ctx, se.acct.ID, s.box.ID, upTo)
		if err != nil {
			return se.toIMAPError("poll", err)
		}
		for _, uid := range fresh {
			if uid > mark {
				s.recent[uid] = true
			}
		}
		if err := w.WriteNumMessages(uint32(len(s.uids))); err != nil {
			return err
		}
		if err := w.WriteNumRecent(uint32(len(s.recent))); err != nil {
			return err
		}
	}
	condstore := se.enabled(imap.CapCondStore)
	if len(s.removed) > 0 && condstore {
		// Expunges held back (FETCH, STORE, SEARCH): keep the client's
		// cached mod-sequence below them, whatever MODSEQ it was just
		// shown (RFC 7162 §3.2.10).
		low := uint64(0)
		for _, m := range s.removed {
			if low == 0 || m < low {
				low = m
			}
		}
		if err := w.WriteHighestModSeq(low - 1); err != nil {
			return err
		}
	}
	if len(changed) > 0 {
		for _, m := range changed {
			if m.Modseq > s.modseq {
				// Changed again after the journal was read: the next
				// poll tells it, after what came before it.
				continue
			}
			var err error
			if condstore {
				// RFC 7162 §3.2.4: unsolicited flag changes carry MODSEQ.
				err = w.WriteMessageFlagsModSeq(s.seqOf(m.UID), imap.UID(m.UID), se.flags(m), m.Modseq)
			} else {
				err = w.WriteMessageFlags(s.seqOf(m.UID), imap.UID(m.UID), se.flags(m))
			}
			if err != nil {
				return err
			}
		}
	}
	return nil
}

// Idle waits for changes and reports them until the client says DONE
// (RFC 2177): woken through the Hub by every change to the account, and
// looking every idlePoll in case a wake-up was lost.
func (se *session) Idle(w *imapserver.UpdateWriter, stop <-chan struct{}) error {
	var wake <-chan struct{}
	if se.srv.cfg.Hub != nil {
		ch, unwatch := se.srv.cfg.Hub.Watch(se.acct.ID)
		defer unwatch()
		wake = ch
	}
	t := time.NewTicker(idlePoll)
	defer t.Stop()
	for {
		if se.sel != nil {
			ctx, cancel := se.op()
			err := se.poll(ctx, w, true)
			cancel()
			if err != nil {
				return err
			}
		}
		select {
		case <-stop:
			return nil
		case <-se.ctx.Done():
			return nil
		case <-wake:
		case <-t.C:
		}
	}
}

// HighestModSeq is the selected mailbox's HIGHESTMODSEQ as far as this
// client has been told its changes (for EXPUNGE's tagged OK under QRESYNC,
// RFC 7162 §3.2.7): below any expunge still held back.
func (se *session) HighestModSeq() uint64 {
	s := se.sel
	if s == nil {
		return 1
	}
	h := s.highest
	for _, m := range s.removed {
		h = min(h, m-1)
	}
	return max(h, 1)
}
