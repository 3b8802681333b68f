package coordinator

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"syscall"
	"testing"
)

// flakyFile is a LedgerFile whose writes and syncs fail on demand, like a
// disk that fills and is freed.
type flakyFile struct {
	data     bytes.Buffer
	synced   int // bytes of data known durable
	ops      []string
	writeErr error // writes fail with it, after taking partial bytes
	partial  int
	badCount int // a count a broken writer returns instead of the truth (0: the truth)
	syncErr  error
	closed   bool
}

func (f *flakyFile) Write(p []byte) (int, error) {
	if f.writeErr != nil {
		n := min(f.partial, len(p))
		f.data.Write(p[:n])
		f.ops = append(f.ops, fmt.Sprintf("write %d of %d: fail", n, len(p)))
		return n, f.writeErr
	}
	f.data.Write(p)
	f.ops = append(f.ops, fmt.Sprintf("write %d", len(p)))
	if f.badCount != 0 {
		return f.badCount, nil
	}
	return len(p), nil
}

func (f *flakyFile) Sync() error {
	if f.syncErr != nil {
		f.ops = append(f.ops, "sync: fail")
		return f.syncErr
	}
	f.synced = f.data.Len()
	f.ops = append(f.ops, "sync")
	return nil
}

func (f *flakyFile) Close() error {
	f.closed = true
	f.ops = append(f.ops, "close")
	return nil
}

func line(step int) []byte { return []byte(fmt.Sprintf(`{"step":%d}`+"\n", step)) }

func lines(steps ...int) string {
	var b strings.Builder
	for _, s := range steps {
		b.Write(line(s))
	}
	return b.String()
}

// A full disk that takes half a line and then nothing: once it takes writes
// again, the file holds every line once, whole and in order, and synced.
func TestLedgerKeepsWhatAFailedWriteDidNotTake(t *testing.T) {
	f := &flakyFile{}
	l := &ledger{f: f}
	for step := range 2 {
		if err := l.append(line(step), false); err != nil {
			t.Fatal(err)
		}
	}
	f.writeErr, f.partial = syscall.ENOSPC, 5
	for step := 2; step < 5; step++ {
		err := l.append(line(step), false)
		if !errors.Is(err, syscall.ENOSPC) {
			t.Fatalf("step %d on a full disk: err %v, want ENOSPC", step, err)
		}
		f.partial = 0
	}
	f.writeErr = nil
	if err := l.append(line(5), false); err != nil {
		t.Fatalf("after the disk is freed: %v", err)
	}
	if got, want := f.data.String(), lines(0, 1, 2, 3, 4, 5); got != want {
		t.Fatalf("ledger file:\n%s\nwant:\n%s", got, want)
	}
	if f.synced != f.data.Len() {
		t.Errorf("recovered without syncing: %d of %d bytes synced (ops %v)", f.synced, f.data.Len(), f.ops)
	}
	if l.failing || len(l.backlog) != 0 {
		t.Errorf("still failing %v with %d bytes waiting", l.failing, len(l.backlog))
	}
}

// The ledger is synced at each commit that carries a snapshot and when it
// closes, and only then while it works.
func TestLedgerSyncsAtSnapshotsAndOnClose(t *testing.T) {
	f := &flakyFile{}
	l := &ledger{f: f}
	for step, snapshot := range []bool{false, false, true, false} {
		if err := l.append(line(step), snapshot); err != nil {
			t.Fatal(err)
		}
		if snapshot && f.synced != f.data.Len() {
			t.Fatalf("the line of step %d carries a snapshot but is not synced (ops %v)", step, f.ops)
		}
	}
	if want := len(lines(0, 1, 2)); f.synced != want {
		t.Fatalf("%d bytes synced before closing, want %d (ops %v)", f.synced, want, f.ops)
	}
	if err := l.close(); err != nil {
		t.Fatal(err)
	}
	if f.synced != f.data.Len() || !f.closed || f.ops[len(f.ops)-2] != "sync" {
		t.Fatalf("closing did not sync everything, then close: ops %v, %d of %d bytes synced", f.ops, f.synced, f.data.Len())
	}
}

// A failed sync stands until a sync succeeds, even if writes work.
func TestLedgerSyncFailureStandsUntilASyncSucceeds(t *testing.T) {
	f := &flakyFile{syncErr: syscall.EIO}
	l := &ledger{f: f}
	if err := l.append(line(0), true); !errors.Is(err, syscall.EIO) {
		t.Fatalf("failed sync: err %v, want EIO", err)
	}
	if err := l.append(line(1), false); !errors.Is(err, syscall.EIO) {
		t.Fatalf("a write after a failed sync: err %v, want the sync's EIO again", err)
	}
	f.syncErr = nil
	if err := l.append(line(2), false); err != nil {
		t.Fatalf("after syncs work again: %v", err)
	}
	if f.synced != f.data.Len() {
		t.Fatalf("%d of %d bytes synced", f.synced, f.data.Len())
	}
}

// While the file takes nothing the waiting lines are bounded; the lines
// beyond the bound are counted and closing says so.
func TestLedgerBacklogIsBounded(t *testing.T) {
	f := &flakyFile{writeErr: syscall.ENOSPC}
	l := &ledger{f: f}
	big := bytes.Repeat([]byte("x"), maxLedgerBacklog/4)
	for range 6 {
		l.append(big, false)
	}
	if len(l.backlog) > maxLedgerBacklog || l.lost != 2 {
		t.Fatalf("%d bytes wait (bound %d), %d lines lost; want 2 lost", len(l.backlog), maxLedgerBacklog, l.lost)
	}
	err := l.close()
	if err == nil || !strings.Contains(err.Error(), "2 ledger lines were lost") || !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("closing: %v; want the write error and the lost lines", err)
	}
}

// A writer that misreports what it wrote cannot make the ledger panic.
func TestLedgerSurvivesABadWriteCount(t *testing.T) {
	for _, n := range []int{-7, 1 << 30} {
		f := &flakyFile{badCount: n}
		l := &ledger{f: f}
		l.append(line(0), false)
		l.append(line(1), true)
	}
}
