//go:build !linux

package schedpolicy

import "errors"

// Batch is not available on this system: it returns an error and changes
// nothing.
func Batch() (int, error) {
	return 0, errors.New("batch scheduling (SCHED_BATCH) is Linux only")
}
