package imapserver

// (cellmail patch) This file adds what upstream's server lacks of CONDSTORE
// and QRESYNC (RFC 7162) and of ID (RFC 2971): the command parameters and
// modifiers, the responses (HIGHESTMODSEQ, VANISHED, ID), and the optional
// session interfaces a backend implements to serve them.

import (
	"fmt"
	"strings"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/internal/imapwire"
)

// SessionQResync is implemented by sessions that resynchronise a client
// on SELECT or EXAMINE with the QRESYNC parameter (RFC 7162 §3.2.5).
type SessionQResync interface {
	// SelectResync is called after Select succeeded, when the client's
	// UIDVALIDITY is the mailbox's: it writes, through w, a VANISHED
	// (EARLIER) response with the UIDs expunged since q.ModSeq (WriteVanished)
	// and then a FETCH (UID FLAGS MODSEQ) for each message changed since.
	SelectResync(w *FetchWriter, q *imap.SelectQResync) error
}

// SessionHighestModSeq is implemented by sessions that can tell the
// selected mailbox's HIGHESTMODSEQ as far as this client has been told of
// its changes, for the tagged OK of EXPUNGE once QRESYNC is enabled
// (RFC 7162 §3.2.7).
type SessionHighestModSeq interface {
	HighestModSeq() uint64
}

// expungeHighestModSeq ends EXPUNGE and UID EXPUNGE under QRESYNC: the
// pending updates first, then a tagged OK carrying HIGHESTMODSEQ.
func (c *Conn) expungeHighestModSeq(uid bool) error {
	s, ok := c.session.(SessionHighestModSeq)
	if !ok || !c.enabled.Has(imap.CapQResync) {
		return nil
	}
	name := "EXPUNGE"
	if uid {
		name = "UID EXPUNGE"
	}
	if err := c.poll(name); err != nil {
		return err
	}
	return &imap.Error{
		Type: imap.StatusResponseTypeOK,
		Code: imap.ResponseCode(fmt.Sprintf("HIGHESTMODSEQ %d", s.HighestModSeq())),
		Text: name + " completed",
	}
}

// SessionID is implemented by sessions that answer the ID command
// (RFC 2971): it receives what the client said of itself (nil for NIL) and
// returns what the server says of itself (nil for NIL).
type SessionID interface {
	ID(client *imap.IDData) *imap.IDData
}

// enable records extensions the client has enabled, explicitly (ENABLE) or
// by using them (RFC 7162 §3.1: a CONDSTORE-enabling command).
func (c *Conn) enable(caps ...imap.Cap) {
	c.mutex.Lock()
	for _, cp := range caps {
		c.enabled[cp] = struct{}{}
	}
	c.mutex.Unlock()
}

// enableCondStore enables CONDSTORE for a CONDSTORE-enabling command, or
// refuses it when the server does not offer the extension.
func (c *Conn) enableCondStore() error {
	if !c.server.options.caps().Has(imap.CapCondStore) {
		return newClientBugError("CONDSTORE is not supported")
	}
	if !c.enabled.Has(imap.CapCondStore) {
		c.enable(imap.CapCondStore)
		c.announceModSeq = c.state == imap.ConnStateSelected
	}
	return nil
}

// announceHighestModSeq writes the untagged OK [HIGHESTMODSEQ] of the
// selected mailbox that RFC 7162 §3.1 asks for when CONDSTORE is enabled
// by a command other than SELECT/EXAMINE (FETCH MODSEQ, STORE
// UNCHANGEDSINCE, SEARCH MODSEQ, STATUS HIGHESTMODSEQ) while a mailbox is
// selected: the client then knows the mailbox's mod-sequence. Called once
// the command is read, before the session answers it.
func (c *Conn) announceHighestModSeq() error {
	if !c.announceModSeq {
		return nil
	}
	c.announceModSeq = false
	s, ok := c.session.(SessionHighestModSeq)
	if !ok || c.state != imap.ConnStateSelected {
		return nil
	}
	w := &UpdateWriter{conn: c}
	return w.WriteHighestModSeq(s.HighestModSeq())
}

