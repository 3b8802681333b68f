package coordinator

import (
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
)

// LedgerFile receives the coordinator's ledger, one JSON line per committed
// step. *os.File is one; tests pass one that fails.
type LedgerFile interface {
	io.Writer
	// Sync makes what was written durable.
	Sync() error
	Close() error
}

// maxLedgerBacklog bounds the bytes of ledger lines kept in memory while the
// file takes none (some 50,000 lines).
const maxLedgerBacklog = 16 << 20

// ledger appends lines to a LedgerFile. A line a failed write did not take
// is kept and written first the next time, and a write that stopped half-way
// goes on where it stopped, so a disk that fills and is freed again leaves
// the ledger whole. Only the loop goroutine uses it (and closeAll after the
// loop ended).
type ledger struct {
	f       LedgerFile
	backlog []byte // lines (or the rest of one) not yet written
	lost    int64  // lines given up: the backlog was full
	failing bool   // the last write or sync failed
}

// openLedgerFile opens (or creates) the ledger in dir for appending.
func openLedgerFile(dir string) (*os.File, error) {
	path := filepath.Join(dir, "ledger.jsonl")
	_, statErr := os.Stat(path)
	f, err := os.OpenFile(path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return nil, fmt.Errorf("opening the ledger: %w", err)
	}
	if errors.Is(statErr, os.ErrNotExist) {
		// A new file's name is on disk only once its folder is synced.
		if err := syncFolder(dir); err != nil {
			f.Close()
			return nil, fmt.Errorf("creating the ledger %s: %w", path, err)
		}
	}
	return f, nil
}

// syncFolder flushes a folder's entries to the disk.
func syncFolder(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

// append writes line (ending in a newline), first what waits from earlier
// failures, and syncs the file when sync is set or while the ledger is
// failing (so that a recovery means the lines are durable). An error means
// the ledger is not (or not known to be) on disk up to this line.
func (l *ledger) append(line []byte, sync bool) error {
	if len(l.backlog)+len(line) > maxLedgerBacklog {
		l.lost++
	} else {
		l.backlog = append(l.backlog, line...)
	}
	if err := l.flush(); err != nil {
		l.failing = true
		return err
	}
	if sync || l.failing {
		if err := l.f.Sync(); err != nil {
			l.failing = true
			return fmt.Errorf("syncing the ledger: %w", err)
		}
	}
	l.failing = false
	return nil
}

// flush writes the backlog.
func (l *ledger) flush() error {
	if len(l.backlog) == 0 {
		return nil
	}
	n, err := l.f.Write(l.backlog)
	n = min(max(n, 0), len(l.backlog)) // a writer's count is not trusted to slice with
	l.backlog = l.backlog[:copy(l.backlog, l.backlog[n:])]
	if err == nil && len(l.backlog) > 0 {
		err = io.ErrShortWrite
	}
	if err != nil {
		return fmt.Errorf("appending to the ledger (%d bytes wait): %w", len(l.backlog), err)
	}
	return nil
}

// finiteOr0 is x, or 0 when x is not finite: JSON has no NaN, and a
// timing (informational) must not cost a step its ledger line.
func finiteOr0(x float64) float64 {
	if math.IsNaN(x) || math.IsInf(x, 0) {
		return 0
	}
	return x
}

// close writes what waits, syncs and closes the file.
func (l *ledger) close() error {
	err := l.flush()
	if err == nil {
		if serr := l.f.Sync(); serr != nil {
			err = fmt.Errorf("syncing the ledger: %w", serr)
		}
	}
	if cerr := l.f.Close(); cerr != nil {
		err = errors.Join(err, fmt.Errorf("closing the ledger: %w", cerr))
	}
	if l.lost > 0 {
		err = errors.Join(err, fmt.Errorf("%d ledger lines were lost while the file took none", l.lost))
	}
	return err
}
