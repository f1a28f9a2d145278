package api

import (
	"context"
	"crypto/subtle"
	"log/slog"
	"strings"

	"connectrpc.com/connect"
)

// NewAuthInterceptor admits only calls that carry the bearer token, and
// translates every handler error in one place.
func NewAuthInterceptor(token string, log *slog.Logger) connect.UnaryInterceptorFunc {
	return func(next connect.UnaryFunc) connect.UnaryFunc {
		return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
			got, ok := strings.CutPrefix(req.Header().Get("Authorization"), "Bearer ")
			if !ok || subtle.ConstantTimeCompare([]byte(got), []byte(token)) != 1 {
				return nil, toConnect(log, req.Spec().Procedure, errUnauthorized)
			}
			resp, err := next(ctx, req)
			return resp, toConnect(log, req.Spec().Procedure, err)
		}
	}
}