// readSelectParams reads the parameters of SELECT and EXAMINE, after the
// mailbox name (RFC 4466 §2.1, RFC 7162 §3.1.8 and §3.2.5):
//
//	select-params = SP "(" select-param *(SP select-param) ")"
//	select-param  = "CONDSTORE" / "QRESYNC" SP "(" uidvalidity SP
//	                mod-sequence-value [SP known-uids] [SP seq-match-data] ")"
func readSelectParams(dec *imapwire.Decoder, options *imap.SelectOptions) error {
	return dec.ExpectList(func() error {
		var name string
		if !dec.ExpectAtom(&name) {
			return dec.Err()
		}
		switch strings.ToUpper(name) {
		case "CONDSTORE":
			options.CondStore = true
		case "QRESYNC":
			q, err := readQResyncParam(dec)
			if err != nil {
				return err
			}
			options.QResync = q
		default:
			return newClientBugError("Unknown SELECT parameter")
		}
		return nil
	})
}

func readQResyncParam(dec *imapwire.Decoder) (*imap.SelectQResync, error) {
	var q imap.SelectQResync
	if !dec.ExpectSP() || !dec.ExpectSpecial('(') || !dec.ExpectNumber(&q.UIDValidity) ||
		!dec.ExpectSP() || !dec.ExpectModSeq(&q.ModSeq) {
		return nil, dec.Err()
	}
	if q.UIDValidity == 0 || q.ModSeq == 0 {
		return nil, newClientBugError("QRESYNC needs a non-zero UIDVALIDITY and mod-sequence")
	}
	readSeqMatch := func() error {
		var m imap.SelectSeqMatch
		var seqs imap.NumSet
		if !dec.ExpectNumSet(imapwire.NumKindSeq, &seqs) || !dec.ExpectSP() ||
			!dec.ExpectUIDSet(&m.UIDs) || !dec.ExpectSpecial(')') {
			return dec.Err()
		}
		seqSet, ok := seqs.(imap.SeqSet)
		if !ok || imap.IsSearchRes(m.UIDs) { // "$" (SEARCHRES) has no place here
			return newClientBugError("QRESYNC sequence match data must be numbers")
		}
		m.SeqNums = seqSet
		q.SeqMatch = &m
		return nil
	}
	if dec.SP() {
		if dec.Special('(') {
			if err := readSeqMatch(); err != nil {
				return nil, err
			}
		} else {
			if !dec.ExpectUIDSet(&q.KnownUIDs) {
				return nil, dec.Err()
			}
			if imap.IsSearchRes(q.KnownUIDs) {
				return nil, newClientBugError("QRESYNC known UIDs must be numbers")
			}
			if dec.SP() {
				if !dec.ExpectSpecial('(') {
					return nil, dec.Err()
				}
				if err := readSeqMatch(); err != nil {
					return nil, err
				}
			}
		}
	}
	if !dec.ExpectSpecial(')') {
		return nil, dec.Err()
	}
	return &q, nil
}

// checkSelectParams applies the rules of RFC 7162 §3.1.8 and §3.2.5 to
// SELECT's parameters once the command is read.
func (c *Conn) checkSelectParams(options *imap.SelectOptions) error {
	if options.QResync != nil && !c.enabled.Has(imap.CapQResync) {
		return newClientBugError("QRESYNC must be enabled first (ENABLE QRESYNC)")
	}
	if options.CondStore || options.QResync != nil {
		err := c.enableCondStore()
		c.announceModSeq = false // SELECT's own answer has it
		return err
	}
	return nil
}

