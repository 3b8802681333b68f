package ring

import (
	"fmt"
	"log/slog"
	"time"
)

// MaxFrameBytes is the largest payload of one frame.
const MaxFrameBytes = 4 << 20

// Config tunes a Member. Start from DefaultConfig.
type Config struct {
	// FrameBytes is the payload of a full frame, a multiple of 4 and at most
	// MaxFrameBytes. Smaller frames start the pipeline sooner and keep the
	// working set in cache; larger ones cost fewer messages.
	FrameBytes int
	// FrameTimeoutFloor is the least time a receive waits for a frame once a
	// collective has started. It bounds how long a stalled neighbour goes
	// unnoticed inside a collective; a dead one shows sooner, when its
	// streams break or its connection's keepalive fails (3 s). It must
	// cover the stalls of a live member on an overloaded machine: at 1 s, a
	// full-size run on two cores at load 10-25 broke its ring 13 times in
	// 8 minutes with every member alive, so it is 4 s, the tolerance the
	// worker's session heartbeat has for the same reason.
	FrameTimeoutFloor time.Duration
	// MinBandwidth, in bytes per second, is a pessimistic link speed: a frame
	// of b bytes may take b/MinBandwidth when that is above the floor.
	MinBandwidth float64
	// StartTimeout bounds what depends on the other members being ready:
	// setting up this generation's streams, and the first frame of each
	// collective (members start a collective when their own gradient is
	// ready, which may be a while apart). The caller's context may cut it
	// shorter.
	StartTimeout time.Duration
	// Logger receives the rare events worth a line: links set up, rings
	// broken. Nil means slog.Default().
	Logger *slog.Logger
}

// DefaultConfig returns the configuration used by the worker.
func DefaultConfig() Config {
	return Config{
		FrameBytes:        1 << 20,
		FrameTimeoutFloor: 4 * time.Second,
		MinBandwidth:      50e6,
		StartTimeout:      30 * time.Second,
	}
}

// Validate reports the first field that is out of range.
func (c Config) Validate() error {
	switch {
	case c.FrameBytes < 4 || c.FrameBytes > MaxFrameBytes || c.FrameBytes%4 != 0:
		return fmt.Errorf("ring config: FrameBytes %d must be a multiple of 4 in [4, %d]", c.FrameBytes, MaxFrameBytes)
	case c.FrameTimeoutFloor <= 0:
		return fmt.Errorf("ring config: FrameTimeoutFloor %v must be positive", c.FrameTimeoutFloor)
	case !(c.MinBandwidth > 0):
		return fmt.Errorf("ring config: MinBandwidth %v must be positive", c.MinBandwidth)
	case c.StartTimeout <= 0:
		return fmt.Errorf("ring config: StartTimeout %v must be positive", c.StartTimeout)
	}
	return nil
}

// frameTimeout is the receive deadline of a frame of n floats.
func (c *Config) frameTimeout(n int) time.Duration {
	d := time.Duration(float64(4*n) / c.MinBandwidth * float64(time.Second))
	return max(d, c.FrameTimeoutFloor)
}

func (c *Config) logger() *slog.Logger {
	if c.Logger != nil {
		return c.Logger
	}
	return slog.Default()
}
