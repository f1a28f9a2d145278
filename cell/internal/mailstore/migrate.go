package mailstore

import (
	"bytes"
	"context"
	"embed"
	"fmt"
	"io/fs"
	"sort"
	"strconv"
	"strings"
	"text/template"

	"github.com/yugabyte/pgx/v5"
)

//go:embed migrations/*.sql
var migrations embed.FS

// migrationLock serialises cell instances migrating one database at start.
const migrationLock = 0x63656c6c6d61696c // "cellmail"

// migrate applies the embedded migrations not yet applied, each in its own
// transaction, under an advisory lock. It renders the hash-sharding clauses
// only when the server is YugabyteDB.
func (s *Store) migrate(ctx context.Context) error {
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	defer conn.Release()
	var version string
	if err := conn.QueryRow(ctx, "SELECT version()").Scan(&version); err != nil {
		return fmt.Errorf("migrate: server version: %w", err)
	}
	s.yugabyte = strings.Contains(version, "-YB-")
	if _, err := conn.Exec(ctx, "SELECT pg_advisory_lock($1)", int64(migrationLock)); err != nil {
		return fmt.Errorf("migrate: lock: %w", err)
	}
	defer conn.Exec(context.WithoutCancel(ctx), "SELECT pg_advisory_unlock($1)", int64(migrationLock)) //nolint:errcheck
	if _, err := conn.Exec(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
		version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())`); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	applied := map[int]bool{}
	rows, err := conn.Query(ctx, "SELECT version FROM schema_migrations")
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	for rows.Next() {
		var v int
		if err := rows.Scan(&v); err != nil {
			return err
		}
		applied[v] = true
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	files, err := fs.Glob(migrations, "migrations/*.sql")
	if err != nil {
		return err
	}
	sort.Strings(files)
	funcs := template.FuncMap{"pk": func(col string) string {
		if s.yugabyte {
			return "(" + col + ") HASH"
		}
		return col
	}}
	for _, f := range files {
		base := strings.TrimPrefix(f, "migrations/")
		v, err := strconv.Atoi(strings.SplitN(base, "_", 2)[0])
		if err != nil {
			return fmt.Errorf("migrate: bad migration name %s", base)
		}
		if applied[v] {
			continue
		}
		raw, err := migrations.ReadFile(f)
		if err != nil {
			return err
		}
		t, err := template.New(base).Funcs(funcs).Parse(string(raw))
		if err != nil {
			return fmt.Errorf("migrate: %s: %w", base, err)
		}
		var sql bytes.Buffer
		if err := t.Execute(&sql, nil); err != nil {
			return fmt.Errorf("migrate: %s: %w", base, err)
		}
		err = pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, sql.String()); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, "INSERT INTO schema_migrations (version) VALUES ($1)", v)
			return err
		})
		if err != nil {
			return fmt.Errorf("migrate: apply %s: %w", base, err)
		}
		s.log.Info("schema migration applied", "version", v)
	}
	return nil
}