// writeSelectModSeq writes HIGHESTMODSEQ (or NOMODSEQ) after SELECT's
// other untagged responses (RFC 7162 §3.1.2.1, §3.1.2.2), and resyncs a
// QRESYNC client.
func (c *Conn) writeSelectModSeq(data *imap.SelectData, options *imap.SelectOptions) error {
	if !c.server.options.caps().Has(imap.CapCondStore) {
		return nil
	}
	enc := newResponseEncoder(c)
	enc.Atom("*").SP().Atom("OK").SP()
	if data.HighestModSeq > 0 {
		enc.Special('[').Atom("HIGHESTMODSEQ").SP().ModSeq(data.HighestModSeq).Special(']').SP().Text("Highest")
	} else {
		enc.Special('[').Atom("NOMODSEQ").Special(']').SP().Text("No permanent mod-sequences")
	}
	err := enc.CRLF()
	enc.end()
	if err != nil {
		return err
	}
	q := options.QResync
	if q == nil || q.UIDValidity != data.UIDValidity || data.HighestModSeq == 0 {
		return nil
	}
	if s, ok := c.session.(SessionQResync); ok {
		return s.SelectResync(&FetchWriter{conn: c}, q)
	}
	return nil
}

// readFetchModifiers reads FETCH's modifiers (RFC 4466 §2.4, RFC 7162
// §3.1.4 and §3.2.6):
//
//	fetch-modifiers = SP "(" fetch-modifier *(SP fetch-modifier) ")"
//	fetch-modifier  = "CHANGEDSINCE" SP mod-sequence-valzer / "VANISHED"
func readFetchModifiers(dec *imapwire.Decoder, options *imap.FetchOptions) (changedSince bool, err error) {
	err = dec.ExpectList(func() error {
		var name string
		if !dec.ExpectAtom(&name) {
			return dec.Err()
		}
		switch strings.ToUpper(name) {
		case "CHANGEDSINCE":
			if !dec.ExpectSP() || !dec.ExpectModSeq(&options.ChangedSince) {
				return dec.Err()
			}
			changedSince = true
		case "VANISHED":
			options.Vanished = true
		default:
			return newClientBugError("Unknown FETCH modifier")
		}
		return nil
	})
	return changedSince, err
}

// checkFetchModifiers applies RFC 7162 §3.1.4.1 and §3.2.6 once FETCH is
// read: CHANGEDSINCE implies MODSEQ, VANISHED needs UID FETCH, CHANGEDSINCE
// and an enabled QRESYNC.
func (c *Conn) checkFetchModifiers(options *imap.FetchOptions, changedSince bool, numKind NumKind) error {
	if options.Vanished {
		switch {
		case numKind != NumKindUID:
			return newClientBugError("VANISHED is only allowed with UID FETCH")
		case !changedSince:
			return newClientBugError("VANISHED needs CHANGEDSINCE")
		case !c.enabled.Has(imap.CapQResync):
			return newClientBugError("QRESYNC must be enabled first (ENABLE QRESYNC)")
		}
	}
	if changedSince {
		options.ModSeq = true
	}
	if options.ModSeq {
		return c.enableCondStore()
	}
	return nil
}

// readStoreModifiers reads STORE's modifiers, the opening parenthesis
// already read (RFC 7162 §3.1.3):
//
//	store-modifier = "UNCHANGEDSINCE" SP mod-sequence-valzer
func readStoreModifiers(dec *imapwire.Decoder, options *imap.StoreOptions) error {
	for {
		var name string
		if !dec.ExpectAtom(&name) {
			return dec.Err()
		}
		if !strings.EqualFold(name, "UNCHANGEDSINCE") {
			return newClientBugError("Unknown STORE modifier")
		}
		if !dec.ExpectSP() || !dec.ExpectModSeq(&options.UnchangedSince) {
			return dec.Err()
		}
		options.UnchangedSinceSet = true
		if dec.Special(')') {
			return nil
		}
		if !dec.ExpectSP() {
			return dec.Err()
		}
	}
}

