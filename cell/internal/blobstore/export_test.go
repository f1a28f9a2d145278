package blobstore

import (
	"fmt"
	"os"
	"time"
)

// Age sets the blob's modification time to d before now, as if it had last
// been Put d ago: FS's blobstoretest.Ager, for test builds only.
func (f *FS) Age(ref string, d time.Duration) error {
	if !ValidRef(ref) {
		return fmt.Errorf("age blob: %w", invalidRef(ref))
	}
	t := time.Now().Add(-d)
	if err := os.Chtimes(f.path(ref), t, t); err != nil {
		return fmt.Errorf("age blob: %w", err)
	}
	return nil
}

// Path is where FS keeps the blob ref, for the FS-specific tests.
func (f *FS) Path(ref string) string { return f.path(ref) }
