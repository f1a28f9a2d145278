package imapd

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"slices"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"
	"github.com/emersion/go-message/textproto"

	"github.com/cellmail/cellmail/cell/internal/blobstore"
	"github.com/cellmail/cellmail/cell/internal/delivery"
	"github.com/cellmail/cellmail/cell/internal/mail"
	"github.com/cellmail/cellmail/cell/internal/mailstore"
)

// fetchChunk is how many messages one store read takes during FETCH.
const fetchChunk = 2000

// resolve returns the view positions a sequence or UID set names,
// ascending and distinct (RFC 9051 §9 sequence-set; "*" is the last
// message, and a range may be written high:low).
func (s *selected) resolve(set imap.NumSet) []int {
	n := len(s.uids)
	if n == 0 {
		return nil
	}
	mark := make([]bool, n)
	count := 0
	add := func(lo, hi int) { // view positions [lo, hi)
		for i := lo; i < hi; i++ {
			if !mark[i] {
				mark[i] = true
				count++
			}
		}
	}
	switch set := set.(type) {
	case imap.SeqSet:
		for _, r := range set {
			start, stop := r.Start, r.Stop
			if start == 0 {
				start = uint32(n)
			}
			if stop == 0 {
				stop = uint32(n)
			}
			if start > stop {
				start, stop = stop, start
			}
			if start > uint32(n) {
				continue
			}
			add(int(start-1), int(min(stop, uint32(n))))
		}
	case imap.UIDSet:
		maxUID := s.uids[n-1]
		for _, r := range set {
			start, stop := uint32(r.Start), uint32(r.Stop)
			if start == 0 {
				start = maxUID
			}
			if stop == 0 {
				stop = maxUID
			}
			if start > stop {
				start, stop = stop, start
			}
			lo, _ := slices.BinarySearch(s.uids, start)
			hi, found := slices.BinarySearch(s.uids, stop)
			if found {
				hi++
			}
			add(lo, hi)
		}
	}
	out := make([]int, 0, count)
	for i, m := range mark {
		if m {
			out = append(out, i)
		}
	}
	return out
}

// uidsAt are the UIDs at view positions idx, without those removed.
func (s *selected) uidsAt(idx []int) []uint32 {
	out := make([]uint32, 0, len(idx))
	for _, i := range idx {
		if u := s.uids[i]; s.removed[u] == 0 {
			out = append(out, u)
		}
	}
	return out
}

// contiguous: uids are a run of the view, so one range scan reads them.
func (s *selected) contiguous(uids []uint32) bool {
	if len(uids) == 0 {
		return false
	}
	a, b := s.seqOf(uids[0]), s.seqOf(uids[len(uids)-1])
	return a != 0 && b != 0 && int(b-a)+1 == len(uids)
}

// messages reads the messages with the given view UIDs in chunks (with
// their kept ENVELOPE header fields when envelope is set).
func (se *session) messages(ctx context.Context, uids []uint32, envelope bool, fn func([]mail.Message) error) error {
	s := se.sel
	for len(uids) > 0 {
		chunk := uids[:min(len(uids), fetchChunk)]
		uids = uids[len(chunk):]
		msgs, err := se.srv.cfg.Store.MessagesByUID(ctx, se.acct.ID, s.box.ID, chunk, s.contiguous(chunk), envelope)
		if err != nil {
			return se.toIMAPError("read messages", err)
		}
		if err := fn(msgs); err != nil {
			return err
		}
	}
	return nil
}

func needsSeen(o *imap.FetchOptions) bool {
	for _, b := range o.BodySection {
		if !b.Peek {
			return true
		}
	}
	for _, b := range o.BinarySection {
		if !b.Peek {
			return true
		}
	}
	return false
}