// readSearchModSeq reads the MODSEQ search key after its name (RFC 7162
// §3.1.5):
//
//	search-modsequence = "MODSEQ" [search-modseq-ext] SP mod-sequence-valzer
//	search-modseq-ext  = SP entry-name SP entry-type-req
func readSearchModSeq(criteria *imap.SearchCriteria, dec *imapwire.Decoder) error {
	var ms imap.SearchCriteriaModSeq
	if !dec.ExpectSP() {
		return dec.Err()
	}
	if !dec.ModSeq(&ms.ModSeq) {
		var name, typ string
		if !dec.ExpectString(&name) || !dec.ExpectSP() || !dec.ExpectAtom(&typ) || !dec.ExpectSP() ||
			!dec.ExpectModSeq(&ms.ModSeq) {
			return dec.Err()
		}
		ms.MetadataName = name
		switch t := imap.SearchCriteriaMetadataType(strings.ToLower(typ)); t {
		case imap.SearchCriteriaMetadataAll, imap.SearchCriteriaMetadataPrivate, imap.SearchCriteriaMetadataShared:
			ms.MetadataType = t
		default:
			return newClientBugError("Unknown MODSEQ entry type")
		}
	}
	if criteria.ModSeq == nil || ms.ModSeq > criteria.ModSeq.ModSeq {
		criteria.ModSeq = &ms
	}
	return nil
}

// usesModSeq reports whether a search uses the MODSEQ key anywhere.
func usesModSeq(criteria *imap.SearchCriteria) bool {
	if criteria.ModSeq != nil {
		return true
	}
	for i := range criteria.Not {
		if usesModSeq(&criteria.Not[i]) {
			return true
		}
	}
	for i := range criteria.Or {
		if usesModSeq(&criteria.Or[i][0]) || usesModSeq(&criteria.Or[i][1]) {
			return true
		}
	}
	return false
}

// writeVanished writes VANISHED, with (EARLIER) when the UIDs were
// expunged before the command (RFC 7162 §3.2.10).
func (c *Conn) writeVanished(uids imap.UIDSet, earlier bool) error {
	enc := newResponseEncoder(c)
	defer enc.end()
	enc.Atom("*").SP().Atom("VANISHED").SP()
	if earlier {
		enc.Special('(').Atom("EARLIER").Special(')').SP()
	}
	enc.NumSet(uids)
	return enc.CRLF()
}

// WriteVanished writes VANISHED (EARLIER) for messages expunged before this
// command: in answer to UID FETCH with VANISHED, and in SelectResync.
func (cmd *FetchWriter) WriteVanished(uids imap.UIDSet) error {
	return cmd.conn.writeVanished(uids, true)
}

// WriteVanished writes VANISHED, which replaces EXPUNGE once the client has
// enabled QRESYNC (RFC 7162 §3.2.10).
func (w *UpdateWriter) WriteVanished(uids imap.UIDSet) error {
	if !w.allowExpunge {
		return newClientBugError("imapserver: VANISHED updates are not allowed in this context")
	}
	return w.conn.writeVanished(uids, false)
}

// WriteHighestModSeq writes an untagged OK [HIGHESTMODSEQ], which a server
// that holds back expunges (during FETCH, STORE and SEARCH) sends to keep a
// client's cached mod-sequence below them (RFC 7162 §3.2.10).
func (w *UpdateWriter) WriteHighestModSeq(modSeq uint64) error {
	enc := newResponseEncoder(w.conn)
	defer enc.end()
	enc.Atom("*").SP().Atom("OK").SP().Special('[').Atom("HIGHESTMODSEQ").SP().ModSeq(modSeq).Special(']').SP().Text("Highest")
	return enc.CRLF()
}

// WriteMessageFlagsModSeq writes a FETCH response with FLAGS and MODSEQ,
// as unsolicited flag changes are told to a client that enabled CONDSTORE
// (RFC 7162 §3.2.4).
func (w *UpdateWriter) WriteMessageFlagsModSeq(seqNum uint32, uid imap.UID, flags []imap.Flag, modSeq uint64) error {
	fetchWriter := &FetchWriter{conn: w.conn}
	respWriter := fetchWriter.CreateMessage(seqNum)
	if uid != 0 {
		respWriter.WriteUID(uid)
	}
	respWriter.WriteFlags(flags)
	respWriter.WriteModSeq(modSeq)
	return respWriter.Close()
}

