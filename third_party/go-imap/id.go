package imap

type IDData struct {
	Name        string
	Version     string
	OS          string
	OSVersion   string
	Vendor      string
	SupportURL  string
	Address     string
	Date        string
	Command     string
	Arguments   string
	Environment string

	// Extra holds the fields RFC 2971 does not name, by lower-cased name,
	// when they begin with "x-" (cellmail patch): a proxy's
	// "x-originating-ip", as Dovecot's proxies send it.
	Extra map[string]string
}
