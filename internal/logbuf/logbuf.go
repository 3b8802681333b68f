// Package logbuf is a log destination for tests: a buffer that a logger
// writes while the test reads it, and waits on, for a line it expects.
package logbuf

import (
	"bytes"
	"context"
	"strings"
	"sync"
	"testing"
	"time"
)

// Buffer collects what is written to it; safe for concurrent use.
type Buffer struct {
	mu      sync.Mutex
	b       bytes.Buffer
	written chan struct{} // closed and replaced at each write
}

func (l *Buffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.written != nil {
		close(l.written)
		l.written = nil
	}
	return l.b.Write(p)
}

// String is everything written so far.
func (l *Buffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// Len is the number of bytes written so far: an offset for From.
func (l *Buffer) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Len()
}

// From is what was written from offset on.
func (l *Buffer) From(offset int) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()[offset:]
}

// Seen returns a channel closed once what was written from offset on
// contains substr; it stays open if ctx ends first.
func (l *Buffer) Seen(ctx context.Context, offset int, substr string) <-chan struct{} {
	out := make(chan struct{})
	go func() {
		for {
			l.mu.Lock()
			if strings.Contains(l.b.String()[offset:], substr) {
				l.mu.Unlock()
				close(out)
				return
			}
			if l.written == nil {
				l.written = make(chan struct{})
			}
			w := l.written
			l.mu.Unlock()
			select {
			case <-w:
			case <-ctx.Done():
				return
			}
		}
	}()
	return out
}

// WaitFor fails the test unless what is written from offset on contains
// substr within timeout.
func (l *Buffer) WaitFor(t testing.TB, offset int, substr string, timeout time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	select {
	case <-l.Seen(ctx, offset, substr):
	case <-ctx.Done():
		t.Errorf("not logged within %v: %q; the log:\n%s", timeout, substr, l.From(offset))
	}
}
