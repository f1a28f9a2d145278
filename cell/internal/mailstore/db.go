package mailstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"

	"github.com/yugabyte/pgx/v5"
	"github.com/yugabyte/pgx/v5/pgconn"
	"github.com/yugabyte/pgx/v5/pgxpool"

	"github.com/cellmail/cellmail/cell/internal/mail"
)

// unavailable is the one place a database that cannot be reached becomes
// mail.ErrUnavailable (the API answers unavailable, IMAP NO [UNAVAILABLE],
// and clients retry): a failed connect (refused, timed out, the server
// starting or shutting down), a connection lost under a statement, and the
// server's connection-class errors (SQLSTATE class 08, 57P01–57P03 shutdown
// and recovery, 53300 too many connections). The original error stays in
// the chain; any other error is returned as it is.
func unavailable(err error) error {
	if err == nil || errors.Is(err, mail.ErrUnavailable) {
		return err
	}
	var ce *pgconn.ConnectError
	var pe *pgconn.PgError
	var ne net.Error
	switch {
	case errors.As(err, &pe):
		switch {
		case len(pe.Code) == 5 && pe.Code[:2] == "08", pe.Code == "57P01", pe.Code == "57P02", pe.Code == "57P03", pe.Code == "53300":
		default:
			return err
		}
	case errors.As(err, &ce), errors.As(err, &ne), errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
	case pgconn.SafeToRetry(err) && !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded):
		// Failed before anything was sent: the connection was closed.
	default:
		return err
	}
	return fmt.Errorf("%w: database: %w", mail.ErrUnavailable, err)
}

// db is the pool with every error passed through unavailable, so that no
// method of the store needs to think about it.
type db struct{ p *pgxpool.Pool }

func (d db) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	tag, err := d.p.Exec(ctx, sql, args...)
	return tag, unavailable(err)
}

func (d db) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	r, err := d.p.Query(ctx, sql, args...)
	if err != nil {
		return r, unavailable(err)
	}
	return rows{r}, nil
}

func (d db) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	return row{d.p.QueryRow(ctx, sql, args...)}
}

func (d db) SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults {
	return batchResults{d.p.SendBatch(ctx, b)}
}

func (d db) Begin(ctx context.Context) (pgx.Tx, error) {
	t, err := d.p.Begin(ctx)
	if err != nil {
		return nil, unavailable(err)
	}
	return tx{t}, nil
}

func (d db) BeginTx(ctx context.Context, o pgx.TxOptions) (pgx.Tx, error) {
	t, err := d.p.BeginTx(ctx, o)
	if err != nil {
		return nil, unavailable(err)
	}
	return tx{t}, nil
}

func (d db) Acquire(ctx context.Context) (*pgxpool.Conn, error) {
	c, err := d.p.Acquire(ctx)
	return c, unavailable(err)
}

func (d db) Ping(ctx context.Context) error { return unavailable(d.p.Ping(ctx)) }
func (d db) Close()                         { d.p.Close() }

type row struct{ pgx.Row }

func (r row) Scan(dest ...any) error { return unavailable(r.Row.Scan(dest...)) }

type rows struct{ pgx.Rows }

func (r rows) Err() error { return unavailable(r.Rows.Err()) }

type batchResults struct{ pgx.BatchResults }

func (b batchResults) Exec() (pgconn.CommandTag, error) {
	tag, err := b.BatchResults.Exec()
	return tag, unavailable(err)
}

func (b batchResults) Query() (pgx.Rows, error) {
	r, err := b.BatchResults.Query()
	if err != nil {
		return r, unavailable(err)
	}
	return rows{r}, nil
}

func (b batchResults) QueryRow() pgx.Row { return row{b.BatchResults.QueryRow()} }
func (b batchResults) Close() error      { return unavailable(b.BatchResults.Close()) }

// tx is a transaction whose statements' errors pass through unavailable.
type tx struct{ pgx.Tx }

func (t tx) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	tag, err := t.Tx.Exec(ctx, sql, args...)
	return tag, unavailable(err)
}

func (t tx) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	r, err := t.Tx.Query(ctx, sql, args...)
	if err != nil {
		return r, unavailable(err)
	}
	return rows{r}, nil
}

func (t tx) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	return row{t.Tx.QueryRow(ctx, sql, args...)}
}

func (t tx) SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults {
	return batchResults{t.Tx.SendBatch(ctx, b)}
}

func (t tx) Commit(ctx context.Context) error { return unavailable(t.Tx.Commit(ctx)) }
