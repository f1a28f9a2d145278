// Package cli is what every cellmail binary's main shares: flags that fall
// back to environment variables, and the process logger.
package cli

import (
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
)

// Env returns the environment variable's value, or def when it is unset.
func Env(name, def string) string {
	if v, ok := os.LookupEnv(name); ok {
		return v
	}
	return def
}

// List splits a comma-separated list, dropping empty items.
func List(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// LogFlags registers -log-level and -log-format on fs and returns a
// function that builds the logger once flags are parsed.
func LogFlags(fs *flag.FlagSet, w io.Writer) func() (*slog.Logger, error) {
	level := fs.String("log-level", Env("CELLMAIL_LOG_LEVEL", "info"), "debug, info, warn or error (env CELLMAIL_LOG_LEVEL)")
	format := fs.String("log-format", Env("CELLMAIL_LOG_FORMAT", "text"), "text or json (env CELLMAIL_LOG_FORMAT)")
	return func() (*slog.Logger, error) {
		var l slog.Level
		if err := l.UnmarshalText([]byte(*level)); err != nil {
			return nil, fmt.Errorf("-log-level: %w", err)
		}
		opts := &slog.HandlerOptions{Level: l}
		switch *format {
		case "text":
			return slog.New(slog.NewTextHandler(w, opts)), nil
		case "json":
			return slog.New(slog.NewJSONHandler(w, opts)), nil
		}
		return nil, fmt.Errorf("-log-format %q: want text or json", *format)
	}
}

// Secret reads a secret from a flag value, or from the file it names when
// it starts with @ (so secrets need not appear in process listings).
func Secret(v string) (string, error) {
	if path, ok := strings.CutPrefix(v, "@"); ok {
		b, err := os.ReadFile(path)
		if err != nil {
			return "", fmt.Errorf("read secret: %w", err)
		}
		return strings.TrimSpace(string(b)), nil
	}
	return v, nil
}