// Fetch answers FETCH and UID FETCH (RFC 9051 §6.4.5). A body section read
// without PEEK sets \Seen (in a read-write mailbox) and reports it.
func (se *session) Fetch(w *imapserver.FetchWriter, numSet imap.NumSet, options *imap.FetchOptions) error {
	ctx, cancel := se.op()
	defer cancel()
	s := se.sel
	if _, ok := numSet.(imap.UIDSet); ok {
		options.UID = true
	}
	markSeen := needsSeen(options) && !s.readOnly
	// A flag change made by this FETCH carries MODSEQ once CONDSTORE is
	// on (RFC 7162 §3.1.4.1, §3.2.4).
	modseq := options.ModSeq || markSeen && se.enabled(imap.CapCondStore)
	if modseq {
		options.UID = true // with MODSEQ, always UID (RFC 7162 §3.1.3)
	}
	if options.Vanished {
		if err := se.vanishedEarlier(ctx, w, numSet.(imap.UIDSet), options.ChangedSince); err != nil {
			return err
		}
	}
	needHeader := options.Envelope
	needBody := options.BodyStructure != nil || len(options.BodySection) > 0 || len(options.BinarySection) > 0 ||
		len(options.BinarySectionSize) > 0
	return se.messages(ctx, s.uidsAt(s.resolve(numSet)), needHeader && !needBody, func(msgs []mail.Message) error {
		if markSeen {
			if err := se.markSeen(ctx, msgs); err != nil {
				return err
			}
		}
		if options.Flags || markSeen {
			if err := se.announceShown(msgs); err != nil {
				return err
			}
		}
		for _, m := range msgs {
			if options.ChangedSince != 0 && m.Modseq <= options.ChangedSince {
				continue
			}
			seq := s.seqOf(m.UID)
			if seq == 0 {
				continue
			}
			var raw []byte
			var hdr textproto.Header
			var err error
			switch {
			case needBody:
				raw, err = se.readBlob(ctx, m)
				if err == nil && needHeader {
					hdr, err = textproto.ReadHeader(bufio.NewReader(bytes.NewReader(raw)))
				}
			case needHeader && m.EnvelopeHeader != nil:
				hdr, err = textproto.ReadHeader(bufio.NewReader(bytes.NewReader(m.EnvelopeHeader)))
			case needHeader:
				hdr, err = se.readHeader(ctx, m)
			}
			if err != nil {
				se.srv.log.Error("imap fetch: message unreadable", "account", se.acct.ID, "message", m.ID, "err", err)
				return imapNo(imap.ResponseCodeServerBug, "Message %d cannot be read now", m.UID)
			}
			if err := se.writeMessage(w.CreateMessage(seq), m, options, markSeen, modseq, raw, hdr); err != nil {
				return err
			}
		}
		return nil
	})
}

func (se *session) writeMessage(rw *imapserver.FetchResponseWriter, m mail.Message, o *imap.FetchOptions, flags, modseq bool, raw []byte, hdr textproto.Header) error {
	if o.UID {
		rw.WriteUID(imap.UID(m.UID))
	}
	if o.Flags || flags {
		rw.WriteFlags(se.flags(m))
	}
	if modseq {
		rw.WriteModSeq(m.Modseq)
	}
	if o.InternalDate {
		rw.WriteInternalDate(m.ReceivedAt)
	}
	if o.RFC822Size {
		rw.WriteRFC822Size(m.Size)
	}
	if o.Envelope {
		rw.WriteEnvelope(imapserver.ExtractEnvelope(hdr))
	}
	if o.BodyStructure != nil {
		rw.WriteBodyStructure(imapserver.ExtractBodyStructure(bytes.NewReader(raw)))
	}
	for _, bs := range o.BodySection {
		buf := imapserver.ExtractBodySection(bytes.NewReader(raw), bs)
		wc := rw.WriteBodySection(bs, int64(len(buf)))
		if _, err := wc.Write(buf); err != nil {
			return err
		}
		if err := wc.Close(); err != nil {
			return err
		}
	}
	for _, bs := range o.BinarySection {
		buf := imapserver.ExtractBinarySection(bytes.NewReader(raw), bs)
		wc := rw.WriteBinarySection(bs, int64(len(buf)))
		if _, err := wc.Write(buf); err != nil {
			return err
		}
		if err := wc.Close(); err != nil {
			return err
		}
	}
	for _, bss := range o.BinarySectionSize {
		rw.WriteBinarySectionSize(bss, imapserver.ExtractBinarySectionSize(bytes.NewReader(raw), bss))
	}
	return rw.Close()
}

func (se *session) readBlob(ctx context.Context, m mail.Message) ([]byte, error) {
	b, err := blobstore.OpenMessage(ctx, se.srv.cfg.Blobs, m.BlobRef, m.Prefix)
	if err != nil {
		return nil, err
	}
	defer b.Close()
	buf := make([]byte, b.Size())
	if _, err := io.ReadFull(b, buf); err != nil {
		return nil, err
	}
	return buf, nil
}

// maxHeader bounds what ENVELOPE reads of a message.
const maxHeader = 256 << 10

