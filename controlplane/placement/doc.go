// Package placement answers "which cell owns this user?" as a pure,
// in-memory function of the placement map (DESIGN.md §2).
//
// An address is canonicalised (ParseAddress), its domain's record decides
// the placement key (the domain for tenant domains, the canonical address for
// consumer domains), the key hashes to a 56-bit value that, prefixed by the
// domain's 8-bit jurisdiction code, is the keyspace id; pins are consulted
// first, then the jurisdiction's sorted ranges by binary search.
//
// The package has no dependency on etcd, the network or any other cellmail
// package, so the router, the cells and mailctl share one implementation.
// Its only import outside the standard library is golang.org/x/net/idna for
// IDNA (RFC 5891) domain conversion.
package placement