// Closing reports whether the expunge is CLOSE's, which answers nothing
// but its tagged OK (RFC 9051 §6.4.1).
func (w *ExpungeWriter) Closing() bool { return w.conn == nil }

// WriteVanished writes VANISHED in place of EXPUNGE once the client has
// enabled QRESYNC (RFC 7162 §3.2.10).
func (w *ExpungeWriter) WriteVanished(uids imap.UIDSet) error {
	if w.conn == nil {
		return nil
	}
	return w.conn.writeVanished(uids, false)
}

// WriteVanished writes VANISHED in place of MOVE's EXPUNGEs once the client
// has enabled QRESYNC (RFC 7162 §3.2.10, RFC 6851 §3.3).
func (w *MoveWriter) WriteVanished(uids imap.UIDSet) error {
	return w.conn.writeVanished(uids, false)
}

// idField is how long an ID field name may be, idValue a value, and idPairs
// how many pairs a client may send (RFC 2971 §3.3).
const (
	idField = 30
	idValue = 1024
	idPairs = 30
)

// handleID answers ID (RFC 2971 §3.1):
//
//	id = "ID" SP id-params-list
//	id-params-list = "(" *(string SP nstring) ")" / nil
func (c *Conn) handleID(dec *imapwire.Decoder) error {
	if !dec.ExpectSP() {
		return dec.Err()
	}
	var client *imap.IDData
	pairs := 0
	var tooLong bool
	isList, err := dec.List(func() error {
		var k, v string
		if !dec.ExpectString(&k) || !dec.ExpectSP() || !dec.ExpectNString(&v) {
			return dec.Err()
		}
		pairs++
		if len(k) > idField || len(v) > idValue || pairs > idPairs {
			tooLong = true
			return nil
		}
		if client == nil {
			client = &imap.IDData{}
		}
		setIDField(client, k, v)
		return nil
	})
	if err != nil {
		return err
	}
	if !isList && !dec.ExpectNIL() {
		return dec.Err()
	}
	if !dec.ExpectCRLF() {
		return dec.Err()
	}
	if tooLong {
		return newClientBugError("ID takes at most 30 fields of 30 octets, with values of at most 1024")
	}
	var server *imap.IDData
	if s, ok := c.session.(SessionID); ok {
		server = s.ID(client)
	}
	enc := newResponseEncoder(c)
	defer enc.end()
	enc.Atom("*").SP().Atom("ID").SP()
	fields := idFields(server)
	if len(fields) == 0 {
		enc.NIL()
		return enc.CRLF()
	}
	enc.List(len(fields)/2, func(i int) {
		enc.String(fields[2*i]).SP().String(fields[2*i+1])
	})
	return enc.CRLF()
}

func setIDField(d *imap.IDData, k, v string) {
	switch strings.ToLower(k) {
	case "name":
		d.Name = v
	case "version":
		d.Version = v
	case "os":
		d.OS = v
	case "os-version":
		d.OSVersion = v
	case "vendor":
		d.Vendor = v
	case "support-url":
		d.SupportURL = v
	case "address":
		d.Address = v
	case "date":
		d.Date = v
	case "command":
		d.Command = v
	case "arguments":
		d.Arguments = v
	case "environment":
		d.Environment = v
	default:
		if k = strings.ToLower(k); strings.HasPrefix(k, "x-") {
			if d.Extra == nil {
				d.Extra = map[string]string{}
			}
			d.Extra[k] = v
		}
	}
}

func idFields(d *imap.IDData) []string {
	if d == nil {
		return nil
	}
	var out []string
	for _, f := range []struct{ k, v string }{
		{"name", d.Name}, {"version", d.Version}, {"os", d.OS}, {"os-version", d.OSVersion},
		{"vendor", d.Vendor}, {"support-url", d.SupportURL}, {"address", d.Address}, {"date", d.Date},
		{"command", d.Command}, {"arguments", d.Arguments}, {"environment", d.Environment},
	} {
		if f.v != "" {
			out = append(out, f.k, f.v)
		}
	}
	return out
}