func (se *session) readHeader(ctx context.Context, m mail.Message) (textproto.Header, error) {
	b, err := blobstore.OpenMessage(ctx, se.srv.cfg.Blobs, m.BlobRef, m.Prefix)
	if err != nil {
		return textproto.Header{}, err
	}
	defer b.Close()
	// A malformed header still gives what could be read of it.
	h, _ := textproto.ReadHeader(bufio.NewReaderSize(io.LimitReader(b, maxHeader), 8192))
	return h, nil
}

// markSeen sets \Seen on the unseen among msgs (a FETCH of a body section
// without PEEK, RFC 9051 §6.4.5) and updates msgs in place.
func (se *session) markSeen(ctx context.Context, msgs []mail.Message) error {
	var ids []string
	for _, m := range msgs {
		if !m.Flags.Seen {
			ids = append(ids, m.ID)
		}
	}
	if len(ids) == 0 {
		return nil
	}
	t := true
	changed, _, err := se.srv.cfg.Store.StoreFlags(ctx, se.acct.ID, ids, mail.FlagChange{Seen: &t, InMailbox: se.sel.box.ID})
	if err != nil {
		return se.toIMAPError("fetch", err)
	}
	byID := map[string]mail.Message{}
	for _, c := range changed {
		byID[c.ID] = c
		se.sel.own[c.Modseq] = true
	}
	for i := range msgs {
		if c, ok := byID[msgs[i].ID]; ok {
			msgs[i] = c
		}
	}
	se.notify(ctx, nil)
	return nil
}

