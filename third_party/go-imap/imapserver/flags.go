package imapserver

import "github.com/emersion/go-imap/v2"

// WriteMailboxFlags tells the client that the selected mailbox's flags
// changed, a keyword having come into use: an untagged FLAGS, and an OK
// [PERMANENTFLAGS] unless permanent is nil (RFC 3501 §7.2.6, §7.1;
// RFC 9051 §7.3.5). It may be written during any command, before the
// responses that show the new flags. (cellmail patch)
func (c *Conn) WriteMailboxFlags(flags, permanent []imap.Flag) error {
	if err := c.writeFlags(flags); err != nil {
		return err
	}
	if permanent == nil {
		return nil
	}
	return c.writePermanentFlags(permanent)
}
