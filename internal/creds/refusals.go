package creds

import (
	"sync"
	"time"
)

// RefusalLimiter decides which refused connections get a log line, so that
// anyone who can reach a port cannot flood the log: at most one line per
// peer host per Every, and at most PerEvery lines in all per Every. A host
// seen for the first time is logged unless the total limit is reached, so
// every refused source shows up. The zero value is not usable: set Every.
type RefusalLimiter struct {
	Every    time.Duration
	PerEvery int // lines per Every in all (0: 10)

	mu          sync.Mutex
	hosts       map[string]*hostRefusals
	windowStart time.Time
	windowLines int
}

type hostRefusals struct {
	last    time.Time
	dropped int
}

// maxTrackedHosts bounds the memory the limiter keeps: beyond it, hosts
// not logged within the last Every are forgotten.
const maxTrackedHosts = 4096

// Allow reports whether a refusal of host at now may be logged, and how
// many refusals of that host were not logged since its last line.
func (r *RefusalLimiter) Allow(host string, now time.Time) (bool, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.hosts == nil {
		r.hosts = map[string]*hostRefusals{}
	}
	if now.Sub(r.windowStart) >= r.Every {
		r.windowStart, r.windowLines = now, 0
	}
	h := r.hosts[host]
	if h == nil {
		if len(r.hosts) >= maxTrackedHosts {
			for k, v := range r.hosts {
				if now.Sub(v.last) >= r.Every {
					delete(r.hosts, k)
				}
			}
		}
		h = &hostRefusals{}
		if len(r.hosts) < maxTrackedHosts {
			r.hosts[host] = h
		}
	}
	limit := r.PerEvery
	if limit <= 0 {
		limit = 10
	}
	if (!h.last.IsZero() && now.Sub(h.last) < r.Every) || r.windowLines >= limit {
		h.dropped++
		return false, 0
	}
	dropped := h.dropped
	h.last, h.dropped = now, 0
	r.windowLines++
	return true, dropped
}
