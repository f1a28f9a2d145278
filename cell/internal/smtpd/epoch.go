package smtpd

import (
	"github.com/emersion/go-smtp"

	"github.com/cellmail/cellmail/controlplane/routing"
)

// The routing contract on LMTP (controlplane/routing): the caller's map
// epoch comes with each recipient as the RCPT parameter XCELLMAIL-EPOCH
// (RFC 5321 §4.1.2 esmtp-param, advertised in LHLO, RFC 2033 §4.1), and the
// fence checks it. A subject another cell owns is answered "451 4.4.0
// [CELLMAIL-WRONG-CELL owner epoch] …", one frozen by a move "451 4.2.1
// [CELLMAIL-MOVING ms] …" (RFC 3463 codes; the bracketed code is what the
// router parses, routing.ParseResponseCode).

// rcptParams are the RCPT parameters the server takes.
var rcptParams = []string{routing.EpochParam}

// rcptEpoch is the caller's map epoch, from the RCPT parameter
// XCELLMAIL-EPOCH; 0 (the cell's own map decides) without one.
func rcptEpoch(opts *smtp.RcptOptions) (uint64, error) {
	v, ok := "", false
	if opts != nil {
		v, ok = opts.Params[routing.EpochParam]
	}
	if !ok {
		return 0, nil
	}
	e, err := routing.ParseEpoch(v)
	if err != nil { // RFC 5321 §4.1.1.11: a parameter value not understood
		return 0, &smtp.SMTPError{Code: 501, EnhancedCode: smtp.EnhancedCode{5, 5, 4}, Message: "Malformed " + routing.EpochParam + " parameter"}
	}
	return e, nil
}