// Store answers STORE and UID STORE (RFC 9051 §6.4.6; UNCHANGEDSINCE,
// RFC 7162 §3.1.3).
func (se *session) Store(w *imapserver.FetchWriter, numSet imap.NumSet, flags *imap.StoreFlags, options *imap.StoreOptions) error {
	ctx, cancel := se.op()
	defer cancel()
	s := se.sel
	if s.readOnly {
		return imapNo(imap.ResponseCodeCannot, "The mailbox is read-only (EXAMINE)")
	}
	fc, err := flagChange(flags)
	if err != nil {
		return err
	}
	_, isUID := numSet.(imap.UIDSet)
	if options != nil && options.UnchangedSinceSet && options.UnchangedSince == 0 {
		// Every message has a mod-sequence above 0: all fail, none
		// changes (RFC 7162 §3.1.3).
		return modifiedError(s, s.uidsAt(s.resolve(numSet)), isUID)
	}
	if options != nil && options.UnchangedSince != 0 {
		fc.UnchangedSince = options.UnchangedSince
	}
	// A keyword new to the mailbox: within the bound, and announced
	// (FLAGS) before the FETCH responses that show it (RFC 3501 §7.2.6).
	if err := se.keywordRoom(ctx, s.box.ID, s.keywords, fc.AddLabels); err != nil {
		return err
	}
	fc.InMailbox = s.box.ID
	// Once CONDSTORE is on, STORE answers with MODSEQ, even when .SILENT
	// (RFC 7162 §3.1.3).
	condstore := se.enabled(imap.CapCondStore)
	var modified []uint32
	err = se.messages(ctx, s.uidsAt(s.resolve(numSet)), false, func(msgs []mail.Message) error {
		ids := make([]string, len(msgs))
		for i, m := range msgs {
			ids[i] = m.ID
		}
		changed, conflicts, err := se.srv.cfg.Store.StoreFlags(ctx, se.acct.ID, ids, fc)
		if err != nil {
			return se.toIMAPError("store", err)
		}
		// Announced before the answers that show them: the keywords
		// added, and those of the messages as they are now (another
		// session's keywords among them).
		if err := se.announceShown(changed); err != nil {
			return err
		}
		if !flags.Silent {
			if err := se.announceShown(msgs); err != nil {
				return err
			}
		}
		now := map[string]mail.Message{}
		for _, c := range changed {
			now[c.ID] = c
			s.own[c.Modseq] = true
		}
		for _, c := range conflicts {
			modified = append(modified, c.UID)
		}
		if flags.Silent && !condstore {
			return nil
		}
		for _, m := range msgs {
			c, ok := now[m.ID]
			if !ok {
				if flags.Silent || slices.ContainsFunc(conflicts, func(x mail.Message) bool { return x.ID == m.ID }) {
					continue
				}
				c = m
			}
			rw := w.CreateMessage(s.seqOf(m.UID))
			if isUID || condstore { // RFC 7162 §3.1.3: UID with MODSEQ
				rw.WriteUID(imap.UID(m.UID))
			}
			if !flags.Silent || ok {
				if !flags.Silent {
					rw.WriteFlags(se.flags(c))
				}
				if condstore {
					rw.WriteModSeq(c.Modseq)
				}
			}
			if err := rw.Close(); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	se.notify(ctx, nil)
	if len(modified) > 0 {
		return modifiedError(s, modified, isUID)
	}
	return nil
}

// modifiedError is the OK [MODIFIED set] of a conditional STORE that left
// the given messages alone (RFC 7162 §3.1.3).
func modifiedError(s *selected, uids []uint32, isUID bool) error {
	if len(uids) == 0 {
		return nil
	}
	var set imap.NumSet
	if isUID {
		var us imap.UIDSet
		for _, u := range uids {
			us.AddNum(imap.UID(u))
		}
		set = us
	} else {
		var ss imap.SeqSet
		for _, u := range uids {
			ss.AddNum(s.seqOf(u))
		}
		set = ss
	}
	return &imap.Error{Type: imap.StatusResponseTypeOK, Code: imap.ResponseCode("MODIFIED " + set.String()),
		Text: "Conditional STORE failed for some messages"}
}

// target finds the mailbox of a COPY, MOVE or APPEND; a missing one gets
// [TRYCREATE] (RFC 9051 §6.4.7).
func (se *session) target(ctx context.Context, name string) (mail.Mailbox, error) {
	mb, err := se.mailbox(ctx, name)
	if err != nil {
		return mb, imapNo(imap.ResponseCodeTryCreate, "No such mailbox; create it first")
	}
	return mb, nil
}

// Copy answers COPY and UID COPY with COPYUID (RFC 4315 §3).
func (se *session) Copy(numSet imap.NumSet, dest string) (*imap.CopyData, error) {
	ctx, cancel := se.op()
	defer cancel()
	s := se.sel
	to, err := se.target(ctx, dest)
	if err != nil {
		return nil, err
	}
	uids := s.uidsAt(s.resolve(numSet))
	if len(uids) > 100000 {
		return nil, imapNo(imap.ResponseCodeLimit, "Copy at most 100000 messages at a time")
	}
	var ids []string
	var src []uint32
	err = se.messages(ctx, uids, false, func(msgs []mail.Message) error {
		for _, m := range msgs {
			ids = append(ids, m.ID)
			src = append(src, m.UID)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if len(ids) == 0 {
		return nil, nil
	}
	copies, err := se.srv.cfg.Store.CopyMessages(ctx, se.acct.ID, ids, to.ID)
	if err != nil {
		return nil, se.toIMAPError("copy", err)
	}
	se.notify(ctx, nil)
	data := &imap.CopyData{UIDValidity: to.UIDValidity}
	for i, c := range copies {
		data.SourceUIDs.AddNum(imap.UID(src[i]))
		data.DestUIDs.AddNum(imap.UID(c.UID))
	}
	return data, nil
}

// Move answers MOVE and UID MOVE (RFC 6851): COPYUID, then EXPUNGE for
// each message moved out.
func (se *session) Move(w *imapserver.MoveWriter, numSet imap.NumSet, dest string) error {
	ctx, cancel := se.op()
	defer cancel()
	s := se.sel
	if s.readOnly {
		return imapNo(imap.ResponseCodeCannot, "The mailbox is read-only (EXAMINE)")
	}
	to, err := se.target(ctx, dest)
	if err != nil {
		return err
	}
	uids := s.uidsAt(s.resolve(numSet))
	var ids []string
	err = se.messages(ctx, uids, false, func(msgs []mail.Message) error {
		for _, m := range msgs {
			ids = append(ids, m.ID)
		}
		return nil
	})
	if err != nil || len(ids) == 0 {
		return err
	}
	// Messages another session expunged or moved away meanwhile are
	// passed over; one moved to this same mailbox gets a new UID.
	moved, err := se.srv.cfg.Store.Move(ctx, se.acct.ID, s.box.ID, ids, to.ID)
	if err != nil {
		return se.toIMAPError("move", err)
	}
	se.notify(ctx, nil)
	if len(moved) == 0 {
		return nil
	}
	data := &imap.CopyData{UIDValidity: to.UIDValidity}
	var gone []uint32
	for _, m := range moved {
		data.SourceUIDs.AddNum(imap.UID(m.FromUID))
		data.DestUIDs.AddNum(imap.UID(m.ToUID))
		gone = append(gone, m.FromUID)
	}
	if err := w.WriteCopyData(data); err != nil {
		return err
	}
	return se.expunged(gone, w.WriteExpunge, w.WriteVanished)
}

// expunged reports removed UIDs and drops them from the view: as one
// VANISHED once the client enabled QRESYNC (RFC 7162 §3.2.10), else as
// EXPUNGEs, highest first so each sequence number is right when sent.
func (se *session) expunged(uids []uint32, expunge func(seq uint32) error, vanish func(imap.UIDSet) error) error {
	s := se.sel
	slices.Sort(uids)
	qresync := se.enabled(imap.CapQResync)
	var vanished imap.UIDSet
	for i := len(uids) - 1; i >= 0; i-- {
		seq := s.seqOf(uids[i])
		if seq == 0 {
			continue
		}
		if qresync {
			vanished.AddNum(imap.UID(uids[i]))
		} else if err := expunge(seq); err != nil {
			return err
		}
		s.uids = slices.Delete(s.uids, int(seq-1), int(seq))
		delete(s.removed, uids[i])
		delete(s.recent, uids[i])
	}
	if len(vanished) > 0 {
		return vanish(vanished)
	}
	return nil
}

// Expunge removes the messages marked \Deleted (RFC 9051 §6.4.3), only
// those in uids for UID EXPUNGE (RFC 4315 §2.1).
func (se *session) Expunge(w *imapserver.ExpungeWriter, uids *imap.UIDSet) error {
	ctx, cancel := se.op()
	defer cancel()
	s := se.sel
	if s.readOnly {
		return nil // CLOSE on an EXAMINEd mailbox expunges nothing
	}
	var only []uint32
	if uids != nil {
		only = s.uidsAt(s.resolve(*uids))
	}
	if uids != nil && len(only) == 0 {
		return nil
	}
	gone, err := se.srv.cfg.Store.ExpungeDeleted(ctx, se.acct.ID, s.box.ID, only)
	if err != nil {
		return se.toIMAPError("expunge", err)
	}
	se.notify(ctx, nil)
	if w == nil || w.Closing() {
		return nil
	}
	// Under QRESYNC the library then polls and ends with OK
	// [HIGHESTMODSEQ] (HighestModSeq).
	return se.expunged(gone, w.WriteExpunge, w.WriteVanished)
}

// Append stores a message, durable before the OK (RFC 9051 §6.3.12),
// and answers APPENDUID (RFC 4315 §3).
func (se *session) Append(mailbox string, r imap.LiteralReader, options *imap.AppendOptions) (*imap.AppendData, error) {
	ctx, cancel := se.op()
	defer cancel()
	if r.Size() > MaxAppend {
		_, _ = io.Copy(io.Discard, r)
		return nil, imapNo(imap.ResponseCodeTooBig, "Message over %d bytes", MaxAppend)
	}
	raw, err := io.ReadAll(io.LimitReader(r, MaxAppend+1))
	if err != nil {
		return nil, err
	}
	to, err := se.target(ctx, mailbox)
	if err != nil {
		return nil, err
	}
	var opt delivery.Options
	if options != nil {
		fc, err := flagChange(&imap.StoreFlags{Op: imap.StoreFlagsSet, Flags: options.Flags})
		if err != nil {
			return nil, err
		}
		opt.Flags = mail.Flags{Seen: *fc.Seen, Answered: *fc.Answered, Flagged: *fc.Flagged, Draft: *fc.Draft, Deleted: *fc.Deleted}
		opt.Labels = fc.AddLabels
		opt.ReceivedAt = options.Time
		var known map[string]bool
		if se.sel != nil && se.sel.box.ID == to.ID {
			known = se.sel.keywords
		}
		if err := se.keywordRoom(ctx, to.ID, known, opt.Labels); err != nil {
			return nil, err
		}
		// The account's bound, which the store's trigger applies to STORE
		// but not to a new message.
		if err := se.srv.cfg.Store.LabelsRoom(ctx, se.acct.ID, opt.Labels); err != nil {
			return nil, se.toIMAPError("append", err)
		}
	}
	// Every APPEND is a new message, even of the same bytes.
	opt.Key = "append:" + mailstore.NewID()
	opt.Lenient = true
	m, err := se.srv.cfg.Append.Deliver(ctx, se.acct.ID, to.ID, raw, opt)
	if err != nil {
		return nil, se.toIMAPError("append", err)
	}
	se.notify(ctx, nil)
	return &imap.AppendData{UID: imap.UID(m.UID), UIDValidity: to.UIDValidity}, nil
}
