package routing

import (
	"encoding/base64"
	"strings"
)

// TokenPrefix names the format and version of a session token:
// "cm1.<base64url subject>.<base64url secret>" (no padding). The cell that
// owns the subject mints and checks tokens; the router only reads the
// subject, to route calls made after login.
const TokenPrefix = "cm1."

// maxSubject bounds a token's subject (an address: RFC 5321 §4.5.3.1.3).
const maxSubject = 320

// FormatToken writes a token for subject with secret.
func FormatToken(subject string, secret []byte) string {
	return TokenPrefix + base64.RawURLEncoding.EncodeToString([]byte(subject)) + "." + base64.RawURLEncoding.EncodeToString(secret)
}

// ParseToken splits a token into its subject and its (still encoded)
// secret, checking the format only: whether the token is valid is for the
// owning cell to say.
func ParseToken(token string) (subject, secret string, ok bool) {
	rest, ok := strings.CutPrefix(token, TokenPrefix)
	if !ok {
		return "", "", false
	}
	sub, secret, ok := strings.Cut(rest, ".")
	if !ok {
		return "", "", false
	}
	b, err := base64.RawURLEncoding.DecodeString(sub)
	if err != nil || len(b) == 0 || len(b) > maxSubject {
		return "", "", false
	}
	return string(b), secret, true
}
