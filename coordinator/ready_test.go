package coordinator

import (
	"errors"
	"strings"
	"testing"
	"time"
)

// Ready means training, or holding or finished as asked, and not degraded.
func TestStatusReadiness(t *testing.T) {
	failed := (*Problem)(nil).again(40, errors.New("no space left on device"), time.Now())
	for _, tc := range []struct {
		name string
		st   Status
		want bool
		says string
	}{
		{"idle", Status{Phase: string(Idle), Step: 12}, false, "idle at step 12: waiting for enough workers"},
		{"preparing", Status{Phase: string(Preparing), Generation: 3, Ring: []string{"a", "b"}}, true, "preparing generation 3 with 2 workers"},
		{"running", Status{Phase: string(Running), Generation: 3, Ring: []string{"a"}, Step: 7}, true, "running generation 3 with 1 workers, step 7"},
		{"held as asked", Status{Phase: string(Holding), Step: 50, LastCheckpointStep: 50}, true, "holding at step 50 as asked"},
		{"held on a non-finite step", Status{Phase: string(Holding), Step: 9, NonFiniteSteps: 1}, false, "not finite"},
		{"finished", Status{Phase: string(Finished), Epochs: 2, Step: 468, LastCheckpointStep: 468}, true, "finished all 2 epochs"},
		{"running, checkpoints fail", Status{Phase: string(Running), LastCheckpointError: failed}, false, "degraded: checkpoint writes fail"},
		{"held, ledger fails", Status{Phase: string(Holding), LedgerError: failed}, false, "degraded: ledger writes fail"},
		{"unknown phase", Status{Phase: "exploding"}, false, `phase "exploding"`},
	} {
		got, why := tc.st.Readiness()
		if got != tc.want || !strings.Contains(why, tc.says) {
			t.Errorf("%s: ready %v (%q), want %v saying %q", tc.name, got, why, tc.want, tc.says)
		}
	}
}
